"""Products of two data tensors with no gate, and norms (ops/products.py, rules/products.py; docs/rules.md,
products): each rule by hand on a few numbers, the ops against ONNX Runtime and finite differences, conservation
on hand-built graphs, and what stays refused, in one line."""
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
from onnxrap.ops.attention import DataMatMul
from onnxrap.ops.elementwise import Gate
from onnxrap.ops.products import Norm, Quotient
from onnxrap.signs import UNBOUNDED

RELEVANCE_METHODS = ["rap", "rap-reference", "rap-paper", "lrp-eps", "lrp-ab", "lrp-preset-a", "lrp-preset-b"]


def product_op(cls, names, bounds):
    op = cls("ab", "MatMul" if cls is DataMatMul else "Mul", names, "out")
    op.pick_gate(bounds)
    op.signed_input = bounds[0][0] < 0
    return op


def rule(method, op):
    method = get(method) if isinstance(method, str) else method
    if method.name == "rap-paper":
        method = method.flows["normal"]
    return method.rule_for(op)


@pytest.mark.parametrize("method", RELEVANCE_METHODS)
def test_a_mul_of_two_signals_gives_each_half(method):
    """a * b with b broadcast along the last axis: a gets R / 2, b the sum of R / 2 over the axis it was
    broadcast along.  Every relevance method: a linear rule of the diagonal map gives a_i b_i / (a_i b_i) R_i."""
    a, b, R = np.array([[1.0, -2.0, 3.0]]), np.array([[-0.5]]), np.array([[0.3, 0.2, 0.5]])
    op = product_op(Gate, ["a", "b"], [UNBOUNDED, UNBOUNDED])
    assert op.gate is None and op.positions == ("product",)
    ra, rb = rule(method, op)(op, Context(BK, {"a": a, "b": b, "out": a * b}, {}), R)
    np.testing.assert_allclose(ra, [[0.15, 0.1, 0.25]], rtol=1e-15)
    np.testing.assert_allclose(rb, [[0.5]], rtol=1e-15)


A = np.array([[[1.0, 2.0], [0.0, 1.0]]])
B = np.array([[[1.0, 0.0], [1.0, 1.0]]])
R = np.array([[[0.6, 0.4], [0.2, 0.8]]])


@pytest.mark.parametrize("method", ["rap", "lrp-eps"])
def test_a_matmul_of_two_signals_by_hand(method):
    """A @ B = z = [[3, 2], [1, 1]]; each factor gets half of R shared by the linear map of it, the other
    factor its weight (AttnLRP's uniform rule).  s = R / (2 z) = [[0.1, 0.1], [0.1, 0.4]];
    A's: A * (s B^T) = A * [[0.1, 0.2], [0.1, 0.5]] = [[0.1, 0.4], [0, 0.5]];
    B's: B * (A^T s) = B * [[0.1, 0.1], [0.3, 0.6]] = [[0.1, 0], [0.3, 0.6]].  Each sums to 1, half of R's 2.
    Every value non-negative: rap's size rule gives the same."""
    op = product_op(DataMatMul, ["a", "b"], [UNBOUNDED, UNBOUNDED])
    assert op.gate is None and op.positions[0] == "product" and op.inputs == ["a", "b"]
    ra, rb = rule(get(method, epsilon=0.0) if method == "lrp-eps" else method, op)(
        op, Context(BK, {"a": A, "b": B, "out": A @ B}, {}), R)
    np.testing.assert_allclose(ra, [[[0.1, 0.4], [0.0, 0.5]]], atol=1e-15)
    np.testing.assert_allclose(rb, [[[0.1, 0.0], [0.3, 0.6]]], atol=1e-15)


