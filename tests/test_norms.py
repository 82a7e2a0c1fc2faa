"""LayerNormalization (ops/normalization.py, docs/rules.md, layernorm): forward and adjoint against ONNX Runtime
in float64, the rules by hand and their conservation, rap's conservation on small graphs, and the refusals."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import BK, assert_conserves, assert_one_line_error, rel_l2, run_cli
from onnx_helpers import const, make_model, node, session
from onnxrap import Explainer
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.engine import Context
from onnxrap.graph import Graph
from onnxrap.methods import get
from onnxrap.ops.normalization import LayerNorm
from onnxrap.rules.normalization import CenteringShare


def double_model(nodes, x_shape, inits, opset=17):
    """A float64 model from ``x`` to ``y`` (ONNX Runtime's float64 kernels, for central differences)."""
    graph = helper.make_graph(nodes, "norms", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, x_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


# (name, x shape, axis, scale shape, with bias)
CASES = [("last axis, channels-last", (2, 3, 3, 5), -1, (5,), True),
         ("channel axis of (N, C)", (3, 6), 1, (6,), True),
         ("two axes, no bias", (2, 4, 3), 1, (4, 3), False)]


def layernorm_op(shape, axis, scale_shape, with_bias, seed=0):
    rng = np.random.default_rng(seed)
    scale, bias = rng.normal(size=scale_shape), rng.normal(size=scale_shape)
    inits = [numpy_helper.from_array(scale, "scale")] + ([numpy_helper.from_array(bias, "bias")] if with_bias else [])
    ln = node("LayerNormalization", ["x", "scale"] + (["bias"] if with_bias else []), ["y"], axis=axis,
              epsilon=1e-3)
    model = double_model([ln], list(shape), inits)
    (op,) = Graph(model).ops
    return model, op


@pytest.mark.parametrize("name, shape, axis, scale_shape, with_bias", CASES)
def test_forward_and_adjoint_match_onnx_runtime_in_float64(name, shape, axis, scale_shape, with_bias):
    model, op = layernorm_op(shape, axis, scale_shape, with_bias)
    assert isinstance(op, LayerNorm)
    x = np.random.default_rng(1).normal(size=shape) * 3 + 1
    sess = session(model)
    np.testing.assert_allclose(op.forward(BK, {"x": x}), sess.run(None, {"x": x})[0], rtol=1e-12, atol=1e-12)
    # the vjp against central differences of ONNX Runtime's output, along random directions
    grad = np.random.default_rng(2).normal(size=shape)
    (got,) = op.vjp(BK, {"x": x}, grad)
    h = 1e-5
    for seed in range(3):
        d = np.random.default_rng(10 + seed).normal(size=shape)
        up, down = (sess.run(None, {"x": x + s * h * d})[0] for s in (1, -1))
        np.testing.assert_allclose(np.sum(got * d), np.sum(grad * (up - down) / (2 * h)), rtol=1e-7)


def share(rule, x, R, axis=-1):
    ln = LayerNorm("ln", "LayerNormalization", ["x"], "y", axis, 1e-5, np.ones(1), np.zeros(1))
    (out,) = rule(ln, Context(BK, {"x": x, "y": ln.forward(BK, {"x": x})}, {}), R)
    return out


X = np.array([[1.0, 2.0, 3.0, 6.0]])  # mean 3: centred -2, -1, 0, 3
R = np.array([[0.5, -1.0, 2.0, 4.0]])


def test_z_rule_by_hand():
    """c_ij = x_i (d_ij - 1/4); output j's share of x_i is c_ij / (x_j - 3); output 2 (centred 0) has none."""
    c = X[0][:, None] * (np.eye(4) - 0.25)
    expected = sum(c[:, j] / (X[0, j] - 3) * R[0, j] for j in (0, 1, 3))
    got = share(CenteringShare(absolute=False), X, R)
    np.testing.assert_allclose(got[0], expected, rtol=1e-12)
    assert got.sum() == pytest.approx(R.sum() - R[0, 2])  # all but the output that sat at the mean


def test_size_rule_by_hand():
    """Shares |c_ij| / sum_i' |c_i'j|: every output's shares are non-negative and sum to 1."""
    c = abs(X[0][:, None] * (np.eye(4) - 0.25))
    expected = (c / c.sum(axis=0)) @ R[0]
    got = share(CenteringShare(absolute=True), X, R)
    np.testing.assert_allclose(got[0], expected, rtol=1e-12)
    assert got.sum() == pytest.approx(R.sum(), rel=1e-12)


def test_rap_conserves_where_a_group_is_all_zero():
    """A group of zeros has nothing to share by: rap's shift puts its relevance back."""
    x = np.array([[[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]])
    r = np.array([[[1.0, 2.0, -0.5], [0.3, 0.2, 0.1]]])
    assert share(CenteringShare(absolute=True, conserve=True), x, r).sum() == pytest.approx(r.sum(), rel=1e-12)


def dense_layernorm_model(after=(), extra_inits=(), batch=2):
    """x (2, 8) -> MatMul -> LayerNormalization -> [after] -> MatMul -> logits (2, 3)."""
    rng = np.random.default_rng(3)
    last = "n" if not after else after[-1].output[0]
    nodes = [node("MatMul", ["x", "W0"], "h", name="first"),
             node("LayerNormalization", ["h", "scale", "bias"], "n", name="ln", axis=-1),
             *after, node("MatMul", [last, "W1"], "logits", name="head")]
    inits = [const("W0", rng.normal(size=(8, 6))), const("W1", rng.normal(size=(6, 3))),
             const("scale", rng.normal(size=6)), const("bias", rng.normal(size=6)), *extra_inits]
    return make_model(nodes, [("x", [batch, 8])], [("logits", [batch, 3])], inits, opset=17)


@pytest.mark.parametrize("after", [(), (node("Relu", ["n"], "r"),)], ids=["linear", "relu"])
def test_rap_conserves_through_layernorm(after):
    model = dense_layernorm_model(after)
    x = np.random.default_rng(4).normal(size=(2, 8)).astype(np.float32)
    assert_conserves(model, x, [0, 2])


def test_lrp_and_gradient_have_rules():
    model = dense_layernorm_model()
    graph = Graph(model)
    for name in ("lrp-eps", "lrp-ab", "gradient", "rap-reference", "rap-paper"):
        get(name).check(graph)


def test_layernorm_output_is_signed():
    """signs.py knows no bound for it (the bias and a negative scale move anything): the reader is signed."""
    ops = {op.name: op for op in Graph(dense_layernorm_model()).ops}
    assert ops["head"].signed_input and "floored" not in ops["head"].positions


def test_data_scale_is_refused(tmp_path, capsys):
    nodes = [node("LayerNormalization", ["x", "s"], "n", name="ln_with_data_scale"),
             node("MatMul", ["n", "W"], "logits", name="head")]
    model = make_model([node("Relu", ["x"], "s")] + nodes, [("x", [1, 4])], [("logits", [1, 2])],
                       [const("W", np.ones((4, 2)))], opset=17)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "ln_with_data_scale (LayerNormalization", "scale and bias must be constants")


GELU_AS_TORCH_EXPORTS = [node("Div", ["n", "sqrt2"], "d"), node("Erf", ["d"], "e"), node("Add", ["e", "one"], "p"),
                         node("Mul", ["n", "p"], "m"), node("Mul", ["m", "half"], "g")]
GELU_CONSTANTS = [const("sqrt2", np.sqrt(2)), const("one", 1.0), const("half", 0.5)]


def dense_gelu_model():
    """LayerNorm then GELU as torch exports it at opset 17, 0.5 x (1 + Erf(x / sqrt 2)), batch free."""
    return dense_layernorm_model(GELU_AS_TORCH_EXPORTS, GELU_CONSTANTS, batch="batch")


@pytest.mark.parametrize("method", ["rap", "gradient"])
def test_compiled_float64_recomputes_layernorm(method):
    """float64 runs onnxrap's own forward (Sqrt for sigma in the traced graph), as eager does."""
    ex = Explainer(dense_layernorm_model(batch="batch"), dtype="float64")
    x = np.random.default_rng(6).standard_normal((4, 8)).astype(np.float32)
    model = compile_graph(ex.graph, get(method), dtype="float64", recompute=True)
    assert "Sqrt" in {n.op_type for n in model.graph.node if n.name.startswith("onnxrap/")}
    _, relevance = CompiledModel(model).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < 1e-10


@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps"])
def test_compiled_gelu_agrees_with_eager(method):
    """float32, where ONNX Runtime has an Erf kernel (it has none in float64: a float64 compile of a GELU
    network is refused with MissingKernels, and the Explainer explains it eagerly)."""
    ex = Explainer(dense_gelu_model())
    x = np.random.default_rng(7).standard_normal((4, 8)).astype(np.float32)
    _, relevance = CompiledModel(compile_graph(ex.graph, get(method))).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < 1e-5
