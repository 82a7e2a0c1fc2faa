"""Rules for linear ops (Gemm, MatMul, Conv): RAP's three rules and LRP's.

Written against the op's ``apply`` (``L_W``) and ``adjoint`` (``L_W^T``),
so one rule serves dense and convolutional layers of any rank and groups.
Section names refer to docs/rules.md (rap.head, rap.hidden, rap.input, lrp).  No rule
branches on array values: whether an input has an ``x-`` part is the op's static
``signed_input``.
"""
from __future__ import annotations

import math

from . import Rule


def uniform_shift(bk, C, R, conserve=False):
    """rap.hidden's shift: every nonzero entry of ``C`` moved by the same amount so that C sums to S(R)
    per sample; with ``conserve``, every entry where C is zero everywhere (conservation.hidden)."""
    excess = bk.sample_sum(C) - bk.sample_sum(R)
    count = bk.sample_sum(C != 0).astype(C.dtype)
    out = bk.shift(C, bk.sdiv(excess, count))
    return out - _spread(bk, excess * (count == 0), C) if conserve else out


def _spread(bk, amount, like):
    """``amount`` (one number per sample, batch-shaped) spread evenly over every entry of an array shaped
    ``like``, as one number per sample that broadcasts against it."""
    return amount / math.prod(like.shape[1:])


class _LinearRule(Rule):
    @staticmethod
    def positive_part(bk, op, x):
        """``x+``: ``x`` itself where signs.py proved it non-negative (a pass over it saved)."""
        return bk.pos(x) if op.signed_input else x

    @staticmethod
    def linear_output(op, ctx):
        """``L_W(x)``: the op's output from the forward pass, less its bias."""
        z = ctx[op.output]
        b = op.bias(ctx.bk, z.dtype, z.shape)
        return z if b is None else z - b

    @staticmethod
    def _setup(op, ctx):
        x = op.take(ctx[op.inputs[0]])
        w = op.weights_in(ctx, x.dtype)
        # fwd(a, w1, w2, ...) -> L_w1(a), L_w2(a), ... sharing the work on a;
        # adj((s1, w1), (s2, w2), ...) -> L_w1^T(s1) + L_w2^T(s2) + ..., one col2im.
        fwd = lambda a, *ws: op.apply(ctx.bk, a, list(ws) if len(ws) > 1 else ws[0])  # noqa: E731
        adj = lambda *pairs: op.adjoint(ctx.bk, list(pairs), x.shape)  # noqa: E731
        return x, w, fwd, adj


class RapFirst(_LinearRule):
    """rap.head: the first propagation, at the linear op that produces the logits.

    Per output unit j (weighted by the arriving R_j) contributions are split by
    the signs of input and weight; the bias goes to the positive and negative
    parts in proportion; then relevance is |C| rescaled so it sums as C does.

    ``conserve`` (rap): |C| is rescaled to ``sum_j R_j z_j`` (z with its bias) instead, so
    a bias share whose own denominator is zero is carried by all contributions in
    proportion to |C| rather than lost; if C is zero everywhere, that sum is spread
    evenly over the inputs.

    For a contrast's seed (``ctx.contrast``, docs/rules.md, contrast) the score is a
    difference of logits, and C keeps its signs, since |C| would count a feature's
    evidence for the dual class as evidence for the target.  Only what C misses of the
    score is shared by |C|.
    """

    def __init__(self, conserve: bool = False):
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        xp = self.positive_part(bk, op, x)
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
        magnitude = bk.sample_sum(abs(C))
        if self.conserve:
            z = pos + neg if b is None else pos + neg + b
            score = shared = bk.sample_sum(R * z)
        else:
            shared = bk.sample_sum(C)
        signed = None
        if ctx.contrast is not None:  # a contrast's samples keep C as it is; |C| shares what C misses
            signed = C * ctx.contrast.reshape((-1,) + (1,) * (C.ndim - 1))
            shared = shared - bk.sample_sum(signed)
        out = abs(C) * bk.sdiv(shared, magnitude)
        if signed is not None:
            out = out + signed
        if self.conserve:
            out = out + _spread(bk, score * (magnitude == 0), C)
        return [op.give(out)]