@pytest.mark.parametrize("method, ra, rb", [
    # rap: by size, |A| |B| = 3: A's half shared [1, 2] / 3, B's the same
    ("rap", [[[1 / 6, 1 / 3]]], [[[1 / 6], [1 / 3]]]),
    # the z-rule: s = 0.5 / z = -0.5; A * (s B^T) = [-0.5, 1]; B * (A^T s) = [[-0.5], [1]]
    ("lrp-eps", [[[-0.5, 1.0]]], [[[-0.5], [1.0]]]),
])
def test_a_signed_matmul_by_hand(method, ra, rb):
    """A = [1, -2], B = [1, 1]^T, z = -1, R = 1."""
    a, b = np.array([[[1.0, -2.0]]]), np.array([[[1.0], [1.0]]])
    op = product_op(DataMatMul, ["a", "b"], [UNBOUNDED, (0.0, np.inf)])
    got = rule(get(method, epsilon=0.0) if method == "lrp-eps" else method, op)(
        op, Context(BK, {"a": a, "b": b, "out": a @ b}, {}), np.ones((1, 1, 1)))
    np.testing.assert_allclose(got[0], ra, rtol=1e-14)
    np.testing.assert_allclose(got[1], rb, rtol=1e-14)


def test_the_rules_name_the_products():
    """Every relevance method maps both keys; the gradient's default is the adjoint through both factors."""
    for name in RELEVANCE_METHODS:
        m = get(name)
        for method in m.flows.values() if name == "rap-paper" else [m]:
            assert {"product", "dense.product"} <= set(method.rules), name
    assert get("gradient").rules == {}


def gmlp_like(opset=17):
    """x (N, 4, 4): h = x W1; u, v = h's halves; v' = LayerNorm-free token mix T v; y = flatten(u * v') Wh."""
    rng = np.random.default_rng(3)
    inits = [const("W1", rng.normal(size=(4, 8))), const("T", rng.normal(size=(4, 4))),
             const("Wh", rng.normal(size=(16, 3))), const("split", np.array([4, 4]), dtype=np.int64),
             const("flat", np.array([-1, 16]), dtype=np.int64)]
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Split", ["h", "split"], ["u", "v"], axis=2),
             node("Transpose", ["v"], "vt", perm=[0, 2, 1]), node("MatMul", ["vt", "T"], "mixed"),
             node("Transpose", ["mixed"], "vm", perm=[0, 2, 1]), node("Mul", ["u", "vm"], "g", name="sgu"),
             node("Reshape", ["g", "flat"], "f"), node("MatMul", ["f", "Wh"], "y")]
    return make_model(nodes, [("x", ["N", 4, 4])], [("y", ["N", 3])], inits, opset=opset)


def linear_attention():
    """x (N, 3, 4): q, k = Relu(x Wq), Relu(x Wk), v = x Wv; y = flatten((q (k^T v)) / (q sum_t k + eps)) Wh."""
    rng = np.random.default_rng(4)
    inits = [const(n, rng.normal(size=(4, 4))) for n in ("Wq", "Wk", "Wv")]
    inits += [const("Wh", rng.normal(size=(12, 3))), const("flat", np.array([-1, 12]), dtype=np.int64),
              const("axis", np.array([1]), dtype=np.int64), const("eps", np.float32(1e-6))]
    nodes = [node("MatMul", ["x", "Wq"], "q0"), node("Relu", ["q0"], "q"), node("MatMul", ["x", "Wk"], "k0"),
             node("Relu", ["k0"], "k"), node("MatMul", ["x", "Wv"], "v"),
             node("Transpose", ["k"], "kt", perm=[0, 2, 1]), node("MatMul", ["kt", "v"], "kv", name="kv"),
             node("MatMul", ["q", "kv"], "num", name="qkv"),
             node("ReduceSum", ["k", "axis"], "ks", keepdims=1), node("Transpose", ["ks"], "kst", perm=[0, 2, 1]),
             node("MatMul", ["q", "kst"], "den0", name="qk"), node("Add", ["den0", "eps"], "den"),
             node("Div", ["num", "den"], "o", name="normalise"), node("Reshape", ["o", "flat"], "f"),
             node("MatMul", ["f", "Wh"], "y")]
    return make_model(nodes, [("x", ["N", 3, 4])], [("y", ["N", 3])], inits)


