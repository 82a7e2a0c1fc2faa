"""rap's rule for linear ops whose input may be negative (linear bottlenecks, residual streams).

RAP's promoter/inhibitor split (A2) conserves each unit's relevance by giving
its promoters more than the unit holds and its inhibitors the difference with
the opposite sign.  On a signed input the two nearly cancel, so every such
layer multiplies the relevance mass (sum |R|) by about 2.5: 10^7 to 10^8 times
the logit after the expand convolutions of EfficientNet-Lite1, more than
float32 can cancel.  Issue 14 and EVALUATION.md give the measurements that
chose this rule over the flat, w^2, alpha1-beta0 and a bounded sign split.
"""
from __future__ import annotations

from .linear import RapHidden, _LinearRule


class AbsShare(_LinearRule):
    """Shares by the contributions' size: ``R_i = sum_j |x_i w_ij| / sum_i' |x_i' w_i'j| * R_j``.

    RAP's relative influence without its sign, as rap shares at residual Adds and
    average pools (by |x|): the weights are non-negative and sum to one per unit,
    so the layer conserves the sum of R and never grows its mass.  A unit that
    sees only zeros or padding has nothing to share by; A2's uniform shift puts
    its relevance back, so the layer keeps the sum of R as A2 does.
    """

    def __call__(self, op, ctx, R):
        return [op.give(RapHidden._shift(ctx.bk, self.share(op, ctx, R), R, conserve=True))]  # conservation.hidden

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        size = abs(x)
        w_abs = w.pos - w.neg
        return size * adj((bk.sdiv(R, fwd(size, w_abs)), w_abs))
