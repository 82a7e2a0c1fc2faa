"""Array backend: NumPy on the CPU, CuPy on a GPU, behind one small object.

Rules and op semantics are written once against ``Backend``; nothing above
this module imports numpy or cupy for arithmetic on relevance.
The sliding-window primitives here serve convolution and pooling of any
rank: a window *gather* (im2col as a strided view) and its adjoint, a
*scatter* that adds window columns back into the input (col2im).  Both loop
over kernel taps only, never over pixels or channels.
"""
from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass

import numpy as np


# Columns larger than this are built a few samples at a time so that a batch
# of large images does not need a multi-GB im2col buffer at once.
_COLUMN_BYTES_LIMIT = 512 * 2**20


@dataclass(frozen=True)
class WindowSpec:
    """Geometry of a sliding window over the trailing ``len(kernel)`` axes."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    in_shape: tuple[int, ...]  # spatial input shape
    out_shape: tuple[int, ...]  # spatial output shape

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Padded extent, grown where ceil_mode lets a window run past the pads."""
        return tuple(
            max(i + b + e, (o - 1) * s + (k - 1) * d + 1)
            for i, b, e, o, s, k, d in zip(
                self.in_shape, self.pads_begin, self.pads_end, self.out_shape,
                self.strides, self.kernel, self.dilations)
        )


