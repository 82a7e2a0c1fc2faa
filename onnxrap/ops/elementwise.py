"""Elementwise ops: activations, BatchNormalization, arithmetic with a constant, identities."""
from __future__ import annotations

import numpy as np

from . import Op, Unsupported, register


class Activation(Op):
    """A piecewise-linear activation; ``slope(x)`` is its derivative."""

    kind = "activation"

    def __init__(self, name, op_type, inputs, output, slope):
        super().__init__(name, op_type, inputs, output)
        self.slope = slope

    def vjp(self, bk, ctx, grad):
        return [grad * self.slope(bk.xp, ctx[self.inputs[0]])]


@register("Relu")
def _relu(v):
    return Activation(v.name, v.op_type, [v.node.input[0]], v.node.output[0],
                      lambda xp, x: x > 0)


@register("LeakyRelu")
def _leaky(v):
    alpha = float(v.attr("alpha", 0.01))
    return Activation(v.name, v.op_type, [v.node.input[0]], v.node.output[0],
                      lambda xp, x: xp.where(x > 0, 1.0, alpha).astype(x.dtype))


@register("Clip")
def _clip(v):
    if v.has_input(1) or v.has_input(2):  # opset 11 moved min and max to inputs
        lo = float(v.const(1)) if v.has_input(1) else -np.inf
        hi = float(v.const(2)) if v.has_input(2) else np.inf
    else:
        lo, hi = float(v.attr("min", -np.inf)), float(v.attr("max", np.inf))
    return Activation(v.name, v.op_type, [v.node.input[0]], v.node.output[0],
                      lambda xp, x: (x > lo) & (x < hi))


class BatchNorm(Op):
    """Inference BatchNormalization ``y = g * x + (bias - g * mean)`` per channel (axis 1)."""

    kind = "batchnorm"

    def __init__(self, name, op_type, inputs, output, gain, shift):
        super().__init__(name, op_type, inputs, output)
        self.gain_values = gain  # g = scale / sqrt(var + eps)
        self.shift_values = shift

    def gain(self, bk, x):
        return bk.asarray(self.gain_values.reshape((-1,) + (1,) * (x.ndim - 2)), dtype=x.dtype)

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

    def __init__(self, name, op_type, inputs, output, factor, constant=None):
        super().__init__(name, op_type, inputs, output)
        self.factor = factor  # d output / d x, broadcastable
        self.constant = constant  # the c; an Add's c may become a linear op's bias

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        return [bk.unbroadcast(grad * bk.asarray(self.factor, dtype=grad.dtype), x.shape)]


@register("Add", "Sub", "Mul", "Div", "Sum")
def _arithmetic(v):
    from .structure import Sum

    data = [i for i in range(len(v.node.input)) if v.is_data(i)]
    if len(data) > 1:
        if v.op_type in ("Add", "Sum"):
            return Sum(v.name, v.op_type, v.data_inputs(), v.node.output[0])
        raise Unsupported(f"{v.op_type} of two data tensors")
    if v.op_type == "Sum":
        return ConstantArithmetic(v.name, v.op_type, v.data_inputs(), v.node.output[0], 1.0)
    (i,) = data
    c = v.const(1 - i).astype(np.float64)
    if v.op_type == "Mul":
        factor = c
    elif v.op_type == "Div":
        if i != 0:
            raise Unsupported("division of a constant by data")
        factor = 1.0 / c
    else:
        factor = -1.0 if (v.op_type == "Sub" and i == 1) else 1.0
    return ConstantArithmetic(v.name, v.op_type, [v.node.input[i]], v.node.output[0], factor, c)


class Identity(Op):
    kind = "identity"

    def vjp(self, bk, ctx, grad):
        return [grad]


@register("Identity", "Dropout", "Cast")
def _identity(v):
    return Identity(v.name, v.op_type, [v.node.input[0]], v.node.output[0])
