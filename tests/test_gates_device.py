"""Smooth activations, PRelu's slope and gates on device arrays (tests/strict_backend.py, a stand-in GPU whose
arrays refuse NumPy as CuPy's do): the same numbers as on the host, and no wait for the device in the walk."""
import numpy as np
import pytest

from onnx_helpers import const, make_model, node
from onnxrap import Explainer
from test_gates_models import FIXTURES, activation_chain
from test_host_device import strict_gpu, waits  # noqa: F401 (fixtures: the stand-in GPU, what it saw in the walk)

METHODS = ["rap", "gradient", "lrp-a1b0", "rap-paper"]


def prelu_model():
    rng = np.random.default_rng(7)
    nodes = [node("MatMul", ["x", "W"], "h"), node("PRelu", ["h", "slope"], "a"), node("MatMul", ["a", "V"], "y")]
    inits = [const("W", rng.normal(size=(5, 4))), const("slope", [0.1, 0.2, -0.3, 0.4]),
             const("V", rng.normal(size=(4, 3)))]
    return make_model(nodes, [("x", [None, 5])], [("y", [None, 3])], inits)


@pytest.mark.parametrize("name", ["efficientnet_b0_opset17", "mobilenetv3_opset17", "chain", "prelu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_numbers_on_device_arrays(strict_gpu, waits, name, dtype):
    if name in ("chain", "prelu"):
        model = activation_chain() if name == "chain" else prelu_model()
        x = np.random.default_rng(8).standard_normal((2, 6 if name == "chain" else 5)).astype(np.float32)
    else:
        model, x = FIXTURES / f"{name}.onnx", np.load(FIXTURES / f"{name}.npz")["x"]
    assert_same_numbers_on_device(model, x, dtype, METHODS, waits)


def assert_same_numbers_on_device(model, x, dtype, methods, waits):
    """Each method's relevance on the stand-in GPU equals the host's, and a second walk never waits."""
    host, device = Explainer(model, dtype=dtype), Explainer(model, dtype=dtype, device="cuda")
    for method in methods:
        e = device.explain(x, method=method)  # the first walk moves the constants to the device, once
        np.testing.assert_array_equal(e.relevance, host.explain(x, method=method).relevance, err_msg=method)
        waits.clear()
        device.explain(x, method=method)
        assert waits == [], method  # then the walk never waits for the device nor crosses to the host