def grn(form="ReduceL2"):
    """x (N, 2, 3, 3) -> Conv -> h; GRN: g = ||h|| over space, n = g / (mean_c g + 1e-6); h + 0.5 (h * n) -> a
    global average and a dense head.  ``form``: the norm as ReduceL2, Sqrt(ReduceSum(h * h)) or
    Pow(ReduceSum(h * h), 0.5)."""
    rng = np.random.default_rng(5)
    inits = [const("K", rng.normal(size=(4, 2, 3, 3))), const("W", rng.normal(size=(4, 3))),
             const("eps", np.float32(1e-6)), const("half", np.float32(0.5)), const("exp", np.float32(0.5)),
             const("axes", np.array([2, 3]), dtype=np.int64)]
    if form == "ReduceL2":
        norm = [node("ReduceL2", ["h"], "g", axes=[2, 3], keepdims=1, name="norm")]
    else:
        norm = [node("Mul", ["h", "h"], "sq", name="square"), node("ReduceSum", ["sq", "axes"], "ss", keepdims=1),
                node("Sqrt", ["ss"], "g", name="norm") if form == "Sqrt" else node("Pow", ["ss", "exp"], "g", name="norm")]
    nodes = [node("Conv", ["x", "K"], "h", pads=[1, 1, 1, 1]), *norm,
             node("ReduceMean", ["g"], "m", axes=[1], keepdims=1), node("Add", ["m", "eps"], "d"),
             node("Div", ["g", "d"], "n", name="ratio"), node("Mul", ["h", "n"], "hn", name="scaled"),
             node("Mul", ["hn", "half"], "s"), node("Add", ["h", "s"], "r"),
             node("GlobalAveragePool", ["r"], "p"), node("Flatten", ["p"], "f"), node("MatMul", ["f", "W"], "y")]
    return make_model(nodes, [("x", ["N", 2, 3, 3])], [("y", ["N", 3])], inits)


MODELS = {"gmlp": (gmlp_like, (2, 4, 4)), "linear_attention": (linear_attention, (2, 3, 4)),
          "grn": (grn, (2, 2, 3, 3)), "grn_sqrt": (lambda: grn("Sqrt"), (2, 2, 3, 3)),
          "grn_pow": (lambda: grn("Pow"), (2, 2, 3, 3))}


@pytest.mark.parametrize("name", MODELS)
def test_rap_conserves_at_every_op(name):
    """rap sums to the logit (float64; ONNX Runtime's float32 logit), and every op it walks keeps the sum it
    receives."""
    make, shape = MODELS[name]
    x = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    e = Explainer(make(), dtype="float64").explain(x, target=[0, 2], method="rap", trace=True)
    np.testing.assert_allclose(e.relevance.reshape(2, -1).sum(axis=1), e.target_logit, rtol=1e-6)
    assert e.recomputed == [] and e.unconserved == []
    for op_name, _, out, inputs in e.layer_sums[1:]:
        np.testing.assert_allclose(inputs, out, rtol=1e-10, atol=1e-12, err_msg=op_name)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["gradient", "lrp-eps", "rap-reference", "rap-paper", "lrp-ab"])
def test_every_method_explains(name, method):
    make, shape = MODELS[name]
    x = np.random.default_rng(6).normal(size=shape).astype(np.float32)
    e = Explainer(make(), dtype="float64").explain(x, target=[0, 2], method=method)
    assert np.isfinite(e.relevance).all() and np.abs(e.relevance).sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_the_gradient_is_onnx_runtimes_derivative(name):
    """The gradient through both factors of every product, the norm and the quotient: central differences of
    ONNX Runtime's float32 forward."""
    make, shape = MODELS[name]
    model = make()
    x = np.random.default_rng(7).normal(size=(1,) + shape[1:])
    g = Explainer(model, dtype="float64").explain(x.astype(np.float32), target=1, method="gradient").relevance
    h = 1e-2
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(x.shape)
        up, down = (run(model, (x + s * h * d).astype(np.float32))[0][0, 1] for s in (1, -1))
        numeric = (float(up) - float(down)) / (2 * h)
        assert abs(numeric - float((g * d).sum())) < 2e-3 * abs(numeric) + 1e-4


