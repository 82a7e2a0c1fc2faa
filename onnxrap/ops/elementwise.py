"""Elementwise ops: activations, BatchNormalization, arithmetic with a constant, identities."""
from __future__ import annotations

import numpy as np

from . import Op, Unsupported, register


class Activation(Op):
    """A non-decreasing piecewise-linear activation ``fn`` with derivative ``slope``; ``bounds`` clip
    its output (signs.py reads them)."""

    kind = "activation"

    def __init__(self, name, op_type, inputs, output, fn, slope, bounds=(-np.inf, np.inf)):
        super().__init__(name, op_type, inputs, output)
        self.fn = fn
        self.slope = slope
        self.bounds = bounds

    def forward(self, bk, ctx):
        return self.fn(bk.xp, ctx[self.inputs[0]])

    def vjp(self, bk, ctx, grad):
        return [grad * self.slope(bk.xp, ctx[self.inputs[0]])]


def relu(name, op_type, x, y):
    return Activation(name, op_type, [x], y, lambda xp, v: xp.maximum(v, 0), lambda xp, v: v > 0,
                      (0.0, np.inf))


def leaky_relu(name, op_type, x, y, alpha):
    return Activation(name, op_type, [x], y, lambda xp, v: xp.where(v > 0, v, alpha * v),
                      lambda xp, v: xp.where(v > 0, 1.0, alpha).astype(v.dtype))


def clip(name, op_type, x, y, lo, hi):
    return Activation(name, op_type, [x], y, lambda xp, v: xp.clip(v, lo, hi),
                      lambda xp, v: (v > lo) & (v < hi), (lo, hi))


@register("Relu")
def _relu(v):
    return relu(v.name, v.op_type, v.node.input[0], v.node.output[0])


@register("LeakyRelu")
def _leaky(v):
    return leaky_relu(v.name, v.op_type, v.node.input[0], v.node.output[0], float(v.attr("alpha", 0.01)))


@register("Clip")
def _clip(v):
    if v.has_input(1) or v.has_input(2):  # opset 11 moved min and max to inputs
        lo = float(v.const(1)) if v.has_input(1) else -np.inf
        hi = float(v.const(2)) if v.has_input(2) else np.inf
    else:
        lo, hi = float(v.attr("min", -np.inf)), float(v.attr("max", np.inf))
    return clip(v.name, v.op_type, v.node.input[0], v.node.output[0], lo, hi)


class BatchNorm(Op):
    """Inference BatchNormalization ``y = g * x + (bias - g * mean)`` per channel (axis 1)."""

    kind = "batchnorm"

    def __init__(self, name, op_type, inputs, output, gain, shift):
        super().__init__(name, op_type, inputs, output)
        self.gain_values = gain  # g = scale / sqrt(var + eps)
        self.shift_values = shift

    def _per_channel(self, bk, name, x):
        shape = (-1,) + (1,) * (x.ndim - 2)
        return bk.constant(self, (name, shape), x.dtype, lambda: getattr(self, name).reshape(shape))

    def gain(self, bk, x):
        return self._per_channel(bk, "gain_values", x)

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        return x * self.gain(bk, x) + self._per_channel(bk, "shift_values", x)

    def vjp(self, bk, ctx, grad):
        return [grad * self.gain(bk, grad)]


@register("BatchNormalization")
def _batchnorm(v):
    if v.attr("training_mode", 0):
        raise Unsupported("training_mode=1")
    scale, bias, mean, var = (v.const(i).astype(np.float64) for i in range(1, 5))
    gain = scale / np.sqrt(var + float(v.attr("epsilon", 1e-5)))
    return BatchNorm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], gain, bias - gain * mean)


class ConstantArithmetic(Op):
    """``x * c``, ``x / c``, ``x + c``, ``x - c`` or ``c - x``: normalisation inside a model."""

    kind = "scale"

    def __init__(self, name, op_type, inputs, output, constant, reversed_operands=False):
        super().__init__(name, op_type, inputs, output)
        self.constant = constant  # the c; an Add's c may become a linear op's bias
        self.reversed_operands = reversed_operands  # c - x

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        c = bk.constant(self, "constant", x.dtype, lambda: self.constant)
        if self.op_type == "Mul":
            return x * c
        if self.op_type == "Div":
            return x / c
        if self.op_type == "Sub":
            return c - x if self.reversed_operands else x - c
        return x + c

    def factor(self):
        """d output / d x, broadcastable."""
        if self.op_type == "Mul":
            return self.constant
        if self.op_type == "Div":
            return 1.0 / self.constant
        return -1.0 if self.reversed_operands else 1.0

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        return [bk.unbroadcast(grad * bk.constant(self, "factor", grad.dtype, self.factor), x.shape)]


@register("Add", "Sub", "Mul", "Div", "Sum")
def _arithmetic(v):
    from .structure import Sum

    data = [i for i in range(len(v.node.input)) if v.is_data(i)]
    if len(data) > 1:
        if v.op_type in ("Add", "Sum"):
            return Sum(v.name, v.op_type, v.data_inputs(), v.node.output[0])
        raise Unsupported(f"{v.op_type} of two data tensors")
    (i,) = data
    if v.op_type == "Sum":  # one data input, maybe constants beside it
        rest = [v.const(k).astype(np.float64) for k in range(len(v.node.input)) if k != i]
        return ConstantArithmetic(v.name, v.op_type, [v.node.input[i]], v.node.output[0], sum(rest) if rest else 0.0)
    if v.op_type == "Div" and i != 0:
        raise Unsupported("division of a constant by data")
    return ConstantArithmetic(v.name, v.op_type, [v.node.input[i]], v.node.output[0],
                              v.const(1 - i).astype(np.float64), reversed_operands=(v.op_type == "Sub" and i == 1))


class Identity(Op):
    kind = "identity"

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]]

    def vjp(self, bk, ctx, grad):
        return [grad]


@register("Identity", "Dropout", "Cast")
def _identity(v):
    return Identity(v.name, v.op_type, [v.node.input[0]], v.node.output[0])
