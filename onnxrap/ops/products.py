"""Products of two data tensors with no gate, and the norms and quotients that only scale a signal.

A Mul or MatMul of two data tensors where signs.py finds no gate (``Gated.pick_gate``: gMLP's ``u * v``,
MobileViTv2's ``ReLU(value) * context``, a linear attention's ``(K^T V)`` and ``Q (K^T V)``) is a
**product**: it gets the position ``product`` (rule keys ``product`` and ``dense.product``), and both
factors receive relevance (docs/rules.md, products).  A MatMul's rule sees it as two linear ops: each
factor a dense op's input whose weight is the other factor (``factor_view``), as attention's ``P @ V``
sees V with the weight P.

A norm (ReduceL2, a Sqrt or ``Pow(., 0.5)``, as ``Sqrt(ReduceSum(x * x))`` writes one out) and what is
computed from norms alone are a non-negative per-sample statistic (signs.py follows them): where one
multiplies a signal it is a scale, a gate of the signal (ConvNeXtV2's GRN, ``x * Nx``), and where a data
tensor divides a signal and is proven positive the quotient is a scale too (``x / ||x||``): the signal
takes the relevance, as at LayerNorm's division by sigma.  A norm that relevance reaches otherwise is
refused by name (``refused_where_reached``).
"""
from __future__ import annotations

import numpy as np

from . import Op, Unsupported, register
from .attention import DataMatMul
from .elementwise import Activation, Gated
from .linear import Weights

NORM_REACHED = ("a norm is explained only as a scale of a signal (GRN's x * ||x|| / mean ||x||, x / ||x||): "
                "relevance reaches it here")


class Factor(DataMatMul):
    """One factor of a product ``a @ b`` of two data tensors seen as a dense op's input, the other factor
    its weight (of either sign, unlike attention's P)."""

    def weights_in(self, ctx, dtype):
        w = ctx[self.inputs[1]].astype(dtype)
        return Weights(ctx.bk.pos(w), ctx.bk.neg(w))


def factor_view(op, k):
    """Product ``op`` (a ``DataMatMul`` with no gate) as the linear map of its operand ``k`` (0: a, 1: b),
    weighted by the other, with ``op``'s output and bias; its ``signed_input`` from signs.py's bounds of that
    operand.  Made once per op and operand."""
    views = op.__dict__.setdefault("factor_views", {})
    if k not in views:
        view = Factor(op.name, op.op_type, [op.operands[k], op.operands[1 - k]], op.output)
        view.bias_values = op.bias_values
        view.gate, view.gate_on_left = 1, k == 1  # a @ b: b right of a; a left of b
        view.signed_input = op.factor_bounds[k][0] < 0
        views[k] = view
    return views[k]


class Norm(Op):
    """ReduceL2: ``sqrt(sum x^2)`` over fixed non-batch axes, non-negative (signs.py)."""

    kind = "norm"
    computes_norm = True

    def __init__(self, name, op_type, inputs, output, axes, keepdims):
        super().__init__(name, op_type, inputs, output)
        self.axes = tuple(axes)
        self.keepdims = keepdims
        self.refused_where_reached = NORM_REACHED

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        return bk.xp.sqrt((x * x).sum(axis=self.axes, keepdims=self.keepdims))

    def vjp(self, bk, ctx, grad):
        x, n = ctx[self.inputs[0]], ctx[self.output]
        if not self.keepdims:
            kept = [1 if a in self.axes else d for a, d in enumerate(x.shape)]
            grad, n = grad.reshape(kept), n.reshape(kept)
        return [x * bk.sdiv(grad, n)]  # d||x|| / dx = x / ||x||; 0 at x = 0 as torch's subgradient


@register("ReduceL2")
def _reduce_l2(v):
    shape = v.input_shape(0)
    if shape is None:
        raise Unsupported("ReduceL2 on an input of unknown rank")
    axes = [int(a) for a in np.atleast_1d(v.const(1))] if v.has_input(1) else v.attr("axes")  # opset 18: an input
    if not axes:
        raise Unsupported("reducing over every axis, the batch axis included")
    axes = sorted(int(a) % len(shape) for a in axes)
    if 0 in axes:
        raise Unsupported("reducing over the batch axis")
    return Norm(v.name, v.op_type, [v.node.input[0]], v.node.output[0], axes, bool(v.attr("keepdims", 1)))


def square_root(name, op_type, x, y):
    """``sqrt(x)``: a norm where x is a sum of squares (``Sqrt(ReduceSum(x * x))``, ``Pow(., 0.5)``)."""
    op = Activation(name, op_type, [x], y, lambda xp, u: xp.sqrt(u), lambda xp, u: 0.5 / xp.sqrt(u),
                    (0.0, np.inf), monotone=True)
    op.computes_norm = True
    op.refused_where_reached = NORM_REACHED
    return op


@register("Sqrt")
def _sqrt(v):
    return square_root(v.name, v.op_type, v.node.input[0], v.node.output[0])


class Quotient(Gated, Op):
    """``a / b`` of two data tensors.  Where signs.py proves ``b > 0`` it is a scale: ``b`` is the gate,
    held constant, and ``a`` takes the relevance, as LayerNorm's ``(x - mean) / sigma`` (docs/rules.md,
    layernorm); elsewhere it is refused where relevance reaches it."""

    kind = "quotient"

    def pick_gate(self, bounds, scales=None):
        positive = bounds[1][0] > 0
        self.gate = 1 if positive else None
        self.refused_where_reached = None if positive else (
            "Div of two data tensors whose divisor is not proven positive (only a positive one, as a norm plus "
            "epsilon, is a scale held constant)")

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]] / ctx[self.inputs[1]]

    def vjp(self, bk, ctx, grad):
        a, b = ctx[self.inputs[0]], ctx[self.inputs[1]]
        g = grad / b
        return [bk.unbroadcast(g, a.shape), bk.unbroadcast(-g * ctx[self.output], b.shape)]


def quotient(v):
    """A Div of two data tensors (``_arithmetic`` hands it here)."""
    return Quotient(v.name, v.op_type, [v.node.input[0], v.node.input[1]], v.node.output[0])
