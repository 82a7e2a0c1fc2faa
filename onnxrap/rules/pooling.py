"""Rules for pools: the z-rule at MaxPool, shares within a window at average pools."""
from __future__ import annotations

from . import Rule


class MaxWinner(Rule):
    """z-rule ``x * pool^T(R / pool(x))``: each window's relevance goes to its arg-max."""

    def __call__(self, op, ctx, R):
        x, y = ctx[op.inputs[0]], ctx[op.output]
        return [x * op.route(ctx.bk, x, ctx.bk.sdiv(R, y))]


class WindowShare(Rule):
    """Average pools: ``a * pool^T(R / pool(a))`` with ``a = |x|`` (rap) or ``x`` (z-rule)."""

    def __init__(self, absolute: bool):
        self.absolute = absolute

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x = ctx[op.inputs[0]]
        a = abs(x) if self.absolute else x
        return [a * op.sum_pool_adjoint(bk, bk.sdiv(R, op.sum_pool(bk, a)), x.shape)]
