"""Canonicalisation: small named rewrites that bring every exporter's graph to one form.

Like zennit's canonizers, each pass is one class doing one rewrite, so a
reader finds each in one place and a new one is one new class.  A pass reads
and edits an ``OpIndex`` (the parsed ops with producer and consumer indexes,
kept current by its edit methods) and knows the logits by name.
``CANONICAL_PASSES`` run in order after parsing.  Two steps are taken on the
ONNX nodes, before parsing: ``logits_behind_squashers``, because it decides
which tensor the data path ends at, and ``layernorms_written_out`` and
``heads_unbound``, because their nodes are refused one by one (no rule knows
that a Div's divisor is the sigma of its own numerator; a Transpose that moves
the batch axis is refused before the Split that puts it back).
"""
from __future__ import annotations

import numpy as np
import onnx

from .ops.elementwise import FLOAT_TYPES, BatchNorm, ConstantArithmetic
from .ops.fused import Fused
from .ops.linear import Conv, Linear
from .ops.normalization import LayerNorm
from .ops.structure import Pad, Transpose, Unbound

# Explained through: their input is the logits.  A multi-label head's final Sigmoid too: rap conserves
# the score it is seeded with, and a probability is not one that a linear head's relevance can sum to.
OUTPUT_SQUASHERS = {"Softmax", "LogSoftmax", "Sigmoid"}


def _passes_values_on(node):
    """Whether the ONNX node hands on its input's values and shape, so that a squasher before it is still
    final (paddle2onnx ends its graphs with Softmax -> Identity).  Not a Dropout with a training_mode
    input: its value is known only once constants are folded."""
    if node.op_type == "Identity":
        return True
    if node.op_type == "Dropout":
        return len(node.input) < 3 or not node.input[2]
    if node.op_type == "Cast":
        return any(a.name == "to" and a.i in FLOAT_TYPES for a in node.attribute)
    return False


def _rounds_to_a_grid(node, nodes, producer):
    """Whether the ONNX node is a DequantizeLinear of a QuantizeLinear's output: a float rounded to an
    integer grid and back."""
    return node.op_type == "DequantizeLinear" and node.input[0] in producer and \
        nodes[producer[node.input[0]]].op_type == "QuantizeLinear"


def logits_behind_squashers(output, nodes, producer):
    """The tensor a terminal Softmax/LogSoftmax/Sigmoid (or a chain of them) squashes: the logits; the
    output itself where no squasher ends the graph.  Also what changes the values on the way, nearest
    the output first: the squashers' op types and "QuantizeLinear -> DequantizeLinear".  No-ops
    (Identity, inference Dropout, a Cast between float types) after or between squashers are looked
    through, and so is a Quantize -> DequantizeLinear pair rounding the logits or the probabilities.
    ``producer`` maps a tensor to the index of the ONNX node in ``nodes`` writing it."""
    logits = tensor = output
    through = []
    while tensor in producer:
        node = nodes[producer[tensor]]
        if node.op_type in OUTPUT_SQUASHERS:
            logits = tensor = node.input[0]
            through.append(node.op_type)
        elif _rounds_to_a_grid(node, nodes, producer):
            # an int8 model rounds its logits and probabilities (tf2onnx's fully quantised TFLite models):
            # the float value before the rounding is explained
            logits = tensor = nodes[producer[node.input[0]]].input[0]
            through.append("QuantizeLinear -> DequantizeLinear")
        elif _passes_values_on(node):
            tensor = node.input[0]
        else:
            break
    return logits, through


