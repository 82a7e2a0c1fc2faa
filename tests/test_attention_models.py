"""ViT-like classifiers exported by PyTorch (tests/fixtures/attention, tools/make_attention_fixtures.py):
self-attention as TorchScript (opsets 14 and 17) and dynamo write it, explained, conserving, with the true
gradient (against PyTorch's autograd), compiled; nn.MultiheadAttention's exports too, rewritten batch-first
(onnxrap/batch_first.py; more in tests/test_mha.py)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import fixture_case, rel_l2, run_cli
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, NotCompilable, compile_graph
from onnxrap.ops.attention import DataMatMul

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "attention"
GRADIENT_CLASS = 3  # the class of the npz files' torch_gradient (tools/make_attention_fixtures.py)
TORCHSCRIPT = ["vit_manual_opset17", "vit_manual_opset14", "vit_sdpa_opset17", "vit_sdpa_opset14", "vit_timm_opset17",
               "vit_meanpool_manual_opset17"]
MULTIHEAD = ["vit_mha_opset17", "vit_mha_opset14", "vit_mha_dynamo"]
EXPLAINED = TORCHSCRIPT + ["vit_sdpa_dynamo", "vit_timm_dynamo"] + MULTIHEAD


def load(name):
    return fixture_case(FIXTURES, name)[1:]


@pytest.fixture(params=EXPLAINED)
def model(request):
    return fixture_case(FIXTURES, request.param)


def test_the_models_hold_attention(model):
    """Two blocks, each a Softmax between two MatMuls of data tensors; ONNX Runtime computes what torch did."""
    name, path, case = model
    types = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert types["Softmax"] == 2
    np.testing.assert_allclose(case["ort_logits"], case["torch_logits"], atol=1e-5)
    ops = [op for op in Explainer(path).graph.ops if isinstance(op, DataMatMul)]
    gated = [op for op in ops if op.gate is not None]
    assert len(ops) == 4 and len(gated) == 2 and all(op.gate_on_left for op in gated)


def test_inspect_is_clean(model, capsys):
    _, path, _ = model
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out
    assert "Softmax                    2  supported" in out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rap_conserves_the_logit(model, dtype):
    """rap of targets 3 and 7 sums to the logit with no float64 redo, and every op keeps the sum it receives
    (float64: to rounding), the two P @ V among them."""
    _, path, case = model
    e = Explainer(path, dtype=dtype).explain(case["x"], target=[3, 7], method="rap", trace=True)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.target_logit, rtol=1e-4)
    assert e.recomputed == [] and e.unconserved == []
    attention = {op.name for op in Explainer(path).graph.ops if isinstance(op, DataMatMul) and op.gate is not None}
    tol = 1e-10 if dtype == "float64" else 1e-4
    seen = set()
    for name, _, out, inputs in e.layer_sums[1:]:  # after the head, which turns the seed 1 into the logit
        np.testing.assert_allclose(inputs, out, rtol=tol, atol=tol * np.abs(e.target_logit).max(), err_msg=name)
        seen.add(name)
    assert attention <= seen


def test_the_gradient_is_torchs(model):
    """The float64 gradient, through both factors of every MatMul of data, the Softmax, LayerNorm and GELU, is
    PyTorch's autograd gradient (float64, same weights) to float64 rounding of the float32 weights' products."""
    _, path, case = model
    e = Explainer(path, dtype="float64").explain(case["x"], target=GRADIENT_CLASS, method="gradient")
    reference = case["torch_gradient"]
    assert np.abs(e.relevance - reference).max() < 1e-6 * np.abs(reference).max()


@pytest.mark.parametrize("name", TORCHSCRIPT + ["vit_timm_dynamo"] + MULTIHEAD)
@pytest.mark.parametrize("method, tol", [("rap", 1e-4), ("gradient", 1e-4), ("lrp-eps", 1e-3)])
def test_compiled_agrees_with_eager(name, method, tol):
    path, case = load(name)
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"])
    assert rel_l2(relevance, ex.explain(case["x"], method=method).relevance) < tol


def test_timms_qkv_split_is_one_op_per_part(capsys):
    """timm's ``qkv.reshape(N, T, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)`` moves the batch axis second
    and splits it back off: TorchScript writes Transpose, Split, Squeeze, dynamo Transpose, Slice, Squeeze;
    each of q, k and v is one op that keeps the batch axis first (passes.heads_unbound)."""
    for name, nodes in (("vit_timm_opset17", "Split 2, Squeeze 6, Transpose 2"),
                        ("vit_timm_dynamo", "Slice 6, Squeeze 6, Transpose 2")):
        code, out, _ = run_cli(["inspect", FIXTURES / f"{name}.onnx"], capsys)
        assert code == 0 and f"split off past the batch axis, explained as one Transpose each: {nodes}" in out


@pytest.mark.parametrize("name", ["vit_sdpa_batch1_opset17", "vit_sdpa_batch1_dynamo"])
def test_a_fixed_batch_of_one(name):
    """Exported for a batch of one (no dynamic axes): dynamo's Reshape of the keys to (heads, T, d) changes the
    batch axis, but only on the way to the Softmax, where relevance never goes: explained, conserving, with
    torch's gradient, and compiled (the batch is fixed, so the graph holds the Reshape as it is)."""
    path, case = load(name)
    ex = Explainer(path)
    e = ex.explain(case["x"], target=GRADIENT_CLASS, method="rap")
    np.testing.assert_allclose(e.relevance.sum(), e.target_logit, rtol=1e-5)
    gradient = Explainer(path, dtype="float64").explain(case["x"], target=GRADIENT_CLASS, method="gradient")
    assert np.abs(gradient.relevance - case["torch_gradient"]).max() < 1e-6 * np.abs(case["torch_gradient"]).max()
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"], [GRADIENT_CLASS])
        assert rel_l2(relevance, ex.explain(case["x"], target=GRADIENT_CLASS, method=method).relevance) < 1e-4


