"""A backend whose arrays are symbols: running the rules through it records ONNX nodes.

``Sym`` stands for a tensor of the graph being built: its static shape (the
batch axis is ``Tracer.batch``, a placeholder where the model's batch is
free), its dtype, and either a node output name or a constant value.  Every
operation the rules and ops use on arrays (arithmetic, comparisons,
``where``/``maximum``/``minimum``, reductions, reshapes, slicing, matmul)
appends an ONNX node; operations on constants only are computed here, so
parameter transforms (W+, W-, BatchNormalization gains) become initializers.
``TraceBackend`` overrides the backend primitives that NumPy does with
strided views: convolutions become Conv, their adjoints Conv with the kernel
flipped (stride 1) or ConvTranspose, window gathers strided Slices and their
scatter a ConvTranspose with a one-hot kernel; index routing's ``take`` a
Gather and its ``scatter_add`` a ScatterElements that adds.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .backend import Backend, numpy_backend

# Placeholder for a free batch axis while tracing; shapes with it become dynamic in the graph.
FREE_BATCH = 7919

_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
               np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.int64): TensorProto.INT64,
               np.dtype(np.float16): TensorProto.FLOAT16}


class TraceError(Exception):
    """The rules asked for something the tracer cannot express as a graph."""


class Sym:
    """A symbolic array: a tensor of the graph, or a constant."""

    __array_ufunc__ = None  # NumPy defers to our reflected operators
    __hash__ = object.__hash__

    def __init__(self, tracer, name, shape, dtype, const=None):
        self.tracer = tracer  # None for constants: they belong to no graph until used
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.const = const
        self.negated = None  # the boolean tensor this is the Not of (Where swaps its branches instead)

    @staticmethod
    def constant(value, dtype=None):
        value = np.asarray(value, dtype=dtype)
        return Sym(None, None, value.shape, value.dtype, const=value)

    # -- properties NumPy code reads ----------------------------------------------
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def T(self):
        if self.ndim != 2:
            raise TraceError(".T of a tensor that is not a matrix")
        if self.const is not None:
            return Sym.constant(self.const.T)
        if self.shape[0] == _tracer(self).batch:
            raise TraceError("transposing the batch axis")
        return self.transpose((1, 0))

    def any(self):
        raise TraceError("a Python branch on array values cannot be traced")

    def __bool__(self):
        raise TraceError("a Python branch on array values cannot be traced")

    def __float__(self):
        raise TraceError("a Python number from array values cannot be traced")

    def __repr__(self):
        return f"Sym({self.name or 'const'}, {self.shape}, {self.dtype})"

    # -- arithmetic -----------------------------------------------------------------
    def __add__(self, o): return _binary("Add", self, o, np.add)
    def __radd__(self, o): return self if _is_zero(o) else _binary("Add", o, self, np.add)
    def __sub__(self, o): return _binary("Sub", self, o, np.subtract)
    def __rsub__(self, o): return _binary("Sub", o, self, np.subtract)
    def __mul__(self, o): return _binary("Mul", self, o, np.multiply)
    def __rmul__(self, o): return _binary("Mul", o, self, np.multiply)
    def __truediv__(self, o): return _binary("Div", self, o, np.divide)
    def __rtruediv__(self, o): return _binary("Div", o, self, np.divide)
    def __pow__(self, o): return _binary("Pow", self, o, np.power)  # a Pow activation's (ops/elementwise.py)
    def __matmul__(self, o): return _matmul(self, o)
    def __and__(self, o): return _binary("And", self, o, np.logical_and)

    def __neg__(self):
        return _unary("Neg", self, np.negative)

    def __abs__(self):
        return _unary("Abs", self, np.abs)

    def __lt__(self, o): return _binary("Less", self, o, np.less)
    def __gt__(self, o): return _binary("Greater", self, o, np.greater)
    def __ge__(self, o): return _not(_binary("Less", self, o, np.less))
    def __le__(self, o): return _not(_binary("Greater", self, o, np.greater))
    def __eq__(self, o): return _binary("Equal", self, o, np.equal)
    def __ne__(self, o): return _not(_binary("Equal", self, o, np.equal))

    # -- shapes ------------------------------------------------------------------------
    def astype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if self.const is not None:
            return Sym.constant(self.const.astype(dtype))
        return _tracer(self).node("Cast", [self], self.shape, dtype, to=_ONNX_TYPES[dtype])

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = [int(d) for d in shape]
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = self.size // known
        shape = tuple(shape)
        if self.const is not None:
            return Sym.constant(self.const.reshape(shape))
        if shape == self.shape:
            return self
        tr = _tracer(self)
        if tr.dynamic and (self.shape[:1] == (tr.batch,)) != (shape[:1] == (tr.batch,)):
            raise TraceError(f"a reshape from {self.shape} to {shape} moves the batch axis")
        return tr.node("Reshape", [self, tr.shape_tensor(shape)], shape, self.dtype)

    def transpose(self, *perm):
        perm = perm[0] if len(perm) == 1 and isinstance(perm[0], (tuple, list, np.ndarray)) else perm
        perm = [int(p) for p in perm]
        if self.const is not None:
            return Sym.constant(self.const.transpose(perm))
        return _tracer(self).node("Transpose", [self], tuple(self.shape[p] for p in perm), self.dtype,
                                  perm=perm)

    def __getitem__(self, index):
        if self.const is not None:
            return Sym.constant(self.const[index])
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            k = index.index(Ellipsis)
            fill = self.ndim - (len(index) - 1 - index.count(None))
            index = index[:k] + (slice(None),) * fill + index[k + 1:]
        out, axis, new_axes = self, 0, []
        starts, ends, axes, steps, shape = [], [], [], [], []
        for item in index:
            if item is None:
                new_axes.append(len(shape))
                shape.append(1)
                continue
            if not isinstance(item, slice):
                raise TraceError("only slices and None can index a traced tensor")
            n = self.shape[axis]
            start, stop, step = item.indices(n)
            if (start, stop, step) != (0, n, 1):
                starts.append(start), ends.append(stop), axes.append(axis), steps.append(step)
            shape.append(len(range(start, stop, step)))
            axis += 1
        shape += self.shape[axis:]
        tr = _tracer(self)
        if axes:
            sliced = tuple(d for k, d in enumerate(shape) if k not in new_axes)
            out = tr.node("Slice", [out, tr.const(np.array(starts)), tr.const(np.array(ends)),
                                    tr.const(np.array(axes)), tr.const(np.array(steps))], sliced, self.dtype)
        if new_axes:
            out = tr.unsqueeze(out, new_axes)
        return out

    # -- reductions -------------------------------------------------------------------
    def _reduce(self, op_type, axis, keepdims, fn):
        axes = tuple(range(self.ndim)) if axis is None else tuple(
            a % self.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
        if self.const is not None:
            return Sym.constant(fn(self.const, axis=axes, keepdims=keepdims))
        shape = tuple(1 if k in axes else d for k, d in enumerate(self.shape) if keepdims or k not in axes)
        if self.dtype == np.bool_:  # a count: exact in float32 below 2**24, and a quarter of int64's traffic
            counted = math.prod(self.shape[a] for a in axes)
            wide = np.float32 if counted < 2**24 else np.float64
            return _tracer(self).reduce(op_type, self.astype(wide), axes, keepdims, shape, exact=True)
        return _tracer(self).reduce(op_type, self, axes, keepdims, shape)

    def sum(self, axis=None, keepdims=False):
        return self._reduce("ReduceSum", axis, keepdims, np.sum)

    def max(self, axis=None, keepdims=False):
        return self._reduce("ReduceMax", axis, keepdims, np.max)

    def min(self, axis=None, keepdims=False):
        return self._reduce("ReduceMin", axis, keepdims, np.min)

    def argmax(self, axis):
        axis %= self.ndim
        shape = self.shape[:axis] + self.shape[axis + 1:]
        return _tracer(self).node("ArgMax", [self], shape, np.int64, axis=axis, keepdims=0)


def _is_zero(o):
    return isinstance(o, (int, float)) and not isinstance(o, bool) and o == 0


def _memory(array):
    """Where an array's elements are and how they are laid out: views of the same memory agree."""
    return (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)