def window_spec(in_shape, kernel, strides=None, dilations=None, pads=None,
                auto_pad="NOTSET", ceil_mode=False) -> WindowSpec:
    """Resolve ONNX window attributes (Conv, MaxPool, AveragePool) to a spec."""
    rank = len(kernel)
    kernel = tuple(int(k) for k in kernel)
    strides = tuple(int(s) for s in (strides or [1] * rank))
    dilations = tuple(int(d) for d in (dilations or [1] * rank))
    in_shape = tuple(int(i) for i in in_shape)
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = tuple(-(-i // s) for i, s in zip(in_shape, strides))
        total = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extent, in_shape)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        return WindowSpec(kernel, strides, dilations, tuple(begin), tuple(end), in_shape, out)
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    pads = list(pads or [0] * (2 * rank))
    begin, end = tuple(pads[:rank]), tuple(pads[rank:])
    out = []
    for i, b, e, x, s in zip(in_shape, begin, end, extent, strides):
        span = i + b + e - x
        if span < 0 and not ceil_mode:  # with it, one window overhangs (transformers' EfficientNet pools
            # with a kernel of its hidden width, 1280, whatever the map's size)
            raise ValueError(f"window of extent {x} does not fit input of size {i} with pads {b},{e}")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        # A ceil_mode window must start inside the input or its left pad.
        if ceil_mode and (o - 1) * s >= i + b:
            o -= 1
        out.append(o)
    return WindowSpec(kernel, strides, dilations, begin, end, in_shape, tuple(out))


class Backend:
    """One array module (``xp``) and the primitives the rules need."""

    free_batch = False  # arrays' batch size is real (a tracer's may be a placeholder for any size)

    def __init__(self, xp, name: str):
        self.xp = xp
        self.name = name
        self._constants = weakref.WeakKeyDictionary()  # owner -> {(key, dtype): arrays}

    # -- the only way between host and device --------------------------------
    def to_device(self, a, dtype=None):
        """A host array (or one of this backend's) as this backend's array in ``dtype``; no copy where
        it already is one."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        """This backend's array as a NumPy array."""
        return a

    def constant(self, owner, key, dtype, make):
        """``make()``'s host array (or tuple of arrays) on this backend in ``dtype``, made once per
        ``owner``, ``key`` and dtype and kept while the owner lives.  Weights, biases, gains and pool
        divisors cross to the device once, not at every batch inside the backward walk."""
        cached = self._constants.setdefault(owner, {})
        slot = (key, np.dtype(dtype).str)
        if slot not in cached:
            made = make()
            cached[slot] = (tuple(self.to_device(a, dtype) for a in made) if isinstance(made, tuple)
                            else self.to_device(made, dtype))
        return cached[slot]

    # -- elementwise helpers shared by many rules -------------------------
    def sdiv(self, a, b):
        """``a / b`` where ``b != 0``, else 0 (the safe division of docs/rules.md, notation)."""
        with np.errstate(divide="ignore", invalid="ignore"):  # the quotients where b == 0 are dropped
            quotient = a / b
        return self.xp.where(b != 0, quotient, 0)

    def pos(self, a):
        return self.xp.maximum(a, 0)

    def neg(self, a):
        return self.xp.minimum(a, 0)

    def rap_shares(self, R, za, zb, conv):
        """P() of docs/rules.md, rap.hidden: what ``L_wa^T`` and ``L_wb^T`` carry back (one kernel on a GPU)."""
        # Za, Zb >= 0, so Za + Zb != 0 wherever either is: the factor ``one`` of docs/rules.md is 1
        # wherever its quotient is kept, and is left out.
        share = self.sdiv(zb, za + zb)
        ta = self.sdiv(self.pos(R), za)
        tb = self.sdiv(R * share, zb)  # C2 + C2n: R+ and R- share a denominator and never overlap
        # C1n (docs/rules.md, rap.hidden): the released code sends R- through wa for dense ops, wb for convolutions.
        if conv:
            tb = tb + self.sdiv(self.neg(R), zb)
        else:
            ta = ta + self.sdiv(self.neg(R), za)
        return ta, tb

    def shift(self, C, delta):
        """``C - delta`` where C is nonzero (delta per sample)."""
        return C - (C != 0) * delta

    def unbroadcast(self, a, shape):
        """Sum ``a`` over the axes that broadcasting added to an array of ``shape``."""
        shape = tuple(shape)
        if a.shape == shape:
            return a
        lead = a.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and a.shape[lead + i] != 1)
        return a.sum(axis=axes, keepdims=True).reshape(shape)

    # -- index routing (ops/routing.py) -----------------------------------------
    def take(self, x, index):
        """``x (N, S)`` read at ``index (N or 1, K)``, positions within each row: ``(N, K)``."""
        if index.shape[0] == 1:
            return x[:, index[0]]
        return self.xp.take_along_axis(x, index, axis=1)

    def scatter_add(self, values, index, size):
        """Adjoint of ``take``: ``values (N, K)`` added at ``index`` into ``(N, size)``, zero elsewhere."""
        n = values.shape[0]
        flat = (index + self.xp.arange(n)[:, None] * size).reshape(-1)
        summed = self.xp.bincount(flat, weights=values.reshape(-1), minlength=n * size)
        return summed.reshape(n, size).astype(values.dtype)

    def sample_sum(self, a, keepdims=True):
        """Sum over every non-batch axis (S in docs/rules.md, notation)."""
        axes = tuple(range(1, a.ndim))
        return a.sum(axis=axes, keepdims=keepdims)

    # -- sliding windows ---------------------------------------------------
    def pad(self, x, spec: WindowSpec, value=0.0):
        """Pad the spatial axes of ``x`` to ``spec.padded_shape`` with ``value``."""
        rank = len(spec.kernel)
        widths = [(0, 0)] * (x.ndim - rank) + [
            (b, p - i - b) for b, p, i in zip(spec.pads_begin, spec.padded_shape, spec.in_shape)
        ]
        if all(w == (0, 0) for w in widths):
            return x
        return self.xp.pad(x, widths, mode="constant", constant_values=value)

    def windows(self, x, spec: WindowSpec, value=0.0):
        """Strided view ``(N, C, *kernel, *out)`` of the padded input."""
        xp_ = self.xp
        padded = xp_.ascontiguousarray(self.pad(x, spec, value))
        rank = len(spec.kernel)
        lead = padded.shape[:-rank]
        sp_strides = padded.strides[-rank:]
        shape = lead + spec.kernel + spec.out_shape
        strides = (padded.strides[:-rank]
                   + tuple(st * d for st, d in zip(sp_strides, spec.dilations))
                   + tuple(st * s for st, s in zip(sp_strides, spec.strides)))
        return xp_.lib.stride_tricks.as_strided(padded, shape=shape, strides=strides)

    def scatter(self, cols, spec: WindowSpec):
        """Adjoint of ``windows``: add ``(N, C, *kernel, *out)`` columns back
        into an input-shaped array (pads cropped)."""
        xp_ = self.xp
        rank = len(spec.kernel)
        lead = cols.shape[:-2 * rank]
        out = xp_.zeros(lead + spec.padded_shape, dtype=cols.dtype)
        for _, tap in self._taps(spec):
            out[(Ellipsis,) + self._reach(spec, tap)] += cols[(Ellipsis,) + tap + (slice(None),) * rank]
        return self._crop(out, spec)

    @staticmethod
    def _taps(spec):
        return list(enumerate(itertools.product(*(range(k) for k in spec.kernel))))

    @staticmethod
    def _reach(spec, tap):
        """The padded-input positions that kernel tap ``tap`` reads, one per output position."""
        return tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                     for t, d, o, s in zip(tap, spec.dilations, spec.out_shape, spec.strides))

    @staticmethod
    def _crop(padded, spec):
        return padded[(Ellipsis,) + tuple(slice(b, b + i) for b, i in zip(spec.pads_begin, spec.in_shape))]

    # -- convolution -------------------------------------------------------
    def _sample_chunks(self, n, per_sample_bytes):
        step = max(1, int(_COLUMN_BYTES_LIMIT // max(per_sample_bytes, 1)))
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]

    @staticmethod
    def _pointwise(spec: WindowSpec) -> bool:
        """A 1x1 convolution with stride 1 and no pads: a plain matmul, no im2col."""
        return spec.taps == 1 and all(s == 1 for s in spec.strides) and not any(spec.pads_begin + spec.pads_end)

    def conv(self, x, weights, spec: WindowSpec, groups: int):
        """Convolutions (cross-correlations) of ``x (N, C, *sp)`` with each ``w (O, C/g, *k)``, no bias.

        The weights share one im2col of ``x``: a list of weights gives a list of outputs.
        """
        xp_ = self.xp
        single = not isinstance(weights, (list, tuple))
        weights = [weights] if single else weights
        n, c = x.shape[:2]
        taps, length = spec.taps, math.prod(spec.out_shape)
        if groups > 1 and groups == c and not self._pointwise(spec):
            ys = self._depthwise(x, weights, spec, groups)
            return ys[0] if single else ys
        wgs = [w.reshape(groups, w.shape[0] // groups, -1) for w in weights]
        if self._pointwise(spec):
            cols = x.reshape(n, groups, c // groups, length)
            ys = [xp_.matmul(wg, cols) for wg in wgs]
        else:
            ys = [xp_.empty((n,) + wg.shape[:2] + (length,), dtype=x.dtype) for wg in wgs]
            for part in self._sample_chunks(n, c * taps * length * x.itemsize):
                cols = self.windows(x[part], spec).reshape(-1, groups, (c // groups) * taps, length)
                for y, wg in zip(ys, wgs):
                    y[part] = xp_.matmul(wg, cols)
        ys = [y.reshape((n, w.shape[0]) + spec.out_shape) for y, w in zip(ys, weights)]
        return ys[0] if single else ys

    def conv_adjoint(self, pairs, spec: WindowSpec, groups: int):
        """Transposed convolution, the adjoint of ``conv`` for input shape ``spec.in_shape``,
        summed over ``[(s, w), ...]``: the columns add up before one col2im."""
        xp_ = self.xp
        n = pairs[0][0].shape[0]
        c = pairs[0][1].shape[1] * groups
        taps, length = spec.taps, math.prod(spec.out_shape)
        terms = [(s.reshape(n, groups, s.shape[1] // groups, length),
                  w.reshape(groups, w.shape[0] // groups, -1).transpose(0, 2, 1)) for s, w in pairs]
        if self._pointwise(spec):
            return sum(xp_.matmul(wt, sg) for sg, wt in terms).reshape((n, c) + spec.in_shape)
        if groups > 1 and groups == c:
            return self._depthwise_adjoint(pairs, spec, groups)
        dtype = xp_.result_type(*(sg for sg, _ in terms))
        out = xp_.empty((n, c) + spec.in_shape, dtype=dtype)
        for part in self._sample_chunks(n, c * taps * length * out.itemsize):
            cols = xp_.matmul(terms[0][1], terms[0][0][part])
            for sg, wt in terms[1:]:
                cols += xp_.matmul(wt, sg[part])
            out[part] = self.scatter(cols.reshape((-1, c) + spec.kernel + spec.out_shape), spec)
        return out


    # Depthwise convolutions (one input channel per group, MobileNet/EfficientNet): im2col would
    # build K columns per channel only to multiply each by K numbers, so they run tap by tap.
    def _depthwise(self, x, weights, spec, groups):
        xp_ = self.xp
        n = x.shape[0]
        rank = len(spec.kernel)
        win = self.windows(x, spec)  # (N, C, *kernel, *out), a strided view: no copy
        ys = []
        for w in weights:
            m = w.shape[0] // groups  # depth multiplier
            wk = w.reshape((groups, m, spec.taps))
            y = xp_.zeros((n, groups, m) + spec.out_shape, dtype=x.dtype)
            for t, tap in self._taps(spec):
                y += wk[:, :, t].reshape((1, groups, m) + (1,) * rank) * win[(slice(None), slice(None)) + tap][:, :, None]
            ys.append(y.reshape((n, groups * m) + spec.out_shape))
        return ys

    def _depthwise_adjoint(self, pairs, spec, groups):
        xp_ = self.xp
        n = pairs[0][0].shape[0]
        rank = len(spec.kernel)
        dtype = xp_.result_type(*(s for s, _ in pairs))
        out = xp_.zeros((n, groups) + spec.padded_shape, dtype=dtype)
        for s, w in pairs:
            m = w.shape[0] // groups
            sg = s.reshape((n, groups, m) + spec.out_shape)
            wk = w.reshape((groups, m, spec.taps))
            for t, tap in self._taps(spec):
                share = sg * wk[:, :, t].reshape((1, groups, m) + (1,) * rank)
                out[(Ellipsis,) + self._reach(spec, tap)] += share[:, :, 0] if m == 1 else share.sum(axis=2)
        return self._crop(out, spec)


_NUMPY = Backend(np, "cpu")


def numpy_backend() -> Backend:
    """The host backend (the GPU's lives in gpu.py; device.py chooses between them)."""
    return _NUMPY
