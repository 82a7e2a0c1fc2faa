"""Sub of two data tensors (PoolFormer's ``pool(x) - x``, FastViT's RepMixer) is a join of ``a`` and ``-b``;
Pow with a constant positive exponent (PoolFormerV2's StarReLU squares a Relu's output) is an activation.
Both checked against the same function written with ops tested elsewhere, by hand, and compiled."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rel_l2, rnd, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

N, C, H, W = 2, 3, 4, 4
METHODS = ["rap", "rap-reference", "lrp-a2b1", "lrp-eps", "gradient", "gradient-x-input"]


def _model(middle, extra=(), opset=13):
    """Conv -> Relu (r) -> AveragePool (p, same size) -> ``middle`` (reads r and p, writes m) -> Conv ->
    GlobalAveragePool -> Flatten -> Gemm (4 classes)."""
    nodes = [node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "r"),
             node("AveragePool", ["r"], "p", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]), *middle,
             node("Conv", ["m", "w2", "b2"], "h2", pads=[1, 1, 1, 1]), node("GlobalAveragePool", ["h2"], "g"),
             node("Flatten", ["g"], "f"), node("Gemm", ["f", "hw", "hb"], "y", transB=1)]
    inits = [const("w1", rnd((C, C, 3, 3), 1)), const("b1", rnd(C, 2, 0.1)), const("w2", rnd((C, C, 3, 3), 3)),
             const("b2", rnd(C, 4, 0.1)), const("hw", rnd((4, C), 5)), const("hb", rnd(4, 6, 0.1)), *extra]
    return make_model(nodes, [("x", [N, C, H, W])], [("y", [N, 4])], inits, opset=opset)


def _same(model, reference, methods_=METHODS):
    x = rnd((N, C, H, W), 7)
    np.testing.assert_allclose(run(model, x)[0], run(reference, x)[0], rtol=1e-5, atol=1e-6)
    got, want = Explainer(model, dtype="float64"), Explainer(reference, dtype="float64")
    for method in methods_:
        a, b = got.explain(x, method=method, target=[1, 2]), want.explain(x, method=method, target=[1, 2])
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-10, atol=1e-13, err_msg=method)
    return got.explain(x, method="rap", target=[1, 2])


def test_sub_of_data_tensors_is_a_join_of_the_negated_second():
    rap = _same(_model([node("Sub", ["p", "r"], "m")]),
                _model([node("Mul", ["r", "minus"], "nr"), node("Add", ["p", "nr"], "m")], [const("minus", -1.0)]))
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3)), rap.target_logit, rtol=1e-5)  # ORT's float32


def test_sub_broadcasts_its_second_operand():
    """``x - mean(x)`` over channels: the mean broadcasts back (its relevance sums over the channels)."""
    middle = [node("ReduceMean", ["r"], "mu", axes=[1], keepdims=1), node("Sub", ["p", "mu"], "m")]
    reference = [node("ReduceMean", ["r"], "mu", axes=[1], keepdims=1), node("Mul", ["mu", "minus"], "nmu"),
                 node("Add", ["p", "nmu"], "m")]
    _same(_model(middle), _model(reference, [const("minus", -1.0)]))


@pytest.mark.parametrize("exponent", [2.0, 3.0, 1.5])
def test_pow_of_a_constant_exponent_is_an_activation(exponent):
    """rap conserves through it, and the gradient (c x^(c-1) through the power) matches central differences
    of ONNX Runtime's logits along random directions."""
    model = _model([node("Pow", ["r", "c"], "q"), node("Add", ["q", "p"], "m")], [const("c", exponent)])
    x = rnd((N, C, H, W), 11).astype(np.float64)
    ex = Explainer(model, dtype="float64")
    g = ex.explain(x.astype(np.float32), method="gradient", target=[0, 0]).relevance
    rap = ex.explain(x.astype(np.float32), method="rap", target=[0, 0])
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3)), rap.target_logit, rtol=1e-5)
    rng, eps = np.random.default_rng(3), 1e-2
    for _ in range(3):  # directional derivatives by central differences in float32 ORT, loose
        d = rng.standard_normal(x.shape)
        d /= np.linalg.norm(d)
        plus = run(model, (x + eps * d).astype(np.float32))[0][:, 0]
        minus = run(model, (x - eps * d).astype(np.float32))[0][:, 0]
        fd = (plus - minus) / (2 * eps)
        np.testing.assert_allclose((g * d).sum(axis=(1, 2, 3)), fd, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("exponent, why", [(-1.0, "not one positive number"), (0.0, "not one positive number")])
def test_pow_refusals_are_one_line_errors(tmp_path, capsys, exponent, why):
    model = _model([node("Pow", ["r", "c"], "q", name="power"), node("Add", ["q", "p"], "m")], [const("c", exponent)])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rnd((N, C, H, W), 9))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "power (Pow", why)


def test_pow_with_a_data_exponent_is_refused(tmp_path, capsys):
    model = _model([node("Pow", ["p", "r"], "m", name="power")])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rnd((N, C, H, W), 9))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "power (Pow", "data exponent")


def test_sub_and_pow_compile():
    model = _model([node("Pow", ["r", "c"], "q"), node("Sub", ["q", "p"], "m")], [const("c", 2.0)])
    ex = Explainer(model)
    x = rnd((N, C, H, W), 12)
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=x.shape[1:])).run(x)
        assert rel_l2(relevance, ex.explain(x, method=method).relevance) < 1e-5, method
