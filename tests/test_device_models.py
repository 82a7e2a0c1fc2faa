"""On a GPU: the ops of the exported fixtures (attention, nn.MultiheadAttention rewritten batch-first, products
of two data tensors and norms, per-sample constants and Resize sizes of a free batch, Hugging Face's Swin) give
the float64 numbers as the CPU's float32 does.  Skipped without a usable CUDA GPU (tests/test_device.py covers
device selection; the stand-in GPU tests cover the same ops' device arrays on the CPU)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import rel_l2
from test_device import needs_gpu
from onnxrap import Explainer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODELS = ["attention/vit_digits", "mha/seqfirst_opset17", "mha/torchvision_opset17", "products/gmlp", "products/convnextv2",
          "products/linattn_digits", "per_sample/class_token_add", "per_sample/resize_to_size", "hf/swin"]


@needs_gpu
@pytest.mark.parametrize("model", MODELS)
# lrp-eps divides by each unit's z, near 0 for some: on the CPU its float32 maps are already 1e-5 to 9e-4 from
# float64 on these models (rap and the gradient: under 1.2e-6), so another float32 rounding moves it more.
@pytest.mark.parametrize("method, floor, factor", [("rap", 1e-4, 3), ("gradient", 1e-4, 3), ("lrp-eps", 1e-3, 10)])
def test_gpu_float32_is_as_close_to_float64_as_the_cpus(model, method, floor, factor):
    path = FIXTURES / f"{model}.onnx"
    x = np.load(path.with_suffix(".npz"))["x"][:2]
    truth = Explainer(path, dtype="float64").explain(x, method=method)
    target = truth.target
    cpu = Explainer(path).explain(x, method=method, target=target).relevance
    gpu_e = Explainer(path, device="cuda").explain(x, method=method, target=target)
    gpu = gpu_e.relevance
    err_cpu, err_gpu = rel_l2(cpu, truth.relevance), rel_l2(gpu, truth.relevance)
    print(f"{model} {method}: cpu {err_cpu:.1e} gpu {err_gpu:.1e}")
    assert err_gpu <= max(floor, factor * err_cpu), (err_cpu, err_gpu)
    if method == "rap":
        sums = gpu.reshape(len(x), -1).sum(axis=1, dtype=np.float64)
        np.testing.assert_allclose(sums, gpu_e.target_logit, rtol=1e-4, atol=1e-4 * np.abs(gpu_e.target_logit).max())
