"""Self-attention's ops (ops/attention.py): the rule at P @ V by hand on 2 tokens of 2 dimensions, Softmax and
the MatMul of two data tensors against ONNX Runtime and finite differences, conservation on a hand-built
attention classifier, and the products of two data tensors that stay refused."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BK, assert_one_line_error, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.engine import Context
from onnxrap.errors import UnsupportedOpsError
from onnxrap.graph import Graph
from onnxrap.methods import get
from onnxrap.ops.attention import DataMatMul, Softmax
from onnxrap.signs import UNBOUNDED

P = np.array([[[0.75, 0.25], [0.5, 0.5]]])  # one sample, 2 tokens: each row sums to 1
V = np.array([[[1.0, -2.0], [3.0, 4.0]]])  # 2 tokens of 2 dimensions
R = np.array([[[0.3, 0.2], [0.4, 0.1]]])  # relevance at P @ V; sums to 1


def attention_op(gate_on_left=True):
    """P @ V as the graph leaves it once signs.py has picked P (in [0, 1]) as the gate; V is signed."""
    names = ["p", "v"] if gate_on_left else ["v", "p"]
    op = DataMatMul("pv", "MatMul", names, "out")
    assert op.pick_gate([(0.0, 1.0), UNBOUNDED] if gate_on_left else [UNBOUNDED, (0.0, 1.0)]) is None
    op.signed_input, op.positions = True, ("signed",)
    return op


def relevance_at_v(method, gate_on_left=True):
    """What ``method``'s rule for P @ V gives V and P; with the gate on the right the same numbers transposed
    (``V^T @ P^T``)."""
    op = attention_op(gate_on_left)
    t = (lambda a: a) if gate_on_left else (lambda a: a.transpose(0, 2, 1))
    ctx = Context(BK, {"p": t(P), "v": t(V), "out": t(P @ V)}, {})
    out = get(method).rule_for(op)(op, ctx, t(R))
    assert op.inputs == ["v", "p"] and len(out) == 1  # the engine pairs [R_V] with [v, p]: the gate gets none
    return t(out[0])


@pytest.mark.parametrize("gate_on_left", [True, False])
def test_the_ah_rule_by_hand(gate_on_left):
    """lrp-eps (epsilon 0): P held constant, the z-rule of the linear map V -> P V (Ali et al.'s AH-rule).
    z = P V = [[1.5, -0.5], [2, 1]]; R / z = [[0.2, -0.4], [0.2, 0.1]]; P^T (R / z) = [[0.25, -0.25],
    [0.15, -0.05]]; times V: [[0.25, 0.5], [0.45, -0.2]], summing to 1 as R does."""
    got = relevance_at_v(get("lrp-eps", epsilon=0.0), gate_on_left)
    np.testing.assert_allclose(got, [[[0.25, 0.5], [0.45, -0.2]]], rtol=1e-12)


@pytest.mark.parametrize("gate_on_left", [True, False])
def test_rap_shares_by_size_by_hand(gate_on_left):
    """rap (dense.signed: AbsShare with P as the weight): P |V| = [[1.5, 2.5], [2, 3]]; R / (P |V|) =
    [[0.2, 0.08], [0.2, 1/30]]; P^T of it = [[0.25, 0.06 + 1/60], [0.15, 0.02 + 1/60]]; times |V|:
    every share non-negative where R is, summing to 1."""
    got = relevance_at_v("rap", gate_on_left)
    np.testing.assert_allclose(got, [[[0.25, 2 * (0.06 + 1 / 60)], [0.45, 4 * (0.02 + 1 / 60)]]], rtol=1e-12)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_the_gradient_reaches_both_factors():
    """DataMatMul's adjoint (either order of its inputs) is the derivative of a @ b in each factor."""
    rng = np.random.default_rng(0)
    a, b, g = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 4, 4))
    op = DataMatMul("ab", "MatMul", ["a", "b"], "out")
    ctx = {"a": a, "b": b}
    ga, gb = op.vjp(BK, ctx, g)
    h = 1e-6
    for which, grad in (("a", ga), ("b", gb)):
        d = rng.normal(size=ctx[which].shape)
        moved = {**ctx, which: ctx[which] + h * d}
        numeric = ((op.forward(BK, moved) - op.forward(BK, ctx)) * g).sum() / h
        assert numeric == pytest.approx((grad * d).sum(), rel=1e-5)
    op.pick_gate([(0.0, 1.0), UNBOUNDED])  # P @ V: inputs become [V, P], and so do the gradients
    assert op.inputs == ["b", "a"]
    np.testing.assert_array_equal(op.vjp(BK, ctx, g)[0], gb)


