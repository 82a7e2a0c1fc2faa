"""rap's rules where the signs that RAP assumes do not hold: linear ops whose input may be negative
(the expand convolutions of a linear bottleneck, reading the residual stream) and linear ops whose
output reaches such an input with no rectifier on the way (the projections writing into it).

RAP's promoter/inhibitor split (A2) conserves each unit's relevance by giving
its promoters more than the unit holds and its inhibitors the difference with
the opposite sign.  On a signed input the two nearly cancel, so every such
layer multiplies the relevance mass (sum |R|) by about 2.5: 10^7 to 10^8 times
the logit after the expand convolutions of EfficientNet-Lite1, more than
float32 can cancel.  Issue 14 and EVALUATION.md give the measurements that
chose this rule over the flat, w^2, alpha1-beta0 and a bounded sign split.

At a projection the input is non-negative but the output is not rectified: a
unit may end negative, where RAP's promoters (the positive contributions) are
the ones working against the unit's value.  ``NetSignShare`` shares by the
contributions that push the unit the way it goes (EVALUATION.md: it keeps
fewer predictions than A2 after the most positive pixels are removed).
"""
from __future__ import annotations

from . import Rule
from .linear import RapHidden, _LinearRule, uniform_shift


class AbsShare(_LinearRule):
    """Shares by the contributions' size: ``R_i = sum_j |x_i w_ij| / sum_i' |x_i' w_i'j| * R_j``.

    RAP's relative influence without its sign, as rap shares at residual Adds and
    average pools (by |x|): the weights are non-negative and sum to one per unit,
    so the layer conserves the sum of R and never grows its mass.  A unit that
    sees only zeros or padding has nothing to share by; A2's uniform shift puts
    its relevance back, so the layer keeps the sum of R as A2 does.
    """

    def __call__(self, op, ctx, R):
        return [op.give(uniform_shift(ctx.bk, self.share(op, ctx, R), R, conserve=True))]  # conservation.hidden

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        size = abs(x)
        w_abs = w.pos - w.neg
        return size * adj((bk.sdiv(R, fwd(size, w_abs)), w_abs))


class NetSignShare(AbsShare):
    """Shares by the contributions with the sign of the unit's net input ``z_j = sum_i x_i w_ij``
    (no bias, as rap.hidden): ``R_i = sum_j (x_i w_ij sign z_j)+ / sum_i' (x_i' w_i'j sign z_j)+ * R_j``.

    LRP's z+ rule for a unit of either sign: on a unit that ends positive it is alpha1-beta0, on
    one that ends negative it gives the relevance to the inputs that made it negative.  The
    shares are non-negative and sum to one, so the mass never grows.  A unit with ``z_j = 0``
    (it sees only zeros, or its contributions cancel exactly) has nothing to share by: the shift
    puts its relevance back, as in AbsShare.
    """

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        xp, wp, wn = self.positive_part(bk, op, x), w.pos, w.neg
        if op.signed_input:
            up, down = fwd(xp, wp, wn)  # the positive contributions (>= 0) and the negative ones
            xn = bk.neg(x)
            up_n, down_n = fwd(xn, wn, wp)
            up, down = up + up_n, down + down_n
            z = up + down
        else:  # signs.py: a projection's input is usually >= 0; then z is the forward's (rap.hidden)
            z = self.linear_output(op, ctx)
            up = fwd(xp, wp)
            down = bk.neg(z - up)
        s_up, s_down = bk.sdiv(R * (z > 0), up), bk.sdiv(R * (z < 0), down)
        out = xp * adj((s_up, wp), (s_down, wn))
        if op.signed_input:
            out = out + xn * adj((s_up, wn), (s_down, wp))
        return out


class SignedProductA2(RapHidden):
    """rap.hidden with promoters and inhibitors told apart by the sign of the contribution
    ``c_ij = x_i w_ij``, whatever the sign of ``x_i``: promoters ``x+ W+`` and ``x- W-``, inhibitors
    ``x+ W-`` and ``x- W+``, in one P term (docs/rules.md, signed.floored).

    For an input with a floor (a SiLU's output, negative down to -0.28): it is RAP's rule for a
    ReLU's output where ``x >= 0``, and a slightly negative input that pushes a unit up is one of
    its promoters like any other.  Then the uniform shift, as rap.hidden.
    """

    def __init__(self):
        super().__init__(per_sign=False, conserve=True)

    def parts(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        xp, xn, wp, wn = bk.pos(x), bk.neg(x), w.pos, w.neg
        za = fwd(xp, wp) + fwd(xn, wn)  # x+ W+ + x- W- >= 0
        # the negative contributions x+ W- + x- W+ are L_W(x) less za: L_W(x) is read off the forward
        # pass, two convolutions fewer (clipped at 0 against rounding, as rap.hidden's)
        zb = bk.pos(za - self.linear_output(op, ctx))
        ta, tb = bk.rap_shares(R, za, zb, op.family == "conv")
        return [xp * adj((ta, wp), (-tb, wn)) + xn * adj((ta, wn), (-tb, wp))]


class FlooredShare(Rule):
    """rap at an input with a floor (signs.py, ``floored``), read as a rectified input: the rules
    rap uses behind a Relu, ``hidden`` (SignedProductA2) at most ops and ``projection`` (NetSignShare)
    where the output reaches a signed input with no rectifier and no floor on the way (the static
    ``writes_signed_stream``: an MBConv's projection, not its depthwise convolution, which writes into
    a SiLU)."""

    def __init__(self, hidden=None, projection=None):
        self.hidden = hidden if hidden is not None else SignedProductA2()
        self.projection = projection if projection is not None else NetSignShare()

    def __call__(self, op, ctx, R):
        return (self.projection if op.writes_signed_stream else self.hidden)(op, ctx, R)