def _tracer(*syms):
    for s in syms:
        if isinstance(s, Sym) and s.tracer is not None:
            return s.tracer
    raise TraceError("no traced tensor among the operands")


def _lift(o, like):
    """A Python or NumPy operand as a Sym; Python scalars take ``like``'s dtype, as NumPy's do."""
    if isinstance(o, Sym):
        return o
    if isinstance(o, (bool, int, float)) and not isinstance(o, np.generic):
        dtype = like.dtype if like is not None and like.dtype != np.bool_ else np.result_type(o)
        return Sym.constant(np.array(o, dtype=dtype))
    return Sym.constant(np.asarray(o))


def _promote(a, b, op_type):
    """NumPy's dtype rules for the pairs the rules combine: bool with float, float32 with float64."""
    if op_type == "And" or a.dtype == b.dtype:
        return a, b
    if a.dtype == np.bool_ or b.dtype == np.bool_:
        target = b.dtype if a.dtype == np.bool_ else a.dtype
    else:
        target = np.result_type(a.dtype, b.dtype)
    return a.astype(target), b.astype(target)


_COMPARISONS = {"Less", "Greater", "Equal", "And"}


def _binary(op_type, a, b, fn):
    a = _lift(a, b if isinstance(b, Sym) else None)
    b = _lift(b, a)
    if op_type == "Mul" and (a.dtype == np.bool_) != (b.dtype == np.bool_) and (a.const is None or b.const is None):
        mask, other = (a, b) if a.dtype == np.bool_ else (b, a)  # one Where, not a Cast and a Mul
        return TraceNumpy().where(mask, other, 0)
    a, b = _promote(a, b, op_type)
    if op_type == "Mul":  # a rule's sign factor of 1 (P()'s s_a) costs no node
        for one, other in ((a, b), (b, a)):
            if one.const is not None and one.const.ndim == 0 and one.const == 1 and other.const is None:
                return other
    if a.const is not None and b.const is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            return Sym.constant(fn(a.const, b.const))
    shape = np.broadcast_shapes(a.shape, b.shape)
    dtype = np.dtype(np.bool_) if op_type in _COMPARISONS else a.dtype
    return _tracer(a, b).node(op_type, [a, b], shape, dtype)