@pytest.mark.parametrize("opset, axis, shape", [(13, -1, (2, 3, 4, 5)), (13, 2, (2, 3, 4, 5)), (11, 2, (2, 3, 4, 5))])
def test_softmax_is_onnx_runtimes(opset, axis, shape):
    """Forward against ONNX Runtime (opset 11 normalises over every axis from ``axis`` on); adjoint against
    central differences in float64."""
    model = make_model([node("Softmax", ["x"], "s", axis=axis), node("Add", ["s", "zero"], "y")],
                       [("x", list(shape))], [("y", list(shape))], [const("zero", np.float32(0))], opset=opset)
    (op,) = [op for op in Graph(model, strict=False).ops if isinstance(op, Softmax)]
    x = np.random.default_rng(1).normal(size=shape) * 3
    np.testing.assert_allclose(op.forward(BK, {"x": x}), run(model, x.astype(np.float32))[0], rtol=1e-5, atol=1e-7)
    g, d = np.random.default_rng(2).normal(size=(2,) + shape)
    (grad,) = op.vjp(BK, {"x": x, "s": op.forward(BK, {"x": x})}, g)
    h = 1e-6
    numeric = ((op.forward(BK, {"x": x + h * d}) - op.forward(BK, {"x": x - h * d})) * g).sum() / (2 * h)
    assert numeric == pytest.approx((grad * d).sum(), rel=1e-6)


def attention_classifier(scores=None, tokens=3, dim=4, classes=3):
    """x (N, tokens, dim) -> one head of self-attention, softmax(x Wq (x Wk)^T / 2) x Wv, with the residual,
    flattened into a dense head.  ``scores``: the nodes from q and k to the probabilities ``p``."""
    rng = np.random.default_rng(4)
    inits = [const(name, rng.normal(size=(dim, dim))) for name in ("Wq", "Wk", "Wv")]
    inits += [const("half", np.float32(0.5)), const("Wh", rng.normal(size=(tokens * dim, classes))),
              const("flat", np.array([-1, tokens * dim]), dtype=np.int64)]
    scores = scores or [node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "qk", name="qk"),
                        node("Mul", ["qk", "half"], "scaled"),
                        node("Softmax", ["scaled"], "p", axis=-1, name="softmax")]
    nodes = [node("MatMul", ["x", "Wq"], "q"), node("MatMul", ["x", "Wk"], "k"), node("MatMul", ["x", "Wv"], "v"),
             *scores, node("MatMul", ["p", "v"], "o", name="pv"), node("Add", ["o", "x"], "res"),
             node("Reshape", ["res", "flat"], "f"), node("MatMul", ["f", "Wh"], "y")]
    return make_model(nodes, [("x", ["N", tokens, dim])], [("y", ["N", classes])], inits)


def test_the_hand_built_attention_conserves():
    """P @ V is a dense op on V whose gate is the Softmax's output; Q @ K^T has no gate and relevance never
    reaches it; rap's map sums to the logit, and every op keeps the sum it receives (float64)."""
    graph = Graph(attention_classifier())
    ops = {op.name: op for op in graph.ops}
    assert ops["pv"].inputs == ["v", "p"] and ops["pv"].gate_on_left and ops["pv"].positions[0] == "signed"
    assert ops["qk"].gate is None
    x = np.random.default_rng(5).normal(size=(2, 3, 4)).astype(np.float32)
    e = Explainer(attention_classifier(), dtype="float64").explain(x, target=[0, 2], method="rap", trace=True)
    # ONNX Runtime's float32 logits; the float64 map sums to onnxrap's own float64 forward's
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2)), e.target_logit, rtol=1e-5, atol=1e-6)
    assert e.recomputed == [] and e.unconserved == []
    names = [name for name, *_ in e.layer_sums]
    assert "pv" in names and "qk" not in names and "softmax" not in names
    for name, _, out, inputs in e.layer_sums[1:]:
        np.testing.assert_allclose(inputs, out, rtol=1e-10, atol=1e-12, err_msg=name)


def test_the_hand_built_attention_gradient_is_onnx_runtimes_derivative():
    model = attention_classifier()
    x = np.random.default_rng(6).normal(size=(1, 3, 4))
    e = Explainer(model, dtype="float64").explain(x.astype(np.float32), target=1, method="gradient")
    h = 1e-2
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(x.shape)
        up, down = (run(model, (x + s * h * d).astype(np.float32))[0][0, 1] for s in (1, -1))
        numeric = (float(up) - float(down)) / (2 * h)
        assert abs(numeric - float((e.relevance * d).sum())) < 1e-3 * abs(numeric) + 1e-5


def refused(model):
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    return str(info.value)


def test_a_product_of_two_signed_tensors_is_a_product():
    """q @ k^T with no Softmax after it: relevance reaches it, and no factor is a gate: a product of two signals
    (docs/rules.md, products), as is P @ V with P = Relu(q @ k^T), non-negative but unbounded."""
    scores = [node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "qk", name="qk"),
              node("Relu", ["qk"], "p")]
    ops = {op.name: op for op in Graph(attention_classifier(scores)).ops}
    assert ops["qk"].positions[0] == ops["pv"].positions[0] == "product"


def test_two_probabilities_are_a_product():
    """Which gates the other is ambiguous: a product, so relevance reaches both Softmaxes, refused there."""
    scores = [node("Softmax", ["q"], "p1", axis=-1), node("Transpose", ["k"], "kt", perm=[0, 2, 1]),
              node("Softmax", ["kt"], "p2", axis=-1), node("MatMul", ["p1", "p2"], "p", name="pp")]
    graph = Graph(attention_classifier(scores), strict=False)
    pp = next(op for op in graph.ops if op.name == "pp")
    assert pp.gate is None and pp.positions[0] == "product"
    assert [name for name, *_ in graph.unsupported] == ["Softmax_p1", "Softmax_p2"]


