"""Split (ONNX's chunk: Ultralytics' C2f blocks, ShuffleNet): each output is the part of the input it copies,
so its relevance and gradient go back to exactly that part.  Checked by hand against the same graph written
with one Slice per output, at every opset's form of the split sizes, with an output nobody reads, and on a
real Ultralytics YOLOv8 classifier export (tests/fixtures/yolo, tools/make_yolo_fixture.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rel_l2, rnd, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

YOLO = Path(__file__).resolve().parent / "fixtures" / "yolo" / "yolov8t_cls.onnx"
CHECK = YOLO.with_name("yolov8t_cls_check.npz")
SIZES = [2, 3, 1]  # uneven parts of 6 channels


def _model(split_nodes, split_inits=(), opset=13, unused=False):
    """Conv (6 channels) -> the given split of its channels into a, b, c -> Relu(a), b, c * (-1) ->
    Concat -> GlobalAveragePool -> Flatten -> Gemm (3 classes).  ``unused``: c is not read."""
    parts = ["a", "b"] if unused else ["a", "b", "cn"]
    nodes = [node("Conv", ["x", "w", "wb"], "h", pads=[1, 1, 1, 1]), *split_nodes,
             node("Relu", ["a"], "ar")]
    if not unused:
        nodes.append(node("Mul", ["c", "minus"], "cn"))
    nodes += [node("Concat", ["ar", *parts[1:]], "j", axis=1), node("GlobalAveragePool", ["j"], "p"),
              node("Flatten", ["p"], "f"), node("Gemm", ["f", "hw", "hb"], "y", transB=1)]
    width = 5 if unused else 6
    inits = [const("w", rnd((6, 2, 3, 3), 1)), const("wb", rnd(6, 2, 0.1)), const("minus", [-1.0]),
             const("hw", rnd((3, width), 3)), const("hb", rnd(3, 4, 0.1)), *split_inits]
    return make_model(nodes, [("x", [2, 2, 5, 5])], [("y", [2, 3])], inits, opset=opset)


def _slices(sizes=SIZES, unused=False):
    """The split into ``sizes`` written as Slices (the reference)."""
    out = [node("Slice", ["h", f"s{k}", f"e{k}", "axis1"], name)
           for k, name in enumerate("abc") if not (unused and name == "c")]
    inits, start = [const("axis1", [1], np.int64)], 0
    for k, size in enumerate(sizes):
        inits += [const(f"s{k}", [start], np.int64), const(f"e{k}", [start + size], np.int64)]
        start += size
    return out, inits


SPLITS = {  # every opset's way of giving the sizes
    "opset11-attribute": lambda: ([node("Split", ["h"], ["a", "b", "c"], axis=1, split=SIZES)], [], 11),
    "opset13-input": lambda: ([node("Split", ["h", "sizes"], ["a", "b", "c"], axis=1)],
                              [const("sizes", SIZES, np.int64)], 13),
    "opset18-num-outputs": lambda: ([node("Split", ["h"], ["a", "b", "c"], axis=1, num_outputs=3)], [], 18),
}


@pytest.mark.parametrize("form", SPLITS)
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a2b1", "gradient"])
def test_split_explains_as_its_slices(form, method):
    nodes, inits, opset = SPLITS[form]()
    sizes = [2, 2, 2] if form.endswith("num-outputs") else SIZES  # num_outputs splits evenly
    reference = _model(*_slices(sizes), opset=max(opset, 13))
    split = _model(nodes, inits, opset=opset)
    x = rnd((2, 2, 5, 5), 7)
    np.testing.assert_allclose(run(split, x)[0], run(reference, x)[0], rtol=1e-6)
    got = Explainer(split, dtype="float64").explain(x, method=method, target=[0, 2])
    want = Explainer(reference, dtype="float64").explain(x, method=method, target=[0, 2])
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-12, atol=1e-14)
    if method == "rap":
        logit = got.target_logit  # ONNX Runtime's float32 logit
        np.testing.assert_allclose(got.relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-6)


def test_an_output_nobody_reads_gets_no_op():
    split = _model([node("Split", ["h", "sizes"], ["a", "b", "c"], axis=1)], [const("sizes", SIZES, np.int64)],
                   unused=True)
    x = rnd((2, 2, 5, 5), 8)
    ex = Explainer(split, dtype="float64")
    assert [op.output for op in ex.graph.ops if op.op_type == "Split"] == ["a", "b"]
    got = ex.explain(x, method="rap", target=[1, 1])
    reference = Explainer(_model(*_slices(unused=True), unused=True), dtype="float64")
    want = reference.explain(x, method="rap", target=[1, 1])
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-12, atol=1e-14)


def test_split_compiles():
    nodes, inits, opset = SPLITS["opset13-input"]()
    ex = Explainer(_model(nodes, inits, opset=opset))
    x = rnd((2, 2, 5, 5), 9)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap"), shape=x.shape[1:])).run(x)
    assert rel_l2(relevance, ex.explain(x, method="rap").relevance) < 1e-6


# -- a real export: Ultralytics YOLOv8-cls -------------------------------------------

def test_yolo_classifier_conserves_and_its_gradient_is_torchs():
    """The export's logits are the Linear before its Softmax; onnxrap's gradient of each sample's top logit
    is the one torch computed when the fixture was made."""
    check = np.load(CHECK)
    x = check["x"]
    np.testing.assert_allclose(run(onnx.load(str(YOLO)), x[:1])[0], check["probs"][:1], rtol=1e-5, atol=1e-7)
    ex = Explainer(YOLO)
    assert ex.graph.explained_through == ["Softmax"]
    for i in range(len(x)):  # the export's batch is fixed at 1
        gradient = ex.explain(x[i:i + 1], method="gradient")
        assert gradient.target[0] == check["logits"][i].argmax()
        np.testing.assert_allclose(gradient.logits[0], check["logits"][i], rtol=1e-4, atol=1e-6)
        assert rel_l2(gradient.relevance[0], check["gradient"][i]) < 1e-4
        rap = ex.explain(x[i:i + 1], method="rap")
        np.testing.assert_allclose(rap.relevance.sum(), rap.target_logit[0], rtol=1e-4)
        assert rap.recomputed == [] and rap.unconserved == []


def test_yolo_classifier_compiles():
    x = np.load(CHECK)["x"][:1]
    ex = Explainer(YOLO)
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=x.shape[1:])).run(x)
        assert rel_l2(relevance, ex.explain(x, method=method).relevance) < 1e-5, method


def test_yolo_class_names_come_from_ultralytics_metadata(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.load(CHECK)["x"][:1])
    code, _, err = run_cli(["explain", YOLO, tmp_path / "x.npy", "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inputs"][0]["predicted_label"] == f"part-{summary['inputs'][0]['predicted']}"


@pytest.mark.parametrize("names, why", [("{0: 'a', 2: 'b'}", "not a dict of class indices"),
                                        ("['a', 'b']", "not a dict of class indices"),
                                        ("{0: 'a', 1: ", "not a dict of class indices")])
def test_malformed_names_metadata_is_one_line_error(tmp_path, capsys, names, why):
    model = onnx.load(str(YOLO))
    next(p for p in model.metadata_props if p.key == "names").value = names
    onnx.save(model, tmp_path / "bad.onnx")
    np.save(tmp_path / "x.npy", np.load(CHECK)["x"][:1])
    code, _, err = run_cli(["explain", tmp_path / "bad.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "bad.onnx", "names", why)


def test_names_metadata_of_another_size_is_one_line_error(tmp_path, capsys):
    model = onnx.load(str(YOLO))
    next(p for p in model.metadata_props if p.key == "names").value = "{0: 'a', 1: 'b'}"
    onnx.save(model, tmp_path / "two.onnx")
    np.save(tmp_path / "x.npy", np.load(CHECK)["x"][:1])
    code, _, err = run_cli(["explain", tmp_path / "two.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "two.onnx", "names metadata holds 2 names", "10 classes", "--labels")


def test_split_beside_a_written_out_layernorm():
    """A Split in a model whose LayerNorm is written out node by node (PyTorch before opset 17): the Split's
    parser reads what the data path reads, the fused LayerNorm's nodes included."""
    nodes = [node("Split", ["x", "halves"], ["a", "b"], axis=1), node("Concat", ["b", "a"], "s", axis=1),
             node("ReduceMean", ["s"], "mean", axes=[-1]), node("Sub", ["s", "mean"], "d"),
             node("Pow", ["d", "two"], "sq"), node("ReduceMean", ["sq"], "var", axes=[-1]),
             node("Add", ["var", "eps"], "ve"), node("Sqrt", ["ve"], "sd"), node("Div", ["d", "sd"], "n"),
             node("Flatten", ["n"], "f"), node("MatMul", ["f", "W"], "y")]
    inits = [const("halves", [2, 2], np.int64), const("two", 2.0), const("eps", 1e-5), const("W", rnd((24, 3), 2))]
    model = make_model(nodes, [("x", [2, 4, 6])], [("y", [2, 3])], inits)
    ex = Explainer(model, dtype="float64")
    assert [op.op_type for op in ex.graph.ops].count("LayerNormalization") == 1
    rap = ex.explain(rnd((2, 4, 6), 3), method="rap", target=[0, 2])
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2)), rap.target_logit, rtol=1e-6)
