"""Rules for ops that pass relevance on without sharing it: activations, shape moves, BatchNormalization."""
from __future__ import annotations

from . import Rule
from .linear import uniform_shift


class Pass(Rule):
    """Relevance passes unchanged (summed back over any broadcast axes)."""

    def __call__(self, op, ctx, R):
        return [ctx.bk.unbroadcast(R, ctx[name].shape) for name in op.inputs]


class Adjoint(Rule):
    """The op's own adjoint: the gradient, and the inverse of a shape move."""

    def __call__(self, op, ctx, R):
        return op.vjp(ctx.bk, ctx, R)


class Crop(Rule):
    """Pad (rap): the crop, with the relevance that lay on the padding shifted evenly onto the input's
    nonzero entries, as rap.hidden's shift carries a bias's share (docs/rules.md, conservation.constants)."""

    def __call__(self, op, ctx, R):
        (out,) = op.vjp(ctx.bk, ctx, R)
        return [uniform_shift(ctx.bk, out, R, conserve=True)]


class BatchNormMask(Rule):
    """The released RAP code: relevance survives where the normalised input ``x * g`` is nonzero."""

    def __call__(self, op, ctx, R):
        x = ctx[op.inputs[0]]
        return [R * ((x * op.gain(ctx.bk, x)) != 0)]


class BatchNormRatio(Rule):
    """LRP's BatchNormalization: ``R * x g / (x g + eps)``, i.e. R up to rounding."""

    def __init__(self, epsilon=1e-9):
        self.epsilon = epsilon

    def __call__(self, op, ctx, R):
        x = ctx[op.inputs[0]]
        z = x * op.gain(ctx.bk, x)
        return [R * z / (z + self.epsilon)]
