"""InstanceNormalization and GroupNormalization (ops/normalization.py: the LayerNorm op over other groups;
docs/rules.md, layernorm): forward and adjoint against ONNX Runtime in float64, torch's GroupNorm pattern, the
group centring by hand, rap's conservation, compiled == eager, and the refusals."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from helpers import BK, assert_conserves, assert_one_line_error, rel_l2, run_cli
from onnx_helpers import const, make_model, node, session
from onnxrap import Explainer
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.engine import Context
from onnxrap.graph import Graph
from onnxrap.methods import get
from onnxrap.ops.normalization import LayerNorm
from onnxrap.rules.normalization import CenteringShare


def double_model(nodes, x_shape, inits, opset):
    """A float64 model from ``x`` to ``y`` (ONNX Runtime's float64 kernels, for central differences)."""
    graph = helper.make_graph(nodes, "norms", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE, x_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def affine_inits(n, seed=0):
    rng = np.random.default_rng(seed)
    return [numpy_helper.from_array(rng.normal(size=n), "scale"), numpy_helper.from_array(rng.normal(size=n), "bias")]


# (name, x shape, node, scale and bias length, opset)
CASES = [("InstanceNormalization, NCHW", (2, 3, 4, 5), node("InstanceNormalization", ["x", "scale", "bias"], "y",
                                                             epsilon=1e-3), 3, 17),
         ("InstanceNormalization, NCL", (3, 4, 6), node("InstanceNormalization", ["x", "scale", "bias"], "y"), 4, 11),
         ("GroupNormalization, NCHW", (2, 6, 3, 3),  # stash_type double: its statistics in float64, not float32
          node("GroupNormalization", ["x", "scale", "bias"], "y", num_groups=3, epsilon=1e-3, stash_type=11), 6, 21),
         ("GroupNormalization, one group", (3, 4, 5),
          node("GroupNormalization", ["x", "scale", "bias"], "y", num_groups=1, stash_type=11), 4, 21)]


def float32(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for v in (*copy.graph.input, *copy.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT
    return copy


@pytest.mark.parametrize("name, shape, norm, n, opset", CASES, ids=[c[0] for c in CASES])
def test_forward_and_adjoint_match_onnx_runtime_in_float64(name, shape, norm, n, opset):
    """ONNX Runtime has no float64 InstanceNormalization kernel: there onnx's reference evaluator (the spec in
    NumPy) stands in for the float64 forward; ONNX Runtime is checked in float32 too."""
    model = double_model([norm], list(shape), affine_inits(n), opset)
    (op,) = Graph(model).ops
    assert isinstance(op, LayerNorm) and op.kind == "layernorm"
    x = np.random.default_rng(1).normal(size=shape) * 3 + 1
    in_float32 = session(float32(model)).run(None, {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(op.forward(BK, {"x": x}), in_float32, rtol=1e-5, atol=1e-5)
    if norm.op_type == "InstanceNormalization":
        reference = ReferenceEvaluator(model)
        forward = lambda v: reference.run(None, {"x": v})[0]  # noqa: E731
    else:
        sess = session(model)
        forward = lambda v: sess.run(None, {"x": v})[0]  # noqa: E731
    np.testing.assert_allclose(op.forward(BK, {"x": x}), forward(x), rtol=1e-12, atol=1e-12)
    grad = np.random.default_rng(2).normal(size=shape)
    (got,) = op.vjp(BK, {"x": x}, grad)
    h = 1e-5
    for seed in range(3):
        d = np.random.default_rng(10 + seed).normal(size=shape)
        up, down = (forward(x + s * h * d) for s in (1, -1))
        np.testing.assert_allclose(np.sum(got * d), np.sum(grad * (up - down) / (2 * h)), rtol=1e-7)


# two groups of four values (channels 0-1 and 2-3, 1x2 pixels each): means 3 and 1.5
X = np.array([1.0, 2.0, 3.0, 6.0, 0.0, -1.0, 2.0, 5.0]).reshape(1, 4, 1, 2)
R = np.array([0.5, -1.0, 2.0, 4.0, 1.0, 0.25, -0.5, 3.0]).reshape(1, 4, 1, 2)


def group_share(rule, x, r):
    gn = LayerNorm("gn", "GroupNormalization", ["x"], "y", 1, 1e-5, np.ones(4), np.zeros(4), groups=2,
                   per_channel=True)
    (out,) = rule(gn, Context(BK, {"x": x, "y": gn.forward(BK, {"x": x})}, {}), r)
    return out


def test_size_rule_shares_within_each_group_by_hand():
    """Shares |c_ij| / sum_i' |c_i'j|, c_ij = x_i (d_ij - 1/4), within each group of four; nothing crosses."""
    expected = []
    for g in range(2):
        xg, rg = X.reshape(2, 4)[g], R.reshape(2, 4)[g]
        c = abs(xg[:, None] * (np.eye(4) - 0.25))
        expected.append((c / c.sum(axis=0)) @ rg)
    got = group_share(CenteringShare(absolute=True), X, R)
    np.testing.assert_allclose(got.reshape(2, 4), expected, rtol=1e-12)
    np.testing.assert_allclose(got.reshape(2, 4).sum(axis=1), R.reshape(2, 4).sum(axis=1), rtol=1e-12)


def test_z_rule_shares_within_each_group_by_hand():
    """Output j's share of x_i is c_ij / (x_j - mean) of its own group; output 2 of group 0 sits at the mean."""
    expected = []
    for g, mean in ((0, 3.0), (1, 1.5)):
        xg, rg = X.reshape(2, 4)[g], R.reshape(2, 4)[g]
        c = xg[:, None] * (np.eye(4) - 0.25)
        expected.append(sum(c[:, j] / (xg[j] - mean) * rg[j] for j in range(4) if xg[j] != mean))
    got = group_share(CenteringShare(absolute=False), X, R)
    np.testing.assert_allclose(got.reshape(2, 4), expected, rtol=1e-12)


def conv_norm_model(norm_nodes, inits, opset=17, batch=2, activation="Relu"):
    """x (N, 3, 6, 6) -> Conv to 4 channels -> [norm_nodes: h -> n] -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(3)
    nodes = [node("Conv", ["x", "W0"], "h", name="conv", pads=[1, 1, 1, 1]), *norm_nodes,
             node(activation, ["n"], "r"), node("GlobalAveragePool", ["r"], "p"), node("Flatten", ["p"], "f"),
             node("Gemm", ["f", "W1"], "logits", name="head", transB=1)]
    inits = [const("W0", rng.normal(size=(4, 3, 3, 3))), const("W1", rng.normal(size=(3, 4))), *inits]
    return make_model(nodes, [("x", [batch, 3, 6, 6])], [("logits", [batch, 3])], inits, opset=opset)


def affine(n, seed=5):
    rng = np.random.default_rng(seed)
    return [const("scale", 1 + 0.3 * rng.normal(size=n)), const("bias", 0.2 * rng.normal(size=n))]


# torch's nn.GroupNorm(2, 4) below opset 18: Reshape (N, 2, -1), InstanceNormalization with scale 1 and bias 0,
# Reshape back (to Shape(h)), Mul gamma, Add beta; as the fixture's, with gamma and beta shaped (C, 1, 1)
TORCH_GROUPNORM = ([node("Reshape", ["h", "groups_shape"], "hg"),
                    node("InstanceNormalization", ["hg", "ones", "zeros"], "ng", name="instnorm", epsilon=1e-5),
                    node("Shape", ["h"], "hshape"), node("Reshape", ["ng", "hshape"], "nb"),
                    node("Mul", ["nb", "gamma"], "nm"), node("Add", ["nm", "beta"], "n")],
                   [const("groups_shape", [0, 2, -1], np.int64), const("ones", np.ones(2)), const("zeros", np.zeros(2)),
                    const("gamma", 1 + 0.3 * np.random.default_rng(6).normal(size=(4, 1, 1))),
                    const("beta", 0.2 * np.random.default_rng(7).normal(size=(4, 1, 1)))])
MODELS = {"InstanceNormalization": lambda **kw: conv_norm_model(
              [node("InstanceNormalization", ["h", "scale", "bias"], "n", name="norm")], affine(4), **kw),
          "GroupNormalization 21": lambda **kw: conv_norm_model(
              [node("GroupNormalization", ["h", "scale", "bias"], "n", name="norm", num_groups=2)], affine(4), 21,
              **kw),
          "torch's GroupNorm at opset 17": lambda **kw: conv_norm_model(*TORCH_GROUPNORM, **kw)}


@pytest.mark.parametrize("name", MODELS)
def test_rap_conserves_and_each_norm_keeps_its_sum(name):
    model = MODELS[name]()
    x = np.random.default_rng(4).normal(size=(2, 3, 6, 6)).astype(np.float32)
    assert_conserves(model, x, [0, 2])
    e = Explainer(model, dtype="float64").explain(x, target=[0, 2], method="rap", trace=True)
    norms = [(inputs, out) for _, op_type, out, inputs in e.layer_sums if op_type.endswith("Normalization")]
    assert len(norms) == 1 and e.unconserved == []
    np.testing.assert_allclose(norms[0][0], norms[0][1], rtol=1e-10, atol=1e-10 * np.abs(e.target_logit).max())


@pytest.mark.parametrize("name", MODELS)
def test_lrp_and_gradient_have_rules(name):
    graph = Graph(MODELS[name]())
    for method in ("lrp-eps", "lrp-ab", "gradient", "rap-reference", "rap-paper"):
        get(method).check(graph)


@pytest.mark.parametrize("name", MODELS)
def test_the_norms_output_is_signed(name):
    """signs.py knows no bound for it (the bias and a negative scale move anything): the head reading it
    through the pool is signed, not floored; behind a Relu it is not signed."""
    heads = {activation: next(op for op in Graph(MODELS[name](activation=activation)).ops if op.name == "head")
             for activation in ("Identity", "Relu")}
    assert heads["Identity"].signed_input and "floored" not in heads["Identity"].positions
    assert not heads["Relu"].signed_input


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps"])
def test_compiled_agrees_with_eager(name, method):
    """float32 (ONNX Runtime has no float64 Conv); lrp-eps's z-rule divides by x_j - mean, which rounding moves most."""
    ex = Explainer(MODELS[name](batch="batch"))
    x = np.random.default_rng(8).standard_normal((3, 3, 6, 6)).astype(np.float32)
    _, relevance = CompiledModel(compile_graph(ex.graph, get(method))).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < (1e-3 if method == "lrp-eps" else 1e-5)


def test_opset_18_groupnormalization_is_refused_in_one_line(tmp_path, capsys):
    """Opset 18's GroupNormalization (a scale per group) is deprecated; the ONNX checker refuses it, and so does
    onnxrap, naming the op (ONNX Runtime still runs it)."""
    nodes = [node("GroupNormalization", ["x", "scale", "bias"], "n", name="gn18", num_groups=2),
             node("ReduceSum", ["n"], "logits", keepdims=0)]
    model = make_model(nodes, [("x", [1, 4, 4])], [("logits", [])], affine(2), opset=18, check=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4, 4), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "ONNX checker rejects", "GroupNormalization is deprecated")


def test_data_scale_is_refused(tmp_path, capsys):
    nodes = [node("Relu", ["x"], "s"),
             node("InstanceNormalization", ["x", "s", "bias"], "n", name="in_with_data_scale"),
             node("Flatten", ["n"], "f"), node("MatMul", ["f", "W"], "logits", name="head")]
    model = make_model(nodes, [("x", [1, 4, 2])], [("logits", [1, 2])], [const("W", np.ones((8, 2))),
                                                                          const("bias", np.zeros(4))], opset=17)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4, 2), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "in_with_data_scale (InstanceNormalization", "scale and B must be constants")
