"""torchvision's own model code, exported by torch.onnx as users export it (tests/fixtures/torchvision, written by
``tools/torchvision_sweep.py --fixtures``; see the README there): MobileNetV2/V3, EfficientNet, ShuffleNetV2,
DenseNet, RegNetY, ResNeXt and ResNet blocks, GoogLeNet's Inception block, SqueezeNet's Fire modules and
ConvNeXt at reduced widths, from the TorchScript exporter (opset 17, free batch) and, for some, the dynamo
exporter.  Only onnx, onnxruntime and numpy are needed: torch's logits and its float64 autograd gradient are
stored beside each model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import assert_files_small, assert_rap_conserves, fixture_case, manifest_names, rel_l2, run_cli
from onnx_helpers import run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "torchvision"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NAMES = manifest_names(FIXTURES)


@pytest.fixture(params=NAMES)
def case(request):
    return fixture_case(FIXTURES, request.param)


def test_every_file_is_small():
    assert_files_small(FIXTURES, NAMES, 1.5e6, 10e6)


def test_the_logits_are_onnx_runtimes_and_torchs(case):
    """float32 to its rounding in a 50-layer network: ONNX Runtime's sessions differ by up to 5e-6 of the largest
    logit (its capture session keeps intermediate tensors, which changes its fusions)."""
    _, path, data = case
    scale = np.abs(data["ort_logits"]).max()
    np.testing.assert_allclose(run(onnx.load(path), data["x"])[0], data["ort_logits"], rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(data["ort_logits"], data["torch_logits"], rtol=0, atol=1e-4 * scale)
    e = Explainer(path).explain(data["x"], target=data["target"], method="gradient")
    np.testing.assert_allclose(e.logits, data["ort_logits"], rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("float64", 1e-6)])
def test_rap_conserves_the_logit(case, dtype, tol):
    """float32 without a float64 redo; float64 (onnxrap's own forward) to its rounding of ONNX Runtime's logit."""
    assert_rap_conserves(*case[1:], dtype=dtype, rtol=max(tol, 1e-5), atol=tol)


def test_the_gradient_is_torchs(case):
    """onnxrap's float64 gradient (its own forward from the input) is torch autograd's, in float64 too: every
    op's adjoint, not only the ones rap reads.  1e-5, not rounding: the TorchScript exporter folds BatchNorm into
    the convolutions' float32 weights, which torch's float64 model does not round."""
    _, path, data = case
    e = Explainer(path, dtype="float64").explain(data["x"], target=data["target"], method="gradient")
    assert rel_l2(e.relevance, data["torch_grad64"]) < 1e-5


@pytest.mark.parametrize("method", ["rap", "gradient"])
def test_compiled_agrees_with_eager(case, method):
    _, path, data = case
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(data["x"], data["target"])
    assert rel_l2(relevance, ex.explain(data["x"], target=data["target"], method=method).relevance) < 1e-4


def test_inspect_is_clean(case, capsys):
    _, path, _ = case
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out


def test_shufflenet_holds_the_split_patterns():
    """The dynamo exporter writes ``chunk(2, dim=1)`` as Split; the TorchScript exporter with a free batch as
    two Slices bounded by arithmetic on ``Shape`` (tests/test_torchvision_patterns.py builds both by hand)."""
    assert MANIFEST["files"]["shufflenet_v2_dynamo"]["ops"]["Split"] == 6
    ops = MANIFEST["files"]["shufflenet_v2_torchscript"]["ops"]
    assert ops["Slice"] == 12 and ops["Shape"] > 0 and "Split" not in ops
