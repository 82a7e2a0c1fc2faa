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
    e = Explainer(hard_swish_cnn(constant_shape), dtype="float64").explain(x, method="rap-floored")
    np.testing.assert_allclose(e.relevance.reshape(2, -1).sum(axis=1), e.logits[np.arange(2), e.target], rtol=1e-6)
