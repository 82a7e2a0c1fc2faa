"""Linear ops whose input has a floor (docs/rules.md, signed.floored): a SiLU's or hard-swish's output,
negative only down to -0.28 or -0.375.  rap reads such an input as a rectified one; rap-floors-signed
keeps the size rule there (rap before the floor had a rule)."""
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import GOLDEN, GOLDEN_CASES
from onnx_helpers import const, make_model, node
from onnxrap import Explainer, methods
from onnxrap.graph import Graph
from onnxrap.rules.signed import AbsShare, FlooredShare, NetSignShare, SignedProductA2
from test_signed_inputs import CASES, apply_rule, one_linear_op

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import zoo  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def two_linear_ops(activation_nodes, opset=17):
    """x -> MatMul "first" -> activation (writing "a") -> MatMul "reader"."""
    rng = np.random.default_rng(0)
    nodes = [node("MatMul", ["x", "W0"], "h", name="first"), *activation_nodes,
             node("MatMul", ["a", "W1"], "y", name="reader")]
    inits = [const("W0", rng.normal(size=(4, 4))), const("W1", rng.normal(size=(4, 3)))]
    graph = Graph(make_model(nodes, [("x", [1, 4])], [("y", [1, 3])], inits, opset=opset))
    return {op.name: op for op in graph.ops}


