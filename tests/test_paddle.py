"""Real pretrained models exported by PaddlePaddle (paddle2onnx), shipped in PyPI wheels
(tests/fixtures/paddle, tools/fetch_paddle_fixtures.py): PaddleOCR's text-orientation classifier, a
MobileNetV3-small whose hard-swish is ``x * Clip(x + 3, 0, 6) / 6`` and whose Softmax sits behind an
Identity.  Inspected clean, explained, conserving, compiled; the images are text lines
(tools/make_paddle_text_lines.py), upright (class "0") and rotated by 180 degrees (class "180")."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from helpers import assert_one_line_error, rel_l2, run_cli
from onnx_helpers import run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.ops.elementwise import Gate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddle"
CLS = FIXTURES / "ch_ppocr_mobile_v2.0_cls_infer.onnx"  # rapidocr-onnxruntime 1.4.4
MODELS = [CLS, FIXTURES / "ppocrv5_cls_p2o.onnx"]  # the same weights through a newer paddle2onnx
LINES = ["line01_0.png", "line01_180.png", "line13_0.png", "line13_180.png"]


def text_lines():
    """The fixture images as RapidOCR's ch_ppocr_cls feeds them: (p / 255 - 0.5) / 0.5, BGR (the text is
    grey, so the order changes nothing), (4, 3, 48, 192); and their true classes."""
    pixels = np.stack([np.asarray(Image.open(FIXTURES / name).convert("RGB"), dtype=np.float32) for name in LINES])
    x = (pixels.transpose(0, 3, 1, 2)[:, ::-1] / 255 - 0.5) / 0.5
    return np.ascontiguousarray(x, dtype=np.float32), np.array([0 if name.endswith("_0.png") else 1 for name in LINES])


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: p.stem)
def model(request):
    return request.param


def test_inspect_is_clean(model, capsys):
    code, out, _ = run_cli(["inspect", model], capsys)
    assert code == 0 and "explainable: yes" in out and "NOT SUPPORTED" not in out, out
    assert "input: x float [?, 3, ?, ?]" in out  # paddle2onnx's -1 batch is a free dimension
    assert "(explained through its Softmax: " in out


def test_hard_swish_and_squeeze_excitation_are_gates(model):
    """18 hard-swishes gate by Clip(x + 3, 0, 6) in [0, 6], 9 squeeze-excitations by a HardSigmoid."""
    ex = Explainer(model)
    producer = {op.output: op for op in ex.graph.ops}
    gates = [op for op in ex.graph.ops if isinstance(op, Gate)]
    by = sorted(producer[op.inputs[op.gate]].op_type for op in gates)
    assert by == ["Clip"] * 18 + ["HardSigmoid"] * 9
    assert producer[ex.graph.logits_name].op_type == "MatMul"  # the head, its bias absorbed; the Softmax skipped


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_text_lines_are_classified_and_rap_conserves_the_logit(model, dtype):
    x, truth = text_lines()
    e = Explainer(model, dtype=dtype).explain(x, method="rap")  # a batch of 4: any batch size is taken
    np.testing.assert_array_equal(e.target, truth)
    logit = e.logits[np.arange(len(x)), e.target]
    np.testing.assert_allclose(run(onnx.load(str(model)), x)[0].argmax(1), truth)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-5)
    assert e.recomputed == [] and e.unconserved == []


def test_float32_and_float64_agree():
    x, _ = text_lines()
    single, double = (Explainer(CLS, dtype=d).explain(x, method="rap").relevance for d in ("float32", "float64"))
    assert rel_l2(single, double) < 1e-4


# rap-reference's and lrp-a2b1's relevance doubles at each of the 35 convolutions reading a signed
# (hard-swish) input, to 1e8 times the logit: float32's rounding of the two engines' sums grows with it.
# rap's promoters and inhibitors at hard-swish outputs (signed.floored) put eager float32 1.5e-5 from
# float64; the two engines round differently, so they may differ by as much.
@pytest.mark.parametrize("method, tolerance", [("rap", 3e-5), ("gradient", 1e-5), ("rap-reference", 1e-4),
                                               ("lrp-a2b1", 1e-4)])
def test_compiled_agrees_with_eager(method, tolerance):
    x, _ = text_lines()
    ex = Explainer(CLS)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=x.shape[1:])).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < tolerance


def with_hard_swish_ops(proto):
    """The model with each of paddle2onnx's ``Div(Mul(a, Clip(Add(a, 3), 0, 6)), 6)`` as one ONNX HardSwish
    (opset 14), which onnxrap explains as an activation: its own slope, no product rule."""
    nodes = list(proto.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    dropped, swaps = set(), {}
    for div in (n for n in nodes if n.op_type == "Div" and n.input[0] in producer):
        mul = producer[div.input[0]]
        clip = producer.get(mul.input[1])
        if mul.op_type != "Mul" or clip is None or clip.op_type != "Clip":
            continue
        add = producer[clip.input[0]]
        assert add.op_type == "Add" and add.input[0] == mul.input[0]
        dropped |= {id(mul), id(clip), id(add), id(div)}
        swaps[id(div)] = onnx.helper.make_node("HardSwish", [mul.input[0]], [div.output[0]], name=f"hs_{div.name}")
    graph = onnx.helper.make_graph([swaps.get(id(n), n) for n in nodes if id(n) not in dropped or id(n) in swaps],
                                   "hard_swish_ops", proto.graph.input, proto.graph.output, proto.graph.initializer)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)], ir_version=7), len(swaps)


def test_the_hard_swish_gates_product_rule_is_hard_swishs_slope():
    """The gradient through paddle2onnx's gated form (the product rule through x and Clip(x + 3, 0, 6))
    is the gradient through HardSwish ops (their own slope, tests/test_gates_ops.py checks it against
    ONNX Runtime), on the real weights; ONNX Runtime computes the same logits for both."""
    swapped, count = with_hard_swish_ops(onnx.load(str(CLS)))
    assert count == 18
    x, _ = text_lines()
    gated, plain = Explainer(CLS, dtype="float64"), Explainer(swapped, dtype="float64")
    np.testing.assert_allclose(run(swapped, x)[0], run(onnx.load(str(CLS)), x)[0], atol=1e-5)
    for method in ("gradient", "rap"):
        a, b = gated.explain(x, method=method), plain.explain(x, method=method, target=gated.explain(x).target)
        assert rel_l2(a.relevance, b.relevance) < 1e-9, method


def test_explain_writes_heatmaps_and_the_sums(tmp_path, capsys):
    out = tmp_path / "out"
    images = [FIXTURES / name for name in LINES[:2]]
    code, stdout, err = run_cli(["explain", CLS, *images, "--size", "48x192", "--preset", "signed", "-o", out,
                                 "--method", "rap,rap-reference,lrp-a2b1,gradient-x-input", "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for entry, truth in zip(summary["inputs"], (0, 1)):
        assert entry["predicted"] == truth and Path(entry["figure"]).is_file()
        rap = entry["methods"]["rap"]
        assert rap["conserved"] and abs(rap["relevance_sum"] - entry["target_logit"]) < 1e-4 * entry["target_logit"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    x, _ = text_lines()
    bad = x[:1].copy()
    bad[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "two_channels.npy", x[:1, :2])
    for name, fragment in (("nan.npy", "NaN"), ("two_channels.npy", "expects shape ('?', 3, '?', '?'), got (1, 2, 48, 192)")):
        code, _, err = run_cli(["explain", CLS, tmp_path / name, "-o", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, fragment)
        assert not (tmp_path / "out").exists()
