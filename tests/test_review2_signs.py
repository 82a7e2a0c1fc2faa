"""Review of signs.py's floors of self-gated signals (``x * g(x)``) on graphs as exporters write them."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import const, make_model, node
from onnxrap import Explainer
from onnxrap.graph import Graph

RNG = np.random.default_rng(0)
K1, K2, W = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=(4, 4, 1, 1)), RNG.normal(size=(4, 3))


def hard_swish_cnn(constant_shape):
    """Conv -> h * Clip(h + 3, 0, 6) / 6 (paddle2onnx's hard-swish, its 3 and 6 of ``constant_shape``) -> Conv
    -> global average -> MatMul."""
    nodes = [node("Conv", ["x", "K1"], "h", pads=[1, 1, 1, 1]), node("Add", ["h", "three"], "h3"),
             node("Clip", ["h3", "zero", "six"], "c"), node("Mul", ["h", "c"], "hc", name="gate"),
             node("Div", ["hc", "six_div"], "a"), node("Conv", ["a", "K2"], "b", name="second"),
             node("GlobalAveragePool", ["b"], "p"), node("Flatten", ["p"], "f"), node("MatMul", ["f", "W"], "y")]
    return make_model(nodes, [("x", [2, 3, 5, 5])], [("y", [2, 3])],
                      [const("K1", K1), const("K2", K2), const("W", W), const("three", np.full(constant_shape, 3)),
                       const("zero", np.float32(0)), const("six", np.float32(6)),
                       const("six_div", np.full(constant_shape, 6))])


@pytest.mark.parametrize("constant_shape", [(), (1,), (1, 1, 1, 1)])
def test_a_self_gate_with_rank_4_constants_has_its_floor(constant_shape):
    """A 3 and a 6 of shape (1, 1, 1, 1) (as tf2onnx and onnx-simplifier write NCHW constants) broadcast the
    grid signs.py evaluates x * g(x) on to rank 4: building the graph raised numpy's "truth value of an array
    is ambiguous" traceback.  The floor is hard-swish's -3/8 whatever the constants' shape."""
    second = next(op for op in Graph(hard_swish_cnn(constant_shape)).ops if op.name == "second")
    assert "floored" in second.positions
    x = RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)
    e = Explainer(hard_swish_cnn(constant_shape), dtype="float64").explain(x, method="rap")
    np.testing.assert_allclose(e.relevance.reshape(2, -1).sum(axis=1), e.logits[np.arange(2), e.target], rtol=1e-6)


def silu_plus(constant):
    """Conv -> h * Sigmoid(h) + ``constant`` -> Conv ("second") -> global average -> MatMul."""
    nodes = [node("Conv", ["x", "K1"], "h", pads=[1, 1, 1, 1]), node("Sigmoid", ["h"], "s"), node("Mul", ["h", "s"], "a"),
             node("Add", ["a", "c"], "ac"), node("Conv", ["ac", "K2"], "b", name="second"),
             node("GlobalAveragePool", ["b"], "p"), node("Flatten", ["p"], "f"), node("MatMul", ["f", "W"], "y")]
    return make_model(nodes, [("x", [2, 3, 5, 5])], [("y", [2, 3])],
                      [const("K1", K1), const("K2", K2), const("W", W), const("c", np.float32(constant))])


def test_a_floor_read_off_the_grid_is_still_a_lower_bound():
    """SiLU's least value is -0.27846454 (at -1.2785); the grid's least sample was -0.27846445, above it.
    A SiLU plus the float32 0.27846453 reaches -1.7e-8, yet signs.py proved it non-negative and every method
    dropped its x- part at the next Conv.  The floor is widened below the grid's minimum; a SiLU plus 0.3 is
    still proven non-negative."""
    h = np.linspace(-1.3, -1.25, 200001)
    assert (h / (1 + np.exp(-h)) + float(np.float32(0.27846452))).min() < 0
    assert next(op for op in Graph(silu_plus(0.27846452)).ops if op.name == "second").signed_input
    assert not next(op for op in Graph(silu_plus(0.3)).ops if op.name == "second").signed_input
