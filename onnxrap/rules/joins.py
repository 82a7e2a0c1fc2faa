"""Rules where data streams meet: residual Add and Concat."""
from __future__ import annotations

from . import Rule


class AddShare(Rule):
    """Each summand gets ``R * a / sum``; ``absolute`` shares by ``|a|`` (rap), else by ``a`` (z-rule)."""

    def __init__(self, absolute: bool):
        self.absolute = absolute

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        xs = [ctx[name] for name in op.inputs]
        parts = [abs(x) for x in xs] if self.absolute else xs
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        s = bk.sdiv(R, total)
        return [bk.unbroadcast(p * s, x.shape) for p, x in zip(parts, xs)]


class ConcatSlices(Rule):
    """Each input gets its slice of R, kept only where the input is nonzero."""

    def __call__(self, op, ctx, R):
        return [R[index] * (ctx[name] != 0) for name, index in op.slices(ctx, ctx.constants)]
