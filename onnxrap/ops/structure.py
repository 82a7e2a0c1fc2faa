"""Joins and shape moves: Add of data tensors, Concat, Reshape and friends, Transpose, Pad."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from . import Op, Unsupported, register
from .routing import index_routing


class Sum(Op):
    """Elementwise sum of data tensors (a residual join); inputs may broadcast."""

    kind = "add"

    def forward(self, bk, ctx):
        out = ctx[self.inputs[0]]
        for name in self.inputs[1:]:
            out = out + ctx[name]
        return out

    def vjp(self, bk, ctx, grad):
        return [bk.unbroadcast(grad, ctx[name].shape) for name in self.inputs]


class Concat(Op):
    kind = "concat"

    def __init__(self, name, op_type, inputs, output, axis, parts):
        super().__init__(name, op_type, inputs, output)
        self.axis = axis
        self.parts = parts  # every input in order: (tensor name, is data)

    def slices(self, ctx, constants):
        """``(data input name, index of its slice in the output)`` per data input."""
        ndim = ctx[self.inputs[0]].ndim
        axis = self.axis % ndim
        start, out = 0, []
        for name, is_data in self.parts:
            size = (ctx[name] if is_data else constants[name]).shape[axis]
            if is_data:
                out.append((name, (slice(None),) * axis + (slice(start, start + size),)))
            start += size
        if start != ctx.shapes[self.output][axis]:  # an expanded constant part grew along the axis too
            raise ModelError(f"{self.name} (Concat): its parts add up to {start} along axis {axis}, its output "
                             f"has {ctx.shapes[self.output][axis]}")
        return out

    def forward(self, bk, ctx):
        data = ctx[self.inputs[0]]
        axis = self.axis % data.ndim
        parts = []
        for name, is_data in self.parts:
            if is_data:
                parts.append(ctx[name])
                continue
            part = bk.constant(self, name, data.dtype, lambda name=name: ctx.constants[name])
            shape = tuple(part.shape[k] if k == axis else data.shape[k] for k in range(data.ndim))
            parts.append(bk.xp.broadcast_to(part, shape))  # one sample's class token along the batch
        return bk.xp.concatenate(parts, axis=axis)

    def vjp(self, bk, ctx, grad):
        return [grad[index] for _, index in self.slices(ctx, ctx.constants)]


@register("Concat")
def _concat(v):
    # a part that is no data is a constant; a class token broadcast to the input's free batch
    # (``Expand(cls, Shape(x)...)``) was folded to one sample's value (``Graph._fold_per_sample``)
    parts = [(t, t in v.graph.data_tensors) for t in v.node.input]
    for t, is_data in parts:
        if not is_data:
            v.graph.require_constant(t)
    return Concat(v.name, v.op_type, v.data_inputs(), v.node.output[0], int(v.attr("axis")), parts)


class Reshape(Op):
    """Any move that keeps the element order: its inverse is a reshape back."""

    kind = "shape"

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]].reshape(ctx.shapes[self.output])  # the shape ONNX Runtime produced

    def vjp(self, bk, ctx, grad):
        return [grad.reshape(ctx[self.inputs[0]].shape)]


def _axes(v):
    """Squeeze's or Unsqueeze's axes: an attribute up to opset 12, then input 1; None where not given."""
    if v.has_input(1):
        return [int(a) for a in np.atleast_1d(v.const(1))]
    axes = v.attr("axes")
    return None if axes is None else list(axes)


def _batch_axis_moved(v):
    """Why the move merges, drops or displaces the batch axis, or None where it keeps it.  Every rule that
    shares relevance reads axis 0 of a tensor of rank 2 or more as the batch, so such a move is refused where
    relevance reaches it (signs.py); elsewhere it only computes a gate (dynamo's transpose of attention's
    keys through ``(N * heads, T, d)``), and its adjoint is exact.  A move to or from rank 1 keeps it:
    exporters flatten a batch of one that way and a later move restores it (torch.export's views,
    tests/test_gather.py)."""
    shape, out = v.input_shape(0), v.graph.static_shape(v.node.output[0])
    rank = None if shape is None else len(shape)
    if shape and out and min(len(shape), len(out)) >= 2 and None not in (shape[0], out[0]) and shape[0] != out[0]:
        return f"{v.op_type} from {tuple(shape)} to {tuple(out)} changes the batch axis"
    if v.op_type == "Flatten":
        axis = int(v.attr("axis", 1))
        if axis < 0 and rank is None:
            raise Unsupported(f"Flatten axis={axis} on an input of unknown rank")
        axis = axis % rank if axis < 0 else axis
        if axis == 0 or (axis > 1 and (shape is None or any(d != 1 for d in shape[1:axis]))):
            return f"Flatten axis={v.attr('axis', 1)} merges the batch axis with others (only axis=1 keeps it)"
    elif v.op_type in ("Squeeze", "Unsqueeze"):
        axes, squeeze = _axes(v) or [], v.op_type == "Squeeze"
        if rank is None:
            touches_batch, ranks = 0 in axes, None
        else:
            result = rank - len(axes) if squeeze else rank + len(axes)
            touches_batch, ranks = any(a % (rank if squeeze else result) == 0 for a in axes), (rank, result)
        if touches_batch and (ranks is None or min(ranks) >= 2):  # rank 1 on either side: as above
            return f"{v.op_type} axes={axes} " + ("drops the batch axis" if squeeze else
                                                 "puts an axis before the batch axis")
    return None


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(v):
    op = Reshape(v.name, v.op_type, [v.node.input[0]], v.node.output[0])
    op.refused_where_reached = _batch_axis_moved(v)
    return op


class Transpose(Op):
    kind = "shape"

    def __init__(self, name, op_type, inputs, output, perm):
        super().__init__(name, op_type, inputs, output)
        self.perm = perm

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]].transpose(self.perm)

    def vjp(self, bk, ctx, grad):
        return [grad.transpose(tuple(np.argsort(self.perm).tolist()))]  # a device array takes axes, not a host array


@register("Transpose")
def _transpose(v):
    perm = v.attr("perm")
    if perm is None:
        raise Unsupported("reversing every axis moves the batch axis")
    op = Transpose(v.name, v.op_type, [v.node.input[0]], v.node.output[0], list(perm))
    op.refused_where_reached = "moving the batch axis" if perm[0] != 0 else None  # as _batch_axis_moved's
    return op


class Unbound(Op):
    """Part ``index`` along ``axis`` of its input, that axis dropped, then transposed by ``perm``: one of q, k
    and v as timm's attention splits them off one tensor (passes.heads_unbound), ``qkv.permute(2, 0, 3, 1,
    4).unbind(0)`` with the batch axis first throughout, where the ONNX nodes put it second in between."""

    kind = "shape"

    def __init__(self, name, op_type, inputs, output, axis, index, perm):
        super().__init__(name, op_type, inputs, output)
        self.axis = axis
        self.index = index
        self.perm = list(perm)

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        part = x[(slice(None),) * self.axis + (slice(self.index, self.index + 1),)]
        return part.reshape(tuple(x.shape[:self.axis]) + tuple(x.shape[self.axis + 1:])).transpose(self.perm)

    def vjp(self, bk, ctx, grad):
        shape = ctx[self.inputs[0]].shape
        g = grad.transpose(tuple(np.argsort(self.perm).tolist()))
        g = g.reshape(tuple(shape[:self.axis]) + (1,) + tuple(shape[self.axis + 1:]))
        widths = [(0, 0)] * len(shape)
        widths[self.axis] = (self.index, shape[self.axis] - self.index - 1)
        return [bk.xp.pad(g, widths)]


class Pad(Op):
    """Constant padding; the adjoint crops.  Its own kind: what lies on a nonzero padding is no input's,
    and a conserving method must put it somewhere (docs/rules.md, conservation.constants)."""

    kind = "pad"

    def __init__(self, name, op_type, inputs, output, pads, value):
        super().__init__(name, op_type, inputs, output)
        self.pads = pads  # begins then ends, one per axis
        self.value = value

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        rank = x.ndim
        widths = list(zip(self.pads[:rank], self.pads[rank:]))
        return bk.xp.pad(x, widths, mode="constant", constant_values=self.value)

    def vjp(self, bk, ctx, grad):
        rank = grad.ndim
        crop = tuple(slice(b, n - e) for b, e, n in zip(self.pads[:rank], self.pads[rank:], grad.shape))
        return [grad[crop]]


@register("Pad")
def _pad(v):
    mode = v.attr("mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise Unsupported(f"mode={mode}")
    if v.has_input(1):  # opset 11 moved pads and value to inputs
        pads = [int(p) for p in v.const(1)]
        value = float(v.const(2)) if v.has_input(2) else 0.0
        if v.has_input(3):
            axes = [int(a) for a in v.const(3)]
            shape = v.input_shape(0)
            if shape is None:
                raise Unsupported("Pad with axes on an input of unknown rank")
            full = [0] * (2 * len(shape))
            for k, a in enumerate(axes):
                a %= len(shape)
                full[a], full[len(shape) + a] = pads[k], pads[len(axes) + k]
            pads = full
    else:
        pads = v.attr("pads", v.attr("paddings"))  # opset 1 named them paddings
        pads, value = list(pads), float(v.attr("value", 0.0))
    rank = len(pads) // 2
    if any(p < 0 for p in pads):
        raise Unsupported("negative pads (cropping)")
    if pads[0] or pads[rank]:
        raise Unsupported("padding the batch axis")
    if mode != "constant":  # every padded element copies an input element: index routing (routing.py)
        return index_routing(v, [1, 2, 3])
    return Pad(v.name, v.op_type, [v.node.input[0]], v.node.output[0], pads, value)
