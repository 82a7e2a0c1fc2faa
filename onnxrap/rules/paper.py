"""``rap-paper``: the journal's equations (5)-(11) as docs/rules.md, paper, reads them.

Contributions ``c_ij = m_i w_ij`` are split by sign into promoters (c+) and
inhibitors (c-); per output unit, ``Zp = S_i c+`` and ``Zn = S_i c-``.  The
first propagation (5) sends ``R_j`` to promoters and minus ``R_j`` to
inhibitors; after it two flows run separately: the normal flow (7) through
promoters and the inversion flow (8) through inhibitors, each with the bias
(10) and BatchNormalization (11) corrections signed by ``k = +1`` (normal) or
``-1`` (inversion).

Readings chosen where the text is ambiguous:
- (5) applies at the linear op(s) producing the logits, with the logit as the
  seed; since both fractions sum to one per output unit, its relevance sums to
  zero wherever a unit has both promoters and inhibitors.
- (7)/(8) apply at every other linear op, the one reading the input included
  (the journal gives no separate input rule).
- (10) corrects the relevance arriving at a linear op with a bias, but not at
  the logit op, whose arriving relevance is the seed itself; ``w*h`` is the
  output's spatial size (1 for dense ops).
- (10) and (11) change R only where it is nonzero, and their means run over
  those units, so neither moves relevance in total nor puts any on units that
  carried none (a literal mean over all units would, and the next linear op
  would then drop it where those units have no contributions).  (11) uses
  ``s = BN(z) - z`` from the captured BN input and output; ``w*h*c`` is the
  sample's size.

So each flow keeps its sum through every op, except where the equations
themselves drop relevance: a unit that holds relevance but has no promoter
(normal flow) or no inhibitor (inversion flow), e.g. a BatchNormalization
shift that lights up a unit whose inputs are all zero.
"""
from __future__ import annotations

import math

from . import Rule
from .linear import _LinearRule


def _flows(bk, x, R, wp, wn, fwd, adj, signed):
    """Relevance through promoters (normal) and through inhibitors (inversion); ``signed``: x may be < 0."""
    xp, xn = bk.pos(x), bk.neg(x)
    zp, zn = fwd(xp, wp, wn)
    if signed:
        zn_, zp_ = fwd(xn, wp, wn)
        zp, zn = zp + zp_, zn + zn_
    sp, sn = bk.sdiv(R, zp), bk.sdiv(R, zn)
    normal = xp * adj((sp, wp))
    inversion = xp * adj((sn, wn))
    if signed:
        normal = normal + xn * adj((sp, wn))
        inversion = inversion + xn * adj((sn, wp))
    return normal, inversion


def _centred_where_nonzero(bk, v, R):
    """``v`` minus its mean over the units where R is nonzero, and zero elsewhere."""
    mask = R != 0
    count = bk.sample_sum(mask).astype(R.dtype)
    return mask * (v - bk.sdiv(bk.sample_sum(v * mask), count))


class PaperFirst(_LinearRule):
    """(5): ``R_i = S_j (c+_ij / Zp_j - c-_ij / Zn_j) R_j``."""

    def __call__(self, op, ctx, R):
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        normal, inversion = _flows(ctx.bk, x, R, wp, wn, fwd, adj, op.signed_input)
        return [op.give(normal - inversion)]


class PaperFlow(_LinearRule):
    """(10) then (7) for ``k = +1`` (normal flow) or (8) for ``k = -1`` (inversion flow)."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        b = op.bias(bk, R.dtype, R.shape)
        if b is not None:
            spatial = math.prod(R.shape[2:]) if op.family == "conv" else 1
            R = R - self.k * _centred_where_nonzero(bk, bk.xp.broadcast_to(b, R.shape), R) / spatial
        normal, inversion = _flows(bk, x, R, wp, wn, fwd, adj, op.signed_input)
        return [op.give(normal if self.k > 0 else inversion)]


class PaperBatchNorm(Rule):
    """(11): ``R - k (s - mean(s)) / (w h c)`` with ``s = BN(z) - z``, where R is nonzero."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, op, ctx, R):
        s = ctx[op.output] - ctx[op.inputs[0]]
        return [R - self.k * _centred_where_nonzero(ctx.bk, s, R) / math.prod(R.shape[1:])]