def test_what_the_products_and_scales_are():
    """gMLP's u * v is a product; a linear attention's K^T V and Q (K^T V) are products, Q sum K only scales
    (the Div's positive divisor: relevance never reaches it); GRN's n = ||h|| / mean ||h|| is a scale of h, in
    every written form."""
    ops = {op.name: op for op in Graph(gmlp_like()).ops}
    assert ops["sgu"].gate is None and ops["sgu"].positions == ("product",)
    ops = {op.name: op for op in Graph(linear_attention()).ops}
    assert ops["kv"].positions[0] == ops["qkv"].positions[0] == "product"
    assert ops["normalise"].gate == 1 and ops["normalise"].signal == "num"
    for form in ("ReduceL2", "Sqrt", "Pow"):
        ops = {op.name: op for op in Graph(grn(form)).ops}
        assert ops["scaled"].inputs[ops["scaled"].gate] == "n" and ops["ratio"].gate == 1, form
    x = np.random.default_rng(8).normal(size=(2, 3, 4)).astype(np.float32)
    e = Explainer(linear_attention()).explain(x, method="rap", trace=True)
    walked = {name for name, *_ in e.layer_sums}
    assert {"kv", "qkv", "normalise"} <= walked and "qk" not in walked


def test_a_scale_must_come_from_norms():
    """Relu(h) * h: a non-negative factor, unbounded and not computed from norms, is no scale: a product."""
    nodes = [node("MatMul", ["x", "W"], "h"), node("Relu", ["h"], "r"), node("Mul", ["r", "h"], "y", name="m")]
    model = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])], [const("W", np.eye(4))])
    (m,) = [op for op in Graph(model).ops if op.name == "m"]
    assert m.gate is None and m.positions[0] == "product"


def test_two_probabilities_are_a_product():
    """Sigmoid(a) * Sigmoid(b): which gates the other was ambiguous; both now take half."""
    nodes = [node("MatMul", ["x", "W"], "h"), node("Sigmoid", ["x"], "a"), node("Sigmoid", ["h"], "b"),
             node("Mul", ["a", "b"], "y", name="both")]
    model = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])], [const("W", np.eye(4))])
    (both,) = [op for op in Graph(model).ops if op.name == "both"]
    assert both.gate is None and both.positions[0] == "product"


@pytest.mark.parametrize("axes, keepdims, opset", [([2, 3], 1, 13), ([1], 0, 13), ([-1], 1, 18)])
def test_reduce_l2_is_onnx_runtimes(axes, keepdims, opset):
    """Forward against ONNX Runtime (opset 18 gives the axes as an input); adjoint against central differences."""
    shape = (2, 3, 4, 5)
    inits = [const("zero", np.float32(0))]
    if opset >= 18:
        inits.append(const("axes", np.array(axes), dtype=np.int64))
        norm = node("ReduceL2", ["x", "axes"], "n", keepdims=keepdims)
    else:
        norm = node("ReduceL2", ["x"], "n", axes=axes, keepdims=keepdims)
    model = make_model([norm, node("Add", ["n", "zero"], "y")], [("x", list(shape))], [("y", None)], inits, opset=opset)
    (op,) = [op for op in Graph(model, strict=False).ops if isinstance(op, Norm)]
    x = np.random.default_rng(9).normal(size=shape)
    y = op.forward(BK, {"x": x})
    np.testing.assert_allclose(y, run(model, x.astype(np.float32))[0], rtol=1e-5)
    g, d = np.random.default_rng(10).normal(size=y.shape), np.random.default_rng(11).normal(size=shape)
    (grad,) = op.vjp(BK, {"x": x, "n": y}, g)
    h = 1e-6
    numeric = ((op.forward(BK, {"x": x + h * d}) - op.forward(BK, {"x": x - h * d})) * g).sum() / (2 * h)
    assert numeric == pytest.approx((grad * d).sum(), rel=1e-7)