ACTIVATIONS = {
    "SiLU as x * Sigmoid(x)": [node("Sigmoid", ["h"], "s"), node("Mul", ["h", "s"], "a")],
    "hard-swish as x * HardSigmoid(x)": [node("HardSigmoid", ["h"], "s", alpha=1 / 6, beta=0.5),
                                         node("Mul", ["s", "h"], "a")],
    "HardSwish": [node("HardSwish", ["h"], "a")],
    "Mish": [node("Mish", ["h"], "a")],
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_a_floor_is_found(name):
    ops = two_linear_ops(ACTIVATIONS[name], opset=18)
    assert ops["reader"].positions[:2] == ("head", "floored")  # before "signed": its key wins
    assert ops["reader"].signed_input  # the x- part is still computed
    assert "projection" in ops["first"].positions  # rap's positions are what they were
    assert not ops["first"].writes_signed_stream  # for rap a floor rectifies, as a Relu does


@pytest.mark.parametrize("name, nodes", [
    ("Tanh: bounded above too", [node("Tanh", ["h"], "a")]),
    ("no activation", [node("Identity", ["h"], "a")]),
    ("a gate of another signal", [node("Sigmoid", ["x"], "s"), node("Mul", ["h", "s"], "a")]),
    ("x * Sigmoid(x / 1000): no floor on the grid", [node("Div", ["h", "k"], "hk"), node("Sigmoid", ["hk"], "s"),
                                                     node("Mul", ["h", "s"], "a")]),
])
def test_no_floor(name, nodes):
    if "Div" in {n.op_type for n in nodes}:
        rng = np.random.default_rng(0)
        model = make_model([node("MatMul", ["x", "W0"], "h", name="first"), *nodes,
                            node("MatMul", ["a", "W1"], "y", name="reader")], [("x", [1, 4])], [("y", [1, 3])],
                           [const("W0", rng.normal(size=(4, 4))), const("W1", rng.normal(size=(4, 3))),
                            const("k", 1000.0)])
        ops = {op.name: op for op in Graph(model).ops}
    else:
        ops = two_linear_ops(nodes)
    assert "floored" not in ops["reader"].positions and "signed" in ops["reader"].positions
    assert "projection" in ops["first"].positions and ops["first"].writes_signed_stream


def test_signed_product_a2_by_hand():
    # x = (1, -0.5), W = [[2, -1], [1, -2]]: unit 0's contributions are (2, -0.5), unit 1's (-1, 1).
    # Unit 0: promoter input 0 (Za = 2), inhibitor input 1 (Zb = 0.5); R = 1 gives the promoter
    # 2 * 1/2 = 1 and the inhibitor 0.5 * (1 * 0.5/2.5) / 0.5 = 0.2 (rap.hidden's shares).
    # Unit 1: promoter input 1 (x- times w- = 1, Za = 1), inhibitor input 0 (Zb = 1): 1 and 0.5.
    # C = (1.5, 1.2) sums to 2.7 for S(R) = 2: the shift takes 0.35 from each, (1.15, 0.85).
    w = np.array([[2.0, -1.0], [1.0, -2.0]])
    graph = helper.make_graph([helper.make_node("Gemm", ["input", "w"], ["logits"])], "two",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    op = Graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)).ops[0]
    _, out = apply_rule(SignedProductA2(), op, np.array([[1.0, -0.5]]), np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(out, [[1.15, 0.85]])


@pytest.mark.parametrize("kind,params", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_signed_product_a2_is_a2_on_non_negative_inputs_and_conserves(kind, params, seed):
    from onnxrap.rules.linear import RapHidden

    rng = np.random.default_rng(seed)
    op, shape = one_linear_op(kind, rng, **params)
    x = np.abs(rng.standard_normal(shape))
    R, out = apply_rule(SignedProductA2(), op, x)
    _, a2 = apply_rule(RapHidden(per_sign=False, conserve=True), op, x, R)
    np.testing.assert_allclose(out, a2, rtol=1e-10, atol=1e-12)  # x- = 0: rap.hidden itself
    x = x - 0.28 * rng.random(shape)  # a SiLU's floor
    R, out = apply_rule(SignedProductA2(), op, x)
    np.testing.assert_allclose(out.sum(), R.sum(), rtol=1e-10)


def efficientnet():
    return zoo.efficientnet_b0_like(width=1 / 8, size=64, num_classes=10)


def test_rap_on_an_efficientnet_shows_negative_evidence():
    # /work/data/h18_repro_rap_all_positive_silu.py: with the size rule at every SiLU output
    # (rap-floors-signed), the map has the logit's sign at every pixel; rap's does not, and conserves in float32.
    ex = Explainer(efficientnet())
    x = zoo.calibration_batch(64, 4, seed=5)
    floored = ex.explain(x, method="rap")
    assert ((floored.relevance < 0).mean(axis=(1, 2, 3)) > 0.1).all()
    np.testing.assert_allclose(floored.relevance.sum(axis=(1, 2, 3), dtype=np.float64), floored.target_logit,
                               rtol=1e-4)
    assert floored.recomputed == []
    assert (ex.explain(x, method="rap-floors-signed").relevance >= 0).all()  # the old rule (EVALUATION.md, D)


def test_rule_choice_on_an_efficientnet():
    graph = Explainer(efficientnet()).graph
    rap, floored = methods.get("rap-floors-signed"), methods.get("rap")
    by_name = {op.name: op for op in graph.ops}
    depthwise, project, expand = (by_name[f"blocks.3.{k}.conv"] for k in ("depthwise", "project", "expand"))
    assert depthwise.positions == project.positions == ("floored", "signed", "projection")
    assert expand.positions == ("signed", "projection")
    # rap's projections: a floor rectifies, so only the projection writes into a signed stream
    assert project.writes_signed_stream and not depthwise.writes_signed_stream and not expand.writes_signed_stream
    assert all(type(rap.rule_for(op)) is AbsShare for op in (depthwise, project, expand))
    assert isinstance(floored.rule_for(depthwise), FlooredShare) and type(floored.rule_for(expand)) is AbsShare


def test_floored_share_reads_a_floor_as_a_relu_is_read():
    # SignedProductA2 at most ops, NetSignShare at a projection: the same numbers as the two rules.
    rng = np.random.default_rng(7)
    op, shape = one_linear_op("conv", rng)
    x = np.abs(rng.standard_normal(shape)) - 0.2 * rng.random(shape)
    R, hidden = apply_rule(FlooredShare(), op, x)
    np.testing.assert_array_equal(hidden, apply_rule(SignedProductA2(), op, x, R)[1])
    op.writes_signed_stream = True
    np.testing.assert_array_equal(apply_rule(FlooredShare(), op, x, R)[1], apply_rule(NetSignShare(), op, x, R)[1])


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_goldens_see_no_floor(name):
    graph = Graph(GOLDEN / name / "model.onnx")
    assert not [op.name for op in graph.ops if "floored" in op.positions]


def test_relu6_mobilenet_sees_no_floor():
    # EfficientNet-Lite and MobileNetV2 (ReLU6): rap is rap-floors-signed there (EVALUATION.md, section B).
    graph = Explainer(zoo.mobilenet_v2_like(width=1 / 4, size=32, num_classes=10)).graph
    assert not [op.name for op in graph.ops if "floored" in op.positions]
    rap, floored = methods.get("rap-floors-signed"), methods.get("rap")
    assert all(type(rap.rule_for(op)) is type(floored.rule_for(op)) for op in graph.ops)


def test_trained_efficientnet_negative_evidence_is_faithful():
    # tools/train_silu_digits.py --arch effnet --seed 0 (held-out accuracy 100%), the first 16 held-out
    # digits: rap conserves in float32, and its negative pixels, some on the ink, are ones the
    # class does without: setting the 10% most negative to 0 costs the logit little, the most positive a lot.
    import onnxruntime as ort

    path = FIXTURES / "floored" / "digits_effnet_s0.onnx"
    holdout = np.load(Path(__file__).resolve().parents[1] / "models" / "digits_holdout.npz")
    x, y = holdout["x"][:16], holdout["y"][:16]
    rap = Explainer(path).explain(x, target=y, method="rap")
    assert rap.recomputed == []
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3), dtype=np.float64), rap.target_logit, rtol=1e-4)
    heat = rap.relevance.sum(axis=1).reshape(16, -1)
    flat = x.reshape(16, -1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logit_without(order, k=102):
        erased = flat.copy()
        np.put_along_axis(erased, order[:, :k], 0.0, axis=1)
        return session.run(None, {"input": erased.reshape(x.shape)})[0][np.arange(16), y]

    negative, positive = np.argsort(heat, axis=1), np.argsort(-heat, axis=1)
    assert (np.take_along_axis(flat, negative[:, :102], axis=1) > 0).mean() > 0.1  # not only background
    kept, lost = logit_without(negative), logit_without(positive)
    assert (kept > lost).all()
    assert kept.mean() > 0.9 * rap.target_logit.mean() and lost.mean() < 0.5 * rap.target_logit.mean()


def test_rap_compiles_with_floors():
    # FlooredShare chooses by a static position, so the tracer writes the chosen rule's ops.
    from onnxrap.compile import CompiledModel, compile_graph

    holdout = np.load(Path(__file__).resolve().parents[1] / "models" / "digits_holdout.npz")
    ex = Explainer(FIXTURES / "floored" / "digits_effnet_s0.onnx")
    x = holdout["x"][:4]
    eager = ex.explain(x, method="rap").relevance
    _, compiled = CompiledModel(compile_graph(ex.graph, methods.get("rap"))).run(x)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5 * np.abs(eager).max())
