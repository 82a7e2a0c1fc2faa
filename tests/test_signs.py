"""The static sign analysis (onnxrap/signs.py): which linear ops read a possibly negative input,
and that skipping the x- part where it is provably absent changes no relevance."""
import numpy as np
import pytest

from helpers import GOLDEN, GOLDEN_PARAMS, rel_l2
from onnx_helpers import const, make_model, node
from onnxrap import Explainer
from onnxrap.graph import Graph
from onnxrap.ops.linear import Linear

RNG = np.random.default_rng(0)


def _gemm(name, x, y, k=4, m=4):
    return [node("Gemm", [x, name + "_w", name + "_b"], y, name=name)], \
        [const(name + "_w", RNG.standard_normal((k, m))), const(name + "_b", RNG.standard_normal(m))]


def _signed_after(middle, extra_inits=()):
    """x -> Gemm a -> ``middle`` (reads a, writes m) -> Gemm head; whether the head's input is signed."""
    n1, i1 = _gemm("a", "x", "a")
    n2, i2 = _gemm("head", "m", "y")
    model = make_model(n1 + middle + n2, [("x", [1, 4])], [("y", [1, 4])], i1 + i2 + list(extra_inits))
    ops = {op.name: op for op in Graph(model).ops if isinstance(op, Linear)}
    assert ops["a"].signed_input and "signed" in ops["a"].positions  # the model input may be negative
    return ops["head"].signed_input, ops["head"].positions


@pytest.mark.parametrize("middle, inits, signed", [
    ([node("Relu", ["a"], "m")], [], False),
    ([node("Relu", ["a"], "r"), node("Reshape", ["r", "shape"], "m")], [const("shape", [1, 4], np.int64)], False),
    ([node("Relu", ["a"], "r"), node("Clip", ["r", "lo", "hi"], "m")], [const("lo", -1), const("hi", 6)], False),
    ([node("Clip", ["a", "lo", "hi"], "m")], [const("lo", 0), const("hi", 6)], False),  # Relu6
    ([node("Clip", ["a", "lo", "hi"], "m")], [const("lo", -1), const("hi", 6)], True),
    ([node("Relu", ["a"], "r"), node("Clip", ["r", "lo", "hi"], "m")], [const("lo", -3), const("hi", -1)], True),
    ([node("LeakyRelu", ["a"], "m", alpha=0.1)], [], True),
    ([node("Relu", ["a"], "r"), node("LeakyRelu", ["r"], "m", alpha=0.1)], [], False),
    ([node("Relu", ["a"], "r"), node("Mul", ["r", "c"], "m")], [const("c", [1, 2, 0, 3])], False),
    ([node("Relu", ["a"], "r"), node("Mul", ["r", "c"], "m")], [const("c", [1, -2, 0, 3])], True),
    ([node("Relu", ["a"], "r"), node("Sub", ["r", "c"], "m")], [const("c", 1.0)], True),
    ([node("Relu", ["a"], "r"), node("Sub", ["r", "c"], "m")], [const("c", -1.0)], False),
    ([node("Relu", ["a"], "r"), node("Sub", ["c", "r"], "m")], [const("c", -1.0)], True),
    ([node("Relu", ["a"], "r"), node("Div", ["r", "c"], "m")], [const("c", 2.0)], False),
    ([node("Relu", ["a"], "r"), node("Add", ["r", "r"], "m")], [], False),  # a residual join
    ([node("Relu", ["a"], "r"), node("Add", ["r", "a"], "m")], [], True),
])
def test_which_linear_inputs_are_signed(middle, inits, signed):
    got, positions = _signed_after(middle, inits)
    assert got is signed
    assert ("signed" in positions) is signed


def _convnet(nodes_between, inits=()):
    """x (1,2,6,6) -> Conv c1 -> ``nodes_between`` (reads c1, writes m) -> Conv head."""
    nodes = [node("Conv", ["x", "w1"], "c1", name="c1", pads=[1, 1, 1, 1]),
             *nodes_between,
             node("Conv", ["m", "w2"], "y4", name="head"), node("Flatten", ["y4"], "y")]
    model = make_model(nodes, [("x", [1, 2, 6, 6])], [("y", None)],
                       [const("w1", RNG.standard_normal((3, 2, 3, 3))), const("w2", RNG.standard_normal((4, 3, 6, 6))),
                        *inits])
    return {op.name: op for op in Graph(model).ops}["head"]


