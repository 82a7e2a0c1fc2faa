"""Canonicalisation passes, their indexes, and the caller's ModelProto left as it was."""
import numpy as np
from onnx import helper
from onnx_helpers import const, make_model, node, run

from onnxrap import Explainer
from onnxrap.graph import Graph
from onnxrap.ops.linear import Conv, Dense
from onnxrap.passes import CANONICAL_PASSES, AbsorbBias, FoldPad, OpIndex, SplitFusedOps

RNG = np.random.default_rng(0)


def small_cnn(named=True):
    """Pad -> Conv -> Relu -> Flatten -> MatMul + Add -> Softmax, nodes unnamed unless ``named``."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("Conv", ["padded", "cw"], ["c"]),
             helper.make_node("Relu", ["c"], ["a"]),
             helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"])]
    if named:
        for k, n in enumerate(nodes):
            n.name = f"n{k}"
    inits = [const("pads", [0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), const("cw", RNG.standard_normal((2, 1, 3, 3))),
             const("w", RNG.standard_normal((2 * 6 * 6, 4))), const("b", RNG.standard_normal(4))]
    return make_model(nodes, [("x", [1, 1, 6, 6])], [("p", [1, 4])], inits)


def test_the_callers_model_is_never_changed():
    model = small_cnn(named=False)
    before = model.SerializeToString()
    explainer = Explainer(model)
    explainer.explain(RNG.standard_normal((1, 1, 6, 6)).astype(np.float32))
    assert model.SerializeToString() == before
    assert all(n.name == "" for n in model.graph.node)
    assert {op.name for op in explainer.graph.ops} >= {"Conv_1", "MatMul_4"}  # messages still name every node


def test_passes_make_the_canonical_graph():
    graph = Graph(small_cnn())
    assert graph.logits_name == "logits"  # the Softmax is skipped
    kinds = [type(op).__name__ for op in graph.ops]
    assert kinds == ["Conv", "Activation", "Reshape", "Dense"]  # the Pad folded, the Add absorbed
    conv, dense = graph.ops[0], graph.ops[-1]
    assert conv.inputs == ["x"] and list(conv.pads) == [1, 1, 1, 1]
    assert dense.output == "logits" and dense.bias_values is not None


def test_canonical_graph_computes_the_model():
    model = small_cnn()
    x = RNG.standard_normal((1, 1, 6, 6)).astype(np.float32)
    # float64 reruns every canonical op with onnxrap's own forward and fails unless it gives ONNX Runtime's logits.
    exp = Explainer(model, dtype="float64").explain(x, method="gradient")
    assert exp.predicted[0] == run(model, x)[0].argmax()
    rap = Explainer(model).explain(x)
    np.testing.assert_allclose(rap.relevance.sum(), rap.target_logit[0], rtol=1e-4)


def test_index_stays_current_through_every_pass():
    graph = Graph(small_cnn())
    fresh = OpIndex(graph.ops, graph.logits_name)
    assert {t: op.name for t, op in fresh.producer.items()} == {op.output: op.name for op in graph.ops}
    # Rerunning the passes on the canonical graph changes nothing: each rewrite is done once.
    again = OpIndex(list(graph.ops), graph.logits_name)
    for canonical_pass in CANONICAL_PASSES:
        canonical_pass.apply(again)
    assert again.ops == graph.ops


def test_bias_absorption_keeps_an_add_read_twice():
    # The MatMul's output is read by the Add and by a second branch: the Add stays an Add.
    nodes = [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "s"), node("Add", ["s", "m"], "logits")]
    model = make_model(nodes, [("x", [1, 3])], [("logits", [1, 2])], [const("w", np.ones((3, 2))), const("b", [1, 2])])
    index = OpIndex(Graph(model).ops, "logits")
    AbsorbBias().apply(index)
    assert [op.op_type for op in index.ops] == ["MatMul", "Add", "Add"]


def test_pad_read_by_a_conv_and_another_op_stays_for_the_other():
    nodes = [node("Pad", ["x", "pads"], "p"), node("Conv", ["p", "cw"], "c"), node("Flatten", ["c"], "fc"),
             node("Flatten", ["p"], "fp"), node("Concat", ["fc", "fp"], "cat", axis=1),
             node("MatMul", ["cat", "w"], "logits")]
    model = make_model(nodes, [("x", [1, 1, 4, 4])], [("logits", [1, 2])],
                       [const("pads", [0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), const("cw", np.ones((1, 1, 3, 3))),
                        const("w", np.ones((16 + 36, 2)))])
    index = OpIndex(Graph(model).ops, "logits")
    FoldPad().apply(index)
    conv = next(op for op in index.ops if isinstance(op, Conv))
    assert conv.inputs == ["x"] and any(op.op_type == "Pad" for op in index.ops)
    assert [op.name for op in index.users("p")] == ["Flatten_fp"]


def test_fused_ops_are_split():
    from onnxrap.ops.fused import Fused
    from onnxrap.ops.structure import Sum

    linear = Dense("fg", "FusedGemm", ["x"], "y:linear", np.ones((2, 2)), None)
    residual = Sum("fg:add", "Add", ["y:linear", "r"], "y")
    fused = Fused("fg", "FusedGemm", [linear, residual])
    assert fused.inputs == ["x", "r"] and fused.output == "y"
    index = OpIndex([fused], "y")
    SplitFusedOps().apply(index)
    assert index.ops == [linear, residual] and index.producer["y:linear"] is linear
    assert index.users("y:linear") == [residual]
