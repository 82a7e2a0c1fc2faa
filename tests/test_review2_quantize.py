"""Review of ops/quantize.py: the integer grid a QuantizeLinear rounds to when it has no zero point."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.graph import Graph

W1 = np.random.default_rng(1).normal(size=(4, 5))
W2 = np.random.default_rng(2).normal(size=(5, 3))
X = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)


def quantised_mlp(zero_point):
    """x -> MatMul -> QuantizeLinear -> DequantizeLinear -> MatMul: int8 either by opset 21's output_dtype
    (no zero point) or by an int8 zero point of 0."""
    if zero_point:
        quantise = [node("QuantizeLinear", ["h", "s", "z"], "q"), node("DequantizeLinear", ["q", "s", "z"], "d")]
    else:
        quantise = [helper.make_node("QuantizeLinear", ["h", "s"], ["q"], name="q", output_dtype=TensorProto.INT8),
                    node("DequantizeLinear", ["q", "s"], "d")]
    nodes = [node("MatMul", ["x", "W1"], "h"), *quantise, node("MatMul", ["d", "W2"], "y", name="second")]
    return make_model(nodes, [("x", [3, 4])], [("y", [3, 3])],
                      [const("W1", W1), const("W2", W2), const("s", np.float32(0.05)), const("z", 0, np.int8)],
                      opset=21)


def test_output_dtype_int8_without_a_zero_point_is_an_int8_grid():
    """QuantizeLinear-21 takes its grid from output_dtype when no zero point is given; it was read as uint8's
    [0, 255], so every negative h had a slope of 0 and the second MatMul was told its input is non-negative
    (rap's x >= 0 shortcut): gradient and rap differed from the same model written with an int8 zero point,
    silently (ONNX Runtime's outputs are equal)."""
    told, zeroed = quantised_mlp(zero_point=False), quantised_mlp(zero_point=True)
    np.testing.assert_array_equal(run(told, X)[0], run(zeroed, X)[0])
    assert (X @ W1 < -0.05).any()  # some h round to a negative grid point
    assert next(op for op in Graph(told).ops if op.name == "second").signed_input
    for method in ("gradient", "rap"):
        a, b = (Explainer(m).explain(X, method=method, target=0).relevance for m in (told, zeroed))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
