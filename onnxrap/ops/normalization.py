"""Normalisations over the data itself (not over running statistics): LayerNormalization."""
from __future__ import annotations

import numpy as np

from . import Op, Unsupported, register


class LayerNorm(Op):
    """``y = scale * (x - mean) / sqrt(var + eps) + bias``, mean and var over the axes ``axis..rank-1``.

    The rules see it, as Ali et al. (2022) do, as the centring ``c = x - mean`` (linear: each ``c_j`` is
    ``sum_i x_i (d_ij - 1/N)`` within one group of N normalised values) followed by a per-element
    scale ``scale / sigma``, sigma held constant; ``vjp`` is the exact adjoint, sigma's dependence included.
    """

    kind = "layernorm"

    def __init__(self, name, op_type, inputs, output, axis, epsilon, scale, bias):
        super().__init__(name, op_type, inputs, output)
        self.axis = axis
        self.epsilon = epsilon
        self.scale_values = scale
        self.bias_values = bias

    def axes(self, x):
        """The normalised axes of ``x`` and the count N of values in one group."""
        axes = tuple(range(self.axis % x.ndim, x.ndim))
        return axes, int(np.prod([x.shape[a] for a in axes]))

    def mean(self, x):
        axes, n = self.axes(x)
        return x.sum(axis=axes, keepdims=True) / n

    def normalised(self, bk, x):
        """``(x - mean) / sigma`` and ``1 / sigma``."""
        centred = x - self.mean(x)
        inverse = 1 / bk.xp.sqrt(self.mean(centred * centred) + self.epsilon)
        return centred * inverse, inverse

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        xhat, _ = self.normalised(bk, x)
        y = xhat * bk.constant(self, "scale_values", x.dtype, lambda: self.scale_values)
        return y + bk.constant(self, "bias_values", x.dtype, lambda: self.bias_values)

    def vjp(self, bk, ctx, grad):
        # d/dx of scale * xhat: (g - mean(g) - xhat mean(g xhat)) / sigma, with g = grad * scale
        x = ctx[self.inputs[0]]
        xhat, inverse = self.normalised(bk, x)
        g = grad * bk.constant(self, "scale_values", grad.dtype, lambda: self.scale_values)
        return [(g - self.mean(g) - xhat * self.mean(g * xhat)) * inverse]


@register("LayerNormalization")
def _layernorm(v):
    if not v.is_data(0) or v.is_data(1) or v.is_data(2):
        raise Unsupported("LayerNormalization's scale and bias must be constants")
    if any(name for name in v.node.output[1:]):
        raise Unsupported("its Mean and InvStdDev outputs (training) are not explained")
    scale = v.const(1).astype(np.float64)
    bias = v.const(2).astype(np.float64) if v.has_input(2) else np.zeros(1)
    return LayerNorm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], int(v.attr("axis", -1)),
                     float(v.attr("epsilon", 1e-5)), scale, bias)
