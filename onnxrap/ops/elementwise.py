"""Elementwise ops: activations, BatchNormalization, arithmetic with a constant, gates (Mul of data by a
non-negative bounded factor), identities."""
from __future__ import annotations

import math

import numpy as np
import onnx

from . import Op, Unsupported, register


class Activation(Op):
    """An elementwise activation ``fn`` with derivative ``slope``, both ``(xp, v, **params) -> array``.

    ``bounds``: the range of ``fn`` over every input; ``keeps_nonnegative``: ``fn(v) >= 0`` wherever
    ``v >= 0``; ``monotone``: ``fn`` never decreases, so it maps its input's bounds to its output's (signs.py
    reads all three).  ``params``: its constants; an array one crosses to the device once.
    """

    kind = "activation"

    def __init__(self, name, op_type, inputs, output, fn, slope, bounds=(-np.inf, np.inf), keeps_nonnegative=True,
                 params=None, monotone=False):
        super().__init__(name, op_type, inputs, output)
        self.fn = fn
        self.slope = slope
        self.bounds = bounds
        self.keeps_nonnegative = keeps_nonnegative
        self.monotone = monotone
        self.params = dict(params or {})

    def _params(self, bk, dtype):
        return {k: bk.constant(self, k, dtype, lambda p=p: p) if isinstance(p, np.ndarray) else p
                for k, p in self.params.items()}

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        return self.fn(bk.xp, x, **self._params(bk, x.dtype))

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        return [grad * self.slope(bk.xp, x, **self._params(bk, x.dtype))]


def relu(name, op_type, x, y):
    return Activation(name, op_type, [x], y, lambda xp, v: xp.maximum(v, 0), lambda xp, v: v > 0,
                      (0.0, np.inf))


def leaky_relu(name, op_type, x, y, alpha):
    """LeakyRelu, and PRelu with its constant slope ``alpha`` (an array broadcasting against x)."""
    return Activation(name, op_type, [x], y, lambda xp, v, alpha: xp.where(v > 0, v, alpha * v),
                      lambda xp, v, alpha: xp.where(v > 0, 1.0, alpha).astype(v.dtype), params={"alpha": alpha})


def clip(name, op_type, x, y, lo, hi):
    return Activation(name, op_type, [x], y, lambda xp, v: xp.clip(v, lo, hi),
                      lambda xp, v: (v > lo) & (v < hi), (lo, hi), keeps_nonnegative=hi >= 0)


@register("Relu")
def _relu(v):
    return relu(v.name, v.op_type, v.node.input[0], v.node.output[0])


@register("LeakyRelu")
def _leaky(v):
    return leaky_relu(v.name, v.op_type, v.node.input[0], v.node.output[0], float(v.attr("alpha", 0.01)))


@register("PRelu")
def _prelu(v):
    if not v.is_data(0) or v.is_data(1):
        raise Unsupported("PRelu's slope must be a constant")
    return leaky_relu(v.name, v.op_type, v.node.input[0], v.node.output[0], v.const(1).astype(np.float64))


@register("Clip")
def _clip(v):
    if v.has_input(1) or v.has_input(2):  # opset 11 moved min and max to inputs
        lo = float(v.const(1)) if v.has_input(1) else -np.inf
        hi = float(v.const(2)) if v.has_input(2) else np.inf
    else:
        lo, hi = float(v.attr("min", -np.inf)), float(v.attr("max", np.inf))
    return clip(v.name, v.op_type, v.node.input[0], v.node.output[0], lo, hi)


