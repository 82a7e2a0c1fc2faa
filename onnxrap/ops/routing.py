"""Index routing with constant indices: Gather (any axis), GatherElements, GatherND, Slice (any steps), Split
(one op per output), Expand (a broadcast), Tile, Resize and Upsample with mode nearest, and Pad with mode edge,
reflect or wrap (registered with Pad in structure.py).

Each output element is a copy of one input element, so such an op is a map
from output positions to input positions.  The map is ONNX's own semantics
applied to the positions themselves: onnx's reference evaluator runs the node
on an array holding 0, 1, 2, ... in the input's shape (negative indices,
clamped Slice bounds and every attribute default come from onnx, not from a
second implementation here).  The forward takes those positions (the backend's
``take``); the adjoint adds each output's relevance back at its position,
summed where an index repeats and zero where nothing was gathered (its
``scatter_add``).  Positions are kept per sample, so a traced graph gathers
with a free batch axis.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError
from . import Op, Unsupported, register


class IndexRouting(Op):
    kind = "shape"  # relevance follows the op's adjoint, as for any shape move

    def __init__(self, name, op_type, inputs, output, node, constants, opset, batch_source):
        super().__init__(name, op_type, inputs, output)
        self.node = node  # a copy: the ONNX node whose semantics make the map
        self.constants = constants  # its constant inputs (indices, starts, ...) by name; a function of the batch size
        # where the input is a shape that holds it
        self.opset = opset
        self.batch_source = batch_source  # the model input: its first axis is the batch
        self._maps = {}  # (input shape, batch) -> (input positions per sample, output shape), on the host

    def routes(self, bk, ctx, shape):
        """Each sample's input positions (within the sample) of its output elements, on ``bk`` (copied
        there once): ``(N, K)``, or ``(1, K)`` for every sample alike; and the output shape."""
        key = (tuple(shape), ctx[self.batch_source].shape[0])
        if key not in self._maps:
            self._maps[key] = self._sample_routes(*key, bk.free_batch)
        rows, out_shape = self._maps[key]
        return bk.constant(self, ("routes",) + key, np.int64, lambda: rows), out_shape

    def _sample_routes(self, shape, batch, free):
        if free:  # the batch size is a placeholder: one sample's map (compile checked it is every sample's)
            rows, sample_shape = self.each_sample(tuple(shape[1:]))
            return rows, (batch,) + sample_shape
        size = int(np.prod(shape))
        source = self._route(shape, batch)
        self._check_samples_apart(source, size, batch)
        return source.reshape(batch, -1) % (size // batch), source.shape

    def each_sample(self, sample_shape):
        """``(positions (1, K), output shape less the batch)`` where every sample of a batch of any size
        reads the same positions in its own sample (checked at 1, 2 and 3 samples); else None."""
        try:
            one = self._route((1,) + sample_shape, 1)
            if one.shape[0] == 1 and all(self._tiles(one, sample_shape, n) for n in (2, 3)):
                return one.reshape(1, -1), one.shape[1:]
        except ModelError:  # indices that fit one batch size only
            pass
        return None

    def _tiles(self, one, sample_shape, n):
        """Whether ``n`` samples each read ``one``'s positions in their own sample."""
        routed = self._route((n,) + sample_shape, n)
        sample = int(np.prod(sample_shape))
        return routed.shape == (n,) + one.shape[1:] and np.array_equal(
            routed.reshape(n, -1), one.reshape(1, -1) + sample * np.arange(n)[:, None])

    def _route(self, shape, batch):
        """The input positions of the output elements, for an input of ``shape`` in a batch of ``batch``."""
        from onnx.reference import ReferenceEvaluator

        data = self.node.input[0]
        graph = onnx.helper.make_graph(
            [self.node], "route", [onnx.helper.make_tensor_value_info(data, onnx.TensorProto.INT64, shape)],
            [onnx.helper.make_tensor_value_info(self.output, onnx.TensorProto.INT64, None)],
            [onnx.numpy_helper.from_array(np.asarray(v(batch) if callable(v) else v), k)
             for k, v in self.constants.items()])
        model = onnx.helper.make_model(graph, opset_imports=self.opset)
        try:
            (out,) = ReferenceEvaluator(model).run(None, {data: np.arange(int(np.prod(shape))).reshape(shape)})
        except Exception as exc:
            raise ModelError(f"{self.name} ({self.op_type}): its indices do not fit an input of shape "
                             f"{shape} ({type(exc).__name__}: {exc})") from None
        return np.asarray(out, dtype=np.int64)

    def _check_samples_apart(self, source, size, batch):
        """Each sample's outputs must come from that sample: relevance never crosses samples."""
        if batch == 1:
            return
        if source.size % batch or size % batch or np.any(
                source.reshape(batch, -1) // (size // batch) != np.arange(batch)[:, None]):
            raise ModelError(f"{self.name} ({self.op_type}) moves values between the samples of a batch; "
                             "explain one input at a time (--batch-size 1)")

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        index, shape = self.routes(bk, ctx, x.shape)
        return bk.take(x.reshape(ctx[self.batch_source].shape[0], -1), index).reshape(shape)

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        index, _ = self.routes(bk, ctx, x.shape)
        n = ctx[self.batch_source].shape[0]
        return [bk.scatter_add(grad.reshape(n, -1), index, x.size // n).reshape(x.shape)]


def index_routing(v, index_inputs, output=0, name=None):
    """The node, with every input but the data a constant (reading them raises Unsupported otherwise) or a
    shape that holds the batch size (graph.py, ``batch_sized``), as the map to its output ``output``."""
    constants = {v.node.input[i]: _batch_sized(v.graph.batch_sized[v.node.input[i]])
                 if v.node.input[i] in v.graph.batch_sized else v.const(i)
                 for i in index_inputs if v.has_input(i)}
    node = onnx.NodeProto()
    node.CopyFrom(v.node)
    node.name = v.name
    return IndexRouting(name or v.name, v.op_type, [v.node.input[0]], v.node.output[output], node, constants,
                        list(v.graph.model.opset_import), v.graph.input_name)


def _batch_sized(value):
    """A shape that holds the batch size (graph.py, ``batch_sized``) as a function of the batch size."""
    one, step = value
    return lambda batch: one + (batch - 1) * step


@register("Gather")
def _gather(v):
    return index_routing(v, [1])


@register("GatherElements")
def _gather_elements(v):
    return index_routing(v, [1])


@register("GatherND")
def _gather_nd(v):
    return index_routing(v, [1])


@register("Slice")
def _slice(v):
    return index_routing(v, [1, 2, 3, 4])  # starts, ends, axes, steps (attributes before opset 10: kept on the node)


@register("Split")
def _split(v):
    """Each output the data path reads is the part of the input it copies; ONNX's own Split (the split
    sizes as attribute or input, num_outputs, an uneven last part) makes each map."""
    outputs = [k for k, t in enumerate(v.node.output) if t in v.graph.read_on_data_path]
    return [index_routing(v, [1], k, f"{v.name}:{k}") for k in outputs]


@register("Resize", "Upsample")
def _resize(v):
    """Nearest-neighbour resizing (HRNet's and FPN's upsampling) copies input values: ONNX's own Resize makes
    the map, whatever its coordinate transformation and rounding.  Linear and cubic modes weigh several
    inputs into one output; no rule here knows them."""
    mode = v.attr("mode", "nearest")
    if mode != "nearest":
        raise Unsupported(f"mode {mode} (only nearest copies values; linear and cubic interpolate)")
    return index_routing(v, [1, 2, 3])  # roi, scales, sizes (Upsample: scales)


@register("Tile")
def _tile(v):
    """Copies of the input along each axis (SwiftFormer's additive attention tiles its global query over the
    tokens): each output copies one input element; the adjoint sums the copies."""
    return index_routing(v, [1])


@register("Expand")
def _expand(v):
    """A broadcast (MobileViTv2's context vector, BoTNet's position logits): each output copies the input
    element it broadcasts from; the adjoint sums over the broadcast axes.  ``expand_as(t)`` with a free
    batch expands to ``Shape(t)``, a shape that holds the batch size (graph.py, ``batch_sized``)."""
    return index_routing(v, [1])
