"""rap on linear ops whose input may be negative (issue 14): bounded mass, conservation, goldens unchanged."""
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import GOLDEN, GOLDEN_CASES, conv_hidden_model
from onnxrap import Explainer, methods
from onnxrap.backend import Backend
from onnxrap.engine import Context
from onnxrap.graph import Graph
from onnxrap.rules.linear import RapHidden
from onnxrap.rules.signed import AbsShare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import zoo  # noqa: E402

BK = Backend(np, "cpu")


def one_linear_op(kind, rng, channels=4, size=6, groups=1, stride=1, pads=1, kernel=3, out=5):
    """A graph whose first op is one Conv (or Gemm) reading the model input; returns (op, input shape)."""
    if kind == "dense":
        w = rng.standard_normal((channels * size, out))
        nodes = [helper.make_node("Gemm", ["input", "w"], ["logits"])]
        shape = [1, channels * size]
        out_shape = [1, out]
    else:
        w = rng.standard_normal((out * groups, channels // groups, kernel, kernel))
        nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[pads] * 4, strides=[stride] * 2,
                                  group=groups),
                 helper.make_node("Flatten", ["c"], ["logits"])]
        shape = [1, channels, size, size]
        side = (size + 2 * pads - kernel) // stride + 1
        out_shape = [1, out * groups * side * side]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    op = next(op for op in Graph(model).ops if op.kind == "linear")
    return op, shape


def apply_rule(rule, op, x, R=None):
    """(relevance arriving at the op's output, relevance the rule gives its input), float64."""
    ctx = Context(BK, {op.inputs[0]: x}, {})
    ctx[op.output] = op.forward(BK, ctx)  # rules may read the forward's output (rules/__init__.py)
    if R is None:
        y = op.apply(BK, op.take(x), op.weights(BK, x.dtype).full)
        R = np.random.default_rng(1).standard_normal(y.shape)
    return R, rule(op, ctx, R)[0]


CASES = [("dense", {}), ("conv", {}), ("conv", dict(stride=2)), ("conv", dict(kernel=1, pads=0)),
         ("conv", dict(groups=4, out=1)), ("conv", dict(groups=2, out=3, stride=2))]


@pytest.mark.parametrize("kind,params", CASES)
@pytest.mark.parametrize("seed", range(5))
def test_signed_rule_conserves_and_never_grows_the_mass(kind, params, seed):
    rng = np.random.default_rng(seed)
    op, shape = one_linear_op(kind, rng, **params)
    x = rng.standard_normal(shape)  # both signs
    R, out = apply_rule(AbsShare(), op, x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.sum(), R.sum(), rtol=1e-10, atol=1e-12)
    assert np.abs(out).sum() <= np.abs(R).sum() * (1 + 1e-12)


def test_abs_share_by_hand():
    # Two inputs, two units: W = [[1, -2], [3, 1]], x = (2, -1).  |x_i w_ij|: unit 0 gets
    # 2 and 3, unit 1 gets 4 and 1.  R = (5, -10): input 0 gets 5*2/5 - 10*4/5 = -6,
    # input 1 gets 5*3/5 - 10*1/5 = 1.  The sum is kept (-5), the mass shrinks (15 -> 7).
    w = np.array([[1.0, -2.0], [3.0, 1.0]])
    graph = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["logits"])], "two",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    op = Graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)).ops[0]
    _, out = apply_rule(AbsShare(), op, np.array([[2.0, -1.0]]), np.array([[5.0, -10.0]]))
    np.testing.assert_allclose(out, [[-6.0, 1.0]])


def test_unit_that_sees_only_padding_keeps_the_layer_sum():
    # A 1x1 convolution with pads 1: its border units see only padding (|x w| sums to 0 there).
    rng = np.random.default_rng(3)
    op, shape = one_linear_op("conv", rng, kernel=1, pads=1)
    x = rng.standard_normal(shape)
    R, out = apply_rule(AbsShare(), op, x)
    np.testing.assert_allclose(out.sum(), R.sum(), rtol=1e-10)


def mobilenet(**kw):
    return zoo.mobilenet_v2_like(width=1 / 4, size=32, num_classes=10, **kw)


def mass_ratio(e):
    R = e.relevance.reshape(len(e.relevance), -1).astype(np.float64)
    return np.abs(R).sum(axis=1) / np.abs(e.target_logit)


def test_mobilenet_conserves_in_float32_with_bounded_mass():
    # tools/zoo.py's MobileNetV2 has trained-like statistics (BN set from real activations):
    # its 16 expand convolutions and the head convolution read the signed residual stream.
    model = mobilenet()
    ex = Explainer(model)
    signed = [op.name for op in ex.graph.ops if "signed" in op.positions and "input" not in op.positions]
    assert len(signed) == 17
    assert all(isinstance(methods.get("rap").rule_for(op), AbsShare)
               for op in ex.graph.ops if op.name in signed)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    e = ex.explain(x, method="rap")
    assert e.recomputed == []  # float32 held the sum: no float64 redo
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3), dtype=np.float64), e.target_logit, rtol=1e-4)
    old = Explainer(model, dtype="float64").explain(x, method="rap-unbounded")
    np.testing.assert_allclose(old.relevance.sum(axis=(1, 2, 3)), old.target_logit, rtol=1e-4)
    assert np.all(mass_ratio(e) < 1000)
    assert np.all(mass_ratio(old) > 10 * mass_ratio(e))


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_goldens_see_no_signed_rule(name):
    # Every golden's linear ops read non-negative tensors except the first one, which reads the
    # model input (the mlp's dense layer included, which keeps A2): rap there is rap-unbounded.
    graph = Graph(GOLDEN / name / "model.onnx")
    new, old = methods.get("rap"), methods.get("rap-unbounded")
    assert all(type(new.rule_for(op)) is type(old.rule_for(op))
               for op in graph.ops)
    first = next(op for op in graph.ops if op.kind == "linear")
    assert "signed" in first.positions and "input" in first.positions


def test_rap_unbounded_is_the_previous_rap():
    # The previous behaviour under its name: A2 at signed linear ops.
    model = mobilenet()
    graph = Graph(model)
    op = next(op for op in graph.ops if "signed" in op.positions and "input" not in op.positions)
    assert isinstance(methods.get("rap-unbounded").rule_for(op), RapHidden)


def test_rap_on_a_signed_hidden_convolution_by_reference():
    # The model of test_rules_conv's rap.hidden test (a 3x3 stride-2 conv with asymmetric pads reading
    # the signed output of the input conv), with rap's rule at signed inputs written out in NumPy.
    from helpers import conv_hidden_reference, explain, rnd, targets_with_negative_logit
    from references import sdiv

    def ref_abs_share(x, lin, R):
        size, w_abs = np.abs(x), np.abs(lin.W)
        C = size * lin.LT(sdiv(R, lin.L(size, w_abs)), w_abs)
        nonzero = C != 0
        return C - nonzero * sdiv(C.sum() - R.sum(), nonzero.sum())

    model, p = conv_hidden_model()
    x = rnd((2, 2, 6, 6), 85)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, "rap").relevance
    ref = conv_hidden_reference(model, p, x, targets, ref_abs_share)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
