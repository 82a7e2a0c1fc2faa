"""ResNet-like classifiers with GroupNorm (2 groups, as BiT's) and InstanceNorm2d(affine=True), exported by
PyTorch at opset 17 (tests/fixtures/norms, tools/make_norm_fixtures.py): torch writes GroupNorm as Reshape
(N, 2, -1), InstanceNormalization (scale 1, bias 0), Reshape back, Mul, Add, which onnxrap explains as they stand.
Inspected clean, conserving op by op, the gradient ONNX Runtime's derivative, compiled == eager."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import fixture_case, run_cli
from test_norms_models import (assert_compiled_agrees_with_eager, assert_gradient_is_onnx_runtimes_derivative,
                               assert_rap_conserves_op_by_op)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "norms"
PATTERNS = {"resnet_groupnorm_opset17": {"InstanceNormalization": 6, "Reshape": 12, "Mul": 6},
            "resnet_instancenorm_opset17": {"InstanceNormalization": 6, "Reshape": 0, "Mul": 0}}


@pytest.fixture(params=list(PATTERNS))
def model(request):
    return fixture_case(FIXTURES, request.param)


def test_the_models_hold_the_patterns(model):
    name, path, case = model
    types = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert {t: types[t] for t in PATTERNS[name]} == PATTERNS[name]
    np.testing.assert_allclose(case["ort_logits"], case["torch_logits"], atol=1e-5)


def test_inspect_is_clean(model, capsys):
    _, path, _ = model
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out
    assert "InstanceNormalization      6  supported" in out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rap_conserves_the_logit(model, dtype):
    _, path, case = model
    assert_rap_conserves_op_by_op(path, case["x"], dtype, "InstanceNormalization", 6)


def test_the_gradient_is_onnx_runtimes_derivative(model):
    """Against central differences of ONNX Runtime's float32 forward (it has no float64 Conv or
    InstanceNormalization; the adjoint is checked in float64 in test_groupnorm.py)."""
    _, path, case = model
    assert_gradient_is_onnx_runtimes_derivative(path, case["x"][:1])


@pytest.mark.parametrize("method, tol", [("rap", 1e-4), ("gradient", 1e-4), ("lrp-eps", 1e-3)])
def test_compiled_agrees_with_eager(model, method, tol):
    _, path, case = model
    assert_compiled_agrees_with_eager(path, case["x"], method, tol)
