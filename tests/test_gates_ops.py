"""Smooth activations and gates (ops/elementwise.py): forward and adjoint against ONNX Runtime and by hand,
the gate rule, and the Muls of two data tensors that stay refused."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from helpers import BK, assert_one_line_error, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.engine import Context
from onnxrap.graph import Graph
from onnxrap.methods import get
from onnxrap.ops.elementwise import Activation, Gate
from onnxrap.rules.joins import SignalTakesAll

# Away from every kink (0, HardSwish's +-3, HardSigmoid's -2.5, 2.5 and -0.5, 1.5) by more than the step.
POINTS = np.array([-7.3, -4.1, -2.9, -2.2, -1.3, -0.7, -0.2, 0.3, 0.9, 1.6, 2.2, 2.8, 3.4, 5.2, 7.7])
SLOPE = np.array([0.1, -0.3, 2.0], dtype=np.float32)  # PRelu's per-channel slope for an input (1, 3, 5)

# (op type, opset, attributes, extra constant inputs)
ACTIVATIONS = [
    ("Sigmoid", 13, {}, []), ("Tanh", 13, {}, []), ("Softplus", 13, {}, []), ("Mish", 18, {}, []),
    ("HardSigmoid", 13, {}, []), ("HardSigmoid", 13, {"alpha": 0.5, "beta": 0.25}, []),
    ("HardSwish", 14, {}, []), ("Elu", 13, {}, []), ("Elu", 13, {"alpha": 0.3}, []), ("Selu", 13, {}, []),
    ("Selu", 13, {"alpha": 2.0, "gamma": 0.5}, []), ("PRelu", 13, {}, [SLOPE.reshape(3, 1)]),
    ("LeakyRelu", 13, {"alpha": 0.2}, []),
]


def one_node(op_type, opset, attrs, extra):
    """``op_type`` on x, then adding 0: a final Sigmoid would be explained through, as a Softmax is (also
    behind an Identity)."""
    inits = [const(f"c{k}", c) for k, c in enumerate(extra)]
    nodes = [node(op_type, ["x"] + [i.name for i in inits], ["a"], **attrs), node("Add", ["a", "zero"], ["y"])]
    return make_model(nodes, [("x", [1, 3, 5])], [("y", [1, 3, 5])], inits + [const("zero", np.float32(0))],
                      opset=opset)


def the_op(model):
    (op,) = [op for op in Graph(model).ops if isinstance(op, Activation)]
    return op


def grid():
    return POINTS.reshape(1, 3, 5)


@pytest.mark.parametrize("op_type, opset, attrs, extra", ACTIVATIONS, ids=lambda a: str(a))
def test_forward_is_onnx_runtimes(op_type, opset, attrs, extra):
    model = one_node(op_type, opset, attrs, extra)
    ort = run(model, grid().astype(np.float32))[0]
    ours = the_op(model).forward(BK, {"x": grid()})
    np.testing.assert_allclose(ours, ort, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("op_type, opset, attrs, extra", ACTIVATIONS, ids=lambda a: str(a))
def test_adjoint_is_the_derivative_of_onnx_runtimes_forward(op_type, opset, attrs, extra):
    """vjp with a seed of ones is f'(x): central differences of ONNX Runtime's own float32 forward."""
    model = one_node(op_type, opset, attrs, extra)
    h = 1e-2
    up = run(model, (grid() + h).astype(np.float32))[0].astype(np.float64)
    down = run(model, (grid() - h).astype(np.float32))[0].astype(np.float64)
    (slope,) = the_op(model).vjp(BK, {"x": grid()}, np.ones_like(grid()))
    np.testing.assert_allclose(slope, (up - down) / (2 * h), rtol=2e-3, atol=2e-4)


def test_swish_where_onnx_runtime_has_it():
    model = one_node("Swish", 24, {"alpha": 1.5}, [])
    try:
        ort = run(model, grid().astype(np.float32))[0]
    except Exception as exc:  # opset 24 is newer than some ONNX Runtimes
        pytest.skip(f"ONNX Runtime has no Swish: {str(exc)[:80]}")
    op = the_op(model)
    np.testing.assert_allclose(op.forward(BK, {"x": grid()}), ort, rtol=2e-6, atol=2e-7)
    v = grid()
    s = 1 / (1 + np.exp(-1.5 * v))
    np.testing.assert_allclose(op.vjp(BK, {"x": v}, np.ones_like(v))[0], s + 1.5 * v * s * (1 - s), rtol=1e-12)


# Hand-computed values and slopes: (op type, opset, attrs, x, f(x), f'(x)).
BY_HAND = [
    ("Sigmoid", 13, {}, 0.0, 0.5, 0.25),
    ("Tanh", 13, {}, 0.0, 0.0, 1.0),
    ("Softplus", 13, {}, 0.0, math.log(2), 0.5),
    ("HardSigmoid", 13, {"alpha": 0.5, "beta": 0.25}, 1.0, 0.75, 0.5),
    ("HardSigmoid", 13, {"alpha": 0.5, "beta": 0.25}, 2.0, 1.0, 0.0),  # clipped: flat
    ("HardSwish", 14, {}, 1.0, 2 / 3, 5 / 6),  # x (x/6 + 1/2), slope x/3 + 1/2
    ("HardSwish", 14, {}, -1.5, -0.375, 0.0),  # its least value
    ("HardSwish", 14, {}, -4.0, 0.0, 0.0),
    ("HardSwish", 14, {}, 4.0, 4.0, 1.0),
    ("Elu", 13, {"alpha": 2.0}, -1.0, 2 * (math.exp(-1) - 1), 2 * math.exp(-1)),
    ("Selu", 13, {"alpha": 2.0, "gamma": 3.0}, 1.0, 3.0, 3.0),
    ("Selu", 13, {"alpha": 2.0, "gamma": 3.0}, -1.0, 6 * (math.exp(-1) - 1), 6 * math.exp(-1)),
]


@pytest.mark.parametrize("op_type, opset, attrs, x, value, slope", BY_HAND, ids=lambda a: str(a))
def test_values_and_slopes_by_hand(op_type, opset, attrs, x, value, slope):
    op = the_op(one_node(op_type, opset, attrs, []))
    v = np.full((1, 3, 5), x)
    assert np.allclose(op.forward(BK, {"x": v}), value, rtol=1e-12, atol=1e-15)
    assert np.allclose(op.vjp(BK, {"x": v}, np.ones_like(v))[0], slope, rtol=1e-12, atol=1e-15)


def test_slopes_stay_exact_in_float32_far_out():
    """sigmoid'(20) = e^-20 / (1 + e^-20)^2: float32's 1 - s would give 0, its formulation keeps the digits."""
    for op_type, expected in (("Sigmoid", math.exp(-20) / (1 + math.exp(-20)) ** 2),
                              ("Tanh", 4 * math.exp(-40) / (1 + math.exp(-40)) ** 2)):
        op = the_op(one_node(op_type, 13, {}, []))
        v = np.full((1, 3, 5), 20.0, dtype=np.float32)
        with np.errstate(over="raise"):
            slope = op.vjp(BK, {"x": v}, np.ones_like(v))[0]
            assert np.all(np.isfinite(op.forward(BK, {"x": -100 * v})))
        assert slope.dtype == np.float32
        np.testing.assert_allclose(slope, expected, rtol=1e-5)


def test_prelu_slope_is_per_channel():
    op = the_op(one_node("PRelu", 13, {}, [SLOPE.reshape(3, 1)]))
    v = -np.ones((1, 3, 5))
    np.testing.assert_array_equal(op.forward(BK, {"x": v})[0, :, 0], -SLOPE)
    np.testing.assert_array_equal(op.vjp(BK, {"x": v}, np.ones_like(v))[0][0, :, 0], SLOPE)


def test_every_relevance_method_passes_relevance_through_activations():
    op = the_op(one_node("HardSwish", 14, {}, []))
    assert isinstance(op, Activation)
    op.positions = ()  # alone in its graph it is in the tail (no linear op after it), where rap takes the adjoint
    R = np.arange(15.0).reshape(1, 3, 5)
    for name in ("rap", "rap-reference", "lrp-eps", "lrp-a1b0"):
        (out,) = get(name).rule_for(op)(op, Context(BK, {"x": grid(), "a": grid()}, {}), R)
        np.testing.assert_array_equal(out, R)


# -- gates -------------------------------------------------------------------------------------------

def gated_mlp(gate_first=False, gate="Sigmoid"):
    """x (1, 4) -> h = x W1 -> a = h * Sigmoid(g), g = x W2 a (1, 1) gate broadcast -> y = a W3 (1, 3)."""
    rng = np.random.default_rng(3)
    inits = [const("W1", rng.normal(size=(4, 4))), const("W2", rng.normal(size=(4, 1))),
             const("W3", rng.normal(size=(4, 3)))]
    operands = ["s", "h"] if gate_first else ["h", "s"]
    nodes = [node("MatMul", ["x", "W1"], "h"), node("MatMul", ["x", "W2"], "g"), node(gate, ["g"], "s"),
             node("Mul", operands, "a", name="gate_mul"), node("MatMul", ["a", "W3"], "y")]
    return make_model(nodes, [("x", [1, 4])], [("y", [1, 3])], inits)


@pytest.mark.parametrize("gate_first", [False, True])
def test_signal_takes_all_by_hand(gate_first):
    """R = [1, 2, 3, 4] at the product of h (1, 4) and a per-sample gate (1, 1): h gets R, the gate nothing."""
    graph = Graph(gated_mlp(gate_first))
    op = next(o for o in graph.ops if isinstance(o, Gate))
    assert op.signal == "h" and op.inputs[op.gate] == "s"
    ctx = Context(BK, {"h": np.array([[1.0, -2.0, 3.0, 0.5]]), "s": np.array([[0.25]])}, {})
    R = np.array([[1.0, 2.0, 3.0, 4.0]])
    out = SignalTakesAll()(op, ctx, R)
    np.testing.assert_array_equal(out[1 - op.gate], R)
    assert out[op.gate] is None


def test_signal_takes_all_sums_back_a_broadcast_signal():
    op = Gate("g", "Mul", ["gate", "signal"], "out")
    op.gate = 0
    ctx = Context(BK, {"gate": np.full((1, 2, 3), 0.5), "signal": np.array([[[1.0], [2.0]]])}, {})
    (none, out) = SignalTakesAll()(op, ctx, np.arange(6.0).reshape(1, 2, 3))
    assert none is None
    np.testing.assert_array_equal(out, [[[3.0], [12.0]]])


def test_gate_adjoint_is_the_product_rule():
    op = Gate("g", "Mul", ["a", "b"], "out")
    a, b = np.array([[1.0, -2.0, 3.0]]), np.array([[0.5]])
    grad = np.array([[1.0, 10.0, 100.0]])
    da, db = op.vjp(BK, {"a": a, "b": b}, grad)
    np.testing.assert_array_equal(da, [[0.5, 5.0, 50.0]])
    np.testing.assert_array_equal(db, [[1.0 - 20.0 + 300.0]])


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_gated_mlp_conserves_and_its_gradient_matches_finite_differences(gate):
    model = gated_mlp(gate=gate)
    x = np.array([[0.3, -1.2, 0.8, 2.0]], dtype=np.float32)
    ex = Explainer(model, dtype="float64")
    rap = ex.explain(x, method="rap")
    # onnxrap's float64 forward reproduces ONNX Runtime's float32 logit to float32 rounding
    assert abs(rap.relevance.sum() - rap.logits[0, rap.target[0]]) < 1e-6
    grad = ex.explain(x, method="gradient", target=int(rap.target[0])).relevance[0]
    h = 1e-2
    for k in range(4):
        step = np.zeros_like(x)
        step[0, k] = h
        up, down = (run(model, (x + s).astype(np.float32))[0][0, rap.target[0]] for s in (step, -step))
        assert abs((float(up) - float(down)) / (2 * h) - grad[k]) < 2e-3 * max(1.0, abs(grad[k]))


def product(nodes, inits=(), name="m"):
    """The op ``name`` of the graph: a Mul with no single gate is a product of two signals (docs/rules.md,
    products)."""
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], list(inits))
    op = next(op for op in Graph(model).ops if op.name == name)
    assert op.gate is None and op.positions[0] == "product"


def test_a_square_is_no_gate():
    w = const("W", np.eye(4))
    product([node("MatMul", ["x", "W"], "h"), node("Mul", ["h", "h"], "y", name="m")], [w])


def test_two_unbounded_branches_are_no_gate():
    w = const("W", np.eye(4))
    product([node("MatMul", ["x", "W"], "h"), node("Relu", ["x"], "r"), node("Mul", ["h", "r"], "y", name="m")], [w])


def test_two_gates_are_ambiguous():
    product([node("Sigmoid", ["x"], "a"), node("HardSigmoid", ["x"], "b"), node("Mul", ["a", "b"], "y", name="m")])


def test_refusals_are_listed_with_other_unsupported_nodes(tmp_path, capsys):
    """Every unsupported node at once, on one line, exit 2: a Div by a divisor that is no scale among them."""
    model = make_model([node("Div", ["x", "x"], "sq", name="square"), node("Sin", ["sq"], "y", name="sin")],
                       [("x", [1, 4])], [("y", [1, 4])])
    path = tmp_path / "square.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "x.npy", np.ones((1, 4), dtype=np.float32))
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "--out-dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "square (Div: Div of two data tensors whose divisor is not proven positive",
                          "sin (Sin")
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 2 and "square (Div): Div of two data tensors whose divisor is not proven positive" in out


def test_a_tensorflow_hard_sigmoid_is_a_gate():
    """tf2onnx writes hard-swish as x * (Relu6(x + 3) / 6): the interval analysis proves the factor in [0, 1]."""
    nodes = [node("Add", ["x", "three"], "t"), node("Clip", ["t", "zero", "six"], "r6"),
             node("Mul", ["r6", "sixth"], "hs"), node("Mul", ["x", "hs"], "y", name="hard_swish")]
    inits = [const("three", 3.0), const("zero", 0.0), const("six", 6.0), const("sixth", 1 / 6)]
    graph = Graph(make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], inits))
    gate = next(o for o in graph.ops if isinstance(o, Gate))
    assert gate.signal == "x"


@pytest.mark.parametrize("activation, signed", [("Relu", False), ("HardSwish", True), ("SiLU", True),
                                                ("Softplus", False), ("Tanh", True)])
def test_signs_after_activations_and_gates(activation, signed):
    """The linear op after ``activation``, then a squeeze-excitation-like gate, reads a non-negative input
    exactly when the activation's output is: a gated product has its signal's sign."""
    rng = np.random.default_rng(4)
    inits = [const(f"W{k}", rng.normal(size=(4, 4))) for k in range(3)]
    act = ([node("Sigmoid", ["h"], "sh"), node("Mul", ["h", "sh"], "a")] if activation == "SiLU"
           else [node(activation, ["h"], "a")])
    nodes = [node("MatMul", ["x", "W0"], "h"), *act, node("MatMul", ["a", "W1"], "g"), node("Sigmoid", ["g"], "s"),
             node("Mul", ["a", "s"], "gated"), node("MatMul", ["gated", "W2"], "y", name="reader")]
    graph = Graph(make_model(nodes, [("x", [1, 4])], [("y", [1, 4])], inits, opset=14))
    reader = next(op for op in graph.ops if op.name == "reader")
    assert reader.signed_input is signed
    assert ("signed" in reader.positions) is signed
    first = next(op for op in graph.ops if op.output == "h")
    assert ("projection" in first.positions) is signed  # through SiLU/HardSwish, not rectified


def test_a_final_sigmoid_is_explained_through():
    """A multi-label head's Sigmoid is skipped like a Softmax: rap sums to the logit z, not to a number that
    is neither z nor sigmoid(z) (seeding through it gave 0.14 for a logit of 2.97 and a probability of 0.95)."""
    rng = np.random.default_rng(0)
    nodes = [node("MatMul", ["x", "W"], "h"), node("Relu", ["h"], "r"), node("MatMul", ["r", "V"], "z"),
             node("Sigmoid", ["z"], "p")]
    inits = [const("W", rng.normal(size=(4, 4))), const("V", rng.normal(size=(4, 3)))]
    ex = Explainer(make_model(nodes, [("x", [None, 4])], [("p", [None, 3])], inits))
    assert ex.graph.logits_name == "z"
    x = rng.normal(size=(2, 4)).astype(np.float32)
    e = ex.explain(x, method="rap")
    z = run(make_model(nodes[:3], [("x", [None, 4])], [("z", [None, 3])], inits), x)[0]
    np.testing.assert_allclose(e.logits, z, rtol=1e-6)
    np.testing.assert_allclose(e.relevance.sum(axis=1), z[np.arange(2), e.target], rtol=1e-5)
    assert e.recomputed == []
