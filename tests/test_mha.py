"""nn.MultiheadAttention's exports (tests/fixtures/mha, tools/make_mha_fixtures.py): PyTorch computes attention
sequence-first, moving the batch axis and merging it with the heads; onnxrap/batch_first.py rewrites those
tensors batch-first.  The rewritten model computes what the exported one does, every method explains it, rap
conserves, the gradient is PyTorch's, compiled == eager; what the rewrite cannot prove stays refused in one line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, fixture_case, manifest_names, rel_l2, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.batch_first import NotRewritten, batch_axis_restored
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.errors import UnsupportedOpsError
from onnxrap.graph import Graph, data_tensors
from onnxrap.ops.attention import DataMatMul

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mha"
NAMES = manifest_names(FIXTURES)
GRADIENT_CLASS = 3  # the class of the npz files' torch_gradient (tools/make_attention_fixtures.py's write)
# one of each model and exporter, the fixed batch among them
COMPILED = ["torchvision_opset17", "torchvision_dynamo", "torchvision_batch1_opset17", "seqfirst_opset14",
            "seqfirst_batch1_dynamo", "weights_opset17", "batchfirst_dynamo", "seqcat_batch2_opset17", "cross_dynamo"]


@pytest.fixture(params=NAMES)
def model(request):
    return fixture_case(FIXTURES, request.param)


def moves_of_the_batch(model):
    """The data path's Transposes that move axis 0."""
    return [n.name for n in model.graph.node if n.op_type == "Transpose" and
            next(a.ints for a in n.attribute if a.name == "perm")[0] != 0]


def test_the_fixtures_are_what_the_manifest_says():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    assert manifest["versions"]["torch"].startswith("2.13") and len(NAMES) == 22
    for name in NAMES:
        assert moves_of_the_batch(onnx.load(FIXTURES / f"{name}.onnx")), name  # as exported: sequence-first


def test_the_rewrite_is_exact_and_batch_first(model):
    """The rewritten model: no Transpose moves the batch axis any more, and ONNX Runtime computes the exported
    model's logits from it, at the fixture's batch and (a free batch) at 3; the caller's model is not changed."""
    name, path, case = model
    exported = onnx.load(path)
    before = exported.SerializeToString()
    graph = Graph(exported)
    assert exported.SerializeToString() == before
    assert graph.batch_first_nodes > 0 and moves_of_the_batch(graph.model) == []
    xs = [case["x"]] + ([np.concatenate([case["x"], case["x"][:1] * 0.5])] if graph.fixed_batch is None else [])
    for x in xs:
        (expected,) = run(exported, x)
        (got,) = run(graph.model, x)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(case["ort_logits"], case["torch_logits"], atol=1e-5)


def test_the_attention_is_a_gated_product(model):
    """Per attention one P @ V gated by the Softmax (a linear map of V) and one Q @ K^T that only computes it."""
    _, path, _ = model
    layers = sum(n.op_type == "Softmax" for n in onnx.load(path).graph.node)
    ops = [op for op in Explainer(path).graph.ops if isinstance(op, DataMatMul)]
    gated = [op for op in ops if op.gate is not None]
    assert layers >= 1 and len(ops) == 2 * layers and len(gated) == layers


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rap_conserves_the_logit(model, dtype):
    """rap of classes 3 and 7 sums to their logits, every op keeping the sum it receives; the logits are ONNX
    Runtime's."""
    _, path, case = model
    targets = [3, 7][:len(case["x"])]
    e = Explainer(path, dtype=dtype).explain(case["x"], target=targets, method="rap", trace=True)
    np.testing.assert_allclose(e.logits, case["ort_logits"], rtol=0, atol=1e-5 * np.abs(case["ort_logits"]).max())
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.target_logit, rtol=1e-4)
    assert e.recomputed == [] and e.unconserved == []
    tol = 1e-10 if dtype == "float64" else 1e-4
    for name, _, out, inputs in e.layer_sums[1:]:  # after the head, which turns the seed 1 into the logit
        np.testing.assert_allclose(inputs, out, rtol=tol, atol=tol * np.abs(e.target_logit).max(), err_msg=name)


def test_the_gradient_is_torchs(model):
    """The float64 gradient through the rewritten graph is PyTorch's float64 autograd gradient of the model."""
    _, path, case = model
    e = Explainer(path, dtype="float64").explain(case["x"], target=GRADIENT_CLASS, method="gradient")
    reference = case["torch_gradient"]
    assert np.abs(e.relevance - reference).max() < 1e-6 * np.abs(reference).max()


