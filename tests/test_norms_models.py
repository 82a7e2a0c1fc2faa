"""A ConvNeXt-like classifier exported by PyTorch (tests/fixtures/norms, tools/make_norm_fixtures.py):
LayerNormalization and GELU (Erf at opset 17, Gelu at opset 20) explained, conserving, compiled; the
LayerNorm that opset 16 writes out conserving as one LayerNormalization."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, fixture_case, rel_l2, run_cli
from onnx_helpers import run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "norms"
EXPLAINED = ["convnext_opset17", "convnext_opset20"]


@pytest.fixture(params=EXPLAINED)
def model(request):
    return fixture_case(FIXTURES, request.param)


def test_the_models_hold_the_patterns(model):
    name, path, case = model
    types = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert types["LayerNormalization"] == 5 and types["Transpose"] == 8  # four channels-last LayerNorms, the head's
    assert types["Erf" if name.endswith("17") else "Gelu"] == 2
    np.testing.assert_allclose(case["ort_logits"], case["torch_logits"], atol=1e-5)


def test_inspect_is_clean(model, capsys):
    _, path, _ = model
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out
    assert "LayerNormalization         5  supported" in out


def test_gelu_outputs_are_floored(model):
    """GELU's output is negative only down to -0.17: the Linear reading it is ``floored`` (rap reads it
    as rectified, docs/rules.md signed.floored); the LayerNorms' readers are plain ``signed``."""
    _, path, _ = model
    linear = [op for op in Explainer(path).graph.ops if op.family]
    floored = [op.name for op in linear if "floored" in op.positions]
    assert floored == ["/2/mlp/module/module.3/MatMul", "/5/mlp/module/module.3/MatMul"]
    assert all(op.signed_input for op in linear)  # every linear op reads a LayerNorm's output or the stream


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rap_conserves_the_logit(model, dtype):
    _, path, case = model
    assert_rap_conserves_op_by_op(path, case["x"], dtype, "LayerNormalization", 5)


def assert_rap_conserves_op_by_op(path, x, dtype, norm_type, norms):
    """rap of targets 3 and 7 sums to the logit, with no float64 redo, and every op keeps the sum it receives
    (in float64 to rounding), the ``norms`` ops of ``norm_type`` among them."""
    e = Explainer(path, dtype=dtype).explain(x, target=[3, 7], method="rap", trace=True)
    # the logits are ONNX Runtime's float32 ones (float64's sum is its own forward's logit, 3e-7 away) ...
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.target_logit, rtol=1e-4)
    assert e.recomputed == [] and e.unconserved == []
    tol = 1e-10 if dtype == "float64" else 1e-4
    seen = 0
    for name, op_type, out, inputs in e.layer_sums[1:]:  # after the head, which turns the seed 1 into the logit
        np.testing.assert_allclose(inputs, out, rtol=tol, atol=tol * np.abs(e.target_logit).max(), err_msg=name)
        seen += op_type == norm_type
    assert seen == norms


def test_the_gradient_is_onnx_runtimes_derivative(model):
    """The gradient along random directions is the central difference of ONNX Runtime's forward (float32:
    ONNX Runtime has no float64 Conv; the LayerNorm adjoint is checked in float64 in test_norms.py)."""
    _, path, case = model
    assert_gradient_is_onnx_runtimes_derivative(path, case["x"][:1])


def assert_gradient_is_onnx_runtimes_derivative(path, x, target=3):
    """Explainer's float64 gradient of ``target`` along two random directions against central differences of
    ONNX Runtime's float32 forward of the model at ``path``."""
    proto = onnx.load(str(path))
    x = x.astype(np.float64)
    e = Explainer(path, dtype="float64").explain(x.astype(np.float32), target=target, method="gradient")
    h = 1e-2
    for seed in range(2):
        d = np.random.default_rng(seed).standard_normal(x.shape)
        d /= np.linalg.norm(d)
        up, down = (run(proto, (x + s * h * d).astype(np.float32))[0][0, target] for s in (1, -1))
        numeric = (float(up) - float(down)) / (2 * h)
        assert abs(numeric - float((e.relevance * d).sum())) < 1e-3 * abs(numeric) + 2e-5


@pytest.mark.parametrize("method, tol", [("rap", 1e-4), ("gradient", 1e-4), ("lrp-eps", 1e-3)])
def test_compiled_agrees_with_eager(model, method, tol):
    """lrp-eps's z-rule at a LayerNorm divides by x_j - mean, which float32 rounding moves most."""
    _, path, case = model
    assert_compiled_agrees_with_eager(path, case["x"], method, tol)


def assert_compiled_agrees_with_eager(path, x, method, tol):
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < tol


def test_bad_input_is_still_one_line(model, tmp_path, capsys):
    _, path, _ = model
    np.save(tmp_path / "x.npy", np.ones((1, 3, 31, 32), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err)


def test_the_written_out_layernorms_conserve_as_layernormalization():
    """Before opset 17 torch writes LayerNorm as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; each
    such chain is one LayerNormalization op (tests/test_norms_decomposed.py), which rap passes through keeping
    the sum it receives."""
    path = FIXTURES / "convnext_opset16.onnx"
    e = Explainer(path, dtype="float64").explain(np.load(path.with_suffix(".npz"))["x"], target=3, method="rap",
                                                 trace=True)
    norms = [(inputs, out) for name, op_type, out, inputs in e.layer_sums if op_type == "LayerNormalization"]
    assert len(norms) == 5 and e.unconserved == []
    for inputs, out in norms:
        np.testing.assert_allclose(inputs, out, rtol=1e-10, atol=1e-10 * np.abs(e.target_logit).max())
