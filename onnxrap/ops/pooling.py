"""Pooling: MaxPool, GlobalMaxPool, AveragePool, GlobalAveragePool, ReduceMean, ReduceSum.

Average pools expose a *sum* pool and its adjoint plus the divisor, because
the relevance rules share by ``x / sum(x)`` within a window, where the
divisor cancels; only the gradient needs it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..backend import numpy_backend, window_spec
from ..errors import ModelError
from . import Op, Unsupported, register
from .elementwise import Identity


def _window_attrs(v):
    rank = len(v.attr("kernel_shape"))
    auto_pad = v.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto_pad}")
    return dict(kernel=tuple(v.attr("kernel_shape")), strides=v.attr("strides"),
                dilations=v.attr("dilations"), pads=v.attr("pads") or [0] * (2 * rank),
                auto_pad=auto_pad, ceil_mode=bool(v.attr("ceil_mode", 0)))


class _Windowed(Op):
    """An op over sliding windows of the trailing axes; ``kernel=None`` is global."""

    def __init__(self, name, op_type, inputs, output, kernel=None, strides=None, dilations=None,
                 pads=None, auto_pad="NOTSET", ceil_mode=False):
        super().__init__(name, op_type, inputs, output)
        self.window = dict(kernel=kernel, strides=strides, dilations=dilations, pads=pads,
                           auto_pad=auto_pad, ceil_mode=ceil_mode)
        self._specs = {}

    def spec(self, x_shape):
        key = tuple(x_shape[2:])
        if key not in self._specs:
            w = dict(self.window)
            if w["kernel"] is None:
                w["kernel"] = key
            self._specs[key] = window_spec(key, **w)
        return self._specs[key]


class MaxPool(_Windowed):
    kind = "maxpool"

    def route(self, bk, x, grad):
        """Gradient of the max: each window's value goes to its (first) arg-max."""
        xp = bk.xp
        spec = self.spec(x.shape)
        n, c = x.shape[:2]
        win = bk.windows(x, spec, value=-np.inf).reshape((n, c, spec.taps) + spec.out_shape)
        arg = win.argmax(axis=2)
        taps = xp.arange(spec.taps).reshape((1, 1, -1) + (1,) * len(spec.out_shape))
        cols = (taps == arg[:, :, None]) * grad[:, :, None]
        return bk.scatter(cols.reshape((n, c) + spec.kernel + spec.out_shape), spec)

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        spec = self.spec(x.shape)
        return bk.windows(x, spec, value=-np.inf).max(axis=tuple(range(2, 2 + len(spec.kernel))))

    def vjp(self, bk, ctx, grad):
        return [self.route(bk, ctx[self.inputs[0]], grad)]


@register("MaxPool")
def _maxpool(v):
    if v.attr("storage_order", 0) and len(v.node.output) > 1 and v.node.output[1]:
        raise Unsupported("storage_order=1 for its Indices output")  # the order only lays out the indices
    return MaxPool(v.name, v.op_type, [v.node.input[0]], v.node.output[0], **_window_attrs(v))


@register("GlobalMaxPool")
def _global_maxpool(v):
    return MaxPool(v.name, v.op_type, [v.node.input[0]], v.node.output[0])


class _Mean:
    """An average: a sum pool over a divisor.  Subclasses give ``sum_pool``, its adjoint and ``divisor``."""

    kind = "avgpool"
    within_inputs = True  # each output lies between its inputs' least and greatest (and the padding's 0)

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        return self.sum_pool(bk, x) / self.divisor(bk, x.shape, x.dtype)

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        return [self.sum_pool_adjoint(bk, grad / self.divisor(bk, x.shape, grad.dtype), x.shape)]