def test_dynamos_merged_batch_is_compiled_only_where_the_walk_avoids_it(tmp_path, monkeypatch):
    """dynamo transposes the keys by reshaping (N, heads, T, d) to (N * heads, T, d): a graph for any batch size
    cannot hold that.  rap never walks there (the gate's branch) and compiles; the gradient does, so compile
    names the op and the onnx engine explains it eagerly."""
    path, case = load("vit_sdpa_dynamo")
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap"))).run(case["x"])
    assert rel_l2(relevance, ex.explain(case["x"], method="rap").relevance) < 1e-4
    with pytest.raises(NotCompilable) as info:
        compile_graph(ex.graph, methods.get("gradient"))
    assert "(Reshape: merges the batch axis with another" in str(info.value)
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path / "cache"))
    onnx_engine = Explainer(path, engine="onnx")
    e = onnx_engine.explain(case["x"], method="gradient")
    assert onnx_engine.engine_note.startswith("eager: ") and "merges the batch axis" in onnx_engine.engine_note
    np.testing.assert_array_equal(e.relevance, ex.explain(case["x"], method="gradient").relevance)


def test_explain_end_to_end(tmp_path, capsys):
    path, case = load("vit_manual_opset17")
    np.save(tmp_path / "x.npy", case["x"][:1])
    code, out, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out", "--method",
                              "rap,gradient"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "x_rap+gradient.png").is_file()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    (item,) = summary["inputs"]
    assert item["methods"]["rap"]["conserved"] is True


def test_the_trained_vit_conserves_and_compiles():
    """The ViT trained on the digits (tools/make_attention_fixtures.py --digits): it classifies its held-out
    digits, rap sums to each true class's logit in float32 with no redo, and compiled == eager."""
    path, case = load("vit_digits")
    ex = Explainer(path)
    e = ex.explain(case["x"], target=case["y"], method="rap")
    assert (e.logits.argmax(axis=1) == case["y"]).mean() >= 0.85
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.target_logit, rtol=1e-5, atol=1e-5)
    assert e.recomputed == [] and e.unconserved == []
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap"))).run(case["x"], case["y"])
    assert rel_l2(relevance, e.relevance) < 1e-4