def _reduced_axes(node, constants):
    """A ReduceMean's axes (an attribute before opset 18, a constant input from it) and keepdims."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) > 1 and node.input[1]:
        axes = np.ravel(constants[node.input[1]]) if node.input[1] in constants else []
    else:
        axes = attrs.get("axes", [])
    return [int(a) for a in axes], attrs.get("keepdims", 1)


def _trailing_axis(axes, shape):
    """``-k`` where ``axes`` are the last k axes of a tensor of ``shape``, in any spelling; else None."""
    rank = len(shape) if shape is not None else None
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    k = len(axes)
    return -k if k and sorted(axes) == list(range(-k, 0)) else None


def _constant_operand(node, tensor, constants):
    """The constant that ``node`` (a binary op) combines ``tensor`` with; None where its other input is not
    a constant."""
    if len(node.input) != 2 or tensor not in node.input:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    return constants.get(other) if other != tensor else None


def layernorms_written_out(nodes, names, constants, static_shape, kept):
    """LayerNorm as PyTorch writes it before opset 17: ReduceMean(x) -> Sub(x, mean) -> Pow(d, 2) ->
    ReduceMean -> Add(eps) -> Sqrt -> Div(d, sqrt) [-> Mul(scale) -> Add(bias)], over the same trailing axes,
    keepdims.  Returns ``(indices of the nodes, the LayerNorm op they are)`` for each; a pattern whose
    intermediate tensors anything else reads (or that are in ``kept``: the logits, the graph's outputs)
    is left alone, and so refused.  The op is named after its first ReduceMean."""
    readers = _readers(nodes)

    def only_reader(tensor, op_type):
        found = readers.get(tensor, [])
        if tensor in kept or len(found) != 1 or nodes[found[0]].op_type != op_type:
            return None
        return found[0]

    fused = []
    for first, reduce in enumerate(nodes):
        if reduce.op_type != "ReduceMean":
            continue
        x, mean = reduce.input[0], reduce.output[0]
        axes, keepdims = _reduced_axes(reduce, constants)
        axis = _trailing_axis(axes, static_shape(x))
        sub = only_reader(mean, "Sub")
        if axis is None or not keepdims or sub is None or list(nodes[sub].input) != [x, mean]:
            continue
        centred = nodes[sub].output[0]
        pair = sorted(readers.get(centred, []), key=lambda i: nodes[i].op_type)
        if centred in kept or [nodes[i].op_type for i in pair] != ["Div", "Pow"]:
            continue
        div, pow_ = pair
        exponent = np.ravel(constants.get(nodes[pow_].input[1], []))
        if nodes[pow_].input[0] != centred or exponent.size != 1 or float(exponent[0]) != 2:
            continue
        variance = only_reader(nodes[pow_].output[0], "ReduceMean")
        if variance is None or _reduced_axes(nodes[variance], constants) != (axes, keepdims):
            continue
        add = only_reader(nodes[variance].output[0], "Add")
        eps = None if add is None else _constant_operand(nodes[add], nodes[variance].output[0], constants)
        if eps is None or np.size(eps) != 1:
            continue
        sqrt = only_reader(nodes[add].output[0], "Sqrt")
        if sqrt is None or only_reader(nodes[sqrt].output[0], "Div") != div or \
                list(nodes[div].input) != [centred, nodes[sqrt].output[0]]:
            continue
        indices = [first, sub, pow_, variance, add, sqrt, div]
        affine = {"Mul": np.ones(1), "Add": np.zeros(1)}  # scale, then bias: each where a constant follows
        for op_type in affine:
            tail = nodes[indices[-1]].output[0]
            step = only_reader(tail, op_type)
            value = None if step is None else _constant_operand(nodes[step], tail, constants)
            if value is None or not _fits(value, static_shape(x), -axis):
                break
            affine[op_type] = value.astype(np.float64)
            indices.append(step)
        op = LayerNorm(names[first], "LayerNormalization", [x], nodes[indices[-1]].output[0], axis,
                       float(np.ravel(eps)[0]), affine["Mul"], affine["Add"])
        fused.append((indices, op))
    return fused


def batchnorms_over_tokens(nodes, names, constants, static_shape, kept):
    """LeViT's BatchNorm1d over tokens, ``bn(x.flatten(0, 1)).reshape_as(x)``: a Flatten of ``(N, T, C)`` at
    its last axis (which merges the batch with the tokens), an inference BatchNormalization of the rows, and a
    Reshape back to x's shape.  The rows are normalised independently, so the three are one BatchNorm over
    x's last axis, which keeps the batch axis.  Returns ``(indices of the nodes, the op)`` per chain; a chain
    whose Flatten or BatchNormalization output anything else reads is left alone, and so refused."""
    readers = _readers(nodes)
    producers = {t: node for node in nodes for t in node.output}
    fused = []
    for first, flatten in enumerate(nodes):
        shape = static_shape(flatten.input[0]) if flatten.op_type == "Flatten" else None
        if not shape or len(shape) < 3 or None in shape[1:] or flatten.output[0] in kept:
            continue
        axis = next((a.i for a in flatten.attribute if a.name == "axis"), 1)
        norm = [nodes[i] for i in readers.get(flatten.output[0], [])]
        if axis % len(shape) != len(shape) - 1 or len(norm) != 1 or norm[0].op_type != "BatchNormalization" or \
                any(a.name == "training_mode" and a.i for a in norm[0].attribute) or norm[0].output[0] in kept:
            continue
        back = readers.get(norm[0].output[0], [])
        reshape = nodes[back[0]] if len(back) == 1 and nodes[back[0]].op_type == "Reshape" else None
        if reshape is None or not all(t in constants for t in norm[0].input[1:5]):
            continue
        out = static_shape(reshape.output[0])
        target = producers.get(reshape.input[1])  # reshape_as(x) with a free batch: Reshape(rows, Shape(x))
        if not (out and tuple(out[1:]) == tuple(shape[1:])) and not (
                target is not None and target.op_type == "Shape" and not target.attribute and
                target.input[0] == flatten.input[0]):
            continue
        op = BatchNorm.of_node(names[back[0]], norm[0], [constants[t] for t in norm[0].input[1:5]],
                               [flatten.input[0]], reshape.output[0], channel_last=True)
        fused.append(([first, readers[flatten.output[0]][0], back[0]], op))
    return fused


def _readers(nodes):
    readers = {}
    for i, node in enumerate(nodes):
        for t in dict.fromkeys(node.input):
            readers.setdefault(t, []).append(i)
    return readers


def _ints(node, k, attr, constants):
    """A node's integer list given as its input ``k`` (a constant) or, in older opsets, as attribute ``attr``;
    None where neither is known."""
    if len(node.input) > k and node.input[k]:
        return [int(a) for a in np.ravel(constants[node.input[k]])] if node.input[k] in constants else None
    value = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == attr), None)
    return None if value is None else [int(a) for a in np.ravel(value)]


def heads_unbound(nodes, names, constants, static_shape, kept):
    """q, k and v as timm's attention splits them off one tensor: ``qkv.reshape(N, T, 3, heads, d).permute(2,
    0, 3, 1, 4).unbind(0)``, a Transpose that puts the batch axis second, then for each part a Split
    (TorchScript) or a Slice (dynamo) of one index along axis 0 and a Squeeze of axis 0.  Each part is one
    ``Unbound`` op: the index taken along the Transpose's input axis, then the rest of the permutation, which
    keeps the batch axis first.  Returns ``(indices of the nodes, the op)`` per part, the Transpose and a
    Split counted with the first; a pattern whose intermediate tensors anything else reads is left alone,
    and so refused (the Transpose moves the batch axis)."""
    readers = _readers(nodes)
    fused = []
    for first, transpose in enumerate(nodes):
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        moved = transpose.output[0]
        if transpose.op_type != "Transpose" or not perm or len(perm) < 3 or perm[1] != 0 or moved in kept:
            continue
        parts = _parts_along_axis_0(nodes, readers, constants, moved, (static_shape(moved) or [None])[0], kept)
        if not parts:
            continue
        axis, rest = perm[0], [p - (p > perm[0]) for p in perm[1:]]
        for k, (index, indices) in enumerate(sorted(parts)):
            output = nodes[indices[-1]].output[0]
            op = Unbound(names[indices[-1]], "Transpose", [transpose.input[0]], output, axis, index, rest)
            fused.append(([first] + indices if k == 0 else indices, op))
    return fused


def _parts_along_axis_0(nodes, readers, constants, tensor, size, kept):
    """``[(index, [node indices])]``: each part of ``tensor`` taken at one index of axis 0 and squeezed, by a
    Split into parts of 1 (its index counted with the first part) or by Slices; None where anything else
    reads ``tensor`` or a part."""
    found = readers.get(tensor, [])
    steps = [nodes[i] for i in found]
    if len(found) == 1 and steps[0].op_type == "Split":
        split = steps[0]
        sizes = _ints(split, 1, "split", constants) or ([1] * len(split.output) if size == len(split.output) else None)
        axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
        if axis != 0 or sizes is None or set(sizes) != {1}:
            return None
        picked = [(k, [], out) for k, out in enumerate(split.output)]
        head = [found[0]]
    elif found and all(n.op_type == "Slice" for n in steps):
        picked = []
        for i, node in zip(found, steps):
            starts, ends = _ints(node, 1, "starts", constants), _ints(node, 2, "ends", constants)
            axes, slice_steps = _ints(node, 3, "axes", constants) or [0], _ints(node, 4, "steps", constants) or [1]
            if None in (starts, ends) or axes != [0] or slice_steps != [1] or ends[0] - starts[0] != 1 or \
                    (starts[0] < 0 and size is None):
                return None
            picked.append((starts[0] % size if starts[0] < 0 else starts[0], [i], node.output[0]))
        head = []
    else:
        return None
    parts = []
    for index, taken, out in picked:
        squeeze = readers.get(out, [])
        if out in kept or len(squeeze) != 1 or nodes[squeeze[0]].op_type != "Squeeze" or \
                _ints(nodes[squeeze[0]], 1, "axes", constants) != [0]:
            return None
        parts.append((index, taken + squeeze))
    parts[0] = (parts[0][0], head + parts[0][1])
    return parts


def _fits(value, shape, k):
    """Whether a constant is one value, or one per element of the last k axes of a tensor of ``shape``
    (broadcast without widening it)."""
    if np.size(value) == 1:
        return np.ndim(value) <= k
    trailing = tuple(shape[-k:]) if shape is not None and len(shape) >= k else None
    if trailing is None or None in trailing or np.ndim(value) > k:
        return False
    try:
        return np.broadcast_shapes(trailing, np.shape(value)) == trailing
    except ValueError:
        return False


class OpIndex:
    """Ops in topological order with ``producer[tensor]`` and ``consumers[tensor]``, built once;
    ``remove``, ``replace`` and ``rewire`` keep them current; ``static_shape(tensor)`` as the graph knows it."""

    def __init__(self, ops, logits_name, static_shape=lambda tensor: None):
        self.ops = list(ops)
        self.logits_name = logits_name
        self.static_shape = static_shape  # a tensor's shape from ONNX shape inference, or None
        self.producer, self.consumers = {}, {}
        for op in self.ops:
            self._add(op)

    def _add(self, op):
        self.producer[op.output] = op
        for t in dict.fromkeys(op.inputs):
            self.consumers.setdefault(t, []).append(op)

    def _drop(self, op):
        if self.producer.get(op.output) is op:
            del self.producer[op.output]
        for t in dict.fromkeys(op.inputs):
            self.consumers[t] = [c for c in self.consumers[t] if c is not op]

    def users(self, tensor):
        return self.consumers.get(tensor, [])

    def remove(self, op):
        self._drop(op)
        self.ops.remove(op)

    def replace(self, op, new_ops):
        at = self.ops.index(op)
        self._drop(op)
        self.ops[at:at + 1] = new_ops
        for new in new_ops:
            self._add(new)

    def rewire(self, op, edit):
        """Run ``edit()``, which changes ``op``'s inputs or output, and update the indexes."""
        self._drop(op)
        edit()
        self._add(op)


