"""Linear ops: Gemm, MatMul with a constant weight, Conv of any rank and groups.

All expose the same interface to the rules: ``L_W(x)`` as ``apply`` (a list
of weights gives a list of outputs, sharing the work on x), the summed
adjoint ``sum_k L_Wk^T(s_k)`` as ``adjoint`` over ``[(s, W), ...]``, the
weight and its positive and negative parts, and the bias as a map over the
output.
"""
from __future__ import annotations

import numpy as np

from ..backend import window_spec
from . import Op, Unsupported, register


class Weights:
    """A weight as its positive and negative parts; ``full`` (W = W+ + W-, exact) is made on demand,
    since the RAP rules never need it and it would be a third copy of a large model's weights."""

    def __init__(self, pos, neg):
        self.pos = pos
        self.neg = neg

    @property
    def full(self):
        return self.pos + self.neg


class Linear(Op):
    kind = "linear"
    signed_input = True  # signs.py: False where the data input is provably >= 0 (no x- part)
    writes_signed_stream = False  # signs.py: True where the output reaches a signed input past no rectifier or floor

    def __init__(self, name, op_type, inputs, output, weight, bias):
        super().__init__(name, op_type, inputs, output)
        weight = np.asarray(weight)
        # Kept in the model's own float type; other dtypes and devices are the backend's cached copies.
        self.master = Weights(np.maximum(weight, 0), np.minimum(weight, 0))
        self.bias_values = bias  # NumPy float64, or None

    def weights(self, bk, dtype) -> Weights:
        """W+ and W- on the backend in ``dtype`` (no copy where they already are)."""
        return Weights(*bk.constant(self, "weights", dtype, lambda: (self.master.pos, self.master.neg)))

    def weights_in(self, ctx, dtype) -> Weights:
        """The weights the rules share relevance by in ``ctx``: the model's (attention's are data)."""
        return self.weights(ctx.bk, dtype)

    def absorb_bias(self, bias, output):
        """Fold a following Add of a constant into this op (MatMul + Add = Gemm)."""
        self.bias_values = bias if self.bias_values is None else self.bias_values + bias
        self.output = output

    def take(self, x):
        """The op's input as the linear map sees it (Gemm's transA)."""
        return x

    def give(self, r):
        """Relevance for the data input, from relevance shaped like ``take``'s result."""
        return r

    def forward(self, bk, ctx):
        x = self.take(ctx[self.inputs[0]])
        y = self.apply(bk, x, self.weights(bk, x.dtype).full)
        b = self.bias(bk, x.dtype, y.shape)
        return y if b is None else y + b

    def vjp(self, bk, ctx, grad):
        x = self.take(ctx[self.inputs[0]])
        return [self.give(self.adjoint(bk, [(grad, self.weights(bk, grad.dtype).full)], x.shape))]


class Dense(Linear):
    """``x @ W (+ b)`` with ``W`` of shape (K, M) acting on the last axis."""

    family = "dense"

    def __init__(self, *args, trans_input=False, **kw):
        super().__init__(*args, **kw)
        self.trans_input = trans_input

    def take(self, x):
        return x.T if self.trans_input else x

    def give(self, r):
        return r.T if self.trans_input else r

    def apply(self, bk, x, w):
        return [x @ wi for wi in w] if isinstance(w, list) else x @ w

    def adjoint(self, bk, pairs, x_shape):
        return sum(s @ w.T for s, w in pairs)

    def bias(self, bk, dtype, out_shape):
        # Gemm's C and an absorbed Add broadcast against the output as they are.
        return None if self.bias_values is None else bk.constant(self, "bias", dtype, lambda: self.bias_values)


def _float(a):
    """A weight in its own float type (float16 and integer weights widen to float32)."""
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


def _weight_matrix(v):
    """Input 1 of a Gemm or MatMul whose input 0 is the data: a constant matrix, in its float type."""
    if not v.is_data(0) or v.is_data(1):
        raise Unsupported("only data @ constant weight is supported")
    w = _float(v.const(1))
    if w.ndim != 2:
        raise Unsupported("weight must be a matrix")
    return w


@register("Gemm")
def parse_gemm(v):
    b = _weight_matrix(v)
    alpha = v.attr("alpha", 1.0)
    w = b.T if v.attr("transB", 0) else b
    w = w if alpha == 1.0 else alpha * w.astype(np.float64)  # exact, for the float64 checks
    bias = None
    if v.has_input(2):
        bias = v.attr("beta", 1.0) * v.const(2).astype(np.float64)
    return Dense(v.name, v.op_type, [v.node.input[0]], v.node.output[0], w, bias,
                 trans_input=bool(v.attr("transA", 0)))


@register("MatMul")
def _matmul(v):
    if v.is_data(0) and v.is_data(1):
        from .attention import data_matmul

        return data_matmul(v)
    return Dense(v.name, v.op_type, [v.node.input[0]], v.node.output[0], _weight_matrix(v), None)


class Conv(Linear):
    """N-D convolution with groups, strides, dilations and pads (auto_pad resolved per input shape)."""

    family = "conv"

    def __init__(self, *args, groups, kernel, strides, dilations, pads, auto_pad, **kw):
        super().__init__(*args, **kw)
        self.groups = groups
        self.kernel = kernel
        self.strides = strides
        self.dilations = dilations
        self.pads = list(pads)
        self.auto_pad = auto_pad
        self._specs = {}

    def absorb_pad(self, pads, source):
        """Fold a zero Pad that feeds this Conv into its pads (spatial axes only)."""
        self.pads = [p + q for p, q in zip(self.pads, pads)]  # both begins then ends
        self.auto_pad = "NOTSET"  # VALID with pads is NOTSET; the graph never folds into SAME_*
        self.inputs = [source]

    def spec(self, x_shape):
        key = tuple(x_shape[2:])
        if key not in self._specs:
            self._specs[key] = window_spec(key, self.kernel, self.strides, self.dilations,
                                           self.pads, self.auto_pad)
        return self._specs[key]

    def apply(self, bk, x, w):
        return bk.conv(x, w, self.spec(x.shape), self.groups)

    def adjoint(self, bk, pairs, x_shape):
        return bk.conv_adjoint(pairs, self.spec(x_shape), self.groups)

    def bias(self, bk, dtype, out_shape):
        if self.bias_values is None:
            return None
        shape = (-1,) + (1,) * (len(out_shape) - 2)
        return bk.constant(self, ("bias", shape), dtype, lambda: np.reshape(self.bias_values, shape))


@register("Conv")
def parse_conv(v):
    if not v.is_data(0) or v.is_data(1):
        raise Unsupported("the weight must be a constant")
    w = _float(v.const(1))
    rank = w.ndim - 2
    if rank < 1:
        raise Unsupported("weight must have rank 3 or more")
    auto_pad = v.attr("auto_pad", "NOTSET")
    pads = v.attr("pads") or [0] * (2 * rank)
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad {auto_pad}")
    if auto_pad != "NOTSET" and any(pads):
        raise Unsupported("auto_pad together with pads")
    bias = v.const(2).astype(np.float64) if v.has_input(2) else None
    return Conv(v.name, v.op_type, [v.node.input[0]], v.node.output[0], w, bias,
                groups=int(v.attr("group", 1)), kernel=tuple(w.shape[2:]),
                strides=v.attr("strides"), dilations=v.attr("dilations"), pads=pads,
                auto_pad=auto_pad)
