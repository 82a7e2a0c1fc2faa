"""Rules for pools: the z-rule at MaxPool, shares within a window at average pools."""
from __future__ import annotations

from . import Rule


class MaxWinner(Rule):
    """z-rule ``x * pool^T(R / pool(x))``: each window's relevance goes to its arg-max.

    ``conserve`` (rap): a window whose maximum is exactly 0 gives its R to the arg-max all the same.
    """

    def __init__(self, conserve: bool = False):
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, y = ctx[op.inputs[0]], ctx[op.output]
        out = x * op.route(bk, x, bk.sdiv(R, y))
        return [out + op.route(bk, x, R * (y == 0)) if self.conserve else out]


class WindowShare(Rule):
    """Average pools: ``a * pool^T(R / pool(a))`` with ``a = |x|`` (rap) or ``x`` (z-rule).

    ``conserve`` (rap): a window whose ``pool(a)`` is exactly 0 shares its R evenly among
    the input entries it covers (padding excluded).
    """

    def __init__(self, absolute: bool, conserve: bool = False):
        self.absolute = absolute
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x = ctx[op.inputs[0]]
        a = abs(x) if self.absolute else x
        den = op.sum_pool(bk, a)
        s = bk.sdiv(R, den)
        out = a * op.sum_pool_adjoint(bk, s, x.shape)
        if self.conserve:
            covered = op.sum_pool(bk, x * 0 + 1)  # ones, traceable
            out = out + op.sum_pool_adjoint(bk, bk.sdiv(R * (den == 0), covered), x.shape)
        return [out]
