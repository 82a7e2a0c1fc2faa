"""Primitives and rules against slow, obviously-right float64 references.

Part 1-2: ``Backend.conv`` / ``conv_adjoint`` (and ``windows`` / ``scatter``)
against convolution written as explicit Python loops and against ONNX
Runtime, for 1-D, 2-D and 3-D, groups, strides, dilations, pads, auto_pad.
Part 3: MaxPool, AveragePool, GlobalAveragePool and ReduceMean against ONNX
Runtime and loop references.
Part 4: the relevance rules of docs/rap-spec.md (sections A and B) on tiny
hand-built ONNX graphs, against a NumPy transcription of the spec formulas
written here independently of onnxrap's code.  The references compute the
model's activations in float64 with the loop references (checked against ONNX
Runtime's logits), as ``Explainer(dtype="float64")`` recomputes them, so
float64 runs agree to rounding (rtol 1e-9).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_helpers import const, make_model, node, run, run_one_node  # noqa: E402

from onnxrap import Explainer  # noqa: E402
from onnxrap.backend import numpy_backend, window_spec  # noqa: E402
from onnxrap.graph import Graph  # noqa: E402

BK = numpy_backend()


# ---------------------------------------------------------------------------
# Loop references
# ---------------------------------------------------------------------------

def resolve_pads(in_shape, kernel, strides, dilations, pads, auto_pad):
    """Begin and end pads per axis, as the ONNX operator definitions give them."""
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i, k, s, d in zip(in_shape, kernel, strides, dilations):
            out = -(-i // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - i)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":  # the extra pad goes at the end
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * rank, [0] * rank
    return list(pads[:rank]), list(pads[rank:])


def window_taps(at, kernel, strides, dilations, begin, in_shape):
    """Input indices that the window at output position ``at`` reads inside the input,
    with their taps, in row-major tap order."""
    for tap in np.ndindex(*kernel):
        idx = tuple(p * s + t * d - b for p, s, t, d, b in zip(at, strides, tap, dilations, begin))
        if all(0 <= q < n for q, n in zip(idx, in_shape)):
            yield tap, idx


def naive_conv(x, w, strides, dilations, begin, end, groups):
    """Cross-correlation, one output element at a time."""
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    kernel, sp = w.shape[2:], x.shape[2:]
    out_shape = tuple((i + b + e - (k - 1) * d - 1) // s + 1
                      for i, b, e, k, d, s in zip(sp, begin, end, kernel, dilations, strides))
    y = np.zeros((n, o) + out_shape)
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for at in np.ndindex(*out_shape):
                acc = 0.0
                for ic in range(cg):
                    for tap, idx in window_taps(at, kernel, strides, dilations, begin, sp):
                        acc += x[(b, g * cg + ic) + idx] * w[(oc, ic) + tap]
                y[(b, oc) + at] = acc
    return y


def naive_conv_t(s, w, in_shape, strides, dilations, begin, groups):
    """Transposed convolution: every output element scatters back through its window."""
    n, o = s.shape[:2]
    cg, og = w.shape[1], o // groups
    kernel = w.shape[2:]
    x = np.zeros((n, cg * groups) + tuple(in_shape))
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for at in np.ndindex(*s.shape[2:]):
                for ic in range(cg):
                    for tap, idx in window_taps(at, kernel, strides, dilations, begin, in_shape):
                        x[(b, g * cg + ic) + idx] += s[(b, oc) + at] * w[(oc, ic) + tap]
    return x


def naive_max_route(x, grad, out_shape, kernel, strides, dilations, begin):
    """Max pool and its gradient: each window's grad goes to its first arg-max."""
    y = np.full(x.shape[:2] + tuple(out_shape), -np.inf)
    routed = np.zeros(x.shape)
    for nc in np.ndindex(*x.shape[:2]):
        for at in np.ndindex(*out_shape):
            best = None
            for _, idx in window_taps(at, kernel, strides, dilations, begin, x.shape[2:]):
                if best is None or x[nc + idx] > x[nc + best]:
                    best = idx
            y[nc + at] = x[nc + best]
            routed[nc + best] += grad[nc + at]
    return y, routed


def naive_window_share(a, R, kernel, strides, begin):
    """``a * pool^T(sdiv(R, sumpool(a)))``, one window at a time."""
    out = np.zeros(a.shape)
    dil = (1,) * len(kernel)
    for nc in np.ndindex(*a.shape[:2]):
        for at in np.ndindex(*R.shape[2:]):
            idxs = [idx for _, idx in window_taps(at, kernel, strides, dil, begin, a.shape[2:])]
            total = sum(a[nc + idx] for idx in idxs)
            if total != 0:
                for idx in idxs:
                    out[nc + idx] += a[nc + idx] * R[nc + at] / total
    return out


# ---------------------------------------------------------------------------
# Part 1-2: convolution
# ---------------------------------------------------------------------------

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


def case_id(case):
    return case[0]


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
def test_conv_matches_loops(case):
    """Backend.conv == convolution written as explicit loops (float64)."""
    _, sp, c, o, k, s, d, pads, auto_pad, g = case
    x, w, spec, begin, end = conv_case(case)
    got = BK.conv(x, w, spec, g)
    ref = naive_conv(x, w, s, d, begin, end, g)
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
    # against the loop transposed convolution, too
    np.testing.assert_allclose(back, naive_conv_t(sv, w, sp, s, d, begin, g), rtol=1e-12, atol=1e-12)
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


# ---------------------------------------------------------------------------
# Part 3: pools
# ---------------------------------------------------------------------------

