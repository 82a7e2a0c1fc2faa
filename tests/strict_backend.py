"""A stand-in GPU for CPU-only machines: a backend whose arrays refuse to mix with NumPy, as CuPy's do.

``StrictArray`` holds a NumPy array but behaves like a device array:

* ``np.asarray(a)`` and every other implicit conversion raise CuPy's ``TypeError``;
* NumPy functions and ufuncs called on it refuse (stricter than CuPy, which would hand some of
  them to itself and quietly return a device array where the caller expected a host one);
* arithmetic with a ``numpy.ndarray`` raises CuPy's ``Unsupported type`` error; Python and NumPy
  scalars are fine;
* ``bool()``, ``float()``, ``int()``, ``.item()``, ``.get()`` work but wait for the device on a real
  GPU: each one is recorded in ``EVENTS`` as a host synchronisation, as is every copy between host
  and device (the backend's ``to_device`` and ``to_host``, the only way across).

The backend's ``xp`` is NumPy with every argument checked the same way, so the project's code runs
unchanged on it and any place that mixes host and device arrays fails here as it would on a GPU.
"""
from __future__ import annotations

import traceback
import types

import numpy as np

from onnxrap.backend import Backend
from onnxrap.device import CPU, Device

EVENTS: list[str] = []  # host synchronisations and transfers, with where they happened


def _record(kind):
    frame = next(f for f in reversed(traceback.extract_stack()) if f.filename != __file__)
    EVENTS.append(f"{kind} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} ({frame.name})")


def _unwrap(v):
    if isinstance(v, StrictArray):
        return v._a
    if isinstance(v, np.ndarray):
        raise TypeError(f"Unsupported type {type(v)}")
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(e) for e in v)
    return v


def _wrap(v):
    if isinstance(v, (np.ndarray, np.generic)):
        return StrictArray(v)
    if isinstance(v, (list, tuple)) and any(isinstance(e, (np.ndarray, np.generic)) for e in v):
        return type(v)(_wrap(e) for e in v)
    return v


class StrictArray:
    """A device array that lives in host memory (see the module's docstring)."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # NumPy's operators and ufuncs defer to ours, which refuse ndarrays

    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was given a device array")

    def __getattr__(self, name):
        if name.startswith("__"):  # NumPy's ways in (__array_interface__, __array_struct__, ...) are closed
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return lambda *args, **kwargs: _wrap(value(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
        return _wrap(value)

    def __repr__(self):
        return f"StrictArray(shape={self._a.shape}, dtype={self._a.dtype})"

    # -- what waits for the device ----------------------------------------------
    def get(self):
        _record("get()")
        return self._a.copy()

    def item(self):
        _record("item()")
        return self._a.item()

    def tolist(self):
        _record("tolist()")
        return self._a.tolist()

    def __bool__(self):
        _record("bool()")
        return bool(self._a)

    def __float__(self):
        _record("float()")
        return float(self._a)

    def __int__(self):
        _record("int()")
        return int(self._a)

    def __index__(self):
        _record("index()")
        return self._a.__index__()

    # -- containers ---------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (StrictArray(e) for e in self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)


def _operator(name):
    def op(self, *others):
        return _wrap(getattr(self._a, name)(*(_unwrap(o) for o in others)))
    op.__name__ = name
    return op


def _inplace(name):
    def op(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self
    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(StrictArray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(StrictArray, f"__r{_name}__", _operator(f"__r{_name}__"))
    setattr(StrictArray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_name}__", _operator(f"__{_name}__"))
StrictArray.__hash__ = None


class StrictModule:
    """NumPy (or one of its submodules) taking and giving device arrays only."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        value = getattr(self._module, name)
        if isinstance(value, types.ModuleType):
            return StrictModule(value)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, constants, context managers
        return lambda *args, **kwargs: _wrap(value(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))


class StrictBackend(Backend):
    """The NumPy backend's code on ``StrictArray``s; crossing to and from the host is recorded."""

    def __init__(self):
        super().__init__(StrictModule(np), "strict")

    def to_device(self, a, dtype=None):
        if isinstance(a, StrictArray):
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)
        _record("to_device")
        return StrictArray(np.array(a, dtype=dtype))

    def to_host(self, a):
        if not isinstance(a, StrictArray):
            raise TypeError(f"to_host was given a host array ({type(a).__name__})")
        _record("to_host")
        return a._a.copy()


def strict_device():
    """A Device that captures on the CPU and hands the activations over as device arrays."""
    return Device("strict", StrictBackend(), CPU, "strict (a stand-in GPU)")