@pytest.mark.parametrize("name", ["torchvision_opset17", "seqfirst_dynamo"])
def test_every_method_explains_it(name):
    """Every registered method runs on the rewritten graph: finite relevance of the input's shape, not all 0."""
    path, case = fixture_case(FIXTURES, name)[1:]
    ex = Explainer(path)
    for method in methods.FACTORIES:
        relevance = ex.explain(case["x"], target=GRADIENT_CLASS, method=method).relevance
        assert relevance.shape == case["x"].shape and np.isfinite(relevance).all() and np.abs(relevance).max() > 0, \
            method


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("method", ["rap", "gradient"])
def test_compiled_agrees_with_eager(name, method):
    path, case = fixture_case(FIXTURES, name)[1:]
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"])
    assert rel_l2(relevance, ex.explain(case["x"], method=method).relevance) < 1e-4


def test_inspect_and_explain_say_it(tmp_path, capsys):
    path, case = fixture_case(FIXTURES, "torchvision_opset17")[1:]
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out
    assert "56 node(s) rewritten batch-first" in out
    np.save(tmp_path / "x.npy", case["x"][:1])
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out", "--method", "rap"], capsys)
    assert code == 0, err
    (item,) = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]
    assert item["methods"]["rap"]["conserved"] is True


# -- what the rewrite cannot prove: refused as before, one line naming the nodes -------------------------------

def sequence_first(mixing):
    """``(N, 4, 3) -> Transpose (4, N, 3) -> mixing -> Transpose back -> mean over tokens -> MatMul (N, 2)``:
    ``mixing`` is ``(nodes, its output)`` reading ``moved`` (constants: ``two``, ``axis``)."""
    nodes, out = mixing
    w = np.arange(6, dtype=np.float32).reshape(3, 2) / 6 - 0.4
    return make_model([node("Transpose", ["x"], ["moved"], name="to_sequence_first", perm=[1, 0, 2]), *nodes,
                       node("Transpose", [out], ["back"], name="to_batch_first", perm=[1, 0, 2]),
                       node("ReduceMean", ["back"], ["pooled"], axes=[1], keepdims=0),
                       node("MatMul", ["pooled", "w"], ["logits"])],
                      [("x", ["N", 4, 3])], [("logits", None)],
                      [const("w", w), const("two", np.full((1, 3), 2.0)), const("axis", np.array(0), np.int64)])


@pytest.mark.parametrize("named", [True, False])
def test_sequence_first_arithmetic_is_explained(named):
    """Centring over the tokens, a ReLU and a scale, sequence-first: rewritten (nodes named or not), and rap
    conserves."""
    model = sequence_first(([node("ReduceMean", ["moved"], ["mean"], axes=[0], keepdims=1),
                             node("Sub", ["moved", "mean"], ["centred"]), node("Relu", ["centred"], ["r"]),
                             node("Mul", ["r", "two"], ["scaled"])], "scaled"))
    for n in model.graph.node if not named else ():
        n.name = ""
    x = np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32)
    ex = Explainer(model)
    assert ex.graph.batch_first_nodes == 6
    e = ex.explain(x, target=1, method="rap")
    np.testing.assert_allclose(e.logits, run(model, x)[0], rtol=1e-6)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2)), e.target_logit, rtol=1e-5)


@pytest.mark.parametrize("mixing, refused", [
    (([node("Softmax", ["moved"], ["p"], axis=1)], "p"), "Softmax_p: computes over the batch axis"),
    (([node("ReduceMax", ["moved"], ["top"], axes=[1], keepdims=1), node("Sub", ["moved", "top"], ["d"])], "d"),
     "ReduceMax_top: computes over the batch axis"),
    (([node("CumSum", ["moved", "axis"], ["c"])], "c"), "CumSum_c (CumSum) reads a tensor whose batch axis moved"),
])
def test_what_mixes_the_samples_stays_refused(mixing, refused, tmp_path, capsys):
    """An op across the samples (a Softmax or a maximum over the batch axis), or one the rewrite does not know:
    no rewrite, and explain names the batch-moving Transpose in one line, as before."""
    model = sequence_first(mixing)
    with pytest.raises(NotRewritten, match=re.escape(refused)):
        batch_axis_restored(model, "x", data_tensors(model.graph.node, "x"), [None, 4, 3], onnx.TensorProto.FLOAT)
    named = f"to_sequence_first (Transpose: moving the batch axis (not rewritten batch-first: {refused}))"
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    assert named in str(info.value)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4, 3), np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, named)
