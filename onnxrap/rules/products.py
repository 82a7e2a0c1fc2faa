"""Rules for a product of two signals, a Mul or MatMul of two data tensors with no gate (docs/rules.md, products).

AttnLRP's uniform rule (Achtibat et al., ICML 2024, Proposition 3.3): ``a * b`` is a bilinear map, and
its first-order Taylor terms in ``a`` and in ``b`` are both ``a * b``, so each factor gets half of the
relevance; for ``A @ B`` each factor gets half of what the z-rule of the linear map of that factor, the
other held constant, gives it.  Here the linear map of each factor takes the method's own linear rule,
and ``share`` (the first factor's part; 0.5 is the uniform rule) is an option so that the one-factor-
takes-all readings compare on the same code.
"""
from __future__ import annotations

from . import Rule


def _shares(share):
    return share, 1.0 - share


class FactorShare(Rule):
    """A Mul ``a * b``: ``a`` gets ``share * R``, ``b`` the rest, each summed back over the axes it was
    broadcast along.  Every linear rule of a diagonal map gives this (``a b / (a b) * R``), so it serves
    every relevance method; it keeps the sum of R."""

    def __init__(self, share: float = 0.5):
        self.share = share

    def __call__(self, op, ctx, R):
        return [None if s == 0 else ctx.bk.unbroadcast(R * s, ctx[name].shape)
                for s, name in zip(_shares(self.share), op.inputs)]


class BilinearShare(Rule):
    """A MatMul ``A @ B``: ``rule`` (a linear rule) on the map ``A -> A @ B`` with ``share * R``, and on
    ``B -> A @ B`` with the rest (``op.factor_view``: the other factor as the weight, of either sign)."""

    def __init__(self, rule, share: float = 0.5):
        self.rule = rule
        self.share = share

    def __call__(self, op, ctx, R):
        return [None if s == 0 else self.rule(op.factor_view(k), ctx, R * s)[0]
                for k, s in enumerate(_shares(self.share))]