def _unary(op_type, a, fn):
    if a.const is not None:
        return Sym.constant(fn(a.const))
    return _tracer(a).node(op_type, [a], a.shape, a.dtype)


def _not(a):
    out = _unary("Not", a, np.logical_not)
    out.negated = a
    return out


def _matmul(a, b):
    a, b = _lift(a, None), _lift(b, None)
    a, b = _promote(a, b, "MatMul")
    if a.const is not None and b.const is not None:
        return Sym.constant(a.const @ b.const)
    tr = _tracer(a, b)
    shape = a.shape[:-1] + b.shape[-1:]
    # A weight is stored as the C-ordered array it is in memory (a transposed view of the model's
    # own (M, K) Gemm weight is its transpose): W and W.T then share one initializer.
    if b.const is not None and b.ndim == 2 and a.ndim == 2 and not b.const.flags.c_contiguous:
        return tr.node("Gemm", [a, Sym.constant(b.const.T)], shape, a.dtype, transB=1)
    return tr.node("MatMul", [a, b], shape, a.dtype)


class TraceNumpy:
    """The part of NumPy's namespace that rules and ops call as ``bk.xp``."""

    def __getattr__(self, name):
        raise TraceError(f"xp.{name} has no ONNX translation in the tracer")

    @staticmethod
    def _operands(*args):
        like = next((a for a in args if isinstance(a, Sym)), None)
        syms = [_lift(a, like) for a in args]
        return syms

    def maximum(self, a, b):
        a, b = self._operands(a, b)
        return _binary("Max", a, b, np.maximum)

    def minimum(self, a, b):
        a, b = self._operands(a, b)
        return _binary("Min", a, b, np.minimum)

    def where(self, cond, a, b):
        cond = _lift(cond, None)
        if cond.negated is not None:
            cond, a, b = cond.negated, b, a
        syms = [x for x in (a, b) if isinstance(x, Sym)]
        like = syms[0] if syms else Sym.constant(np.result_type(a, b).type(0))
        a, b = _lift(a, like), _lift(b, like)
        a, b = _promote(a, b, "Where")
        if cond.const is not None and a.const is not None and b.const is not None:
            return Sym.constant(np.where(cond.const, a.const, b.const))
        shape = np.broadcast_shapes(cond.shape, a.shape, b.shape)
        return _tracer(cond, a, b).node("Where", [cond, a, b], shape, a.dtype)

    def clip(self, x, lo, hi):
        out = x
        if lo > -np.inf:
            out = self.maximum(out, lo)
        if hi < np.inf:
            out = self.minimum(out, hi)
        return out

    def zeros_like(self, x):
        return x * 0

    def broadcast_to(self, a, shape):
        a = _lift(a, None)
        shape = tuple(int(d) for d in shape)
        if a.shape == shape:
            return a
        tr = _tracer(a) if a.const is None else ACTIVE[-1]
        if a.const is not None and (not tr.dynamic or shape[:1] != (tr.batch,)):
            return Sym.constant(np.broadcast_to(a.const, shape))
        return tr.node("Expand", [a, tr.shape_tensor(shape)], shape, a.dtype)

    def pad(self, x, widths, mode="constant", constant_values=0.0):
        widths = [(int(b), int(e)) for b, e in widths]
        if x.const is not None:
            return Sym.constant(np.pad(x.const, widths, mode=mode, constant_values=constant_values))
        tr = _tracer(x)
        shape = tuple(d + b + e for d, (b, e) in zip(x.shape, widths))
        pads = np.array([b for b, _ in widths] + [e for _, e in widths], dtype=np.int64)
        value = tr.const(np.array(constant_values, dtype=x.dtype))
        return tr.node("Pad", [x, tr.const(pads), value], shape, x.dtype, mode="constant")

    def concatenate(self, parts, axis=0):
        like = next(p for p in parts if isinstance(p, Sym))
        parts = [_lift(p, like).astype(like.dtype) for p in parts]
        axis %= like.ndim
        if all(p.const is not None for p in parts):
            return Sym.constant(np.concatenate([p.const for p in parts], axis=axis))
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        return _tracer(*parts).node("Concat", parts, shape, like.dtype, axis=axis)

    @staticmethod
    def arange(n):
        return Sym.constant(np.arange(n))

    @staticmethod
    def abs(x):
        return abs(x)

    # The smooth activations' forward and slope (ops/elementwise.py): one node each.
    @staticmethod
    def exp(x):
        return _unary("Exp", _lift(x, None), np.exp)

    @staticmethod
    def log(x):
        return _unary("Log", _lift(x, None), np.log)

    @staticmethod
    def tanh(x):
        return _unary("Tanh", _lift(x, None), np.tanh)

    @staticmethod
    def erf(x):  # GELU's (ops/elementwise.py); a constant's value by the ops' own NumPy erf
        from .ops.elementwise import numpy_erf

        return _unary("Erf", _lift(x, None), numpy_erf)

    @staticmethod
    def sqrt(x):  # LayerNormalization's sigma (ops/normalization.py)
        return _unary("Sqrt", _lift(x, None), np.sqrt)

    @staticmethod
    def rint(x):  # ONNX's Round rounds halves to even, as NumPy's rint (ops/quantize.py)
        return _unary("Round", _lift(x, None), np.rint)


