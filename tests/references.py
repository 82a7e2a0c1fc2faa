"""Independent float64 NumPy references for the tests: no onnxrap code.

- Geometry: ONNX pads (``resolve_pads``), the taps a window reads, the output size.
- Convolution (any rank, groups, strides, dilations, pads) and its transpose, one
  kernel tap at a time: the one convolution reference every test shares.
- Pools, one window at a time.
- The rules of docs/rules.md (rap.head, rap.hidden, rap.input, lrp.ab) transcribed
  from the text, on one sample, for a dense op (``DenseMap``) or a Conv (``ConvMap``).
"""
from __future__ import annotations

import itertools

import numpy as np


# -- geometry ------------------------------------------------------------------

def resolve_pads(in_shape, kernel, strides, dilations, pads, auto_pad):
    """Begin and end pads per axis, as the ONNX operator definitions give them."""
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i, k, s, d in zip(in_shape, kernel, strides, dilations):
            out = -(-i // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":  # the extra pad goes at the end
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * rank, [0] * rank
    return list(pads[:rank]), list(pads[rank:])


def window_taps(at, kernel, strides, dilations, begin, in_shape):
    """Input indices that the window at output position ``at`` reads inside the input,
    with their taps, in row-major tap order."""
    for tap in np.ndindex(*kernel):
        idx = tuple(p * s + t * d - b for p, s, t, d, b in zip(at, strides, tap, dilations, begin))
        if all(0 <= q < n for q, n in zip(idx, in_shape)):
            yield tap, idx


def conv_out(i, k, s, d, pb, pe):
    """ONNX Conv output size; 0 where the window does not fit."""
    span = i + pb + pe - ((k - 1) * d + 1)
    return span // s + 1 if span >= 0 else 0


# -- convolution -----------------------------------------------------------------

def np_conv(x, w, strides, dilations, pb, pe, groups):
    """Cross-correlation in float64, one kernel tap at a time."""
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(pb, pe)))
    out = tuple(conv_out(i, k, s, d, b, e) for i, k, s, d, b, e in zip(x.shape[2:], kernel, strides, dilations, pb, pe))
    y = np.zeros((n, o) + out)
    for tap in itertools.product(*(range(k) for k in kernel)):
        region = tuple(slice(t * d, t * d + (q - 1) * s + 1, s) for t, d, q, s in zip(tap, dilations, out, strides))
        patch = xp[(Ellipsis,) + region]
        for g in range(groups):
            wt = w[(slice(g * og, (g + 1) * og), slice(None)) + tap]
            y[:, g * og:(g + 1) * og] += np.einsum("oc,nc...->no...", wt, patch[:, g * cg:(g + 1) * cg])
    return y


def np_conv_transpose(s, w, in_shape, strides, dilations, pb, groups):
    """The adjoint of ``np_conv`` for an input of spatial shape ``in_shape``, float64."""
    n, o = s.shape[:2]
    c = w.shape[1] * groups
    cg, og = c // groups, o // groups
    kernel, out = w.shape[2:], s.shape[2:]
    extent = tuple(max(b + i, (q - 1) * st + (k - 1) * d + 1)
                   for b, i, q, st, k, d in zip(pb, in_shape, out, strides, kernel, dilations))
    xp = np.zeros((n, c) + extent)
    for tap in itertools.product(*(range(k) for k in kernel)):
        region = tuple(slice(t * d, t * d + (q - 1) * st + 1, st)
                       for t, d, q, st in zip(tap, dilations, out, strides))
        for g in range(groups):
            wt = w[(slice(g * og, (g + 1) * og), slice(None)) + tap]
            view = xp[:, g * cg:(g + 1) * cg][(Ellipsis,) + region]
            view += np.einsum("oc,no...->nc...", wt, s[:, g * og:(g + 1) * og])
    return xp[(Ellipsis,) + tuple(slice(b, b + i) for b, i in zip(pb, in_shape))]


# -- pools -----------------------------------------------------------------------

