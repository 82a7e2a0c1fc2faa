"""Normalisations over the data itself (not over running statistics): LayerNormalization,
InstanceNormalization and GroupNormalization, one op that differs only in which values form a group."""
from __future__ import annotations

import numpy as np

from . import Op, Unsupported, register


class LayerNorm(Op):
    """``y = scale * (x - mean) / sqrt(var + eps) + bias``, mean and var over each group: the axes
    ``axis..rank-1`` split along ``axis`` into ``groups`` equal parts.  LayerNormalization is one group from
    its ``axis``; InstanceNormalization one group per (sample, channel) (``axis=2``); GroupNormalization
    ``groups`` per sample (``axis=1``).  ``scale`` and ``bias`` broadcast against ``x``, or with
    ``per_channel`` hold one value per channel (axis 1).

    The rules see it, as Ali et al. (2022) do, as the centring ``c = x - mean`` (linear: each ``c_j`` is
    ``sum_i x_i (d_ij - 1/N)`` within one group of N normalised values) followed by a per-element
    scale ``scale / sigma``, sigma held constant; ``vjp`` is the exact adjoint, sigma's dependence included.
    """

    kind = "layernorm"

    def __init__(self, name, op_type, inputs, output, axis, epsilon, scale, bias, groups=1, per_channel=False):
        super().__init__(name, op_type, inputs, output)
        self.axis = axis
        self.epsilon = epsilon
        self.scale_values = scale
        self.bias_values = bias
        self.groups = groups
        self.per_channel = per_channel

    def grouped(self, x):
        """``x`` with each group along the last axis: shaped ``x.shape[:axis] + (groups, N)``."""
        axis = self.axis % x.ndim
        return x.reshape(tuple(x.shape[:axis]) + (self.groups, -1))

    @staticmethod
    def mean(g):
        """The mean of each group of a grouped array."""
        return g.sum(axis=-1, keepdims=True) / g.shape[-1]

    def normalised(self, bk, g):
        """``(g - mean) / sigma`` and ``1 / sigma`` of a grouped array."""
        centred = g - self.mean(g)
        inverse = 1 / bk.xp.sqrt(self.mean(centred * centred) + self.epsilon)
        return centred * inverse, inverse

    def affine(self, bk, key, x):
        """The scale or the bias (``key``), shaped to broadcast against ``x``."""
        values = getattr(self, key)
        shape = (-1,) + (1,) * (x.ndim - 2) if self.per_channel else values.shape
        return bk.constant(self, key, x.dtype, lambda: values.reshape(shape))

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        xhat, _ = self.normalised(bk, self.grouped(x))
        return xhat.reshape(x.shape) * self.affine(bk, "scale_values", x) + self.affine(bk, "bias_values", x)

    def vjp(self, bk, ctx, grad):
        # d/dx of scale * xhat: (g - mean(g) - xhat mean(g xhat)) / sigma, with g = grad * scale
        x = ctx[self.inputs[0]]
        xhat, inverse = self.normalised(bk, self.grouped(x))
        g = self.grouped(grad * self.affine(bk, "scale_values", grad))
        return [((g - self.mean(g) - xhat * self.mean(g * xhat)) * inverse).reshape(x.shape)]


def _affine(v, what):
    if not v.is_data(0) or v.is_data(1) or v.is_data(2):
        raise Unsupported(f"{v.op_type}'s {what} must be constants")


@register("LayerNormalization")
def _layernorm(v):
    _affine(v, "scale and bias")
    if any(name for name in v.node.output[1:]):
        raise Unsupported("its Mean and InvStdDev outputs (training) are not explained")
    scale = v.const(1).astype(np.float64)
    bias = v.const(2).astype(np.float64) if v.has_input(2) else np.zeros(1)
    return LayerNorm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], int(v.attr("axis", -1)),
                     float(v.attr("epsilon", 1e-5)), scale, bias)


@register("InstanceNormalization")
def _instancenorm(v):
    _affine(v, "scale and B")
    return LayerNorm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], 2, float(v.attr("epsilon", 1e-5)),
                     v.const(1).astype(np.float64), v.const(2).astype(np.float64), per_channel=True)


@register("GroupNormalization")
def _groupnorm(v):
    # opset 18's (one scale and bias per group) never reaches here: the ONNX checker refuses it as deprecated
    _affine(v, "scale and bias")
    return LayerNorm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], 1, float(v.attr("epsilon", 1e-5)),
                     v.const(1).astype(np.float64), v.const(2).astype(np.float64), groups=int(v.attr("num_groups")),
                     per_channel=True)
