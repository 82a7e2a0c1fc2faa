"""Rules for linear ops (Gemm, MatMul, Conv): RAP's three rules and LRP's.

Written against the op's ``apply`` (``L_W``) and ``adjoint`` (``L_W^T``),
so one rule serves dense and convolutional layers of any rank and groups.
Section numbers refer to docs/rap-spec.md (A1..A3, B).  No rule branches on array
values: whether an input has an ``x-`` part is the op's static ``signed_input``.
"""
from __future__ import annotations

from . import Rule


class _LinearRule(Rule):
    @staticmethod
    def _setup(op, ctx):
        x = op.take(ctx[op.inputs[0]])
        w = op.weights(ctx.bk, x.dtype)
        # fwd(a, w1, w2, ...) -> L_w1(a), L_w2(a), ... sharing the work on a;
        # adj((s1, w1), (s2, w2), ...) -> L_w1^T(s1) + L_w2^T(s2) + ..., one col2im.
        fwd = lambda a, *ws: op.apply(ctx.bk, a, list(ws) if len(ws) > 1 else ws[0])  # noqa: E731
        adj = lambda *pairs: op.adjoint(ctx.bk, list(pairs), x.shape)  # noqa: E731
        return x, w, fwd, adj


class RapFirst(_LinearRule):
    """A1: the first propagation, at the linear op that produces the logits.

    Per output unit j (weighted by the arriving R_j) contributions are split by
    the signs of input and weight; the bias goes to the positive and negative
    parts in proportion; then relevance is |C| rescaled so it sums as C does.
    """

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        xp = bk.pos(x)
        zpp, zpn = fwd(xp, wp, wn)
        to_wp, to_wn = R * (zpp != 0), R * (zpn != 0)  # what x+ sends back through W+ and W-
        C = 0
        pos, neg = zpp, zpn
        if op.signed_input:  # signs.py: where the input is provably >= 0 the x- part is zero
            xn = bk.neg(x)
            znp, znn = fwd(xn, wp, wn)
            C = xn * adj((R * (znp != 0), wp), (R * (znn != 0), wn))
            pos, neg = zpp + znn, zpn + znp
        b = op.bias(bk, x.dtype, zpp.shape)
        if b is not None:  # the bias goes to x+ W+ and x+ W- in proportion to Pos and Neg
            total = pos + neg
            to_wp = to_wp + bk.sdiv(b * R * bk.sdiv(pos, total), zpp)
            to_wn = to_wn + bk.sdiv(b * R * bk.sdiv(neg, total), zpn)
        C = C + xp * adj((to_wp, wp), (to_wn, wn))
        out = abs(C) * bk.sdiv(bk.sample_sum(C), bk.sample_sum(abs(C)))
        return [op.give(out)]


class RapHidden(_LinearRule):
    """A2: promoters and inhibitors of each input sign, then a uniform shift.

    ``per_sign=False`` (rap) shifts once per layer so the layer keeps the sum
    of R; ``per_sign=True`` (rap-reference) shifts each sign's part to the
    sum of R on its own, as the released code does.
    """

    def __init__(self, per_sign: bool):
        self.per_sign = per_sign

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        mask = R != 0
        conv = op.family == "conv"
        parts = [self._part(bk, R, mask, bk.pos(x), wp, 1.0, wn, -1.0, conv, fwd, adj)]
        if op.signed_input:  # the x- part is exactly zero otherwise (signs.py)
            parts.append(self._part(bk, R, mask, bk.neg(x), wp, -1.0, wn, 1.0, conv, fwd, adj))
        if self.per_sign:
            out = sum(self._shift(bk, p, R) for p in parts)
        else:
            out = self._shift(bk, sum(parts), R)
        return [op.give(out)]

    @staticmethod
    def _part(bk, R, mask, x1, wa, sa, wb, sb, conv, fwd, adj):
        """The spec's P(R, Za, Zb, x1, wa, sa, wb, sb)."""
        za, zb = fwd(x1, wa, wb)
        za = sa * (za * mask)  # python scalar times a bool mask would make float64
        zb = sb * (zb * mask)
        ta, tb = bk.rap_shares(R, za, zb, conv)
        return x1 * adj((sa * ta, wa), (sb * tb, wb))

    @staticmethod
    def _shift(bk, C, R):
        """Move every nonzero entry by the same amount so that C sums to S(R)."""
        excess = bk.sample_sum(C) - bk.sample_sum(R)
        return bk.shift(C, bk.sdiv(excess, bk.sample_sum(C != 0).astype(C.dtype)))


class ZBox(_LinearRule):
    """A3 / z^B: the linear op that reads the input, bounded by the sample's min and max.

    ``stabilizer=None`` divides safely (rap); a number adds it to Z as the
    released LRP code does (1e-9).
    """

    def __init__(self, stabilizer: float | None = None):
        self.stabilizer = stabilizer

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        axes = tuple(range(1, x.ndim))
        low = x.min(axis=axes, keepdims=True)
        high = x.max(axis=axes, keepdims=True)
        # Z = L_W(x) - l L_W+(1) - h L_W-(1), written as a sum of non-negative terms so that
        # pixels near the bounds do not cancel away its digits (zero padding is the same).
        z = fwd(x - low, wp) + fwd(x - high, wn)
        s = bk.sdiv(R, z) if self.stabilizer is None else R / (z + self.stabilizer)
        # x L_W^T(s) - l L_W+^T(s) - h L_W-^T(s), with W = W+ + W-:
        return [op.give((x - low) * adj((s, wp)) + (x - high) * adj((s, wn)))]


class Epsilon(_LinearRule):
    """LRP-epsilon: ``x * L^T(R / (z + e sign(z)))`` with the bias in z and sign(0) = 1."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        w = w.full
        z = fwd(x, w)
        b = op.bias(bk, x.dtype, z.shape)
        if b is not None:
            z = z + b
        z = z + self.epsilon * bk.xp.where(z >= 0, 1.0, -1.0).astype(z.dtype)
        return [op.give(x * adj((R / z, w)))]


class AlphaBeta(_LinearRule):
    """LRP-alpha-beta with beta = alpha - 1: activating minus inhibiting contributions."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        pieces = [(bk.pos(x), wp, wn)]
        if op.signed_input:  # signs.py
            pieces.append((bk.neg(x), wn, wp))
        beta = self.alpha - 1.0
        out = 0
        for xs, w_act, w_inh in pieces:  # x+ is activated through W+, x- through W-
            if beta:
                z_act, z_inh = fwd(xs, w_act, w_inh)
                back = adj((self.alpha * bk.sdiv(R, z_act), w_act), (-beta * bk.sdiv(R, z_inh), w_inh))
            else:
                back = adj((self.alpha * bk.sdiv(R, fwd(xs, w_act)), w_act))
            out = out + xs * back
        return [op.give(out)]