def naive_max_route(x, grad, out_shape, kernel, strides, dilations, begin):
    """Max pool and its gradient: each window's grad goes to its first arg-max."""
    y = np.full(x.shape[:2] + tuple(out_shape), -np.inf)
    routed = np.zeros(x.shape)
    for nc in np.ndindex(*x.shape[:2]):
        for at in np.ndindex(*out_shape):
            best = None
            for _, idx in window_taps(at, kernel, strides, dilations, begin, x.shape[2:]):
                if best is None or x[nc + idx] > x[nc + best]:
                    best = idx
            y[nc + at] = x[nc + best]
            routed[nc + best] += grad[nc + at]
    return y, routed


def naive_window_share(a, R, kernel, strides, begin):
    """``a * pool^T(sdiv(R, sumpool(a)))``, one window at a time."""
    out = np.zeros(a.shape)
    dil = (1,) * len(kernel)
    for nc in np.ndindex(*a.shape[:2]):
        for at in np.ndindex(*R.shape[2:]):
            idxs = [idx for _, idx in window_taps(at, kernel, strides, dil, begin, a.shape[2:])]
            total = sum(a[nc + idx] for idx in idxs)
            if total != 0:
                for idx in idxs:
                    out[nc + idx] += a[nc + idx] * R[nc + at] / total
    return out


# -- the rules of docs/rules.md ------------------------------------------------------