# id, spatial input, kernel, strides, pads, ceil_mode, dilations
POOL_CASES = [
    ("k2s2", (6, 6), (2, 2), (2, 2), (0, 0, 0, 0), 0, None),
    ("k3s2p1-overlap", (6, 7), (3, 3), (2, 2), (1, 1, 1, 1), 0, None),
    ("k3s1-overlap", (5, 5), (3, 3), (1, 1), (0, 0, 0, 0), 0, None),
    ("asym-pads", (5, 6), (2, 3), (2, 2), (1, 0, 0, 2), 0, None),
    ("ceil-overhang", (5, 5), (2, 2), (2, 2), (0, 0, 0, 0), 1, None),
    ("ceil-overhang-k3s2", (6, 6), (3, 3), (2, 2), (0, 0, 0, 0), 1, None),
    ("ceil-start-in-pad-dropped", (4, 4), (2, 2), (2, 2), (0, 0, 1, 1), 1, None),
    ("ceil-pads-overlap", (7, 6), (3, 3), (2, 2), (1, 1, 1, 1), 1, None),
    ("1d-ceil-pads", (9,), (3,), (2,), (1, 1), 1, None),
    ("dilated", (7, 7), (2, 3), (1, 2), (0, 1, 0, 1), 0, (2, 1)),
    ("dilated-ceil", (7, 8), (2, 2), (2, 3), (0, 0, 0, 0), 1, (2, 2)),
    ("same-upper", (5, 6), (2, 3), (2, 2), "SAME_UPPER", 0, None),
    ("same-lower-1d", (7,), (4,), (3,), "SAME_LOWER", 0, None),
    ("valid-k3s1", (6, 6), (3, 3), (1, 1), "VALID", 0, None),
]


def pool_pads(case):
    """``(pads attribute, auto_pad)`` of a pool case; ``pads`` is a list or an auto_pad name."""
    pads = case[4]
    return (None, pads) if isinstance(pads, str) else (list(pads), "NOTSET")


def pool_model(op_type, case, **extra):
    _, sp, k, s, _, ceil, dil = case
    pads, auto_pad = pool_pads(case)
    attrs = dict(kernel_shape=list(k), strides=list(s), ceil_mode=ceil, **extra)
    if pads is None:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = pads
    if dil is not None:
        attrs["dilations"] = list(dil)
    n = node(op_type, ["x"], ["y"], **attrs)
    return make_model([n], [("x", [2, 3] + list(sp))], [("y", None)])


def only_op(model):
    (op,) = Graph(model).ops
    return op


def test_pool_cases_cover_overhang():
    """The ceil cases really have a window that runs past the input and its pads."""
    overhang = []
    for case in POOL_CASES:
        _, sp, k, s, _, ceil, dil = case
        spec = window_spec(sp, k, s, dil, *pool_pads(case), ceil_mode=bool(ceil))
        overhang.append(any(p > i + b + e for p, i, b, e in
                            zip(spec.padded_shape, sp, spec.pads_begin, spec.pads_end)))
    assert any(overhang)


@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_maxpool_matches_onnxruntime_and_routes_to_argmax(case):
    """MaxPool windows give ORT's output shape and values; route == loop arg-max routing."""
    _, sp, k, s, _, ceil, dil = case
    model = pool_model("MaxPool", case)
    x = np.random.default_rng(6).standard_normal((2, 3) + sp)
    (y_ort,) = run(model, x.astype(np.float32))
    op = only_op(model)
    spec = op.spec(x.shape)
    assert spec.out_shape == y_ort.shape[2:]
    win = BK.windows(x, spec, value=-np.inf).reshape((2, 3, spec.taps) + spec.out_shape)
    np.testing.assert_allclose(win.max(axis=2), y_ort, rtol=1e-6, atol=1e-6)
    grad = np.random.default_rng(7).standard_normal(y_ort.shape)
    dil = dil or (1,) * len(k)
    begin, _ = resolve_pads(sp, k, s, dil, *pool_pads(case))
    y_loop, routed = naive_max_route(x, grad, y_ort.shape[2:], k, s, dil, begin)
    np.testing.assert_allclose(y_loop, y_ort, rtol=1e-6, atol=1e-6)
    got = op.route(BK, x, grad)
    np.testing.assert_allclose(got, routed, rtol=1e-12, atol=1e-12)
    assert np.isclose(got.sum(), grad.sum())  # every window's gradient lands somewhere


def test_maxpool_route_adds_overlapping_windows():
    """A single large value inside four overlapping windows collects all four gradients."""
    model = pool_model("MaxPool", ("", (5, 5), (3, 3), (1, 1), (0, 0, 0, 0), 0, None))
    x = np.zeros((2, 3, 5, 5))
    x[:, :, 2, 2] = 10.0
    grad = np.arange(1, 1 + 2 * 3 * 9, dtype=float).reshape(2, 3, 3, 3)
    got = only_op(model).route(BK, x, grad)
    np.testing.assert_allclose(got[:, :, 2, 2], grad.sum(axis=(2, 3)))
    got[:, :, 2, 2] = 0
    assert not got.any()


AVG_CASES = [c for c in POOL_CASES if c[6] is None]


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_averagepool_sum_over_divisor_matches_onnxruntime(case, count_include_pad):
    """sum_pool(x) / divisor == ORT's AveragePool; sum_pool_adjoint is sum_pool's adjoint."""
    model = pool_model("AveragePool", case, count_include_pad=count_include_pad)
    x = np.random.default_rng(8).standard_normal((2, 3) + case[1])
    (y_ort,) = run(model, x.astype(np.float32))
    op = only_op(model)
    total = op.sum_pool(BK, x)
    assert total.shape == y_ort.shape
    np.testing.assert_allclose(total / op.divisor(BK, x.shape, x.dtype), y_ort, rtol=1e-5, atol=1e-6)
    s = np.random.default_rng(9).standard_normal(total.shape)
    back = op.sum_pool_adjoint(BK, s, x.shape)
    assert back.shape == x.shape
    assert np.isclose(np.vdot(total, s), np.vdot(x, back), rtol=1e-12)


MEAN_CASES = [
    ("GlobalAveragePool", {}, None, 13),
    ("ReduceMean", {"axes": [2, 3], "keepdims": 1}, None, 13),
    ("ReduceMean", {"axes": [2, 3], "keepdims": 0}, None, 13),
    ("ReduceMean", {"axes": [-1, -2], "keepdims": 0}, None, 13),
    ("ReduceMean", {"keepdims": 1}, [2, 3], 18),
    ("ReduceMean", {"keepdims": 0}, [2, 3], 18),
]


