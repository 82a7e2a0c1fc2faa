"""The promise "any exported ONNX classifier": one small network as different exporters write it.

The fixtures under ``tests/fixtures/exporters/`` are written by
``tools/make_exporter_fixtures.py`` (PyTorch's TorchScript and dynamo
exporters, a tf2onnx-style graph built with onnx.helper, ONNX Runtime's
offline optimiser; see the README there).  These tests need only onnx,
onnxruntime and numpy.

What must hold for every flavour: ``rap`` explains without error, the
relevance is finite and input-shaped and sums to the target logit, and the
logits are the stored ones.  Where the math says two flavours' explanations
are the same, they are compared.
"""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxrap import Explainer
from onnxrap.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporters"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

TORCHSCRIPT_OPSETS = sorted(n for n in MANIFEST["files"] if n.startswith("torchscript_opset"))
TORCH_FLAVOURS = ["torchscript_bn", "torchscript_folded", *TORCHSCRIPT_OPSETS, "dynamo", "ort_basic"]
KERAS_FLAVOURS = ["keras_nhwc", "keras_preproc"]

# dynamo's optimize=False graph builds the zero Conv bias and the Clip bounds from
# CastLike(constant, <data tensor>): CastLike reads only the *type* of its second input,
# so these must fold to constants, as Shape does.
FLAVOURS = TORCH_FLAVOURS + KERAS_FLAVOURS + ["dynamo_unoptimized"]

_explainers = {}


def fixture(name):
    path = FIXTURES / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{name}.onnx was not written: {MANIFEST['skipped'].get(name, 'missing')}")
    return path, dict(np.load(FIXTURES / f"{name}.npz"))


def explainer(name):
    if name not in _explainers:
        _explainers[name] = Explainer(fixture(name)[0])
    return _explainers[name]


def explain(name, method="rap", x=None, **options):
    _, data = fixture(name)
    return explainer(name).explain(data["x"] if x is None else x, method=method, **options)


