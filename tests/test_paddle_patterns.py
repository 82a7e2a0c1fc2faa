"""paddle2onnx's patterns on small hand-built graphs: hard-swish as ``x * Clip(x + 3, 0, 6) / 6`` (a gate in
[0, 6], not [0, 1]), the final Softmax behind an Identity, the batch declared as -1; and what stays refused."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.errors import UnsupportedOpsError
from onnxrap.graph import Graph
from onnxrap.ops.elementwise import Gate

W1 = np.random.default_rng(1).normal(size=(4, 5))
W2 = np.random.default_rng(2).normal(size=(5, 3))


def paddle_hard_swish(tail=(), inits=(), opset=11):
    """x (N, 4) -> MatMul -> h * Clip(h + 3, 0, 6) / 6 -> MatMul -> logits, then the ``tail`` nodes."""
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Add", ["h", "three"], "h3"),
             node("Clip", ["h3", "zero", "six"], "c", name="clip"), node("Mul", ["h", "c"], "hc", name="gate"),
             node("Div", ["hc", "six"], "a"), node("MatMul", ["a", "W2"], "logits"), *tail]
    out = tail[-1].output[0] if tail else "logits"
    return make_model(nodes, [("x", [None, 4])], [(out, [None, 3])],
                      [const("W1", W1), const("W2", W2), const("three", np.float32(3)), const("zero", np.float32(0)),
                       const("six", np.float32(6)), *inits], opset=opset)


def test_the_clip_is_the_gate_and_the_gradient_is_onnx_runtimes():
    """The product rule through both factors: central differences of ONNX Runtime's forward, at points
    where no unit of h is within the step of hard-swish's kinks at -3 and 3."""
    model = paddle_hard_swish()
    (gate,) = [op for op in Graph(model).ops if isinstance(op, Gate)]
    assert gate.name == "gate" and gate.inputs[gate.gate] == "c" and gate.signal == "h"
    x = np.random.default_rng(3).normal(size=(6, 4)) * 1.5
    h = x @ W1
    x = x[(np.abs(np.abs(h) - 3) > 0.05).all(axis=1)]
    e = Explainer(model, dtype="float64").explain(x.astype(np.float32), method="gradient", target=1)
    step = 1e-3
    for k in range(4):
        d = np.zeros_like(x)
        d[:, k] = step
        up, down = (run(model, (x + s * d).astype(np.float32))[0][:, 1].astype(np.float64) for s in (1, -1))
        np.testing.assert_allclose(e.relevance[:, k], (up - down) / (2 * step), rtol=5e-3, atol=5e-3)


def test_rap_conserves_through_the_gate():
    x = np.random.default_rng(4).normal(size=(5, 4)).astype(np.float32)
    e = Explainer(paddle_hard_swish()).explain(x, method="rap")
    np.testing.assert_allclose(e.relevance.sum(axis=1), e.logits[np.arange(5), e.target], rtol=1e-5)


def test_a_unit_gate_still_wins_over_a_bounded_one():
    """Relu6(h) * Sigmoid(h): Relu6's [0, 6] is bounded too, but the factor in [0, 1] gates, as before."""
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Clip", ["h", "zero", "six"], "r6"), node("Sigmoid", ["h"], "s"),
             node("Mul", ["r6", "s"], "a", name="gate"), node("MatMul", ["a", "W2"], "y")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 3])],
                       [const("W1", W1), const("W2", W2), const("zero", np.float32(0)), const("six", np.float32(6))],
                       opset=11)
    (gate,) = [op for op in Graph(model).ops if isinstance(op, Gate)]
    assert gate.inputs[gate.gate] == "s"


@pytest.mark.parametrize("low, high", [(0, 6), (-1, 6), (0, np.inf)])
def test_what_is_no_gate(low, high):
    """Two factors in [0, 6] (which gates?), a factor reaching below 0, or one unbounded above (Relu): a product
    of two signals (docs/rules.md, products)."""
    other = "c2" if np.isfinite(high) and low == 0 else "h"
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Clip", ["h", "low", "high"], "c1"),
             node("Clip", ["h", "low", "high"], "c2"), node("Mul", [other, "c1"], "a", name="product"),
             node("MatMul", ["a", "W2"], "y")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 3])],
                       [const("W1", W1), const("W2", W2), const("low", np.float32(low)),
                        const("high", np.float32(high))], opset=11)
    op = next(op for op in Graph(model).ops if op.name == "product")
    assert op.gate is None and op.positions[0] == "product"


@pytest.mark.parametrize("tail_types", [["Identity"], ["Cast"], ["Dropout"], ["Identity", "Cast", "Identity"]])
def test_the_final_softmax_is_found_behind_no_ops(tail_types):
    """paddle2onnx: Softmax -> Identity -> output.  The logits are the Softmax's input; rap sums to them."""
    tail, t = [node("Softmax", ["logits"], "p", axis=1)], "p"
    for k, op_type in enumerate(tail_types):
        attrs = {"to": onnx.TensorProto.FLOAT} if op_type == "Cast" else {}
        tail.append(node(op_type, [t], f"t{k}", **attrs))
        t = f"t{k}"
    model = paddle_hard_swish(tail)
    ex = Explainer(model)
    assert ex.graph.logits_name == "logits"
    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    e = ex.explain(x, method="rap")
    np.testing.assert_allclose(e.logits, run(paddle_hard_swish(), x)[0], rtol=1e-5)
    np.testing.assert_allclose(e.relevance.sum(axis=1), e.logits[np.arange(3), e.target], rtol=1e-5)


def test_a_softmax_behind_an_op_that_changes_values_is_not_final():
    """Relu after the Softmax is no no-op: the Softmax is in the data path and refused, as before."""
    model = paddle_hard_swish([node("Softmax", ["logits"], "p", axis=1), node("Relu", ["p"], "y", name="relu")])
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    assert "Softmax" in str(info.value)


def test_a_dropout_in_training_mode_is_not_looked_through():
    model = paddle_hard_swish([node("Softmax", ["logits"], "p", axis=1),
                               node("Dropout", ["p", "ratio", "training"], "y", name="dropout")],
                              [const("ratio", np.float32(0.5)), const("training", np.array(True), dtype=np.bool_)],
                              opset=13)
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    assert "dropout (Dropout: training_mode=true" in str(info.value) and "Softmax" in str(info.value)


def test_a_batch_declared_as_minus_one_is_free(tmp_path, capsys):
    """paddle2onnx declares the batch as dim_value -1: any batch is taken, inspect shows it as free."""
    model = paddle_hard_swish([node("Softmax", ["logits"], "p", axis=1), node("Identity", ["p"], "y")])
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = -1
    path = tmp_path / "paddle.onnx"
    onnx.save(model, path)
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "input: x float [?, 4]" in out and "(explained through its Softmax: logits)" in out
    x = np.random.default_rng(6).normal(size=(7, 4)).astype(np.float32)
    assert Explainer(path).explain(x, method="rap").relevance.shape == (7, 4)
    np.save(tmp_path / "bad.npy", x[:1, :3])
    code, _, err = run_cli(["explain", path, tmp_path / "bad.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "expects shape ('?', 4), got (1, 3)")
