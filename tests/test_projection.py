"""signs.py's position ``projection``: a linear op whose output reaches a possibly negative linear input
with no rectifier on the way (MobileNetV2's projection convolutions); the goldens have none."""
import numpy as np
import onnx
import pytest

from helpers import GOLDEN, GOLDEN_CASES
from onnx_helpers import const, make_model, node
from onnxrap.graph import Graph
from onnxrap.ops.linear import Linear

RNG = np.random.default_rng(0)


def _conv(name, x, y, cin, cout):
    return node("Conv", [x, name + "_w"], y, name=name, pads=[1, 1, 1, 1]), \
        const(name + "_w", RNG.standard_normal((cout, cin, 3, 3)))


def _bn(x, y, c=3):
    return node("BatchNormalization", [x, y + "_g", y + "_b", y + "_m", y + "_v"], y), \
        [const(y + "_g", np.ones(c)), const(y + "_b", np.zeros(c)), const(y + "_m", np.zeros(c)),
         const(y + "_v", np.ones(c))]


def _block(after_add):
    """stem -> Relu -> [expand -> Relu -> project -> BN] + skip -> ``after_add`` -> next -> Relu -> head."""
    (stem, w0), (expand, w1), (project, w2), (after, w3) = (
        _conv("stem", "x", "s", 2, 3), _conv("expand", "sr", "e", 3, 3), _conv("project", "er", "p", 3, 3),
        _conv("next", "a2", "n", 3, 3))
    bn, bn_inits = _bn("p", "pb")
    nodes = [stem, node("Relu", ["s"], "sr"), expand, node("Relu", ["e"], "er"), project, bn,
             node("Add", ["pb", "sr"], "a"), *after_add, after,
             node("Relu", ["n"], "nr"), node("GlobalAveragePool", ["nr"], "g"), node("Flatten", ["g"], "f"),
             node("Gemm", ["f", "head_w"], "y", name="head")]
    inits = [w0, w1, w2, w3]
    inits += bn_inits + [const("head_w", RNG.standard_normal((3, 4)))]
    model = make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 4])], inits)
    return {op.name: op.positions for op in Graph(model).ops if isinstance(op, Linear)}


def test_a_linear_bottleneck_projection_is_marked():
    positions = _block([node("Identity", ["a"], "a2")])  # the residual stream goes on signed
    assert positions["project"] == ("projection",) and positions["next"] == ("signed",)
    assert positions["expand"] == () and positions["stem"] == ("input", "signed")  # both end in a Relu


def test_a_rectified_residual_join_marks_nothing():
    positions = _block([node("Relu", ["a"], "a2")])  # ResNet: the Add goes into a Relu
    assert all("projection" not in p for p in positions.values())
    assert positions["next"] == ()


def test_a_chain_of_linear_ops_marks_each_writer():
    nodes = [node("Gemm", ["x", "w1"], "a", name="a"), node("Gemm", ["a", "w2"], "b", name="b"),
             node("Relu", ["b"], "r"), node("Gemm", ["r", "w3"], "y", name="head")]
    model = make_model(nodes, [("x", [1, 4])], [("y", [1, 4])],
                       [const(f"w{i}", RNG.standard_normal((4, 4))) for i in (1, 2, 3)])
    positions = {op.name: op.positions for op in Graph(model).ops if isinstance(op, Linear)}
    assert positions == {"a": ("input", "signed", "projection"), "b": ("signed",), "head": ("head",)}


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_no_golden_model_has_a_projection(name):
    """So no rule at ``*.projection`` can change a golden."""
    graph = Graph(onnx.load(GOLDEN / name / "model.onnx"))
    assert not [op.name for op in graph.ops if "projection" in op.positions]
