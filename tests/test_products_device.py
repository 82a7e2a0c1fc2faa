"""Products and norms on device arrays (tests/strict_backend.py, a stand-in GPU whose arrays refuse NumPy as
CuPy's do): the same numbers as on the host, and no wait for the device in the walk."""
import numpy as np
import pytest

from test_gates_device import assert_same_numbers_on_device
from test_host_device import strict_gpu, waits  # noqa: F401 (fixtures: the stand-in GPU, what it saw in the walk)
from test_norms_device import cupyx_erf  # noqa: F401 (fixture: CuPy's erf, GELU's)
from test_products_models import FIXTURES

METHODS = ["rap", "gradient", "lrp-eps", "rap-paper"]


@pytest.mark.parametrize("name", ["convnextv2", "gmlp", "mobilevitv2", "grn_written", "linattn_digits"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_numbers_on_device_arrays(strict_gpu, waits, cupyx_erf, name, dtype):
    x = np.load(FIXTURES / f"{name}.npz")["x"][:2]
    assert_same_numbers_on_device(FIXTURES / f"{name}.onnx", x, dtype, METHODS, waits)
