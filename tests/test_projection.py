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


def _block_model(after_add):
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
    return make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 4])], inits)


def _block(after_add):
    return {op.name: op.positions for op in Graph(_block_model(after_add)).ops if isinstance(op, Linear)}


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


# rap's rule at a projection: NetSignShare (rules/signed.py).
from test_signed_inputs import CASES, apply_rule, one_linear_op  # noqa: E402
from onnxrap import methods  # noqa: E402
from onnxrap.rules.linear import RapHidden  # noqa: E402
from onnxrap.rules.signed import NetSignShare  # noqa: E402


@pytest.mark.parametrize("kind,params", CASES)
@pytest.mark.parametrize("signed", [True, False])
def test_net_sign_share_conserves_and_never_grows_the_mass(kind, params, signed):
    rng = np.random.default_rng(len(params))
    op, shape = one_linear_op(kind, rng, **params)
    op.signed_input = signed
    x = rng.standard_normal(shape)
    x = x if signed else np.abs(x)
    R, out = apply_rule(NetSignShare(), op, x)
    np.testing.assert_allclose(out.sum(), R.sum(), rtol=1e-10, atol=1e-12)
    assert np.abs(out).sum() <= np.abs(R).sum() * (1 + 1e-12)


def test_net_sign_share_keeps_the_sum_where_units_see_only_padding():
    # A 1x1 convolution with pads 1: its border units see only padding (z = 0, nothing to share by).
    rng = np.random.default_rng(3)
    op, shape = one_linear_op("conv", rng, kernel=1, pads=1)
    op.signed_input = False
    R, out = apply_rule(NetSignShare(), op, np.abs(rng.standard_normal(shape)))
    np.testing.assert_allclose(out.sum(), R.sum(), rtol=1e-10)


def test_net_sign_share_by_hand():
    # W = [[1, -2], [3, 1]], x = (2, 1): unit 0 gets 2 and 3 (z = 5 > 0: both push it up),
    # unit 1 gets -4 and 1 (z = -3 < 0: only input 0 pushes it the way it goes).
    # R = (5, -6): input 0 gets 5*2/5 - 6 = -4, input 1 gets 5*3/5 = 3.
    model = make_model([node("Gemm", ["input", "w"], "logits")], [("input", [1, 2])], [("logits", [1, 2])],
                       [const("w", [[1.0, -2.0], [3.0, 1.0]])])
    op = Graph(model).ops[0]
    for signed in (True, False):  # x >= 0: the x- part may be skipped or computed, alike
        op.signed_input = signed
        _, out = apply_rule(NetSignShare(), op, np.array([[2.0, 1.0]]), np.array([[5.0, -6.0]]))
        np.testing.assert_allclose(out, [[-4.0, 3.0]])


def test_rap_uses_net_sign_share_at_projections_and_a2_projections_keeps_a2():
    graph = Graph(_block_model([node("Identity", ["a"], "a2")]))
    op = next(op for op in graph.ops if op.name == "project")
    assert isinstance(methods.get("rap").rule_for(op), NetSignShare)
    assert isinstance(methods.get("rap-a2-projections").rule_for(op), RapHidden)


def test_compiled_rap_agrees_with_eager_on_a_linear_bottleneck_network():
    """The compile tracer runs NetSignShare and AbsShare (the goldens have neither)."""
    from test_signed_inputs import mobilenet

    from helpers import rel_l2
    from onnxrap import Explainer
    from onnxrap.compile import CompiledModel, compile_graph

    ex = Explainer(mobilenet())
    assert any("projection" in op.positions for op in ex.graph.ops)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap"))).run(x)
    assert rel_l2(relevance, ex.explain(x, method="rap").relevance) <= 1e-5
