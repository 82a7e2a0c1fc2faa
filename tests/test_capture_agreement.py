"""The capture's check against a plain ONNX Runtime run (capture.py) allows what the device's own kernels
differ by (device.py, ``agreement``): rounding on the CPU, cuDNN's kernel choices on a GPU (measured on an
H200), 1% with TF32, where a refusal says to explain without it."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import DIGITS
from onnxrap import Explainer
from onnxrap.backend import numpy_backend
from onnxrap.device import CudaDevice, Device
from onnxrap.errors import ModelError

PLAIN = np.array([[10.0, -3.0, 0.5]], dtype=np.float32)


def _capture(device):
    capture = Explainer(DIGITS).capture
    capture.device = device
    return capture


def _device(kind, tf32=False):
    cls = CudaDevice if kind == "cuda" else Device
    return cls(kind, numpy_backend(), [], kind, tf32)  # the check needs the device's numbers, not its GPU


@pytest.mark.parametrize("kind, tf32, share, agrees", [
    ("cpu", False, 1e-5, True), ("cpu", False, 3.4e-4, False),     # rounding only on the CPU
    ("cuda", False, 3.4e-4, True), ("cuda", False, 5e-3, False),   # cuDNN's kernels apart, as on the H200
    ("cuda", True, 5e-3, True), ("cuda", True, 3e-2, False)])       # TF32
def test_the_check_allows_what_the_device_differs_by(kind, tf32, share, agrees):
    got = PLAIN + share * np.abs(PLAIN).max() * np.array([[1.0, -1.0, 1.0]], dtype=np.float32)
    capture = _capture(_device(kind, tf32))
    if agrees:
        capture._verify(got, PLAIN)
    else:
        with pytest.raises(ModelError, match="disagrees with a plain ONNX Runtime run") as refused:
            capture._verify(got, PLAIN)
        assert ("without --tf32" in str(refused.value)) == tf32