@pytest.mark.parametrize("between, inits, signed", [
    ([node("Relu", ["c1"], "r"), node("MaxPool", ["r"], "m", kernel_shape=[1, 1])], [], False),
    ([node("Relu", ["c1"], "r"), node("AveragePool", ["r"], "m", kernel_shape=[1, 1])], [], False),
    ([node("Relu", ["c1"], "r"), node("Pad", ["r", "pads", "v"], "p"),
      node("MaxPool", ["p"], "m", kernel_shape=[3, 3])],
     [const("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64), const("v", -1.0)], True),
    ([node("Relu", ["c1"], "r"), node("Pad", ["r", "pads", "v"], "p"),
      node("MaxPool", ["p"], "m", kernel_shape=[3, 3])],
     [const("pads", [0, 0, 1, 1, 0, 0, 1, 1], np.int64), const("v", 0.0)], False),
    ([node("Relu", ["c1"], "r"), node("BatchNormalization", ["r", "g", "b", "mu", "var"], "m")],
     [const("g", [1, 1, 1]), const("b", [0, 0, 0]), const("mu", [0, 0, 0]), const("var", [1, 1, 1])], True),
])
def test_which_conv_inputs_are_signed(between, inits, signed):
    assert _convnet(between, inits).signed_input is signed


def test_concat_with_a_negative_constant_is_signed():
    def head(fill):
        nodes = [node("Relu", ["x"], "r"), node("Concat", ["r", "k"], "m", axis=1),
                 node("Gemm", ["m", "w"], "y", name="head")]
        model = make_model(nodes, [("x", [1, 3])], [("y", [1, 2])],
                           [const("k", np.full((1, 1), fill)), const("w", RNG.standard_normal((4, 2)))])
        return {op.name: op for op in Graph(model).ops}["head"]
    assert not head(2.0).signed_input and head(-2.0).signed_input


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0", "lrp-a2b1", "rap-paper"])
def test_skipping_the_absent_x_minus_part_changes_nothing(name, method):
    """Computing the x- part everywhere (all zeros where signs.py says x >= 0) gives the same relevance:
    bit for bit, except that rap.hidden also reads L_W-(x) off the forward pass where x >= 0
    (docs/rules.md, rap.hidden), which rounds differently."""
    case = np.load(GOLDEN / name / "case.npz")
    skip = Explainer(GOLDEN / name / "model.onnx")
    full = Explainer(GOLDEN / name / "model.onnx")
    linear = [op for op in full.graph.ops if isinstance(op, Linear)]
    if name != "mlp":  # every model but the MLP has a Relu before most linear ops
        assert sum(not op.signed_input for op in linear) >= len(linear) // 2
    for op in linear:
        op.signed_input = True
    skipped, computed = (e.explain(case["x"], method=method).relevance for e in (skip, full))
    if method in ("rap", "rap-reference"):
        assert rel_l2(skipped, computed) < 1e-5  # measured 6e-8 to 1.5e-6
    else:
        np.testing.assert_array_equal(skipped, computed)


def test_a_composite_can_map_linear_ops_with_signed_inputs():
    from onnxrap import methods
    from onnxrap.rules.linear import AlphaBeta

    signed_rule = AlphaBeta(3)
    composite = methods.Composite({"dense.signed": signed_rule}, base="lrp-eps", name="signed-test")
    n1, i1 = _gemm("a", "x", "a")
    n2, i2 = _gemm("b", "r", "b")
    n3, i3 = _gemm("head", "b", "y")
    model = make_model(n1 + [node("Relu", ["a"], "r")] + n2 + n3, [("x", [1, 4])], [("y", [1, 4])], i1 + i2 + i3)
    chosen = {op.name: composite.rule_for(op) for op in Graph(model).ops if isinstance(op, Linear)}
    assert chosen["a"] is signed_rule and chosen["head"] is signed_rule  # read x and b: may be negative
    assert chosen["b"] is not signed_rule  # reads a Relu
