"""The rule of LayerNormalization, InstanceNormalization and GroupNormalization (docs/rules.md,
layernorm): sigma held constant, as Ali et al. (ICML 2022) do for transformers, so the op is the linear
centring ``c_j = sum_i x_i (d_ij - 1/N)`` (within one group) followed by a per-element scale and shift;
relevance passes the scale and shift unchanged (as rap's BatchNormalization rule) and is shared back over
the centring."""
from __future__ import annotations

from . import Rule
from .linear import uniform_shift


class CenteringShare(Rule):
    """Shares each output's relevance over the inputs of its group by their contributions
    ``c_ij = x_i (d_ij - 1/N)`` to the centred value: by ``c_ij`` itself (``absolute=False``: the z-rule,
    Ali et al.'s LN-rule) or by ``|c_ij|`` (``absolute=True``: rap, bounded as its shares at Adds).

    The z-rule's shares of output j sum to 1 wherever ``x_j != mean``; the size shares wherever the group
    is not all zero.  ``conserve`` (rap): what those lose is put back by rap.hidden's uniform shift.
    """

    def __init__(self, absolute: bool, conserve: bool = False):
        self.absolute = absolute
        self.conserve = conserve

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        x = ctx[op.inputs[0]]
        g = op.grouped(x)
        r = R.reshape(g.shape)
        n = g.shape[-1]
        if self.absolute:
            # sum_i |c_ij| = |x_j| (1 - 2/N) + sum|x| / N; R_i = |x_i| (t_i (1 - 2/N) + sum t / N)
            size = abs(g)
            t = bk.sdiv(r, size * (1 - 2 / n) + size.sum(axis=-1, keepdims=True) / n)
            out = size * (t * (1 - 2 / n) + t.sum(axis=-1, keepdims=True) / n)
        else:
            # sum_i c_ij = x_j - mean; R_i = x_i (s_i - mean s)
            s = bk.sdiv(r, g - op.mean(g))
            out = g * (s - op.mean(s))
        out = out.reshape(x.shape)
        return [uniform_shift(bk, out, R, conserve=True) if self.conserve else out]