def test_a_softmax_that_relevance_reaches_is_refused():
    """A Softmax whose output is read as a signal (here by the residual Add), not only as a MatMul's gate."""
    rng = np.random.default_rng(7)
    model = make_model([node("Softmax", ["x"], "p", axis=-1, name="mid_softmax"), node("Add", ["p", "x"], "s"),
                        node("MatMul", ["s", "W"], "y")], [("x", ["N", 4])], [("y", ["N", 3])],
                       [const("W", rng.normal(size=(4, 3)))])
    assert "mid_softmax (Softmax: a Softmax inside the graph is explained only as attention's weights" in refused(model)


def test_a_matrix_product_across_the_batch_is_refused():
    model = make_model([node("Transpose", ["x"], "xt", perm=[1, 0]), node("MatMul", ["x", "xt"], "y", name="gram")],
                       [("x", [3, 4])], [("y", [3, 3])])
    assert "gram (MatMul: MatMul of two data tensors of ranks [2, 2]" in refused(model)


def test_the_cli_names_every_refused_node(tmp_path, capsys):
    """A Softmax whose output the residual Add reads as a signal, and an op with no rule."""
    scores = [node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["q", "kt"], "qk", name="qk"),
              node("Sin", ["qk"], "s", name="sin"), node("Softmax", ["s"], "p0", axis=-1, name="softmax"),
              node("Add", ["p0", "s"], "p")]
    path = tmp_path / "bad.onnx"
    path.write_bytes(attention_classifier(scores).SerializeToString())
    np.save(tmp_path / "x.npy", np.ones((1, 3, 4), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "sin (Sin", "softmax (Softmax")
    assert not (tmp_path / "out").exists()


def qkv_split(perm=(2, 0, 3, 1, 4), squeezed=0, tokens=3, heads=2, d=2):
    """timm's q, k, v: x (N, T, heads d) @ W, reshaped to (N, T, 3, heads, d), transposed by ``perm``, Split
    along axis 0 into parts of 1 and each Squeezed on axis ``squeezed``; then attention, flattened into a
    head."""
    rng = np.random.default_rng(8)
    width = heads * d
    inits = [const("W", rng.normal(size=(width, 3 * width))), const("Wh", rng.normal(size=(tokens * width, 3))),
             const("five", np.array([-1, tokens, 3, heads, d]), dtype=np.int64),
             const("flat", np.array([-1, tokens * width]), dtype=np.int64),
             const("sizes", np.array([1, 1, 1]), dtype=np.int64), const("axis", np.array([squeezed]), dtype=np.int64)]
    parts = ["q", "k", "v"]
    nodes = [node("MatMul", ["x", "W"], "qkv"), node("Reshape", ["qkv", "five"], "r"),
             node("Transpose", ["r"], "moved", perm=list(perm), name="moved"),
             node("Split", ["moved", "sizes"], [f"{p}5" for p in parts], axis=0, name="split"),
             *(node("Squeeze", [f"{p}5", "axis"], p) for p in parts),
             node("Transpose", ["k"], "kt", perm=[0, 1, 3, 2]), node("MatMul", ["q", "kt"], "qk"),
             node("Softmax", ["qk"], "p", axis=-1), node("MatMul", ["p", "v"], "o"),
             node("Transpose", ["o"], "ot", perm=[0, 2, 1, 3]), node("Reshape", ["ot", "flat"], "f"),
             node("MatMul", ["f", "Wh"], "y")]
    return make_model(nodes, [("x", ["N", tokens, width])], [("y", ["N", 3])], inits)


def test_the_qkv_split_conserves_and_has_the_true_gradient():
    model = qkv_split()
    x = np.random.default_rng(9).normal(size=(2, 3, 4))
    e = Explainer(model, dtype="float64").explain(x.astype(np.float32), target=[0, 2], method="rap")
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2)), e.target_logit, rtol=1e-5, atol=1e-6)
    g = Explainer(model, dtype="float64").explain(x[:1].astype(np.float32), target=1, method="gradient").relevance
    h, d = 1e-2, np.random.default_rng(10).standard_normal((1, 3, 4))
    up, down = (run(model, (x[:1] + s * h * d).astype(np.float32))[0][0, 1] for s in (1, -1))
    numeric = (float(up) - float(down)) / (2 * h)
    assert abs(numeric - float((g * d).sum())) < 1e-3 * abs(numeric) + 1e-5


@pytest.mark.parametrize("perm, squeezed", [((2, 3, 0, 1, 4), 0), ((2, 0, 3, 1, 4), 1)])
def test_a_near_miss_of_the_qkv_split_stays_refused(perm, squeezed):
    """The batch axis moved third, or a Squeeze of another axis: the Transpose that moves it is refused."""
    assert "moved (Transpose: moving the batch axis)" in refused(qkv_split(perm, squeezed))