ACTIVE: list = []  # the tracer of the graph being built (constants alone do not name one)


class Tracer:
    """Collects the nodes and initializers of the graph being traced."""

    def __init__(self, batch, dynamic, opset, prefix="onnxrap/"):
        self.batch = batch  # the batch size in traced shapes (FREE_BATCH where it is free)
        self.dynamic = dynamic
        self.opset = opset
        self.prefix = prefix
        self.nodes = []
        self.initializers = []
        self._const_names = {}  # content key -> initializer name
        self._named = {}  # memory of a constant's array -> (the array, its initializer name)
        self._stacks = {}  # ids of stacked weights -> (the weights, the stack)
        self._count = 0
        self._batch_size_tensor = None  # a 1-element int64 tensor: the run's batch size

    def __enter__(self):
        ACTIVE.append(self)
        return self

    def __exit__(self, *exc):
        ACTIVE.remove(self)

    def fresh(self, hint):
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def take_batch_size_from(self, x):
        """Dynamic shapes read the run's batch size from ``x``'s first axis."""
        self._batch_size_tensor = self.node("Shape", [x], (x.ndim,), np.int64)[0:1]

    def input(self, name, shape, dtype):
        return Sym(self, name, shape, dtype)

    def const(self, value):
        return Sym.constant(value)

    def name_of(self, s):
        """The tensor name of ``s``; a constant becomes an initializer, once per distinct content."""
        if s.const is None:
            return s.name
        if _memory(s.const) in self._named:
            return self._named[_memory(s.const)][1]
        value = np.ascontiguousarray(s.const)
        key = (value.dtype.str, value.shape, hashlib.blake2b(value.tobytes(), digest_size=16).hexdigest())
        if key not in self._const_names:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(value, name))
            self._const_names[key] = name
        self._named[_memory(s.const)] = (s.const, self._const_names[key])
        return self._const_names[key]

    def named(self, array):
        """The initializer name of exactly this array, if the graph has one."""
        entry = self._named.get(_memory(array))
        return None if entry is None else entry[1]

    def flipped(self, w, groups):
        """``w (O, C/g, *k)`` as the kernel of its adjoint convolution: ``(C, O/g, *k)``, taps reversed."""
        key = ("flipped", id(w.const), groups)
        if key not in self._stacks:
            o, cg, *k = w.shape
            v = w.const.reshape(groups, o // groups, cg, *k).swapaxes(1, 2).reshape(groups * cg, o // groups, *k)
            v = v[(slice(None), slice(None)) + (slice(None, None, -1),) * len(k)]
            self._stacks[key] = (w, Sym.constant(np.ascontiguousarray(v)))
        return self._stacks[key][1]

    def stack(self, weights):
        """Weights concatenated along their first axis, made once per distinct list."""
        key = tuple(id(w.const) for w in weights)
        if key not in self._stacks:
            self._stacks[key] = (weights, Sym.constant(np.concatenate([w.const for w in weights])))
        return self._stacks[key][1]

    def node(self, op_type, inputs, shape, dtype, **attrs):
        out = self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, [self.name_of(i) if isinstance(i, Sym) else i for i in inputs],
                                           [out], name=out, **attrs))
        return Sym(self, out, shape, dtype)

    def shape_tensor(self, shape):
        """An int64 shape input: constant, or with the run's batch size first where the batch is free."""
        shape = [int(d) for d in shape]
        if not (self.dynamic and shape and shape[0] == self.batch):
            return self.const(np.array(shape, dtype=np.int64))
        rest = self.const(np.array(shape[1:], dtype=np.int64))
        return self.node("Concat", [self._batch_size_tensor, rest], (len(shape),), np.int64, axis=0)

    def unsqueeze(self, x, axes):
        shape = list(x.shape)
        for a in sorted(axes):
            shape.insert(a, 1)
        if self.opset < 13:
            return self.node("Unsqueeze", [x], shape, x.dtype, axes=list(axes))
        return self.node("Unsqueeze", [x, self.const(np.array(axes, dtype=np.int64))], shape, x.dtype)

    def reduce(self, op_type, x, axes, keepdims, shape, exact=False):
        if op_type == "ReduceSum" and x.dtype == np.float32 and not exact:
            # ORT adds float32 one after another; NumPy pairwise, so its large sums (the spec's S over
            # a whole feature map) are far closer to exact.  Adding in float64 keeps up with it.
            wide = self.reduce(op_type, x.astype(np.float64), axes, keepdims, shape)
            return wide.astype(np.float32)
        axes_as_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes_as_input:
            return self.node(op_type, [x, self.const(np.array(axes, dtype=np.int64))], shape, x.dtype,
                             keepdims=int(keepdims))
        return self.node(op_type, [x], shape, x.dtype, axes=list(axes), keepdims=int(keepdims))

    def split(self, x, sizes, axis):
        outs = [self.fresh("Split") for _ in sizes]
        if self.opset < 13:
            node = helper.make_node("Split", [x.name], outs, name=outs[0], axis=axis, split=list(sizes))
        else:
            node = helper.make_node("Split", [x.name, self.name_of(self.const(np.array(sizes, dtype=np.int64)))],
                                    outs, name=outs[0], axis=axis)
        self.nodes.append(node)
        result = []
        for name, size in zip(outs, sizes):
            shape = list(x.shape)
            shape[axis] = size
            result.append(Sym(self, name, shape, x.dtype))
        return result


