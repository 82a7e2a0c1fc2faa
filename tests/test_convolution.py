"""``Backend.conv`` / ``conv_adjoint`` (and ``windows`` / ``scatter``) against the NumPy
convolution reference and ONNX Runtime: 1-D, 2-D and 3-D, groups, strides, dilations, pads, auto_pad."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BK, case_id
from onnx_helpers import const, make_model, node, run_one_node
from onnxrap.backend import window_spec
from references import np_conv, np_conv_transpose, resolve_pads, window_taps

# id, spatial input, C, O, kernel, strides, dilations, pads, auto_pad, groups
CONV_CASES = [
    ("1d-plain", (7,), 4, 6, (3,), (1,), (1,), (0, 0), "NOTSET", 1),
    ("1d-s2-d2-asym-g2", (7,), 4, 6, (3,), (2,), (2,), (2, 1), "NOTSET", 2),
    ("1d-s3-uneven-depthwise", (7,), 4, 8, (2,), (3,), (1,), (0, 0), "NOTSET", 4),
    ("1d-same-upper", (7,), 4, 6, (4,), (2,), (1,), None, "SAME_UPPER", 1),
    ("1d-same-lower", (7,), 4, 6, (4,), (2,), (1,), None, "SAME_LOWER", 2),
    ("1d-valid-depthwise", (8,), 4, 4, (3,), (2,), (1,), None, "VALID", 4),
    ("2d-plain", (5, 6), 4, 6, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "NOTSET", 1),
    ("2d-asym-g2", (5, 6), 4, 6, (3, 2), (2, 1), (1, 2), (1, 0, 2, 1), "NOTSET", 2),
    ("2d-depthwise-s2", (6, 5), 4, 4, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "NOTSET", 4),
    ("2d-depthwise-x2-uneven", (7, 7), 4, 8, (2, 2), (3, 3), (1, 1), (0, 0, 0, 0), "NOTSET", 4),
    ("2d-same-upper-dil", (5, 6), 4, 6, (2, 3), (2, 2), (2, 1), None, "SAME_UPPER", 1),
    ("2d-same-lower-dil", (5, 6), 4, 6, (2, 3), (2, 2), (2, 1), None, "SAME_LOWER", 2),
    ("2d-same-lower-odd", (6, 7), 4, 6, (4, 2), (1, 3), (1, 1), None, "SAME_LOWER", 1),
    ("2d-valid-uneven", (7, 8), 4, 6, (3, 2), (2, 3), (1, 1), None, "VALID", 2),
    ("2d-1x1", (4, 5), 4, 6, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), "NOTSET", 1),
    ("2d-1x1-g2", (4, 5), 4, 6, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), "NOTSET", 2),
    ("2d-1x1-s2-uneven", (6, 6), 4, 6, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0), "NOTSET", 1),
    ("2d-1x1-pads", (4, 4), 4, 6, (1, 1), (1, 1), (1, 1), (1, 0, 0, 1), "NOTSET", 2),
    ("3d-asym-g2", (4, 3, 5), 4, 6, (2, 2, 3), (1, 2, 2), (1, 1, 2), (0, 1, 1, 1, 0, 2), "NOTSET", 2),
    ("3d-same-upper-depthwise", (4, 3, 5), 4, 4, (2, 2, 2), (2, 2, 2), (1, 1, 1), None, "SAME_UPPER", 4),
    ("3d-same-lower", (3, 4, 5), 4, 6, (2, 3, 2), (2, 1, 3), (1, 1, 1), None, "SAME_LOWER", 1),
    ("3d-valid-uneven", (5, 4, 4), 4, 6, (2, 3, 2), (2, 1, 3), (1, 1, 1), None, "VALID", 2),
]
# Cases where some input positions are read by no window (stride past the last window, no pads).
UNEVEN = {"1d-s3-uneven-depthwise", "2d-depthwise-x2-uneven", "2d-valid-uneven", "2d-1x1-s2-uneven",
          "3d-valid-uneven"}


def conv_case(case, seed=0, dtype=np.float64, batch=2):
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c) + sp).astype(dtype)
    w = rng.standard_normal((o, c // g) + k).astype(dtype)
    spec = window_spec(sp, k, s, d, pads, auto_pad)
    begin, end = resolve_pads(sp, k, s, d, pads, auto_pad)
    return x, w, spec, begin, end


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_window_spec_matches_onnx_pads(case):
    """window_spec resolves pads/auto_pad and the output shape as the ONNX definitions do."""
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    spec = window_spec(sp, k, s, d, pads, auto_pad)
    begin, end = resolve_pads(sp, k, s, d, pads, auto_pad)
    assert spec.pads_begin == tuple(begin) and spec.pads_end == tuple(end)
    out = tuple((i + b + e - (kk - 1) * dd - 1) // ss + 1 for i, b, e, kk, dd, ss in zip(sp, begin, end, k, d, s))
    assert spec.out_shape == out
    if auto_pad.startswith("SAME"):
        assert spec.out_shape == tuple(-(-i // ss) for i, ss in zip(sp, s))


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv_matches_the_reference(case):
    """Backend.conv == the NumPy convolution reference (float64)."""
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    x, w, spec, begin, end = conv_case(case)
    got = BK.conv(x, w, spec, g)
    ref = np_conv(x, w, s, d, begin, end, g)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv_matches_onnxruntime(case):
    """Backend.conv == a one-node ONNX Runtime Conv on the same float32 data."""
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    x, w, spec, _, _ = conv_case(case, seed=1, dtype=np.float32)
    attrs = dict(kernel_shape=list(k), strides=list(s), dilations=list(d), group=g)
    if auto_pad == "NOTSET":
        attrs["pads"] = list(pads)
    else:
        attrs["auto_pad"] = auto_pad
    got = BK.conv(x, w, spec, g)
    assert got.dtype == np.float32
    if auto_pad.startswith("SAME") and any(dd > 1 for dd in d):
        # ORT refuses dilations with SAME_*: ONNX's reference evaluator, and ORT with explicit pads
        y = run_one_node_reference("Conv", x, w, **attrs)
        assert got.shape == y.shape
        np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)
        del attrs["auto_pad"]
        begin, end = resolve_pads(sp, k, s, d, pads, auto_pad)
        attrs["pads"] = begin + end
    y = run_one_node("Conv", x, initializers=[const("w", w)], extra_inputs=["w"], **attrs)
    assert got.shape == y.shape
    np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5)


def run_one_node_reference(op_type, x, w, **attrs):
    from onnx.reference import ReferenceEvaluator

    n = node(op_type, ["x", "w"], ["y"], **attrs)
    model = make_model([n], [("x", list(x.shape)), ("w", list(w.shape))], [("y", None)])
    return ReferenceEvaluator(model).run(None, {"x": x, "w": w})[0]


@pytest.mark.parametrize("case", CONV_CASES, ids=case_id)
def test_conv_adjoint_is_adjoint(case):
    """<conv(x), s> == <x, conv_adjoint(s)>; unread input positions get exactly zero."""
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    x, w, spec, begin, _ = conv_case(case, seed=2)
    y = BK.conv(x, w, spec, g)
    sv = np.random.default_rng(3).standard_normal(y.shape)
    back = BK.conv_adjoint([(sv, w)], spec, g)
    assert back.shape == x.shape
    lhs, rhs = np.vdot(y, sv), np.vdot(x, back)
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, np.abs(y).sum() * np.abs(sv).max())
    # against the reference transposed convolution, too
    np.testing.assert_allclose(back, np_conv_transpose(sv, w, sp, s, d, begin, g), rtol=1e-12, atol=1e-12)
    # positions no window reads
    read = np.zeros(sp, dtype=bool)
    for at in np.ndindex(*spec.out_shape):
        for _, idx in window_taps(at, k, s, d, begin, sp):
            read[idx] = True
    assert np.all(back[..., ~read] == 0)
    if case[0] in UNEVEN:
        assert (~read).any(), "case meant to leave trailing positions unread"
        assert np.abs(back[..., read]).max() > 0


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[0] in {
    "1d-s2-d2-asym-g2", "2d-asym-g2", "2d-same-lower-dil", "3d-asym-g2"}], ids=case_id)
def test_scatter_is_adjoint_of_windows(case):
    """<windows(x), cols> == <x, scatter(cols)> (im2col and col2im)."""
    x, _, spec, _, _ = conv_case(case, seed=4)
    cols = np.random.default_rng(5).standard_normal(BK.windows(x, spec).shape)
    lhs = np.vdot(BK.windows(x, spec), cols)
    rhs = np.vdot(x, BK.scatter(cols, spec))
    assert abs(lhs - rhs) <= 1e-12 * np.abs(cols).sum() * np.abs(x).max()


def test_shared_im2col_and_summed_adjoint_match_single_calls():
    """conv with a list of weights equals one call per weight; conv_adjoint sums its pairs."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 9, 8))
    w1, w2 = rng.standard_normal((6, 2, 3, 2)), rng.standard_normal((6, 2, 3, 2))
    spec = window_spec((9, 8), (3, 2), strides=(2, 1), dilations=(1, 2), pads=(1, 0, 0, 1))
    y1, y2 = BK.conv(x, [w1, w2], spec, 2)
    np.testing.assert_array_equal(y1, BK.conv(x, w1, spec, 2))
    np.testing.assert_array_equal(y2, BK.conv(x, w2, spec, 2))
    s1, s2 = rng.standard_normal(y1.shape), rng.standard_normal(y2.shape)
    np.testing.assert_allclose(BK.conv_adjoint([(s1, w1), (s2, w2)], spec, 2),
                               BK.conv_adjoint([(s1, w1)], spec, 2) + BK.conv_adjoint([(s2, w2)], spec, 2),
                               rtol=1e-12, atol=1e-12)