class AveragePool(_Mean, _Windowed):

    def __init__(self, *args, count_include_pad=False, **kw):
        super().__init__(*args, **kw)
        self.count_include_pad = count_include_pad

    def sum_pool(self, bk, x):
        spec = self.spec(x.shape)
        win = bk.windows(x, spec)
        return win.sum(axis=tuple(range(2, 2 + len(spec.kernel))))

    def sum_pool_adjoint(self, bk, s, x_shape):
        spec = self.spec(x_shape)
        rank = len(spec.kernel)
        cols = bk.xp.broadcast_to(s.reshape(s.shape[:2] + (1,) * rank + s.shape[2:]),
                                  s.shape[:2] + spec.kernel + s.shape[2:])
        return bk.scatter(cols, spec)

    def divisor(self, bk, x_shape, dtype):
        """Elements each window averages over, as ONNX defines it (ceil_mode overhang never counts)."""
        return bk.constant(self, ("divisor", tuple(x_shape[2:])), dtype, lambda: self._divisor(x_shape))

    def _divisor(self, x_shape):
        host = numpy_backend()
        spec = self.spec(x_shape)
        counted = np.zeros(spec.padded_shape)
        if self.count_include_pad:
            counted[tuple(slice(0, b + i + e) for b, i, e in
                          zip(spec.pads_begin, spec.in_shape, spec.pads_end))] = 1
        else:
            counted[tuple(slice(b, b + i) for b, i in zip(spec.pads_begin, spec.in_shape))] = 1
        flat = dataclasses.replace(spec, pads_begin=(0,) * len(spec.kernel),
                                   pads_end=(0,) * len(spec.kernel), in_shape=spec.padded_shape)
        return host.windows(counted[None, None], flat).sum(axis=tuple(range(2, 2 + len(spec.kernel))))


@register("AveragePool")
def _avgpool(v):
    return AveragePool(v.name, v.op_type, [v.node.input[0]], v.node.output[0],
                       count_include_pad=bool(v.attr("count_include_pad", 0)), **_window_attrs(v))


class MeanReduce(_Mean, Op):
    """Mean over fixed non-batch axes (GlobalAveragePool, ReduceMean)."""

    def __init__(self, name, op_type, inputs, output, axes, keepdims):
        super().__init__(name, op_type, inputs, output)
        self.axes = axes  # None: every axis after the channel axis
        self.keepdims = keepdims

    def _axes(self, ndim):
        axes = tuple(range(2, ndim)) if self.axes is None else tuple(sorted(a % ndim for a in self.axes))
        if 0 in axes:  # a negative axis on an input of unknown rank: the parser could not tell
            raise ModelError(f"{self.name} ({self.op_type}): reduces over the batch axis")
        return axes

    def sum_pool(self, bk, x):
        return x.sum(axis=self._axes(x.ndim), keepdims=self.keepdims)

    def sum_pool_adjoint(self, bk, s, x_shape):
        kept = list(x_shape)
        for a in self._axes(len(x_shape)):
            kept[a] = 1
        return bk.xp.broadcast_to(s.reshape(kept), x_shape)

    def divisor(self, bk, x_shape, dtype):
        return math.prod(x_shape[a] for a in self._axes(len(x_shape)))


@register("GlobalAveragePool")
def _gap(v):
    return MeanReduce(v.name, v.op_type, [v.node.input[0]], v.node.output[0], None, True)


class SumReduce(MeanReduce):
    """Sum over fixed non-batch axes (ReduceSum: split attention's sum over its branches): an average
    times its count, so every rule for an average applies."""

    within_inputs = False  # a sum of values in [0, 1] is in [0, count]

    def __init__(self, name, op_type, inputs, output, axes, keepdims, count=None):
        super().__init__(name, op_type, inputs, output, axes, keepdims)
        self.count = count  # the terms of each sum where the input's shape is known, else None

    def divisor(self, bk, x_shape, dtype):
        return 1


@register("ReduceMean", "ReduceSum")
def _reduce(v):
    if v.has_input(1):  # opset 18 moved ReduceMean's axes to an input (ReduceSum's: opset 13)
        axes = [int(a) for a in np.atleast_1d(v.const(1))]
    else:
        axes = v.attr("axes")
    if not axes:
        if v.attr("noop_with_empty_axes", 0):  # ONNX: then the op is an identity
            return Identity(v.name, v.op_type, [v.node.input[0]], v.node.output[0])
        raise Unsupported("reducing over every axis, the batch axis included")
    shape = v.input_shape(0)
    if any(a == 0 or (shape and a % len(shape) == 0) for a in axes):
        raise Unsupported("reducing over the batch axis")
    io = (v.name, v.op_type, [v.node.input[0]], v.node.output[0], axes, bool(v.attr("keepdims", 1)))
    if v.op_type == "ReduceMean":
        return MeanReduce(*io)
    known = shape is not None and all(shape[a] is not None for a in axes)
    return SumReduce(*io, count=math.prod(shape[a] for a in axes) if known else None)