# Smooth activations, written as ONNX Runtime computes them: exp only of -|v| or of v <= 0, so no
# branch overflows (a where() evaluates both), and no 1 - s that float32 would cancel.
def _sigmoid(xp, v):
    e = xp.exp(-abs(v))
    return xp.where(v >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_slope(xp, v):
    """s(v) (1 - s(v)) = s(v) s(-v), from e = exp(-|v|)."""
    e = xp.exp(-abs(v))
    return e / ((1 + e) * (1 + e))


def _softplus(xp, v):
    return xp.maximum(v, 0) + xp.log(1 + xp.exp(-abs(v)))


def _hard_sigmoid(xp, v, alpha, beta):
    return xp.clip(alpha * v + beta, 0.0, 1.0)


def _hard_sigmoid_slope(xp, v, alpha, beta):
    z = alpha * v + beta
    return alpha * ((z > 0) & (z < 1)).astype(v.dtype)


def _hard_swish(xp, v):
    return v * _hard_sigmoid(xp, v, 1 / 6, 0.5)


def _hard_swish_slope(xp, v):
    return _hard_sigmoid(xp, v, 1 / 6, 0.5) + v * _hard_sigmoid_slope(xp, v, 1 / 6, 0.5)


def _elu(xp, v, alpha, gamma):
    return gamma * xp.where(v > 0, v, alpha * (xp.exp(xp.minimum(v, 0)) - 1))


def _elu_slope(xp, v, alpha, gamma):
    return gamma * xp.where(v > 0, 1.0, alpha * xp.exp(xp.minimum(v, 0)))


def _swish(xp, v, alpha):
    return v * _sigmoid(xp, alpha * v)


def _swish_slope(xp, v, alpha):
    return _sigmoid(xp, alpha * v) + alpha * v * _sigmoid_slope(xp, alpha * v)


def _mish(xp, v):
    return v * xp.tanh(_softplus(xp, v))


def _mish_slope(xp, v):
    t = xp.tanh(_softplus(xp, v))
    return t + v * (1 - t * t) * _sigmoid(xp, v)


def _tanh_slope(xp, v):
    """1 - tanh(v)^2 = 4 e / (1 + e)^2 with e = exp(-2|v|)."""
    e = xp.exp(-2 * abs(v))
    return 4 * e / ((1 + e) * (1 + e))


_ERF = np.vectorize(math.erf, otypes=[np.float64])


def numpy_erf(v):
    """NumPy has no erf: the standard library's, element by element (GELU's tensors are small beside a
    convolution's work)."""
    return _ERF(v).astype(np.result_type(v))


def _erf(xp, v):
    if xp is np:
        return numpy_erf(v)
    try:
        return xp.erf(v)  # the tracer's Erf node
    except AttributeError:  # CuPy keeps it with SciPy's special functions
        from cupyx.scipy.special import erf

        return erf(v)


def _erf_slope(xp, v):
    return (2 / math.sqrt(math.pi)) * xp.exp(-(v * v))


def _gelu(xp, v):
    return 0.5 * v * (1 + _erf(xp, v * (1 / math.sqrt(2))))


def _gelu_slope(xp, v):
    """Phi(v) + v phi(v)."""
    return 0.5 * (1 + _erf(xp, v * (1 / math.sqrt(2)))) + v * (1 / math.sqrt(2 * math.pi)) * xp.exp(-0.5 * (v * v))


_GELU_TANH = (math.sqrt(2 / math.pi), 0.044715)


def _gelu_tanh(xp, v):
    k, c = _GELU_TANH
    return 0.5 * v * (1 + xp.tanh(k * (v + c * v * v * v)))


def _gelu_tanh_slope(xp, v):
    k, c = _GELU_TANH
    u = k * (v + c * v * v * v)
    return 0.5 * (1 + xp.tanh(u)) + 0.5 * v * _tanh_slope(xp, u) * k * (1 + 3 * c * v * v)


_SELU = (1.67326319217681884765625, 1.05070102214050292968750)  # ONNX's default alpha and gamma
_SWISH_LOW = -0.2784645427610738  # min of v * sigmoid(v), at v = -1.2785
_MISH_LOW = -0.30884303743405  # min of v * tanh(softplus(v)), at v = -1.1924
_GELU_LOW = {"none": -0.169971208, "tanh": -0.170040751}  # min of v Phi(v) (at v = -0.7518), rounded down


def smooth(name, t, x, y, attrs):
    """The smooth activation of ONNX op type ``t`` with its ONNX attributes ``attrs`` (a dict)."""
    if t == "Sigmoid":
        return Activation(name, t, [x], y, _sigmoid, _sigmoid_slope, (0.0, 1.0))
    if t == "Tanh":
        return Activation(name, t, [x], y, lambda xp, u: xp.tanh(u), _tanh_slope, (-1.0, 1.0))
    if t == "Softplus":
        return Activation(name, t, [x], y, _softplus, _sigmoid, (0.0, np.inf))
    if t == "Erf":  # GELU as exported before opset 20: 0.5 x (1 + Erf(x / sqrt 2)), a gate in [0, 2]
        return Activation(name, t, [x], y, _erf, _erf_slope, (-1.0, 1.0), monotone=True)
    if t == "Gelu":
        approximate = attrs.get("approximate", "none")
        if approximate not in _GELU_LOW:
            raise Unsupported(f"approximate={approximate!r}: only none and tanh")
        fn, slope = (_gelu, _gelu_slope) if approximate == "none" else (_gelu_tanh, _gelu_tanh_slope)
        return Activation(name, t, [x], y, fn, slope, (_GELU_LOW[approximate], np.inf))
    if t == "Mish":
        return Activation(name, t, [x], y, _mish, _mish_slope, (_MISH_LOW, np.inf))
    if t == "HardSigmoid":
        params = {"alpha": float(attrs.get("alpha", 0.2)), "beta": float(attrs.get("beta", 0.5))}
        return Activation(name, t, [x], y, _hard_sigmoid, _hard_sigmoid_slope, (0.0, 1.0), params=params)
    if t == "HardSwish":  # x * HardSigmoid(x) with alpha 1/6, beta 1/2; least value -3/8 at x = -3/2
        return Activation(name, t, [x], y, _hard_swish, _hard_swish_slope, (-0.375, np.inf))
    if t in ("Swish", "QuickGelu"):  # ONNX Runtime fuses x * Sigmoid(x) into QuickGelu, alpha 1
        alpha = float(attrs.get("alpha", 1.0 if t == "Swish" else 1.702))
        if alpha <= 0:
            raise Unsupported(f"alpha={alpha}: only a positive alpha keeps x * sigmoid(alpha x) a gated signal")
        return Activation(name, t, [x], y, _swish, _swish_slope, (_SWISH_LOW / alpha, np.inf), params={"alpha": alpha})
    alpha, gamma = (float(attrs.get("alpha", 1.0)), 1.0) if t == "Elu" else \
        (float(attrs.get("alpha", _SELU[0])), float(attrs.get("gamma", _SELU[1])))
    if alpha < 0 or gamma <= 0:
        raise Unsupported(f"alpha={alpha}, gamma={gamma}: only alpha >= 0 and gamma > 0")
    return Activation(name, t, [x], y, _elu, _elu_slope, (-alpha * gamma, np.inf),
                      params={"alpha": alpha, "gamma": gamma})


@register("Sigmoid", "Tanh", "Erf", "Gelu", "Softplus", "Mish", "HardSigmoid", "HardSwish", "Elu", "Selu", "Swish")
@register("QuickGelu", domain="com.microsoft")
def _smooth(v):
    return smooth(v.name, v.op_type, v.node.input[0], v.node.output[0], v.attrs)


@register("Pow")
def _pow(v):
    """``x ** c`` with a constant scalar ``c > 0`` (PoolFormerV2's StarReLU squares a Relu's output): an
    activation.  An even power is non-negative, not monotone; an odd one and a fractional one (defined for
    x >= 0, as in ONNX Runtime) never decrease."""
    if not v.is_data(0) or v.is_data(1):
        raise Unsupported("a power with a data exponent")
    c = np.asarray(v.const(1), dtype=np.float64)
    if c.size != 1 or not float(c.reshape(())) > 0:
        raise Unsupported("an exponent that is not one positive number")
    c = float(c.reshape(()))
    even = c.is_integer() and int(c) % 2 == 0
    return Activation(v.name, v.op_type, [v.node.input[0]], v.node.output[0], lambda xp, u: u ** c,
                      lambda xp, u: c * u ** (c - 1), (0.0, np.inf) if even or not c.is_integer() else
                      (-np.inf, np.inf), monotone=not even)


class BatchNorm(Op):
    """Inference BatchNormalization ``y = g * x + (bias - g * mean)`` per channel (axis 1; the last axis with
    ``channel_last``: LeViT's BatchNorm over flattened tokens, passes.batchnorms_over_tokens)."""

    kind = "batchnorm"

    def __init__(self, name, op_type, inputs, output, gain, shift, channel_last=False):
        super().__init__(name, op_type, inputs, output)
        self.gain_values = gain  # g = scale / sqrt(var + eps)
        self.shift_values = shift
        self.channel_last = channel_last

    @classmethod
    def of_node(cls, name, node, statistics, inputs, output, channel_last=False):
        """The op for the ONNX ``node``, whose scale, bias, mean and variance are ``statistics``."""
        scale, bias, mean, var = (np.asarray(a, dtype=np.float64) for a in statistics)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gain = scale / np.sqrt(var + eps)
        return cls(name, node.op_type, inputs, output, gain, bias - gain * mean, channel_last)

    def _per_channel(self, bk, name, x):
        shape = (-1,) if self.channel_last else (-1,) + (1,) * (x.ndim - 2)
        return bk.constant(self, (name, shape), x.dtype, lambda: getattr(self, name).reshape(shape))

    def gain(self, bk, x):
        return self._per_channel(bk, "gain_values", x)

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        return x * self.gain(bk, x) + self._per_channel(bk, "shift_values", x)

    def vjp(self, bk, ctx, grad):
        return [grad * self.gain(bk, grad)]


@register("BatchNormalization")
def _batchnorm(v):
    if v.attr("training_mode", 0):
        raise Unsupported("training_mode=1")
    if not v.attr("spatial", 1):  # opset 7-8: statistics per element, not per channel
        raise Unsupported("spatial=0")
    return BatchNorm.of_node(v.name, v.node, [v.const(i) for i in range(1, 5)], [v.node.input[0]], v.node.output[0])


class ConstantArithmetic(Op):
    """``x * c``, ``x / c``, ``x + c``, ``x - c`` or ``c - x``: normalisation inside a model."""

    kind = "scale"

    def __init__(self, name, op_type, inputs, output, constant, reversed_operands=False):
        super().__init__(name, op_type, inputs, output)
        self.constant = constant  # the c; an Add's c may become a linear op's bias
        self.reversed_operands = reversed_operands  # c - x

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        c = bk.constant(self, "constant", x.dtype, lambda: self.constant)
        if self.op_type == "Mul":
            return x * c
        if self.op_type == "Div":
            return x / c
        if self.op_type == "Sub":
            return c - x if self.reversed_operands else x - c
        return x + c

    def factor(self):
        """d output / d x, broadcastable."""
        if self.op_type == "Mul":
            return self.constant
        if self.op_type == "Div":
            return 1.0 / self.constant
        return -1.0 if self.reversed_operands else 1.0

    def vjp(self, bk, ctx, grad):
        x = ctx[self.inputs[0]]
        return [bk.unbroadcast(grad * bk.constant(self, "factor", grad.dtype, self.factor), x.shape)]


_ROUNDING = 1e-6  # a float32 constant's rounding: Relu6(x + 3) * float32(1/6) reaches 1 + 3e-8


class Gated:
    """An op of two data tensors where one, the gate, is a non-negative bounded factor that scales the other,
    the signal: ``Gate`` (a Mul) and attention's ``DataMatMul`` (ops/attention.py).

    signs.py proves the bounds and calls ``pick_gate``, which sets ``gate`` (0 or 1, the gate's place
    among ``inputs``); an op with no single gate keeps ``None``, and is refused where relevance reaches it
    (on a gate's branch, attention's ``Q @ K^T``, only its exact adjoint runs).
    """

    gate = None

    def pick_gate(self, bounds):
        """Take as the gate the one input whose ``(low, high)`` of ``bounds`` lies in [0, 1], or, where
        none does, the one that lies in [0, c] with c finite; return why there is none (None where there
        is).  [0, 1] is asked first so that a Sigmoid still gates a Relu6's output (in [0, 6])."""
        unit = [k for k, (low, high) in enumerate(bounds) if low >= 0 and high <= 1 + _ROUNDING]
        bounded = [k for k, (low, high) in enumerate(bounds) if low >= 0 and np.isfinite(high)]
        gates = unit or bounded
        self.gate = gates[0] if len(gates) == 1 else None
        if not gates:
            why = (f"{self.op_type} of two data tensors that is not a gate: neither factor is bounded in [0, c] "
                   "with c finite (as a Sigmoid's, HardSigmoid's, Softmax's or Clip(x + 3, 0, 6)'s output is)")
        elif len(gates) == 2:
            span = "[0, 1]" if unit else "[0, c] with c finite, neither in [0, 1]"
            why = f"{self.op_type} of two data tensors both bounded in {span}: which one gates the other is ambiguous"
        else:
            why = None
        self.refused_where_reached = why  # no rule shares relevance between two signals (signs.py)
        return why

    @property
    def signal(self):
        return self.inputs[1 - self.gate]


class Gate(Gated, Op):
    """A Mul of two data tensors where one, the gate, is a non-negative bounded factor and the other the
    signal: a Sigmoid's or HardSigmoid's output in [0, 1] (maybe per channel as in squeeze-excitation;
    SiLU is ``x * Sigmoid(x)``), or a factor in [0, c] with c finite, as paddle2onnx's hard-swish
    ``x * Clip(x + 3, 0, 6) / 6`` multiplies by ``Clip(x + 3, 0, 6)`` in [0, 6].
    """

    kind = "gate"

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]] * ctx[self.inputs[1]]

    def vjp(self, bk, ctx, grad):
        a, b = ctx[self.inputs[0]], ctx[self.inputs[1]]
        return [bk.unbroadcast(grad * b, a.shape), bk.unbroadcast(grad * a, b.shape)]


