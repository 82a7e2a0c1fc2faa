"""Helpers the tests import (``from helpers import ...``): paths, tolerances, small-graph builders.

conftest.py keeps only fixtures; it re-exports these names for tests written as
``from conftest import ...``.  Graph-building primitives are in onnx_helpers.py,
NumPy references in references.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.backend import numpy_backend
from references import ConvMap, np_conv, ref_rap_first_onehot, ref_zbox, relu

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_CASES = ["mlp", "inception_mini", "vgg16_w8", "vgg16bn_w8", "resnet50_w4"]
# The same, with the full-size networks (224x224 inputs) marked slow.
GOLDEN_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in ("vgg16_w8", "vgg16bn_w8", "resnet50_w4")
                 else name for name in GOLDEN_CASES]
DIGITS = ROOT / "models" / "digits_cnn.onnx"
DIGIT_IMAGES = sorted((ROOT / "models" / "images").glob("*.png"))

BK = numpy_backend()


def run_cli(args, capsys):
    """``onnxrap ARGS`` in this process: exit code, stdout, stderr."""
    from onnxrap.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """What every bad input gives: exit 2 and one line ``onnxrap: error: ...`` holding ``fragments``."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxrap: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


def case_id(case):
    """pytest ids for case tuples whose first entry is their name."""
    return case[0]


# -- rule tests on small hand-built graphs -------------------------------------------

def reference_forward(model, x, forward):
    """The model's activations in float64 by the loop references (as onnxrap's float64 run
    recomputes them from the input), checked against ONNX Runtime's float32 logits."""
    vals = forward(x.astype(np.float64))
    (logits,) = run(model, x)
    np.testing.assert_allclose(vals["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    return vals


def explain(model, x, target, method, dtype="float64"):
    """One explanation; float64 by default, where the references agree to rounding."""
    return Explainer(model, dtype=dtype).explain(x, target=target, method=method)


def assert_close(got, ref, rtol=1e-9):
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1e-3, np.abs(ref).max()))


def assert_conserves(model, x, target, method="rap"):
    """The relevance of each sample sums to its target logit (float64 and float32 rules)."""
    for dtype, tol in (("float64", 1e-5), ("float32", 1e-4)):
        e = explain(model, x, target, method, dtype)
        sums = e.relevance.reshape(len(e.target), -1).sum(axis=1)
        np.testing.assert_allclose(sums, e.target_logit, rtol=tol, atol=tol * np.abs(e.target_logit).max())


def rnd(shape, seed, scale=1.0):
    """Seeded standard-normal float32 values."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def targets_with_negative_logit(model, x):
    """Per sample: arg-max for even samples, arg-min for odd ones (a negative logit, R < 0)."""
    logits = run(model, x)[0].reshape(len(x), -1)
    t = logits.argmax(axis=1)
    t[1::2] = logits[1::2].argmin(axis=1)
    assert (logits[np.arange(len(x)), t] < 0).any()
    return t


def gemm_layer(i, inp, out, w_shape, seed, trans_b=1, alpha=1.0, beta=1.0, bias=True, trans_a=0):
    """A Gemm node ``out = alpha * inp' @ B' + beta * C``; returns (nodes, inits, W (in,out), b)."""
    B = rnd(w_shape, seed)
    C = rnd((w_shape[0] if trans_b else w_shape[1],), seed + 1)
    inputs = [inp, f"B{i}"] + ([f"C{i}"] if bias else [])
    attrs = dict(transB=trans_b, alpha=alpha, beta=beta)
    if trans_a:
        attrs["transA"] = 1
    n = node("Gemm", inputs, [out], name=f"gemm{i}", **attrs)
    inits = [const(f"B{i}", B)] + ([const(f"C{i}", C)] if bias else [])
    W = alpha * (B.T if trans_b else B).astype(np.float64)
    b = beta * C.astype(np.float64) if bias else np.zeros(W.shape[1])
    return [n], inits, W, b


def conv_node(name, inp, out, w_shape, seed, bias=True, **attrs):
    """A Conv node with seeded weights (and bias); returns (node, inits, W, b) with W, b in float64."""
    W = rnd(w_shape, seed)
    inputs = [inp, f"W_{name}"]
    inits = [const(f"W_{name}", W)]
    b = np.zeros(w_shape[0])
    if bias:
        bv = rnd((w_shape[0],), seed + 1)
        inputs.append(f"b_{name}")
        inits.append(const(f"b_{name}", bv))
        b = bv.astype(float)
    return node("Conv", inputs, [out], name=name, **attrs), inits, W.astype(float), b


def head_gemm(inp, n_in, classes, seed):
    """The classifier: a Gemm to ``logits`` with alpha and beta != 1."""
    return gemm_layer(9, inp, "logits", (classes, n_in), seed, alpha=1.25, beta=0.75)


def conv_hidden_model():
    """x -> ConvA (input) -> ConvB (3x3 stride 2: rap.hidden on a conv with signed input) -> Relu -> Flatten
    -> Gemm."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 80, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "a", "c", (4, 3, 3, 3), 82, strides=[2, 2], pads=[1, 0, 0, 1])
    nodes = [na, nb, node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 4 * 3 * 3, 4, 84)
    model = make_model(nodes + hn, [("x", [None, 2, 6, 6])], [("logits", None)], ia + ib + hi)

    def forward(x):
        v = {"a": np_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None]}
        c = np_conv(v["a"], Wb, (2, 2), (1, 1), (1, 0), (0, 1), 1) + bb[:, None, None]
        v["f"] = relu(c).reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, forward=forward)