def assert_conserves(exp, rtol=1e-4):
    sums = exp.relevance.reshape(len(exp.relevance), -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(sums, exp.target_logit, rtol=rtol, atol=0)


def assert_same(a, b, rtol=1e-4):
    """Elementwise within ``rtol`` of the larger array's scale (exact zeros make a pure rtol meaningless)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    scale = np.abs(b).max()
    worst = np.abs(a - b).max() / scale
    assert worst <= rtol, f"max difference {worst:.3g} of the largest value"


# --- every flavour ---------------------------------------------------------------------
@pytest.mark.parametrize("name", FLAVOURS)
def test_rap_explains_and_conserves(name):
    _, data = fixture(name)
    exp = explain(name)
    assert exp.relevance.shape == data["x"].shape
    assert np.all(np.isfinite(exp.relevance))
    assert np.abs(exp.relevance).max() > 0
    np.testing.assert_array_equal(exp.target, exp.logits.argmax(axis=1))
    assert_conserves(exp)


@pytest.mark.parametrize("name", FLAVOURS)
def test_logits_are_the_stored_ones(name):
    _, data = fixture(name)
    exp = explain(name)
    np.testing.assert_allclose(exp.logits, data["ort_logits"], rtol=1e-4, atol=1e-5)
    if "torch_logits" in data:
        np.testing.assert_allclose(exp.logits, data["torch_logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", TORCH_FLAVOURS + ["keras_nhwc"])
@pytest.mark.parametrize("target", [3, [7, 0]])
def test_rap_conserves_for_any_target(name, target):
    exp = explain(name, target=target)
    np.testing.assert_array_equal(exp.target, np.broadcast_to(target, (2,)))
    assert_conserves(exp)


def test_the_fixtures_are_what_the_readme_says():
    ops = {name: entry["op_types"] for name, entry in MANIFEST["files"].items()}
    bn = ops["torchscript_bn"]
    assert bn["BatchNormalization"] == 5
    for chain in ("Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Pad", "Clip", "ReduceMean", "MaxPool",
                  "GlobalAveragePool", "Gemm"):
        assert chain in bn, chain
    assert "BatchNormalization" not in ops["torchscript_folded"]
    assert [int(n[len("torchscript_opset"):]) for n in TORCHSCRIPT_OPSETS][:3] == [11, 13, 18]
    for name in TORCHSCRIPT_OPSETS:
        assert MANIFEST["files"][name]["opsets"]["ai.onnx"] == int(name[len("torchscript_opset"):])
        assert ops[name].get("BatchNormalization") == 5
    assert "BatchNormalization" not in ops["ort_basic"]
    total = sum(f.stat().st_size for f in FIXTURES.iterdir() if f.is_file())
    assert total < 2_000_000


# --- where the math says explanations agree ----------------------------------------------
@pytest.mark.parametrize("name", TORCHSCRIPT_OPSETS)
@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps", "rap-reference"])
def test_opsets_explain_identically(name, method):
    """Same weights, same ops; only attributes moved to inputs (Clip, Pad, Squeeze/Unsqueeze, ReduceMean)."""
    assert_same(explain(name, method).relevance, explain("torchscript_bn", method).relevance, rtol=1e-4)


@pytest.mark.parametrize("name", ["torchscript_folded", "dynamo", "ort_basic"])
@pytest.mark.parametrize("method", ["gradient", "integrated-gradients"])
def test_bn_folding_keeps_the_gradient(name, method):
    """Folding BN changes the weights but not the function: gradient methods must agree."""
    options = {"steps": 8} if method == "integrated-gradients" else {}
    assert_same(explain(name, method, **options).relevance,
                explain("torchscript_bn", method, **options).relevance, rtol=1e-4)


def _bn_gains(model_path):
    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    gains = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            gains.append(inits[node.input[1]] / np.sqrt(inits[node.input[4]] + eps))
    return np.concatenate(gains)


@pytest.mark.parametrize("name", ["torchscript_folded", "dynamo", "ort_basic"])
def test_bn_folding_keeps_rap_when_gains_are_positive(name):
    """rap passes relevance through BN unchanged; its hidden-layer and input rules ignore the bias and
    are invariant to a positive scale per output channel of the weights.  Folding a BN of positive
    gain into the conv before it is such a scale (plus a bias), so rap must not change.  (With a
    negative gain the promoter/inhibitor roles of the weights swap, and rap may differ.)"""
    gains = _bn_gains(fixture("torchscript_bn")[0])
    assert gains.size == 56 and np.all(gains > 0)  # the premise
    folded, kept = explain(name), explain("torchscript_bn")
    assert_same(folded.relevance, kept.relevance, rtol=1e-4)
    assert_conserves(folded)


def test_bn_folding_changes_lrp_rules_that_read_the_bias():
    """Not an equality: lrp-eps reads BN's shift (kept) or the conv bias (folded), so it may differ;
    both still explain, finite."""
    for name in ("torchscript_bn", "torchscript_folded"):
        assert np.all(np.isfinite(explain(name, "lrp-eps").relevance))


def test_dynamo_bn_kept_matches_torchscript():
    """Same weights, BN kept by both exporters: rap must be identical."""
    assert_same(explain("dynamo_unoptimized").relevance, explain("torchscript_bn").relevance, rtol=1e-4)


def test_dynamo_optimized_matches_torchscript_folded():
    """Both fold BN (onnxscript's optimiser / the TorchScript exporter), in float32: rap agrees."""
    assert_same(explain("dynamo").relevance, explain("torchscript_folded").relevance, rtol=1e-4)


# --- ONNX Runtime's extended optimisation: contrib ops ------------------------------------
@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps", "rap-reference"])
def test_ort_extended_fused_ops_explain_like_the_basic_graph(method):
    # ORT's extended optimisation writes com.microsoft FusedConv (Conv + activation in one
    # node); onnxrap splits it back, computing the tensor between them itself.
    path, data = fixture("ort_extended")
    model = onnx.load(str(path))
    assert any(n.op_type == "FusedConv" and n.domain == "com.microsoft" for n in model.graph.node)
    extended = Explainer(path).explain(data["x"], method=method)
    basic = explain("ort_basic", method)
    assert_same(extended.relevance, basic.relevance, rtol=1e-4)
    if method == "rap":
        assert_conserves(extended)


def test_unsupported_contrib_activation_is_named(tmp_path, capsys):
    path, data = fixture("ort_extended")
    model = onnx.load(str(path))
    fused = [n for n in model.graph.node if n.op_type == "FusedConv"]
    for node in fused[:2]:
        for a in node.attribute:
            if a.name == "activation":
                a.s = b"Softsign"  # no fused kernel has it: onnxrap names it
    onnx.save(model, tmp_path / "softsign.onnx")
    npy = tmp_path / "x.npy"
    np.save(npy, data["x"][:1])
    code = main(["explain", str(tmp_path / "softsign.onnx"), str(npy), "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "unsupported ops" in err
    assert all(n.name in err for n in fused[:2]) and "fused activation Softsign" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- Keras-style graphs ------------------------------------------------------------------
def test_keras_nhwc_layout_heatmap_and_softmax_skipped():
    _, data = fixture("keras_nhwc")
    e = explainer("keras_nhwc")
    assert e.layout == "nhwc"
    assert e.graph.output_name == "dense"  # the Softmax output
    assert e.graph.logits_name == "model/dense/BiasAdd"  # explained: its input
    exp = explain("keras_nhwc")
    assert exp.relevance.shape == (2, 32, 32, 3)
    assert exp.heatmap.shape == (2, 32, 32)
    assert_conserves(exp)
    # pre-softmax logits, not probabilities
    np.testing.assert_allclose(exp.logits, data["ort_logits"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(exp.logits.sum(axis=1), 1.0)
    probs = np.exp(exp.logits - exp.logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True), data["ort_probabilities"], atol=1e-6)


def test_keras_nhwc_bias_adds_are_absorbed():
    """Conv + Add([1,C,1,1]) and MatMul + Add([C]) are linear ops with a bias: no separate Add op."""
    ops = explainer("keras_nhwc").graph.ops
    assert [op.op_type for op in ops if op.op_type == "Add"] == []
    assert sum(op.bias_values is not None for op in ops if hasattr(op, "bias_values")) == 4


def test_keras_preproc_relevance_is_over_raw_pixels():
    _, data = fixture("keras_preproc")
    x = data["x"]
    assert x.min() >= 0 and x.max() > 200  # raw [0, 255] pixels
    e = explainer("keras_preproc")
    assert e.layout == "nhwc"
    exp = explain("keras_preproc")
    assert exp.relevance.shape == x.shape
    assert exp.heatmap.shape == (2, 32, 32)
    assert_conserves(exp)


def test_keras_preproc_equals_keras_nhwc_on_normalised_pixels():
    """Same weights (one seed): preproc(raw) is nhwc((raw - mean) / std).  rap passes relevance
    through Sub and Div unchanged; the gradient is divided by std."""
    x = fixture("keras_preproc")[1]["x"]
    model = onnx.load(str(FIXTURES / "keras_preproc.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    mean, std = inits["preproc/mean"], inits["preproc/std"]
    xn = ((x - mean) / std).astype(np.float32)
    raw, norm = explain("keras_preproc"), explain("keras_nhwc", x=xn)
    np.testing.assert_allclose(raw.logits, norm.logits, rtol=1e-5, atol=1e-5)
    assert_same(raw.relevance, norm.relevance, rtol=1e-4)
    assert_same(explain("keras_preproc", "gradient").relevance,
                explain("keras_nhwc", "gradient", x=xn).relevance / std, rtol=1e-4)


# --- the command line --------------------------------------------------------------------
def _png(path, size=(32, 32), seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


@pytest.mark.parametrize("name", ["keras_nhwc", "torchscript_bn", "keras_preproc"])
def test_cli_explains_png(name, tmp_path, capsys):
    image = _png(tmp_path / "picture.png", size=(40, 48) if name == "keras_nhwc" else (32, 32))
    out_dir = tmp_path / "out"
    extra = ["--preset", "raw"] if name == "keras_preproc" else []
    code = main(["explain", str(FIXTURES / f"{name}.onnx"), str(image), "-o", str(out_dir), "--save-npy", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    layout = "nchw" if name.startswith("torch") else "nhwc"
    assert f"32x32, 3 channel(s), {layout}" in err  # notes go to stderr
    summary = json.loads((out_dir / "summary.json").read_text())
    entry = summary["inputs"][0]
    assert Path(entry["figure"]).is_file()
    rap = entry["methods"]["rap"]
    relevance = np.load(rap["npy"])
    assert relevance.shape == ((3, 32, 32) if layout == "nchw" else (32, 32, 3))
    assert abs(rap["relevance_sum"] - entry["target_logit"]) <= 1e-4 * abs(entry["target_logit"])