@register("Add", "Sub", "Mul", "Div", "Sum")
def _arithmetic(v):
    from .structure import Sum

    data = [i for i in range(len(v.node.input)) if v.is_data(i)]
    if len(data) > 1:
        if v.op_type in ("Add", "Sum"):
            return Sum(v.name, v.op_type, v.data_inputs(), v.node.output[0])
        if v.op_type == "Mul":
            return Gate(v.name, v.op_type, v.data_inputs(), v.node.output[0])
        if v.op_type == "Sub":  # a - b is a join of a and -b (PoolFormer's pool(x) - x): a Sum of them
            a, b = v.node.input
            negated = ConstantArithmetic(v.name + ":negate", "Mul", [b], f"{v.node.output[0]}:negated", -1.0)
            negated.synthetic = True
            return [negated, Sum(v.name, v.op_type, [a, negated.output], v.node.output[0])]
        raise Unsupported(f"{v.op_type} of two data tensors")
    (i,) = data
    if v.op_type == "Sum":  # one data input, maybe constants beside it
        rest = [v.const(k).astype(np.float64) for k in range(len(v.node.input)) if k != i]
        return ConstantArithmetic(v.name, v.op_type, [v.node.input[i]], v.node.output[0], sum(rest) if rest else 0.0)
    if v.op_type == "Div" and i != 0:
        raise Unsupported("division of a constant by data")
    return ConstantArithmetic(v.name, v.op_type, [v.node.input[i]], v.node.output[0],
                              v.const(1 - i).astype(np.float64), reversed_operands=(v.op_type == "Sub" and i == 1))


class Identity(Op):
    kind = "identity"

    def forward(self, bk, ctx):
        return ctx[self.inputs[0]]

    def vjp(self, bk, ctx, grad):
        return [grad]


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@register("Identity", "Dropout", "Cast")
def _identity(v):
    if v.op_type == "Cast" and v.attr("to") not in FLOAT_TYPES:
        raise Unsupported(f"Cast to {onnx.TensorProto.DataType.Name(v.attr('to'))} rounds the data "
                          "(only casts between float types are explained)")
    if v.op_type == "Dropout" and v.has_input(2) and bool(v.const(2)):
        raise Unsupported("training_mode=true drops values at random")
    return Identity(v.name, v.op_type, [v.node.input[0]], v.node.output[0])
