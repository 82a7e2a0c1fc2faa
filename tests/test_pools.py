"""MaxPool, AveragePool, GlobalAveragePool and ReduceMean against ONNX Runtime and the loop references."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BK, case_id
from onnx_helpers import const, make_model, node, run
from onnxrap.backend import window_spec
from onnxrap.graph import Graph
from references import naive_max_route, resolve_pads

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


def assert_mean_pool_matches(op, x, y_ort, seed):
    """sum_pool(x) / divisor is ORT's output ``y_ort``, and sum_pool_adjoint is sum_pool's adjoint."""
    total = op.sum_pool(BK, x)
    assert total.shape == y_ort.shape
    np.testing.assert_allclose(total / op.divisor(BK, x.shape, x.dtype), y_ort, rtol=1e-5, atol=1e-6)
    s = np.random.default_rng(seed).standard_normal(total.shape)
    back = op.sum_pool_adjoint(BK, s, x.shape)
    assert back.shape == x.shape
    assert np.isclose(np.vdot(total, s), np.vdot(x, back), rtol=1e-12)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("case", AVG_CASES, ids=case_id)
def test_averagepool_sum_over_divisor_matches_onnxruntime(case, count_include_pad):
    """sum_pool(x) / divisor == ORT's AveragePool; sum_pool_adjoint is sum_pool's adjoint."""
    model = pool_model("AveragePool", case, count_include_pad=count_include_pad)
    x = np.random.default_rng(8).standard_normal((2, 3) + case[1])
    (y_ort,) = run(model, x.astype(np.float32))
    assert_mean_pool_matches(only_op(model), x, y_ort, seed=9)


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
    assert_mean_pool_matches(only_op(model), x, y_ort, seed=11)