class TraceBackend(Backend):
    """The rules' backend for tracing: array operations become ONNX nodes."""

    def __init__(self, free_batch=False):
        super().__init__(TraceNumpy(), "trace")
        self.free_batch = free_batch  # the batch size in shapes is Tracer.batch's placeholder


    def to_device(self, a, dtype=None):
        if isinstance(a, Sym):
            return a if dtype is None else a.astype(dtype)
        return Sym.constant(np.asarray(a, dtype=dtype))

    def to_host(self, a):
        raise TraceError("a traced tensor has no value")

    # -- index routing -------------------------------------------------------------------
    def take(self, x, index):
        """A Gather along the sample axis; a map per sample (fixed batch only) gathers from the batch as one row."""
        if index.shape[0] > 1:
            return self.take(x.reshape(1, -1), self._one_row(index, x.shape[1])).reshape(index.shape)
        tr = _tracer(x)
        return tr.node("Gather", [x, index.reshape(-1)], x.shape[:1] + index.shape[1:], x.dtype, axis=1)

    def scatter_add(self, values, index, size):
        """A ScatterElements adding into zeros (opset 16 on); before it, one ScatterElements per
        repetition of an index, each writing distinct positions, summed."""
        n, k = values.shape
        if index.shape[0] > 1:
            return self.scatter_add(values.reshape(1, -1), self._one_row(index, size), n * size).reshape(n, size)
        tr = _tracer(values)
        zeros = tr.node("Expand", [Sym.constant(np.zeros((1, 1), values.dtype)), tr.shape_tensor((n, size))],
                        (n, size), values.dtype)
        if tr.opset >= 16:
            return tr.node("ScatterElements", [zeros, self._rows(tr, index, n), values], (n, size), values.dtype,
                           axis=1, reduction="add")
        flat = index.const.reshape(-1)
        order = np.argsort(flat, kind="stable")
        repeat = np.empty_like(order)
        repeat[order] = np.arange(k) - np.searchsorted(flat[order], flat[order])  # earlier reads of the same index
        out = 0
        for r in range(int(repeat.max(initial=-1)) + 1):
            picked = np.flatnonzero(repeat == r)
            part = values if len(picked) == k else self.take(values, Sym.constant(picked.reshape(1, -1)))
            out = out + tr.node("ScatterElements", [zeros, self._rows(tr, Sym.constant(flat[picked].reshape(1, -1)), n),
                                                    part], (n, size), values.dtype, axis=1)
        return out

    @staticmethod
    def _one_row(index, size):
        """A map per sample ``(N, K)`` as one row over the whole batch."""
        rows = index.const + size * np.arange(index.shape[0])[:, None]
        return Sym.constant(rows.reshape(1, -1))

    @staticmethod
    def _rows(tr, index, n):
        """``index (1, K)`` for each of the ``n`` samples: ScatterElements wants indices shaped as its updates."""
        return index if n == 1 else tr.node("Expand", [index, tr.shape_tensor((n, index.shape[1]))],
                                           (n, index.shape[1]), index.dtype)

    # -- sliding windows -------------------------------------------------------------
    def windows(self, x, spec, value=0.0):
        """``(N, C, *kernel, *out)``: one strided Slice of the padded input per kernel tap."""
        if x.const is not None:
            return Sym.constant(np.ascontiguousarray(numpy_backend().windows(x.const, spec, value)))
        tr = _tracer(x)
        padded = self.pad(x, spec, value)
        rank = len(spec.kernel)
        lead = x.shape[:-rank]
        taps = []
        for _, tap in self._taps(spec):
            part = padded[(Ellipsis,) + self._reach(spec, tap)]
            taps.append(tr.unsqueeze(part, [len(lead)]))
        stacked = taps[0] if len(taps) == 1 else self.xp.concatenate(taps, axis=len(lead))
        return stacked.reshape(lead + spec.kernel + spec.out_shape)

    def scatter(self, cols, spec):
        """Adjoint of ``windows``: a ConvTranspose whose kernel puts each tap's column in place."""
        n, c = cols.shape[:2]
        taps = spec.taps
        flat = cols.reshape((n, c * taps) + spec.out_shape)
        place = np.zeros((c * taps, 1) + spec.kernel, dtype=cols.dtype)
        for t, tap in self._taps(spec):
            place[(slice(t, None, taps), 0) + tap] = 1
        return self._transpose_conv([(flat, Sym.constant(place))], spec, groups=c)

    # -- convolution ---------------------------------------------------------------------
    def conv(self, x, weights, spec, groups):
        single = not isinstance(weights, (list, tuple))
        weights = [weights] if single else list(weights)
        tr = _tracer(x)
        attrs = dict(kernel_shape=list(spec.kernel), strides=list(spec.strides), dilations=list(spec.dilations),
                     pads=list(spec.pads_begin + spec.pads_end), group=groups)
        out_shape = lambda w: (x.shape[0], w.shape[0]) + spec.out_shape  # noqa: E731
        if groups == 1 and len(weights) > 1:  # one Conv over the stacked weights, then split
            stacked = tr.stack(weights)
            y = tr.node("Conv", [x, stacked], out_shape(stacked), x.dtype, **attrs)
            ys = tr.split(y, [w.shape[0] for w in weights], axis=1)
        else:
            ys = [tr.node("Conv", [x, w], out_shape(w), x.dtype, **attrs) for w in weights]
        return ys[0] if single else ys

    def conv_adjoint(self, pairs, spec, groups):
        return self._transpose_conv(pairs, spec, groups)

    def _transpose_conv(self, pairs, spec, groups):
        """``sum_k L_wk^T(s_k)`` as ConvTranspose, cropped or padded to the input's spatial shape."""
        tr = _tracer(*(s for s, _ in pairs))
        if groups == 1 and len(pairs) > 1:  # one ConvTranspose over the stacked channels
            pairs = [(self.xp.concatenate([s for s, _ in pairs], axis=1),
                      tr.stack([w for _, w in pairs]))]
        full = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in
                zip(spec.out_shape, spec.strides, spec.kernel, spec.dilations)]
        ends = [f - b - i for f, b, i in zip(full, spec.pads_begin, spec.in_shape)]
        pads = list(spec.pads_begin) + [max(e, 0) for e in ends]
        reach = [(k - 1) * d for k, d in zip(spec.kernel, spec.dilations)] * 2
        # With stride 1 the adjoint is a Conv with the kernel flipped and its channels swapped, and
        # ONNX Runtime's Conv kernels are much faster than its ConvTranspose.
        as_conv = all(st == 1 for st in spec.strides) and all(p <= r for p, r in zip(pads, reach))
        out = 0
        for s, w in pairs:
            c = w.shape[1] * groups
            shape = s.shape[:1] + (c,) + tuple(f - b - max(e, 0) for f, b, e in zip(full, spec.pads_begin, ends))
            if as_conv:
                out = out + tr.node("Conv", [s, tr.flipped(w, groups)], shape, s.dtype, kernel_shape=list(spec.kernel),
                                    dilations=list(spec.dilations), pads=[r - p for p, r in zip(pads, reach)],
                                    group=groups)
            else:
                out = out + tr.node("ConvTranspose", [s, w], shape, s.dtype, kernel_shape=list(spec.kernel),
                                    strides=list(spec.strides), dilations=list(spec.dilations), pads=pads,
                                    group=groups)
        if any(e < 0 for e in ends):  # input rows no window reaches: zeros
            out = self.xp.pad(out, [(0, 0), (0, 0)] + [(0, max(-e, 0)) for e in ends])
        return out
