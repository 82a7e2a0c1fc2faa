"""nn.MultiheadAttention's exports, rewritten batch-first (tests/test_mha.py), on device arrays
(tests/strict_backend.py, a stand-in GPU whose arrays refuse NumPy as CuPy's do): the same numbers as on the
host, and no wait for the device in the walk."""
import numpy as np
import pytest

from test_gates_device import assert_same_numbers_on_device
from test_host_device import strict_gpu, waits  # noqa: F401 (fixtures: the stand-in GPU, what it saw in the walk)
from test_mha import FIXTURES
from test_norms_device import cupyx_erf  # noqa: F401 (fixture: CuPy's erf, GELU's)

METHODS = ["rap", "gradient", "lrp-eps", "rap-paper"]


@pytest.mark.parametrize("name", ["torchvision_opset17", "seqfirst_dynamo", "weights_opset14"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_numbers_on_device_arrays(strict_gpu, waits, cupyx_erf, name, dtype):
    assert_same_numbers_on_device(FIXTURES / f"{name}.onnx", np.load(FIXTURES / f"{name}.npz")["x"], dtype,
                                  METHODS, waits)
