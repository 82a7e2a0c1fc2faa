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

from helpers import rel_l2, run_cli
from onnx_helpers import run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "norms"
PATTERNS = {"resnet_groupnorm_opset17": {"InstanceNormalization": 6, "Reshape": 12, "Mul": 6},
            "resnet_instancenorm_opset17": {"InstanceNormalization": 6, "Reshape": 0, "Mul": 0}}


@pytest.fixture(params=list(PATTERNS))
def model(request):
    path = FIXTURES / f"{request.param}.onnx"
    return request.param, path, np.load(path.with_suffix(".npz"))


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
    e = Explainer(path, dtype=dtype).explain(case["x"], target=[3, 7], method="rap", trace=True)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.target_logit, rtol=1e-4)
    assert e.recomputed == [] and e.unconserved == []
    # every op keeps the sum it receives: in float64 to rounding, the norms included
    tol = 1e-10 if dtype == "float64" else 1e-4
    norms = 0
    for name, op_type, out, inputs in e.layer_sums[1:]:  # after the head, which turns the seed 1 into the logit
        np.testing.assert_allclose(inputs, out, rtol=tol, atol=tol * np.abs(e.target_logit).max(), err_msg=name)
        norms += op_type == "InstanceNormalization"
    assert norms == 6


def test_the_gradient_is_onnx_runtimes_derivative(model):
    """Along random directions, against central differences of ONNX Runtime's float32 forward (it has no
    float64 Conv or InstanceNormalization; the adjoint is checked in float64 in test_groupnorm.py)."""
    _, path, case = model
    proto = onnx.load(str(path))
    x = case["x"][:1].astype(np.float64)
    e = Explainer(path, dtype="float64").explain(x.astype(np.float32), target=3, method="gradient")
    h = 1e-2
    for seed in range(2):
        d = np.random.default_rng(seed).standard_normal(x.shape)
        d /= np.linalg.norm(d)
        up, down = (run(proto, (x + s * h * d).astype(np.float32))[0][0, 3] for s in (1, -1))
        numeric = (float(up) - float(down)) / (2 * h)
        assert abs(numeric - float((e.relevance * d).sum())) < 1e-3 * abs(numeric) + 2e-5


@pytest.mark.parametrize("method, tol", [("rap", 1e-4), ("gradient", 1e-4), ("lrp-eps", 1e-3)])
def test_compiled_agrees_with_eager(model, method, tol):
    _, path, case = model
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"])
    eager = ex.explain(case["x"], method=method).relevance
    assert rel_l2(relevance, eager) < tol