@pytest.mark.parametrize("op_type,attrs,axes_input,opset", MEAN_CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in MEAN_CASES])
def test_mean_reduce_matches_onnxruntime(op_type, attrs, axes_input, opset):
    """GlobalAveragePool / ReduceMean over the spatial axes: sum / divisor == ORT; adjoint holds."""
    inputs, inits = ["x"], []
    if axes_input is not None:
        inputs.append("axes")
        inits.append(const("axes", axes_input, dtype=np.int64))
    n = node(op_type, inputs, ["y"], **attrs)
    model = make_model([n], [("x", [2, 3, 4, 5])], [("y", None)], inits, opset=opset)
    x = np.random.default_rng(10).standard_normal((2, 3, 4, 5))
    (y_ort,) = run(model, x.astype(np.float32))
    op = only_op(model)
    total = op.sum_pool(BK, x)
    assert total.shape == y_ort.shape
    np.testing.assert_allclose(total / op.divisor(BK, x.shape, x.dtype), y_ort, rtol=1e-5, atol=1e-6)
    s = np.random.default_rng(11).standard_normal(total.shape)
    back = op.sum_pool_adjoint(BK, s, x.shape)
    assert back.shape == x.shape
    assert np.isclose(np.vdot(total, s), np.vdot(x, back), rtol=1e-12)


# ---------------------------------------------------------------------------
# Part 4: the rules, from the spec text
# ---------------------------------------------------------------------------

