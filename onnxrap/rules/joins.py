"""Rules where data streams meet: residual Add, Concat and gates (a signal times a factor in [0, c])."""
from __future__ import annotations

import itertools

from . import Rule
from .linear import uniform_shift


class AddShare(Rule):
    """Each summand gets ``R * a / sum``; ``absolute`` shares by ``|a|`` (rap), else by ``a`` (z-rule).

    ``conserve`` (rap): where the sum is exactly 0 the summands get equal shares.
    """

    def __init__(self, absolute: bool, conserve: bool = False):
        self.absolute = absolute
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        xs = [ctx[name] for name in op.inputs]
        parts = [abs(x) for x in xs] if self.absolute else xs
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        s = bk.sdiv(R, total)
        even = R * (total == 0) / len(parts) if self.conserve else 0
        return [bk.unbroadcast(p * s + even, x.shape) for p, x in zip(parts, xs)]


class ConcatSlices(Rule):
    """Each input gets its slice of R, kept only where the input is nonzero.

    ``conserve`` (rap): kept everywhere, and the relevance on constant parts (no input's) is shifted
    evenly onto the nonzero entries of every data input, as rap.hidden's shift carries a bias's share;
    where all are zero, spread evenly over them (docs/rules.md, conservation.constants).
    """

    def __init__(self, conserve: bool = False):
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        slices = op.slices(ctx, ctx.constants)
        if not self.conserve:
            return [R[index] * (ctx[name] != 0) for name, index in slices]
        parts = [R[index] for _, index in slices]
        if len(slices) == len(op.parts):  # no constant part: nothing to carry
            return parts
        axis = op.axis % R.ndim
        joined = uniform_shift(ctx.bk, ctx.bk.xp.concatenate(parts, axis=axis), R, conserve=True)
        ends = list(itertools.accumulate(p.shape[axis] for p in parts))
        return [joined[(slice(None),) * axis + (slice(end - p.shape[axis], end),)] for p, end in zip(parts, ends)]


class SignalTakesAll(Rule):
    """A gate (``Gate``: signal times a factor in [0, 1] or [0, c]): the signal gets all of R, the gate none.

    Arras et al.'s "signal-take-all" for LSTM gates (2017, 2019): the gate only rescales the
    signal, so relevance stays with the signal, and the sum of R is kept (summed back over any
    axes the signal was broadcast along).  Nothing flows down the gate's branch."""

    def __call__(self, op, ctx, R):
        shares = [None, None]
        shares[1 - op.gate] = ctx.bk.unbroadcast(R, ctx[op.signal].shape)
        return shares


class GateOnly(Rule):
    """An op that only computes a gate (attention's Softmax): a gate's rule gives its gate no relevance, so
    none reaches it, and signs.py refuses such an op wherever relevance would.  It passes none on."""

    def __call__(self, op, ctx, R):
        return [None] * len(op.inputs)