def sdiv(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    out = np.zeros(a.shape)
    nz = b != 0
    out[nz] = a[nz] / b[nz]
    return out


def pos(a):
    return np.maximum(a, 0.0)


def neg(a):
    return np.minimum(a, 0.0)


class DenseMap:
    """``L_W(x) = x @ W`` for one sample, ``W`` of shape (in, out); ``L_W^T(s) = W @ s``."""

    def __init__(self, W):
        self.W = np.asarray(W, dtype=float)

    def L(self, x, w):
        return x @ w

    def LT(self, s, w):
        return w @ s


class ConvMap:
    """A convolution on one sample, through ``np_conv`` and its transpose."""

    def __init__(self, W, in_shape, strides=None, dilations=None, pads=None, groups=1):
        self.W = np.asarray(W, dtype=float)
        rank = self.W.ndim - 2
        self.in_shape = tuple(in_shape)
        self.strides = strides or (1,) * rank
        self.dilations = dilations or (1,) * rank
        self.begin, self.end = resolve_pads(in_shape, self.W.shape[2:], self.strides, self.dilations,
                                            pads, "NOTSET")
        self.groups = groups

    def L(self, x, w):
        return np_conv(x[None], w, self.strides, self.dilations, self.begin, self.end, self.groups)[0]

    def LT(self, s, w):
        return np_conv_transpose(s[None], w, self.in_shape, self.strides, self.dilations, self.begin,
                            self.groups)[0]


def _rap_first_out(C, score, conserve):
    """|C| rescaled to S(C), or with ``conserve`` (rap, docs/rules.md conservation.head) to ``score``,
    spread evenly where C is zero everywhere."""
    magnitude = np.abs(C).sum()
    if not conserve:
        return np.abs(C) * sdiv(C.sum(), magnitude)
    return np.abs(C) * sdiv(score, magnitude) + (score / C.size if magnitude == 0 else 0.0)


def ref_rap_first_onehot(x, w_t, b_t, conserve=False):
    """rap.head with a one-hot seed: ``w_t`` is the weight row of the target, ``b_t`` its bias."""
    xp, xn, wp, wn = pos(x), neg(x), pos(w_t), neg(w_t)
    Cpp, Cpn, Cnp, Cnn = xp * wp, xp * wn, xn * wp, xn * wn
    Pos, Neg = (Cpp + Cnn).sum(), (Cpn + Cnp).sum()
    bp = b_t * sdiv(Pos, Pos + Neg)
    bn = b_t * sdiv(Neg, Pos + Neg)
    C = Cpp + Cpn + Cnp + Cnn + xp * wp * sdiv(bp, Cpp.sum()) + xp * wn * sdiv(bn, Cpn.sum())
    return _rap_first_out(C, (x * w_t).sum() + b_t, conserve)


def ref_rap_first(x, lin, b, R, conserve=False):
    """rap.head for an arbitrary arriving R (per output unit j, weighted by R_j)."""
    W = lin.W
    Wp, Wn = pos(W), neg(W)
    xp, xn = pos(x), neg(x)
    Zpp, Zpn, Znp, Znn = lin.L(xp, Wp), lin.L(xp, Wn), lin.L(xn, Wp), lin.L(xn, Wn)
    Cpp = xp * lin.LT(R * (Zpp != 0), Wp)
    Cpn = xp * lin.LT(R * (Zpn != 0), Wn)
    Cnp = xn * lin.LT(R * (Znp != 0), Wp)
    Cnn = xn * lin.LT(R * (Znn != 0), Wn)
    Pos, Neg = Zpp + Znn, Zpn + Znp
    bias_p = b * R * sdiv(Pos, Pos + Neg)
    bias_n = b * R * sdiv(Neg, Pos + Neg)
    C = Cpp + Cpn + Cnp + Cnn + xp * lin.LT(sdiv(bias_p, Zpp), Wp) + xp * lin.LT(sdiv(bias_n, Zpn), Wn)
    return _rap_first_out(C, (R * (lin.L(x, W) + b)).sum(), conserve)


def ref_rap_hidden(x, lin, R, conv, per_sign):
    """rap.hidden: P for x+ and x-, then the uniform shift (once, or per P for rap-reference)."""
    M = (R != 0).astype(float)
    Wp, Wn = pos(lin.W), neg(lin.W)
    Rp, Rn = pos(R), neg(R)

    def P(x1, wa, sa, wb, sb):
        Za = sa * M * lin.L(x1, wa)
        Zb = sb * M * lin.L(x1, wb)
        one = (Za + Zb) != 0
        frac = sdiv(Zb, Za + Zb)
        C1 = x1 * sa * lin.LT(sdiv(Rp * one, Za), wa)
        C2 = x1 * sb * lin.LT(sdiv(Rp * frac, Zb), wb)
        C2n = x1 * sb * lin.LT(sdiv(Rn * frac, Zb), wb)
        if conv:
            C1n = x1 * sb * lin.LT(sdiv(Rn * one, Zb), wb)
        else:
            C1n = x1 * sa * lin.LT(sdiv(Rn * one, Za), wa)
        return C1 + C2 + C1n + C2n

    def shift(C):
        nz = C != 0
        return C - nz * sdiv(C.sum() - R.sum(), nz.sum())

    parts = [P(pos(x), Wp, 1.0, Wn, -1.0), P(neg(x), Wp, -1.0, Wn, 1.0)]
    if per_sign:
        return shift(parts[0]) + shift(parts[1])
    return shift(parts[0] + parts[1])


def ref_zbox(x, lin, R, stabilizer=None):
    """rap.input: the z^B rule with the sample's min and max as bounds."""
    W = lin.W
    Wp, Wn = pos(W), neg(W)
    lo, hi = x.min(), x.max()
    ones = np.ones_like(x)
    Z = lin.L(x, W) - lin.L(lo * ones, Wp) - lin.L(hi * ones, Wn)
    s = sdiv(R, Z) if stabilizer is None else R / (Z + stabilizer)
    return x * lin.LT(s, W) - lo * lin.LT(s, Wp) - hi * lin.LT(s, Wn)


def ref_alpha_beta(x, lin, R, alpha):
    """lrp.ab: LRP alpha-beta with beta = alpha - 1."""
    Wp, Wn = pos(lin.W), neg(lin.W)
    xp, xn = pos(x), neg(x)
    act = xp * lin.LT(sdiv(R, lin.L(xp, Wp)), Wp) + xn * lin.LT(sdiv(R, lin.L(xn, Wn)), Wn)
    inh = xp * lin.LT(sdiv(R, lin.L(xp, Wn)), Wn) + xn * lin.LT(sdiv(R, lin.L(xn, Wp)), Wp)
    return alpha * act - (alpha - 1) * inh


def relu(a):
    return np.maximum(a, 0.0)


def naive_avg_pool(x, out_shape, kernel, strides, begin):
    """AveragePool with count_include_pad=0: the mean of the window's elements inside the input."""
    y = np.zeros(x.shape[:2] + tuple(out_shape))
    dil = (1,) * len(kernel)
    for nc in np.ndindex(*x.shape[:2]):
        for p in np.ndindex(*out_shape):
            vals = [x[nc + idx] for _, idx in window_taps(p, kernel, strides, dil, begin, x.shape[2:])]
            y[nc + p] = sum(vals) / len(vals)
    return y