def test_the_quotient_gradient_by_hand():
    """a / b: d/da = 1 / b, d/db = -a / b^2 (b broadcast: summed back).  a = [2, -3], b = [4], g = [1, 2]:
    [0.25, 0.5] and -(2 * 1 - 3 * 2) / 16 = 0.25."""
    op = Quotient("q", "Div", ["a", "b"], "o")
    a, b = np.array([[2.0, -3.0]]), np.array([[4.0]])
    ga, gb = op.vjp(BK, {"a": a, "b": b, "o": a / b}, np.array([[1.0, 2.0]]))
    np.testing.assert_allclose(ga, [[0.25, 0.5]])
    np.testing.assert_allclose(gb, [[0.25]])


def refused(model):
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    return str(info.value)


def test_a_norm_that_relevance_reaches_is_refused():
    """||h|| read as a feature by the head (not as a scale of a signal): refused by name, as is a Sqrt so read."""
    for norm in (node("ReduceL2", ["h"], "g", axes=[2], keepdims=0, name="norm"),
                 node("Sqrt", ["r"], "g", name="norm")):
        nodes = [node("MatMul", ["x", "W"], "h"), node("Relu", ["h"], "r"), norm, node("MatMul", ["g", "Wh"], "y")]
        model = make_model(nodes, [("x", ["N", 3, 4])], [("y", ["N", 2] if norm.op_type == "ReduceL2" else None)],
                           [const("W", np.eye(4)), const("Wh", np.ones((3 if norm.op_type == "ReduceL2" else 4, 2)))])
        assert f"norm ({norm.op_type}: a norm is explained only as a scale of a signal" in refused(model)


def test_a_division_by_a_signed_tensor_is_refused(tmp_path, capsys):
    """x / h with h not proven positive: refused where relevance reaches it, in one line with every other."""
    nodes = [node("MatMul", ["x", "W"], "h"), node("Div", ["x", "h"], "q", name="ratio"),
             node("Sin", ["q"], "s", name="sin"), node("MatMul", ["s", "W"], "y")]
    model = make_model(nodes, [("x", ["N", 4])], [("y", ["N", 4])], [const("W", np.eye(4))])
    path = tmp_path / "ratio.onnx"
    path.write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", np.ones((1, 4), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "ratio (Div: Div of two data tensors whose divisor is not proven positive",
                          "sin (Sin")


@pytest.mark.parametrize("method", RELEVANCE_METHODS)
def test_a_norms_scale_gives_the_signal_all(method):
    """h * ||h||, the norm over the last axis, before a head: h = [3, -4], ||h|| = 5, R = [0.6, -0.2]: h takes all
    of R and the norm none (not 5 R, the gradient's); the norm's own op is never walked (the gate's branch)."""
    nodes = [node("MatMul", ["x", "W"], "h"), node("ReduceL2", ["h"], "n", axes=[2], keepdims=1, name="norm"),
             node("Mul", ["h", "n"], "hn", name="scaled"), node("MatMul", ["hn", "W"], "y")]
    model = make_model(nodes, [("x", ["N", 1, 2])], [("y", ["N", 1, 2])], [const("W", np.eye(2))])
    scaled = next(op for op in Graph(model).ops if op.name == "scaled")
    assert scaled.inputs[scaled.gate] == "n"
    h, n = np.array([[[3.0, -4.0]]]), np.array([[[5.0]]])
    out = rule(method, scaled)(scaled, Context(BK, {"h": h, "n": n, "hn": h * n}, {}), np.array([[[0.6, -0.2]]]))
    np.testing.assert_allclose(out[1 - scaled.gate], [[[0.6, -0.2]]])
    assert out[scaled.gate] is None
