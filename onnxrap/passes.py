"""Canonicalisation: small named rewrites that bring every exporter's graph to one form.

Like zennit's canonizers, each pass is one class doing one rewrite, so a
reader finds each in one place and a new one is one new class.  A pass reads
and edits an ``OpIndex`` (the parsed ops with producer and consumer indexes,
kept current by its edit methods) and knows the logits by name.
``CANONICAL_PASSES`` run in order after parsing; ``logits_behind_squashers``
is the one step taken on the ONNX nodes, before parsing, because it decides
which tensor the data path ends at.
"""
from __future__ import annotations

import numpy as np

from .ops.elementwise import FLOAT_TYPES, ConstantArithmetic
from .ops.fused import Fused
from .ops.linear import Conv, Linear
from .ops.structure import Pad, Transpose

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

