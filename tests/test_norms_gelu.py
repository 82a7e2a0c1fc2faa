"""GELU as exporters write it (ops/elementwise.py): the Gelu op of opset 20 (approximate none and tanh) and
Erf, by which torch writes GELU before opset 20, ``0.5 x (1 + Erf(x / sqrt 2))``: forward and slope against
ONNX Runtime, and GELU's floor (signs.py, docs/rules.md signed.floored) in both forms."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import BK
from onnx_helpers import const, make_model, node, run
from onnxrap.graph import Graph
from onnxrap.ops.elementwise import Activation
from test_gates_ops import grid

# (op type, opset, attributes)
ACTIVATIONS = [("Erf", 13, {}), ("Gelu", 20, {}), ("Gelu", 20, {"approximate": "tanh"})]


def one_node(op_type, opset, attrs):
    nodes = [node(op_type, ["x"], ["a"], **attrs), node("Add", ["a", "zero"], ["y"])]
    return make_model(nodes, [("x", [1, 3, 5])], [("y", [1, 3, 5])], [const("zero", np.float32(0))], opset=opset)


def the_op(model):
    (op,) = [op for op in Graph(model).ops if isinstance(op, Activation)]
    return op


@pytest.mark.parametrize("op_type, opset, attrs", ACTIVATIONS, ids=str)
def test_forward_and_slope_are_onnx_runtimes(op_type, opset, attrs):
    model = one_node(op_type, opset, attrs)
    op = the_op(model)
    np.testing.assert_allclose(op.forward(BK, {"x": grid()}), run(model, grid().astype(np.float32))[0],
                               rtol=2e-6, atol=2e-7)
    h = 1e-2
    up, down = (run(model, (grid() + s * h).astype(np.float32))[0].astype(np.float64) for s in (1, -1))
    (slope,) = op.vjp(BK, {"x": grid()}, np.ones_like(grid()))
    np.testing.assert_allclose(slope, (up - down) / (2 * h), rtol=2e-3, atol=2e-4)


def test_erf_by_hand():
    op = the_op(one_node("Erf", 13, {}))
    np.testing.assert_allclose(op.forward(BK, {"x": np.array([0.0, 0.5, -1.0])}), [0.0, 0.5204998778, -0.8427007929],
                               rtol=1e-9)


def reader_of(activation_nodes, inits=(), opset=17):
    """x -> MatMul -> activation (writing "a") -> MatMul "reader": the reader's positions."""
    rng = np.random.default_rng(0)
    nodes = [node("MatMul", ["x", "W0"], "h", name="first"), *activation_nodes,
             node("MatMul", ["a", "W1"], "y", name="reader")]
    inits = [const("W0", rng.normal(size=(4, 4))), const("W1", rng.normal(size=(4, 3))), *inits]
    graph = Graph(make_model(nodes, [("x", [1, 4])], [("y", [1, 3])], inits, opset=opset))
    return {op.name: op for op in graph.ops}["reader"]


GELU_FORMS = {
    "torch at opset 17": ([node("Div", ["h", "sqrt2"], "d"), node("Erf", ["d"], "e"), node("Add", ["e", "one"], "p"),
                           node("Mul", ["h", "p"], "m"), node("Mul", ["m", "half"], "a")],
                          [const("sqrt2", np.sqrt(2)), const("one", 1.0), const("half", 0.5)], 17),
    "Gelu": ([node("Gelu", ["h"], "a")], [], 20),
    "Gelu tanh": ([node("Gelu", ["h"], "a", approximate="tanh")], [], 20),
}


@pytest.mark.parametrize("form", GELU_FORMS)
def test_gelu_has_a_floor(form):
    """GELU's output is negative only down to -0.17: ``floored``, so rap reads it as rectified.  The
    exported form is a gate (1 + Erf in [0, 2], the scaled-gate path) whose floor signs.py finds on its grid."""
    reader = reader_of(*GELU_FORMS[form])
    assert reader.positions[:2] == ("head", "floored") and reader.signed_input


def test_gelu_floor_is_a_lower_bound():
    """The floors signs.py reads are at or below the true minima (a bound, not an estimate), by little."""
    from onnxrap.ops.elementwise import _GELU_LOW

    v = np.linspace(-3, 0, 300001)
    for approximate in ("none", "tanh"):
        op = the_op(one_node("Gelu", 20, {"approximate": approximate}))
        low = op.forward(BK, {"x": v}).min()
        assert _GELU_LOW[approximate] <= low < _GELU_LOW[approximate] + 1e-8


def test_erf_without_the_gelu_around_it_is_bounded():
    """Erf alone is in [-1, 1] (bounded above too): its reader is signed, not floored."""
    reader = reader_of([node("Erf", ["h"], "a")])
    assert "floored" not in reader.positions and reader.signed_input
