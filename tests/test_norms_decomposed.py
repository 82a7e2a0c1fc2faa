"""LayerNorm as PyTorch writes it before opset 17 (passes.layernorms_written_out): the ConvNeXt-like fixture of
opset 16 explains as its opset-17 twin does, to float32 rounding; a hand-built pattern over two trailing axes
as LayerNormalization; the near misses stay refused, their nodes named."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rel_l2, run_cli
from onnx_helpers import const, make_model, node
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.graph import Graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "norms"
WRITTEN_OUT, ONE_OP = FIXTURES / "convnext_opset16.onnx", FIXTURES / "convnext_opset17.onnx"


def test_the_opset16_fixture_inspects_clean(capsys):
    code, out, _ = run_cli(["inspect", WRITTEN_OUT], capsys)
    assert code == 0 and "explainable: yes" in out
    assert "explained as LayerNormalization: Add 10, Div 5, Mul 5, Pow 5, ReduceMean 10, Sqrt 5, Sub 5" in out
    layernorms = [op for op in Graph(WRITTEN_OUT).ops if op.op_type == "LayerNormalization"]
    assert [op.axis for op in layernorms] == [-1] * 5
    assert all(op.scale_values.shape == op.bias_values.shape == (16 if k < 3 else 32,)
               for k, op in enumerate(layernorms))


@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps"])
def test_relevance_equals_the_layernormalization_twins(method):
    """The same torch model, exported at opsets 16 and 17, on the same inputs (the npz): one explanation."""
    x = np.load(WRITTEN_OUT.with_suffix(".npz"))["x"]
    np.testing.assert_array_equal(x, np.load(ONE_OP.with_suffix(".npz"))["x"])
    written, one = (Explainer(p).explain(x, target=[3, 7], method=method) for p in (WRITTEN_OUT, ONE_OP))
    np.testing.assert_allclose(written.target_logit, one.target_logit, rtol=1e-5)
    scale = np.abs(one.relevance).max()
    np.testing.assert_allclose(written.relevance, one.relevance, rtol=1e-4, atol=1e-5 * scale)


def test_the_logits_agree():
    written, one = (np.load(p.with_suffix(".npz")) for p in (WRITTEN_OUT, ONE_OP))
    np.testing.assert_allclose(written["ort_logits"], one["ort_logits"], atol=1e-5)
    np.testing.assert_allclose(written["torch_logits"], one["torch_logits"], atol=1e-6)


@pytest.mark.parametrize("method, tol", [("rap", 1e-4), ("gradient", 1e-4), ("lrp-eps", 1e-3)])
def test_compiled_agrees_with_eager(method, tol):
    """As for the opset-17 fixture (test_norms_models.py): lrp-eps divides by x_j - mean."""
    x = np.load(WRITTEN_OUT.with_suffix(".npz"))["x"]
    ex = Explainer(WRITTEN_OUT)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < tol


W = np.random.default_rng(0).standard_normal((24, 3))
GAMMA, BETA = np.random.default_rng(1).normal(size=(4, 6)), np.random.default_rng(2).normal(size=(4, 6))


def classifier(norm_nodes, inits=(), opset=13):
    """x (2, 4, 6) -> the nodes (to ``n``) -> Flatten -> MatMul: logits (2, 3)."""
    nodes = norm_nodes + [node("Flatten", ["n"], "f", name="flat"), node("MatMul", ["f", "W"], "logits", name="head")]
    return make_model(nodes, [("x", [2, 4, 6])], [("logits", [2, 3])], [const("W", W), *inits], opset=opset)


def written_out(axes=(-1,), exponent=2.0, mean_reader=False, opset=13):
    """The torch pattern by hand, with ``scale`` and ``bias``; at opset 18 the ReduceMeans' axes are an input."""
    def reduce(inp, out, name):
        if opset >= 18:
            return node("ReduceMean", [inp, "axes"], out, name=name)
        return node("ReduceMean", [inp], out, name=name, axes=list(axes))
    nodes = [reduce("x", "mean", "mean"), node("Sub", ["x", "mean"], "d", name="centre"),
             node("Pow", ["d", "two"], "sq", name="square"), reduce("sq", "var", "variance"),
             node("Add", ["var", "eps"], "ve", name="plus_eps"), node("Sqrt", ["ve"], "sd", name="sigma"),
             node("Div", ["d", "sd"], "xhat", name="divide"), node("Mul", ["xhat", "scale"], "s", name="times_scale"),
             node("Add", ["s", "bias"], "n0", name="plus_bias")]
    nodes += [node("Add", ["n0", "mean"], "n", name="reads_the_mean")] if mean_reader else \
        [node("Identity", ["n0"], "n", name="same")]
    inits = [const("two", exponent), const("eps", 1e-5), const("scale", GAMMA), const("bias", BETA)]
    return classifier(nodes, inits + ([const("axes", list(axes), np.int64)] if opset >= 18 else []), opset)


def test_two_trailing_axes_given_as_an_input_are_one_layernormalization():
    """Opset 18's ReduceMean (axes an input), axes 1 and 2 of a rank-3 tensor: LayerNormalization(axis=1)."""
    x = np.random.default_rng(3).standard_normal((2, 4, 6)).astype(np.float32)
    ln = [node("LayerNormalization", ["x", "scale", "bias"], "n", name="ln", axis=1, epsilon=1e-5)]
    one = classifier(ln, [const("scale", GAMMA), const("bias", BETA)], opset=18)
    written = written_out(axes=(1, 2), opset=18)
    ops = [op for op in Graph(written).ops if op.op_type == "LayerNormalization"]
    assert len(ops) == 1 and ops[0].name == "mean" and ops[0].axis == -2
    for method in ("rap", "gradient", "lrp-eps"):
        a, b = (Explainer(m, dtype="float64").explain(x, target=1, method=method) for m in (written, one))
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-9, atol=1e-12, err_msg=method)


def test_the_pattern_without_a_change_is_recognised():
    """What the near misses below differ from: the written-out LayerNorm, one op, nothing refused."""
    graph = Graph(written_out(), strict=False)
    assert graph.unsupported == [] and [op.op_type for op in graph.ops][0] == "LayerNormalization"


@pytest.mark.parametrize("change", [dict(exponent=3.0)], ids=["Pow exponent 3"])
def test_near_misses_stay_refused_with_their_nodes_named(change, tmp_path, capsys):
    """(Near misses whose sigma is proven positive, another reader of the mean, an axis not trailing, are
    explained op by op: the Div by sigma is a scale, docs/rules.md, products.)"""
    model = written_out(**change)
    refused = {name for name, _, _ in Graph(model, strict=False).unsupported}
    assert {"sigma", "divide"} <= refused  # the square alone is a Pow activation
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((2, 4, 6), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "sigma (Sqrt", "divide (Div")
