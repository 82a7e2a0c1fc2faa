"""LayerNormalization and GELU on device arrays (tests/strict_backend.py, a stand-in GPU whose arrays refuse
NumPy as CuPy's do): the same numbers as on the host, and no wait for the device in the walk."""
import sys
import types

import numpy as np
import pytest

from onnxrap.ops.elementwise import numpy_erf
from strict_backend import StrictArray
from test_gates_device import assert_same_numbers_on_device
from test_host_device import strict_gpu, waits  # noqa: F401 (fixtures: the stand-in GPU, what it saw in the walk)
from test_norms_models import FIXTURES

METHODS = ["rap", "gradient", "lrp-eps", "rap-paper"]


@pytest.fixture
def cupyx_erf(monkeypatch):
    """CuPy keeps erf in cupyx.scipy.special, where ops/elementwise.py imports it from; the stand-in's takes and
    gives the stand-in's device arrays (NumPy's erf inside)."""
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = lambda a: StrictArray(numpy_erf(a._a))
    for name, module in (("cupyx", types.ModuleType("cupyx")), ("cupyx.scipy", types.ModuleType("cupyx.scipy")),
                         ("cupyx.scipy.special", special)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("name", ["convnext_opset17", "convnext_opset20"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_numbers_on_device_arrays(strict_gpu, waits, cupyx_erf, name, dtype):
    assert_same_numbers_on_device(FIXTURES / f"{name}.onnx", np.load(FIXTURES / f"{name}.npz")["x"], dtype,
                                  METHODS, waits)