def sdiv(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    out = np.zeros(a.shape)
    nz = b != 0
    out[nz] = a[nz] / b[nz]
    return out


def pos(a):
    return np.maximum(a, 0.0)


def neg(a):
    return np.minimum(a, 0.0)


class DenseMap:
    """``L_W(x) = x @ W`` for one sample, ``W`` of shape (in, out); ``L_W^T(s) = W @ s``."""

    def __init__(self, W):
        self.W = np.asarray(W, dtype=float)

    def L(self, x, w):
        return x @ w

    def LT(self, s, w):
        return w @ s


class ConvMap:
    """A convolution on one sample, through the loop references."""

    def __init__(self, W, in_shape, strides=None, dilations=None, pads=None, groups=1):
        self.W = np.asarray(W, dtype=float)
        rank = self.W.ndim - 2
        self.in_shape = tuple(in_shape)
        self.strides = strides or (1,) * rank
        self.dilations = dilations or (1,) * rank
        self.begin, self.end = resolve_pads(in_shape, self.W.shape[2:], self.strides, self.dilations,
                                            pads, "NOTSET")
        self.groups = groups

    def L(self, x, w):
        return naive_conv(x[None], w, self.strides, self.dilations, self.begin, self.end, self.groups)[0]

    def LT(self, s, w):
        return naive_conv_t(s[None], w, self.in_shape, self.strides, self.dilations, self.begin,
                            self.groups)[0]


def ref_rap_first_onehot(x, w_t, b_t):
    """Spec A1 with a one-hot seed: ``w_t`` is the weight row of the target, ``b_t`` its bias."""
    xp, xn, wp, wn = pos(x), neg(x), pos(w_t), neg(w_t)
    Cpp, Cpn, Cnp, Cnn = xp * wp, xp * wn, xn * wp, xn * wn
    Pos, Neg = (Cpp + Cnn).sum(), (Cpn + Cnp).sum()
    bp = b_t * sdiv(Pos, Pos + Neg)
    bn = b_t * sdiv(Neg, Pos + Neg)
    C = Cpp + Cpn + Cnp + Cnn + xp * wp * sdiv(bp, Cpp.sum()) + xp * wn * sdiv(bn, Cpn.sum())
    return np.abs(C) * sdiv(C.sum(), np.abs(C).sum())


def ref_rap_first(x, lin, b, R):
    """Spec A1 for an arbitrary arriving R (per output unit j, weighted by R_j)."""
    W = lin.W
    Wp, Wn = pos(W), neg(W)
    xp, xn = pos(x), neg(x)
    Zpp, Zpn, Znp, Znn = lin.L(xp, Wp), lin.L(xp, Wn), lin.L(xn, Wp), lin.L(xn, Wn)
    Cpp = xp * lin.LT(R * (Zpp != 0), Wp)
    Cpn = xp * lin.LT(R * (Zpn != 0), Wn)
    Cnp = xn * lin.LT(R * (Znp != 0), Wp)
    Cnn = xn * lin.LT(R * (Znn != 0), Wn)
    Pos, Neg = Zpp + Znn, Zpn + Znp
    bias_p = b * R * sdiv(Pos, Pos + Neg)
    bias_n = b * R * sdiv(Neg, Pos + Neg)
    C = Cpp + Cpn + Cnp + Cnn + xp * lin.LT(sdiv(bias_p, Zpp), Wp) + xp * lin.LT(sdiv(bias_n, Zpn), Wn)
    return np.abs(C) * sdiv(C.sum(), np.abs(C).sum())


def ref_rap_hidden(x, lin, R, conv, per_sign):
    """Spec A2: P for x+ and x-, then the uniform shift (once, or per P for rap-reference)."""
    M = (R != 0).astype(float)
    Wp, Wn = pos(lin.W), neg(lin.W)
    Rp, Rn = pos(R), neg(R)

    def P(x1, wa, sa, wb, sb):
        Za = sa * M * lin.L(x1, wa)
        Zb = sb * M * lin.L(x1, wb)
        one = (Za + Zb) != 0
        frac = sdiv(Zb, Za + Zb)
        C1 = x1 * sa * lin.LT(sdiv(Rp * one, Za), wa)
        C2 = x1 * sb * lin.LT(sdiv(Rp * frac, Zb), wb)
        C2n = x1 * sb * lin.LT(sdiv(Rn * frac, Zb), wb)
        if conv:
            C1n = x1 * sb * lin.LT(sdiv(Rn * one, Zb), wb)
        else:
            C1n = x1 * sa * lin.LT(sdiv(Rn * one, Za), wa)
        return C1 + C2 + C1n + C2n

    def shift(C):
        nz = C != 0
        return C - nz * sdiv(C.sum() - R.sum(), nz.sum())

    parts = [P(pos(x), Wp, 1.0, Wn, -1.0), P(neg(x), Wp, -1.0, Wn, 1.0)]
    if per_sign:
        return shift(parts[0]) + shift(parts[1])
    return shift(parts[0] + parts[1])


def ref_zbox(x, lin, R, stabilizer=None):
    """Spec A3: the z^B rule with the sample's min and max as bounds."""
    W = lin.W
    Wp, Wn = pos(W), neg(W)
    lo, hi = x.min(), x.max()
    ones = np.ones_like(x)
    Z = lin.L(x, W) - lin.L(lo * ones, Wp) - lin.L(hi * ones, Wn)
    s = sdiv(R, Z) if stabilizer is None else R / (Z + stabilizer)
    return x * lin.LT(s, W) - lo * lin.LT(s, Wp) - hi * lin.LT(s, Wn)


def ref_alpha_beta(x, lin, R, alpha):
    """Spec B: LRP alpha-beta with beta = alpha - 1."""
    Wp, Wn = pos(lin.W), neg(lin.W)
    xp, xn = pos(x), neg(x)
    act = xp * lin.LT(sdiv(R, lin.L(xp, Wp)), Wp) + xn * lin.LT(sdiv(R, lin.L(xn, Wn)), Wn)
    inh = xp * lin.LT(sdiv(R, lin.L(xp, Wn)), Wn) + xn * lin.LT(sdiv(R, lin.L(xn, Wp)), Wp)
    return alpha * act - (alpha - 1) * inh


def relu(a):
    return np.maximum(a, 0.0)


def naive_avg_pool(x, out_shape, kernel, strides, begin):
    """AveragePool with count_include_pad=0: the mean of the window's elements inside the input."""
    y = np.zeros(x.shape[:2] + tuple(out_shape))
    dil = (1,) * len(kernel)
    for nc in np.ndindex(*x.shape[:2]):
        for p in np.ndindex(*out_shape):
            vals = [x[nc + idx] for _, idx in window_taps(p, kernel, strides, dil, begin, x.shape[2:])]
            y[nc + p] = sum(vals) / len(vals)
    return y


def reference_forward(model, x, forward):
    """The model's activations in float64 by the loop references (as onnxrap's float64 run
    recomputes them from the input), checked against ONNX Runtime's float32 logits."""
    vals = forward(x.astype(np.float64))
    (logits,) = run(model, x)
    np.testing.assert_allclose(vals["logits"], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    return vals


def explain(model, x, target, method, dtype="float64"):
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
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def targets_with_negative_logit(model, x):
    """Per sample: arg-max for even samples, arg-min for odd ones (a negative logit, R < 0)."""
    logits = run(model, x)[0].reshape(len(x), -1)
    t = logits.argmax(axis=1)
    t[1::2] = logits[1::2].argmin(axis=1)
    assert (logits[np.arange(len(x)), t] < 0).any()
    return t


# -- graph builders ----------------------------------------------------------

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


def mlp(depth, n_in=5, hidden=6, classes=4, trans_a=False):
    """Gemm (+Relu+Gemm)*: transB=1, alpha and beta != 1, biases; input (N, n_in) or (n_in, N)."""
    sizes = [n_in] + [hidden] * (depth - 1) + [classes]
    nodes, inits, layers = [], [], []
    inp = "x"
    for i in range(depth):
        out = "logits" if i == depth - 1 else f"h{i}"
        ns, its, W, b = gemm_layer(i, inp, out, (sizes[i + 1], sizes[i]), seed=10 * i + 1,
                                   alpha=[0.75, 1.5, 1.25][i % 3], beta=[1.25, 0.625, -1.5][i % 3],
                                   trans_a=int(trans_a and i == 0))
        nodes += ns
        inits += its
        layers.append((inp, W, b))
        if i < depth - 1:
            nodes.append(node("Relu", [out], [f"r{i}"]))
            inp = f"r{i}"
    shape = [n_in, None] if trans_a else [None, n_in]
    return make_model(nodes, [("x", shape)], [("logits", None)], inits), layers


def ref_mlp(model, layers, x, targets, method, x_rows=None):
    """rap / rap-reference / lrp-a*b* on an mlp, one sample at a time.

    ``x_rows`` is the model input as samples in rows (when the model takes it transposed).
    """
    x_rows = x if x_rows is None else x_rows

    def forward(_):
        vals = {"x": x_rows.astype(np.float64)}
        for k, (inp, W, b) in enumerate(layers):
            h = vals[inp] @ W + b
            if k == len(layers) - 1:
                vals["logits"] = h
            else:
                vals[f"r{k}"] = relu(h)
        return vals

    vals = reference_forward(model, x, forward)
    out = np.zeros(x_rows.shape)
    for n, t in enumerate(targets):
        R = None
        for k in reversed(range(len(layers))):
            inp, W, b = layers[k]
            a = vals[inp][n]
            if method.startswith("lrp"):
                if R is None:
                    R = np.zeros(W.shape[1])
                    R[t] = vals["logits"][n, t]
                R = ref_alpha_beta(a, DenseMap(W), R, alpha=int(method[5]))
            elif R is None:
                R = ref_rap_first_onehot(a, W[:, t], b[t])
            else:
                R = ref_rap_hidden(a, DenseMap(W), R, conv=False, per_sign=method == "rap-reference")
            # the Relu in front of this layer passes R unchanged
        out[n] = R
    return out


# -- dense networks ---------------------------------------------------------

def single_gemm(w_rows, bias):
    """One Gemm (transB=1) as the whole model: it is both the head and the input op."""
    n = node("Gemm", ["x", "B", "C"], ["logits"], transB=1)
    k = len(w_rows[0])
    return make_model([n], [("x", [None, k])], [("logits", None)], [const("B", w_rows), const("C", bias)])


def test_rap_first_by_hand():
    """A1 worked by hand: x = (2, -1, 0.5), W[t] = (1, 1, -1), b[t] = 0.5.

    Cpp = (2,0,0), Cpn = (0,0,-0.5), Cnp = (0,-1,0), Cnn = 0; Pos = 2, Neg = -1.5;
    bp = 0.5 * 2 / 0.5 = 2, bn = 0.5 * -1.5 / 0.5 = -1.5;
    C = (2 + 2, -1, -0.5 - 1.5) = (4, -1, -2), S(C) = 1 = the logit; out = |C| / 7.
    """
    model = single_gemm([[1, 1, -1], [3, -2, 1]], [0.5, 0.25])
    x = np.array([[2, -1, 0.5]], dtype=np.float32)
    for method in ("rap", "rap-reference"):
        e = explain(model, x, 0, method)
        np.testing.assert_allclose(e.relevance, [[4 / 7, 1 / 7, 2 / 7]], rtol=1e-12)
        np.testing.assert_allclose(e.target_logit, [1.0])


def test_rap_first_zero_denominator_drops_bias_share():
    """A1 edge: S(Cpn) = 0 but Neg != 0, so bn has nowhere to go ("each term is zero where its
    own denominator is zero"): x = (2, -1), W[t] = (1, 1), b[t] = 0.5 gives C = (3, -1),
    out = (1.5, 0.5), summing to 2, not to the logit 1.5."""
    model = single_gemm([[1, 1], [1, -1]], [0.5, 0.0])
    x = np.array([[2, -1]], dtype=np.float32)
    e = explain(model, x, 0, "rap")
    np.testing.assert_allclose(e.relevance, [[1.5, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(e.target_logit, [1.5])


@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0", "lrp-a2b1"])
@pytest.mark.parametrize("n_in", [5, 16])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_rules_match_spec(depth, n_in, method):
    """Gemm(transB=1, alpha, beta, bias) [+Relu+Gemm]*: A1 at the head, A2 below; LRP alpha-beta.

    Signed inputs (x- terms), and a target with a negative logit (R- terms, C1n of dense ops).
    With 5 inputs some samples hit A1's zero denominators (S(Cpp) or S(Cpn) = 0).
    """
    model, layers = mlp(depth, n_in=n_in)
    x = rnd((4, n_in), 3)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    ref = ref_mlp(model, layers, x, targets, method)
    assert np.abs(ref).max() > 0
    assert_close(got, ref)


def test_rap_reference_differs_from_rap_on_signed_dense_input():
    """With signed x at an A2 layer the two shifts differ (so the comparisons above can tell them apart)."""
    model, layers = mlp(2)
    x = rnd((4, 5), 3)
    t = targets_with_negative_logit(model, x)
    a = ref_mlp(model, layers, x, t, "rap")
    b = ref_mlp(model, layers, x, t, "rap-reference")
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
    assert np.abs(explain(model, x, t, "rap").relevance - explain(model, x, t, "rap-reference").relevance).max() > 0


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_rap_conserves_logit(depth):
    model, _ = mlp(depth, n_in=32)
    x = rnd((4, 32), 3)
    assert_conserves(model, x, targets_with_negative_logit(model, x))


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a2b1"])
def test_gemm_trans_a(depth, method):
    """Gemm with transA=1 (input given as (features, N)) explains like transA=0 on x.T."""
    model_t, layers_t = mlp(depth, n_in=12, trans_a=True)
    model, _ = mlp(depth, n_in=12)
    x = rnd((3, 12), 4)
    targets = np.array([0, 2, 3])
    got = explain(model_t, np.ascontiguousarray(x.T), targets, method).relevance
    assert got.shape == (12, 3)
    plain = explain(model, x, targets, method).relevance
    np.testing.assert_allclose(got.T, plain, rtol=1e-6, atol=1e-7 * np.abs(plain).max())
    ref = ref_mlp(model_t, layers_t, np.ascontiguousarray(x.T), targets, method, x_rows=x)
    assert_close(got.T, ref)
    if method == "rap":
        e = explain(model_t, np.ascontiguousarray(x.T), targets, method)
        np.testing.assert_allclose(e.relevance.sum(axis=0), e.target_logit, rtol=1e-5)


def matmul_add_models(seed=20):
    """The same 2-layer network as MatMul + Add(constant) and as Gemm."""
    W1, b1 = rnd((5, 6), seed), rnd((6,), seed + 1)
    W2, b2 = rnd((6, 4), seed + 2), rnd((4,), seed + 3, scale=3.0)
    inits = [const("W1", W1), const("b1", b1), const("W2", W2), const("b2", b2)]
    io = ([("x", [None, 5])], [("logits", None)])
    mm = make_model([node("MatMul", ["x", "W1"], ["m1"]), node("Add", ["m1", "b1"], ["h1"]),
                     node("Relu", ["h1"], ["r1"]), node("MatMul", ["r1", "W2"], ["m2"]),
                     node("Add", ["b2", "m2"], ["logits"])], *io, inits)
    gemm = make_model([node("Gemm", ["x", "W1", "b1"], ["h1"]), node("Relu", ["h1"], ["r1"]),
                       node("Gemm", ["r1", "W2", "b2"], ["logits"])], *io, inits)
    return mm, gemm, (W1.astype(float), b1.astype(float), W2.astype(float), b2.astype(float))


def test_matmul_add_is_one_linear_op_with_bias():
    """MatMul + Add(constant vector) = Gemm with that bias: same relevance, bias read by A1."""
    mm, gemm, (W1, b1, W2, b2) = matmul_add_models()
    x = rnd((4, 5), 21)
    t = targets_with_negative_logit(gemm, x)
    got = explain(mm, x, t, "rap").relevance
    np.testing.assert_allclose(got, explain(gemm, x, t, "rap").relevance, rtol=1e-6,
                               atol=1e-7 * np.abs(got).max())
    r1 = reference_forward(mm, x, lambda x: {"r1": relu(x @ W1 + b1), "logits": relu(x @ W1 + b1) @ W2 + b2})["r1"]
    ref = np.stack([ref_rap_hidden(x[n].astype(float), DenseMap(W1),
                                   ref_rap_first_onehot(r1[n], W2[:, t[n]], b2[t[n]]),
                                   conv=False, per_sign=False) for n in range(len(x))])
    assert_close(got, ref)
    no_bias = np.stack([ref_rap_hidden(x[n].astype(float), DenseMap(W1),
                                       ref_rap_first_onehot(r1[n], W2[:, t[n]], 0.0),
                                       conv=False, per_sign=False) for n in range(len(x))])
    assert np.abs(no_bias - ref).max() > 1e-2 * np.abs(ref).max()  # the bias matters here
    assert_conserves(mm, x, t)


# -- convolutional networks ---------------------------------------------------

def conv_node(name, inp, out, w_shape, seed, bias=True, **attrs):
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
    ns, its, W, b = gemm_layer(9, inp, "logits", (classes, n_in), seed, alpha=1.25, beta=0.75)
    return ns, its, W, b


def conv_maxpool_model():
    """x -> Conv(3x3, pads 1) -> Relu -> MaxPool(3x3, stride 2, pads 1) -> Flatten -> Gemm."""
    cnode, cinit, Wc, bc = conv_node("conv", "x", "c", (3, 2, 3, 3), 30, pads=[1, 1, 1, 1],
                                     kernel_shape=[3, 3])
    nodes = [cnode, node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["m"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 27, 4, 31)
    model = make_model(nodes + hn, [("x", [None, 2, 6, 6])], [("logits", None)], cinit + hi)

    def forward(x):
        v = {"r": relu(naive_conv(x, Wc, (1, 1), (1, 1), (1, 1), (1, 1), 1) + bc[:, None, None])}
        v["m"], _ = naive_max_route(v["r"], np.zeros((len(x), 3, 3, 3)), (3, 3), (3, 3), (2, 2), (1, 1), (1, 1))
        v["f"] = v["m"].reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wc=Wc, Wh=Wh, bh=bh, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0"])
def test_conv_relu_maxpool_gemm(method):
    """z^B (A3) at the input Conv, the z-rule at the overlapping MaxPool, A1 (or alpha-beta) at the head."""
    model, p = conv_maxpool_model()
    x = rnd((2, 2, 6, 6), 32)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    conv = ConvMap(p["Wc"], (6, 6), pads=(1, 1, 1, 1))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        if method.startswith("lrp"):
            Rl = np.zeros(4)
            Rl[t] = v["logits"][n, t]
            Rf = ref_alpha_beta(v["f"][n], DenseMap(p["Wh"]), Rl, alpha=1)
        else:
            Rf = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t])
        Rm = Rf.reshape(3, 3, 3)
        # MaxPool z-rule: x * route(sdiv(R, y))
        y, routed = naive_max_route(v["r"][n][None], sdiv(Rm, v["m"][n])[None], (3, 3), (3, 3), (2, 2),
                                    (1, 1), (1, 1))
        np.testing.assert_array_equal(y[0], v["m"][n])
        Rr = v["r"][n] * routed[0]
        ref[n] = ref_zbox(x[n].astype(float), conv, Rr, stabilizer=1e-9 if method.startswith("lrp") else None)
    assert_close(got, ref)
    if method == "rap":
        assert_conserves(model, x, targets)


def test_maxpool_z_rule_drops_relevance_of_all_zero_windows():
    """MaxPool z-rule ``x * route(sdiv(R, y))``: a window whose max is 0 passes nothing on.

    x -> Relu -> MaxPool(2x2, s2) -> Add(constant) -> Flatten -> Gemm; the constant lets R
    reach windows where y = 0, where plain gradient routing of R would give relevance.
    """
    k = np.linspace(0.5, 1.0, 18).reshape(2, 3, 3).astype(np.float32)
    hn, hi, Wh, bh = head_gemm("f", 18, 3, 90)
    nodes = [node("Relu", ["x"], ["r"]),
             node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Add", ["m", "k"], ["s"]), node("Flatten", ["s"], ["f"])] + hn
    model = make_model(nodes, [("x", [None, 2, 6, 6])], [("logits", None)], [const("k", k)] + hi)
    x = rnd((2, 2, 6, 6), 91) - 0.7
    targets = np.array([0, 2])

    def forward(x):
        m, _ = naive_max_route(relu(x), np.zeros((len(x), 2, 3, 3)), (3, 3), (2, 2), (2, 2), (1, 1), (0, 0))
        f = (m + k).reshape(len(x), -1)
        return {"r": relu(x), "m": m, "f": f, "logits": f @ Wh + bh}

    v = reference_forward(model, x, forward)
    assert (v["m"] == 0).any()
    got = explain(model, x, targets, "rap").relevance
    ref, plain = np.zeros(x.shape), np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rm = ref_rap_first_onehot(v["f"][n], Wh[:, t], bh[t]).reshape(1, 2, 3, 3)
        _, routed = naive_max_route(v["r"][n][None], sdiv(Rm, v["m"][n][None]), (3, 3), (2, 2), (2, 2),
                                    (1, 1), (0, 0))
        ref[n] = v["r"][n] * routed[0]
        plain[n] = naive_max_route(v["r"][n][None], Rm, (3, 3), (2, 2), (2, 2), (1, 1), (0, 0))[1][0]
    assert_close(got, ref)
    assert np.abs(plain - ref).max() > 1e-3 * np.abs(ref).max()


def residual_model():
    """x -> ConvA(3x3) = a, x -> ConvB(1x1) = b, Add(a, b) -> AveragePool(3, s2, p1) -> Flatten -> Gemm."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 40, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "x", "b", (3, 2, 1, 1), 42)
    nodes = [na, nb, node("Add", ["a", "b"], ["s"]),
             node("AveragePool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["p"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 27, 4, 44)
    model = make_model(nodes + hn, [("x", [None, 2, 5, 5])], [("logits", None)], ia + ib + hi)

    def forward(x):
        v = {"a": naive_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None],
             "b": naive_conv(x, Wb, (1, 1), (1, 1), (0, 0), (0, 0), 1) + bb[:, None, None]}
        v["s"] = v["a"] + v["b"]
        v["f"] = naive_avg_pool(v["s"], (3, 3), (3, 3), (2, 2), (1, 1)).reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_residual_add_and_average_pool(method):
    """Signed residual Add: rap shares by |a|, |b| (reference: a, b); AveragePool by |x| (reference: x)."""
    model, p = residual_model()
    x = rnd((2, 2, 5, 5), 45)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["a"] < 0).any() and (v["b"] < 0).any()
    absolute = method == "rap"
    convA = ConvMap(p["Wa"], (5, 5), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (5, 5))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rp = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(1, 3, 3, 3)
        s = v["s"][n][None]
        Rs = naive_window_share(np.abs(s) if absolute else s, Rp, (3, 3), (2, 2), (1, 1))[0]
        a, b = v["a"][n], v["b"][n]
        if absolute:
            Ra, Rb = np.abs(a) * sdiv(Rs, np.abs(a) + np.abs(b)), np.abs(b) * sdiv(Rs, np.abs(a) + np.abs(b))
        else:
            Ra, Rb = a * sdiv(Rs, a + b), b * sdiv(Rs, a + b)
        xn = x[n].astype(float)
        ref[n] = ref_zbox(xn, convA, Ra) + ref_zbox(xn, convB, Rb)
    assert_close(got, ref, rtol=1e-8)
    if absolute:
        assert_conserves(model, x, targets)


def concat_model(shift):
    """x -> GemmA -> Relu, x -> GemmB -> Relu, Concat(axis 1) [-> Add(constant)] -> Gemm head."""
    na, ia, Wa, ba = gemm_layer(0, "x", "ha", (4, 6), 50, alpha=0.75, beta=1.25)
    nb, ib, Wb, bb = gemm_layer(1, "x", "hb", (3, 6), 52, alpha=1.5, beta=0.5)
    nodes = na + nb + [node("Relu", ["ha"], ["ra"]), node("Relu", ["hb"], ["rb"]),
                       node("Concat", ["ra", "rb"], ["cat"], axis=1)]
    inits = ia + ib
    feed = "cat"
    if shift:
        nodes.append(node("Add", ["cat", "k"], ["shifted"]))
        inits.append(const("k", np.linspace(0.5, 1.5, 7)))
        feed = "shifted"
    hn, hi, Wh, bh = head_gemm(feed, 7, 4, 54)
    model = make_model(nodes + hn, [("x", [None, 6])], [("logits", None)], inits + hi)
    k = np.linspace(0.5, 1.5, 7).astype(np.float32).astype(float)

    def forward(x):
        v = {"ra": relu(x @ Wa + ba), "rb": relu(x @ Wb + bb)}
        v["cat"] = np.concatenate([v["ra"], v["rb"]], axis=1)
        v["shifted"] = v["cat"] + k
        v["logits"] = v[feed] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, feed=feed, forward=forward)


@pytest.mark.parametrize("shift", [False, True], ids=["concat", "concat-then-add-constant"])
def test_concat_slices_masked_by_nonzero_input(shift):
    """Concat: each input gets its slice of R times [x != 0]; a tensor read twice sums its relevances.

    With a constant added after the Concat, R reaches zero entries of the Concat's
    inputs, so the mask changes the result (checked against the unmasked reference).
    """
    model, p = concat_model(shift)
    x = rnd((4, 6), 55)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, "rap").relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["ra"] == 0).any() and (v["rb"] == 0).any()

    def reference(mask):
        out = np.zeros(x.shape)
        for n, t in enumerate(targets):
            Rc = ref_rap_first_onehot(v[p["feed"]][n], p["Wh"][:, t], p["bh"][t])
            Ra, Rb = Rc[:4], Rc[4:]
            if mask:
                Ra, Rb = Ra * (v["ra"][n] != 0), Rb * (v["rb"][n] != 0)
            xn = x[n].astype(float)
            out[n] = (ref_rap_hidden(xn, DenseMap(p["Wa"]), Ra, conv=False, per_sign=False)
                      + ref_rap_hidden(xn, DenseMap(p["Wb"]), Rb, conv=False, per_sign=False))
        return out

    ref = reference(mask=True)
    assert_close(got, ref)
    if shift:
        assert np.abs(reference(mask=False) - ref).max() > 1e-3 * np.abs(ref).max()
    else:
        assert_conserves(model, x, targets)


def pad_models():
    """x -> Pad(zero, explicit node) -> Conv -> Relu -> Flatten -> Gemm, and the same with Conv pads."""
    W = rnd((3, 2, 3, 3), 60)
    bias = rnd((3,), 61)
    hn, hi, Wh, bh = head_gemm("f", 3 * 6 * 6, 4, 62)
    tail = [node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"])] + hn
    inits = [const("W", W), const("bias", bias)] + hi
    io = ([("x", [None, 2, 5, 5])], [("logits", None)])
    explicit = make_model(
        [node("Pad", ["x", "pads"], ["xp"], mode="constant"), node("Conv", ["xp", "W", "bias"], ["c"])] + tail,
        *io, inits + [const("pads", [0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64)])
    attribute = make_model([node("Conv", ["x", "W", "bias"], ["c"], pads=[1, 2, 2, 1])] + tail, *io, inits)

    def forward(x):
        c = naive_conv(x, W.astype(float), (1, 1), (1, 1), (1, 2), (2, 1), 1) + bias.astype(float)[:, None, None]
        f = relu(c).reshape(len(x), -1)
        return {"f": f, "logits": f @ Wh + bh}

    return explicit, attribute, dict(W=W.astype(float), Wh=Wh, bh=bh, forward=forward)


def test_explicit_zero_pad_is_part_of_the_conv():
    """A zero Pad node before the input Conv == the Conv's pads attribute (A4), z^B bounds from x itself."""
    explicit, attribute, p = pad_models()
    x = (np.random.default_rng(63).uniform(0.5, 1.5, (2, 2, 5, 5))).astype(np.float32)  # min(x) > 0
    targets = np.array([1, 3])
    got = explain(explicit, x, targets, "rap").relevance
    other = explain(attribute, x, targets, "rap").relevance
    np.testing.assert_allclose(got, other, rtol=1e-6, atol=1e-7 * np.abs(other).max())
    v = reference_forward(explicit, x, p["forward"])
    conv = ConvMap(p["W"], (5, 5), pads=(1, 2, 2, 1))
    unfolded = ConvMap(p["W"], (8, 8))
    ref, wrong = np.zeros(x.shape), np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rc = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(3, 6, 6)
        xn = x[n].astype(float)
        ref[n] = ref_zbox(xn, conv, Rc)
        padded = np.pad(xn, ((0, 0), (1, 2), (2, 1)))
        wrong[n] = ref_zbox(padded, unfolded, Rc)[:, 1:6, 2:7]  # z^B on the padded tensor, then crop
    assert_close(got, ref)
    assert np.abs(wrong - ref).max() > 1e-3 * np.abs(ref).max()  # the two readings differ here
    assert_conserves(explicit, x, targets)


def conv_head_gap_model():
    """x -> ConvA(3x3) -> ConvB(1x1, bias: the head) -> GlobalAveragePool -> Flatten: A1 with R not one-hot."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 70, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "a", "y", (4, 3, 1, 1), 72)
    nodes = [na, nb, node("GlobalAveragePool", ["y"], ["g"]), node("Flatten", ["g"], ["logits"])]
    model = make_model(nodes, [("x", [None, 2, 5, 5])], [("logits", None)], ia + ib)

    def forward(x):
        v = {"a": naive_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None]}
        v["y"] = naive_conv(v["a"], Wb, (1, 1), (1, 1), (0, 0), (0, 0), 1) + bb[:, None, None]
        v["logits"] = v["y"].mean(axis=(2, 3))
        return v

    return model, dict(Wa=Wa, Wb=Wb, bb=bb, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_conv_head_behind_global_pool(method):
    """A1 per output unit weighted by the arriving R (spec A1, last paragraph), signed head input.

    rap-reference shares the seed through the pool by y (the released behaviour): A1 then sums
    to sum_j R_j y_j, which is not the logit. rap sends the seed through the ops after the head
    as the logit's gradient (R_j = 1/(w h)), so A1 sums to the logit, up to A1's bias shares
    that have no contributions to go to, frequent with 3 input channels (test_architectures
    checks conservation on a wider head).
    """
    model, p = conv_head_gap_model()
    x = rnd((2, 2, 5, 5), 73)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["a"] < 0).any()
    convA = ConvMap(p["Wa"], (5, 5), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (5, 5))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        y = v["y"][n]
        Rg = np.zeros((4, 1, 1))
        Rg[t] = 1.0
        if method == "rap":
            Ry = np.broadcast_to(Rg / y[0].size, y.shape)
        else:
            Ry = y * sdiv(Rg, y.sum(axis=(1, 2), keepdims=True))
        Ra = ref_rap_first(v["a"][n], convB, p["bb"][:, None, None], Ry)
        ref[n] = ref_zbox(x[n].astype(float), convA, Ra)
    assert_close(got, ref)


def test_conv_plus_constant_add_is_its_bias():
    """Conv without bias + Add of a per-channel constant (1, C, 1, 1) == Conv with that bias (A1 reads it)."""
    model, p = conv_head_gap_model()
    b = np.array(p["bb"], dtype=np.float32)
    unbiased = onnx.ModelProto()
    unbiased.CopyFrom(model)
    g = unbiased.graph
    conv = next(n for n in g.node if n.name == "convB")
    del conv.input[2]
    conv.output[0] = "y0"
    g.node.insert(list(g.node).index(conv) + 1, node("Add", ["y0", "bias4"], ["y"]))
    g.initializer.append(const("bias4", b.reshape(1, 4, 1, 1)))
    x = rnd((2, 2, 5, 5), 74)
    np.testing.assert_allclose(run(unbiased, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)
    targets = np.array([1, 3])
    got = explain(unbiased, x, targets, "rap").relevance
    np.testing.assert_allclose(got, explain(model, x, targets, "rap").relevance, rtol=1e-9,
                               atol=1e-12 * np.abs(got).max())


def conv_hidden_model():
    """x -> ConvA (input) -> ConvB (3x3 stride 2: A2 on a conv with signed input) -> Relu -> Flatten -> Gemm."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 80, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "a", "c", (4, 3, 3, 3), 82, strides=[2, 2], pads=[1, 0, 0, 1])
    nodes = [na, nb, node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 4 * 3 * 3, 4, 84)
    model = make_model(nodes + hn, [("x", [None, 2, 6, 6])], [("logits", None)], ia + ib + hi)

    def forward(x):
        v = {"a": naive_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None]}
        c = naive_conv(v["a"], Wb, (2, 2), (1, 1), (1, 0), (0, 1), 1) + bb[:, None, None]
        v["f"] = relu(c).reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_conv_hidden_layer(method):
    """A2 on a convolution (C1n through W- for conv ops), signed input, R of both signs of logit."""
    model, p = conv_hidden_model()
    x = rnd((2, 2, 6, 6), 85)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    convA = ConvMap(p["Wa"], (6, 6), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (6, 6), strides=(2, 2), pads=(1, 0, 0, 1))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rr = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(4, 3, 3)
        Ra = ref_rap_hidden(v["a"][n], convB, Rr, conv=True, per_sign=method == "rap-reference")
        ref[n] = ref_zbox(x[n].astype(float), convA, Ra)
    assert_close(got, ref)
    if method == "rap":
        assert_conserves(model, x, targets)


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