class Pass:
    """One rewrite of the canonical graph."""

    def apply(self, index: OpIndex) -> None:
        raise NotImplementedError

    def __repr__(self):
        return type(self).__name__


class SplitFusedOps(Pass):
    """ONNX Runtime's FusedConv/FusedGemm become their linear op, residual Add and activation
    (``ops/fused.py`` parses them into a ``Fused`` op holding those parts)."""

    def apply(self, index):
        for op in [op for op in index.ops if isinstance(op, Fused)]:
            index.replace(op, op.parts)


class AbsorbBias(Pass):
    """A linear op whose only consumer adds a constant per output unit takes it as its bias
    (MatMul + Add is Gemm; Conv + Add of a per-channel constant is a Conv with a bias)."""

    def apply(self, index):
        for op in [op for op in index.ops if isinstance(op, Linear)]:
            self._absorb(index, op)

    @staticmethod
    def _absorb(index, op):
        users = index.users(op.output)
        if len(users) != 1 or op.output == index.logits_name:
            return
        add = users[0]
        if not (isinstance(add, ConstantArithmetic) and add.op_type == "Add"):
            return
        c = add.constant
        if op.family == "dense":  # a c of higher rank than x @ W would add axes (rank 2 where unknown)
            rank = len(index.static_shape(op.output) or (None, None))
            fits = np.ndim(c) <= rank and all(d == 1 for d in np.shape(c)[:-1])
        else:  # one value per channel (axis 1), broadcast over the rest
            out_rank = len(op.kernel) + 2
            fits = np.ndim(c) in (out_rank - 1, out_rank) and \
                all(d == 1 for k, d in enumerate(np.shape(c)[::-1]) if k != out_rank - 2)
        if not fits:
            return
        bias = c.reshape(-1) if np.ndim(c) else c
        index.remove(add)
        index.rewire(op, lambda: op.absorb_bias(bias.astype(np.float64), add.output))