class RapHidden(_LinearRule):
    """rap.hidden: promoters and inhibitors of each input sign, then a uniform shift.

    ``per_sign=False`` (rap) shifts once per layer so the layer keeps the sum
    of R; ``per_sign=True`` (rap-reference) shifts each sign's part to the
    sum of R on its own, as the released code does.

    The shift already carries whatever a unit drops (R- at a convolution unit without
    inhibitors, R on a unit that sees only its bias) to the other units.  ``conserve``
    (rap) closes the one case left: where C is zero everywhere (a dead layer; all R
    negative at a convolution without inhibitors; R only on bias-only units) the
    shift's carrier is every input entry.  (Sending R- through the promoters per unit
    instead would change rap on the resnet50_w4 golden, which has such units.)

    For a contrast's seed (``ctx.contrast``) each sign of C is rescaled to its own sum
    in place of the shift (``_keep_signs``, docs/rules.md, contrast).
    """

    def __init__(self, per_sign: bool, conserve: bool = False):
        self.per_sign = per_sign
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        parts = self.parts(op, ctx, R)
        C = sum(parts) if not self.per_sign or ctx.contrast is not None else None
        if self.per_sign:
            out = sum(uniform_shift(bk, p, R, self.conserve) for p in parts)
        else:
            out = uniform_shift(bk, C, R, self.conserve)
        if ctx.contrast is not None:
            out = self._keep_signs(bk, C, R, out, ctx.contrast)
        return [op.give(out)]

    def parts(self, op, ctx, R):
        """The P terms of docs/rules.md, rap.hidden: one per sign of the input."""
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        wp, wn = w.pos, w.neg
        conv = op.family == "conv"
        if op.signed_input:
            return [self._part(bk, R, bk.pos(x), wp, 1.0, wn, -1.0, conv, fwd, adj),
                    self._part(bk, R, bk.neg(x), wp, -1.0, wn, 1.0, conv, fwd, adj)]
        # x >= 0 (signs.py): the x- part is zero, and L_W-(x) is the forward's L_W(x) less L_W+(x)
        return [self._part(bk, R, x, wp, 1.0, wn, -1.0, conv, fwd, adj, linear=self.linear_output(op, ctx))]

    @staticmethod
    def _keep_signs(bk, C, R, shifted, contrast):
        """A contrast's samples (docs/rules.md, contrast): C's positive entries rescaled to S(R+), its
        negative ones to S(R-), in place of the shift, which adds one amount to every entry and so
        mixes the evidence for the target with the evidence for the dual.  Where R has mass of a sign
        that C lacks, the shift stays."""
        S = bk.sample_sum
        Cp, Cn, Rp, Rn = bk.pos(C), bk.neg(C), S(bk.pos(R)), S(bk.neg(R))
        kept = Cp * bk.sdiv(Rp, S(Cp)) + Cn * bk.sdiv(Rn, S(Cn))
        carried = ((S(Cp) != 0) | (Rp == 0)) & ((S(Cn) != 0) | (Rn == 0))
        use = contrast.reshape((-1,) + (1,) * (C.ndim - 1)) * carried
        return kept * use + shifted * (1 - use)

    @staticmethod
    def _part(bk, R, x1, wa, sa, wb, sb, conv, fwd, adj, linear=None):
        """P(R, Za, Zb, x1, wa, sa, wb, sb) of docs/rules.md, rap.hidden.

        The mask M of Za and Zb is left out: where R is 0 every share is 0 with or without it.
        ``linear``: ``L_W(x1)`` from the forward pass (x1 = x >= 0, sa = 1, sb = -1); then
        ``Zb = -L_wb(x1)`` is ``Za - L_W(x1)`` (clipped at 0 against rounding), one convolution fewer."""
        if linear is None:
            za, zb = (z if s > 0 else -z for z, s in zip(fwd(x1, wa, wb), (sa, sb)))
        else:
            za = fwd(x1, wa)
            zb = bk.pos(za - linear)
        ta, tb = bk.rap_shares(R, za, zb, conv)
        return x1 * adj((ta if sa > 0 else -ta, wa), (tb if sb > 0 else -tb, wb))


class ZBox(_LinearRule):
    """rap.input / z^B: the linear op that reads the input, bounded by the sample's min and max.

    ``stabilizer=None`` divides safely (rap); a number adds it to Z as the
    released LRP code does (1e-9).  ``conserve`` (rap): a unit whose Z is exactly 0
    (every tap at the bound its weight's sign points to) shares its R by the w^2
    rule over the pixels it reads; a unit that reads no pixel at all (all taps in
    the padding, or zero weights) spreads its R evenly over the input.
    """

    def __init__(self, stabilizer: float | None = None, conserve: bool = False):
        self.stabilizer = stabilizer
        self.conserve = conserve

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
        out = (x - low) * adj((s, wp)) + (x - high) * adj((s, wn))
        if self.conserve:
            square = wp * wp + wn * wn
            stuck = R * (z == 0)
            reach = fwd(x * 0 + 1, square)  # sum of w^2 over the taps that read a pixel (x * 0 + 1: ones, traceable)
            out = out + adj((bk.sdiv(stuck, reach), square)) + _spread(bk, bk.sample_sum(stuck * (reach == 0)), x)
        return [op.give(out)]


class Epsilon(_LinearRule):
    """LRP-epsilon: ``x * L^T(R / (z + e sign(z)))`` with the bias in z and sign(0) = 1.

    z is the op's output from the forward pass, not recomputed: near z = 0 a recomputation
    rounds differently and ``R / z`` amplifies that (docs/rules.md, lrp.eps)."""

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = epsilon

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        w = w.full
        z = ctx[op.output]
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
        pieces = [(self.positive_part(bk, op, x), wp, wn)]
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