def conv_hidden_reference(model, p, x, targets, hidden):
    """``conv_hidden_model``'s relevance written out in NumPy: rap.head at the Gemm, ``hidden(a, convB, R)``
    at ConvB (the rule under test), z^B at ConvA."""
    v = reference_forward(model, x, p["forward"])
    convA = ConvMap(p["Wa"], (6, 6), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (6, 6), strides=(2, 2), pads=(1, 0, 0, 1))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rr = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(4, 3, 3)
        ref[n] = ref_zbox(x[n].astype(float), convA, hidden(v["a"][n], convB, Rr))
    return ref


# -- exported model fixtures (tests/fixtures/<family>/<name>.onnx beside <name>.npz) ------------------

def manifest_names(folder):
    """The fixture names a sweep tool's ``manifest.json`` lists."""
    import json

    return sorted(json.loads((folder / "manifest.json").read_text())["files"])


def fixture_case(folder, name):
    """``(name, path of <name>.onnx, the arrays of <name>.npz)``."""
    path = folder / f"{name}.onnx"
    return name, path, dict(np.load(path.with_suffix(".npz")))


def assert_files_small(folder, names, largest, total):
    """Each fixture's .onnx under ``largest`` bytes, all of them under ``total``."""
    sizes = {name: (folder / f"{name}.onnx").stat().st_size for name in names}
    assert max(sizes.values()) < largest and sum(sizes.values()) < total, sizes


def assert_logits_are_torchs(path, data):
    """ONNX Runtime's logits are torch's (1e-4 of the largest) and onnxrap's forward is ONNX Runtime's (2e-5)."""
    ort_logits = run(onnx.load(path), data["x"])[0]
    scale = np.abs(data["torch_logits"]).max()
    np.testing.assert_allclose(ort_logits, data["torch_logits"], rtol=0, atol=1e-4 * scale)
    e = Explainer(path).explain(data["x"], target=data["target"], method="gradient")
    np.testing.assert_allclose(e.logits, ort_logits, rtol=0, atol=2e-5 * scale)


def assert_rap_conserves(path, data, dtype="float32", rtol=1e-4, atol=1e-4):
    """rap in ``dtype`` with no float64 redo, nothing unconserved or non-finite, each map summing to its target's
    logit (``atol`` of the largest); returns the explanation."""
    e = Explainer(path, dtype=dtype).explain(data["x"], target=data["target"], method="rap")
    assert e.recomputed == [] and e.unconserved == [] and e.nonfinite == []
    sums = e.relevance.reshape(len(e.target), -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(sums, e.target_logit, rtol=rtol, atol=atol * np.abs(e.target_logit).max())
    return e