class PadAfterTranspose(Pass):
    """A constant Pad read by a Transpose that feeds a Conv moves behind the Transpose, its pads permuted, so
    that FoldPad meets it: tf2onnx's TFLite path pads the NHWC image, then transposes it to NCHW (Keras'
    ZeroPadding2D before a Conv); every other exporter writes the Conv's own pads.  The transposed
    unpadded tensor is not in the ONNX graph: onnxrap computes it (synthetic)."""

    def apply(self, index):
        for pad in [op for op in index.ops if isinstance(op, Pad)]:
            moved = [self._swap(index, pad, transpose) for transpose in list(index.users(pad.output))
                     if isinstance(transpose, Transpose) and any(isinstance(c, Conv) for c in index.users(transpose.output))]
            if not index.users(pad.output) and pad.output != index.logits_name:
                index.remove(pad)
            if len(moved) > 1 or pad in index.ops:  # op names are the DAG's nodes: one name, one op
                for copy, transpose in moved:
                    copy.name = f"{pad.name} after {transpose.name}"

    @staticmethod
    def _swap(index, pad, transpose):
        """Replace ``transpose`` by itself on the unpadded tensor and a copy of ``pad`` behind it; return
        ``(the copy, transpose)``."""
        rank, perm = len(pad.pads) // 2, transpose.perm
        moved = Transpose(transpose.name, transpose.op_type, pad.inputs, f"{transpose.output}/unpadded", perm)
        moved.synthetic = True
        pads = [pad.pads[a] for a in perm] + [pad.pads[rank + a] for a in perm]
        copy = Pad(pad.name, pad.op_type, [moved.output], transpose.output, pads, pad.value)
        index.replace(transpose, [moved, copy])
        return copy, transpose


class FoldPad(Pass):
    """A zero Pad of the spatial axes feeding Convs becomes their pads; it goes when nothing else reads it."""

    def apply(self, index):
        for pad in [op for op in index.ops if isinstance(op, Pad)]:
            self._fold(index, pad)

    @staticmethod
    def _fold(index, pad):
        rank = len(pad.pads) // 2
        if pad.value != 0 or pad.pads[1] or pad.pads[rank + 1]:
            return
        spatial = pad.pads[2:rank] + pad.pads[rank + 2:]
        for conv in list(index.users(pad.output)):
            if isinstance(conv, Conv) and conv.auto_pad in ("NOTSET", "VALID") and len(conv.kernel) == rank - 2:
                index.rewire(conv, lambda conv=conv: conv.absorb_pad(spatial, pad.inputs[0]))
        if not index.users(pad.output) and pad.output != index.logits_name:
            index.remove(pad)


CANONICAL_PASSES = (SplitFusedOps(), AbsorbBias(), PadAfterTranspose(), FoldPad())

