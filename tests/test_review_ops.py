"""Review of the engine side: attributes and opset variants that were read wrongly or silently ignored.

Each case is a tiny graph built with onnx.helper, compared with ONNX Runtime or refused with a
message naming the node and the attribute."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from helpers import BK
from onnx_helpers import const, make_model, node, run
from onnxrap.errors import UnsupportedOpsError
from onnxrap.graph import Graph
from onnxrap.ops.elementwise import Activation


def _fused_gemm(activation, **attrs):
    fused = helper.make_node("FusedGemm", ["x", "w"], ["a"], name="fg", domain="com.microsoft",
                             activation=activation, **attrs)
    graph = helper.make_graph([fused, node("Identity", ["a"], ["y"])], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [const("w", np.linspace(-1, 1, 12).reshape(4, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("activation, attrs", [
    ("LeakyRelu", {"activation_alpha": 0.3}),
    ("HardSigmoid", {"activation_alpha": 0.4, "activation_beta": 0.1}),
])
def test_fused_gemm_activation_takes_onnx_runtimes_attributes(activation, attrs):
    """FusedGemm names its activation's parameters activation_alpha/_beta (FusedConv: activation_params);
    they were read from activation_params, so LeakyRelu's slope fell back to 0.01 without a word."""
    model = _fused_gemm(activation, **attrs)
    x = np.array([[0.1, 0.2, -0.05, -0.3]], dtype=np.float32)
    assert (x @ np.linspace(-1, 1, 12).reshape(4, 3) < 0).any()  # the activation's negative side is read
    expected = run(model, x)[0]
    graph = Graph(model)
    ctx = {"x": x.astype(np.float64)}
    for op in graph.ops:
        ctx[op.output] = op.forward(BK, ctx)
    np.testing.assert_allclose(ctx[graph.logits_name], expected, rtol=1e-6, atol=1e-6)


def _refused(model, *fragments):
    with pytest.raises(UnsupportedOpsError) as info:
        Graph(model)
    message = str(info.value)
    for f in fragments:
        assert f in message, message


def test_fused_gemm_activation_without_its_parameters_is_refused():
    _refused(_fused_gemm("Clip"), "fg", "Clip")


def _one(op_type, attrs=None, inits=(), extra=(), shape=(2, 3, 4, 5), opset=13, out_shape=None):
    n = node(op_type, ["x", *extra], ["a"], name="n", **(attrs or {}))
    model = make_model([n, node("Identity", ["a"], ["y"])], [("x", list(shape))], [("y", out_shape)], list(inits),
                       opset=opset, check=False)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    return model


@pytest.mark.parametrize("axis", [2, 3, -4, -2])
def test_flatten_that_moves_the_batch_axis_is_refused(axis):
    """Flatten keeps the batch axis first only at axis 1: at 0 (or -rank) it merges the batch into one
    row, at 2 or more it folds channels into the first axis, which every rule reads as the batch."""
    _refused(_one("Flatten", {"axis": axis}), "n", "Flatten", "axis")


@pytest.mark.parametrize("axis", [1, -2])
def test_flatten_at_axis_one_is_kept(axis):
    assert [op.op_type for op in Graph(_one("Flatten", {"axis": axis}, shape=(2, 3, 4))).ops] == ["Flatten", "Identity"]


def test_flatten_past_unit_axes_is_kept():
    """(N, 1, 1, K) flattened at axis 3 is (N, K): only axes of size 1 join the batch."""
    ops = Graph(_one("Flatten", {"axis": 3}, shape=(2, 1, 1, 5))).ops
    assert [op.op_type for op in ops] == ["Flatten", "Identity"]


def test_squeeze_of_the_batch_axis_is_refused():
    model = _one("Squeeze", inits=[const("ax", np.array([0]), np.int64)], extra=["ax"], shape=(1, 3, 4))
    _refused(model, "n", "Squeeze", "batch")


def test_squeeze_attribute_of_the_batch_axis_is_refused():
    _refused(_one("Squeeze", {"axes": [0, 3]}, shape=(1, 3, 4, 1), opset=11), "n", "Squeeze", "batch")


def test_a_batch_of_one_through_rank_one_and_back_is_kept():
    """Squeeze (1, 5) to (5,) and Unsqueeze back: the rank-1 tensor has no batch axis to misread."""
    ax = const("ax", np.array([0]), np.int64)
    nodes = [node("Squeeze", ["x", "ax"], ["s"]), node("Unsqueeze", ["s", "ax"], ["y"])]
    model = make_model(nodes, [("x", [1, 5])], [("y", [1, 5])], [ax])
    assert [op.op_type for op in Graph(model).ops] == ["Squeeze", "Unsqueeze"]


def test_unsqueeze_before_the_batch_axis_is_refused():
    model = _one("Unsqueeze", inits=[const("ax", np.array([0]), np.int64)], extra=["ax"], shape=(2, 3))
    _refused(model, "n", "Unsqueeze", "batch")


def test_squeeze_and_unsqueeze_of_other_axes_are_kept():
    model = _one("Squeeze", inits=[const("ax", np.array([-1]), np.int64)], extra=["ax"], shape=(2, 3, 1))
    assert [op.op_type for op in Graph(model).ops] == ["Squeeze", "Identity"]
    model = _one("Unsqueeze", {"axes": [1]}, shape=(2, 3), opset=11)
    assert [op.op_type for op in Graph(model).ops] == ["Unsqueeze", "Identity"]


def test_cast_to_an_integer_is_refused():
    """A Cast to int truncates: treating it as an identity gave a gradient through a step function."""
    cast = node("Cast", ["x"], ["c"], name="n", to=TensorProto.INT32)
    back = node("Cast", ["c"], ["y"], name="back", to=TensorProto.FLOAT)
    model = make_model([cast, back], [("x", [1, 3])], [("y", [1, 3])])
    _refused(model, "n", "Cast", "INT32")


def test_cast_between_floats_is_an_identity():
    model = _one("Cast", {"to": TensorProto.FLOAT16}, shape=(1, 3), out_shape=[1, 3])
    assert [op.kind for op in Graph(model).ops][0] == "identity"


def test_batchnorm_with_spatial_zero_is_refused():
    """Opset 7's BatchNormalization with spatial=0 has per-element statistics, not per channel."""
    c = 3
    inits = [const(n, np.ones((c, 4, 5)) if n != "var" else np.ones((c, 4, 5))) for n in ("s", "b", "mu", "var")]
    model = _one("BatchNormalization", {"spatial": 0}, inits, ["s", "b", "mu", "var"], (1, c, 4, 5), opset=7,
                 out_shape=[1, c, 4, 5])
    _refused(model, "n", "BatchNormalization", "spatial")


def test_pad_of_opset_one_reads_its_paddings_attribute():
    """Opset 1 named Pad's widths ``paddings``; reading ``pads`` only ended in a TypeError traceback."""
    model = _one("Pad", {"paddings": [0, 0, 1, 0, 0, 0, 0, 2], "value": 0.5}, shape=(1, 2, 3, 4), opset=1,
                 out_shape=[1, 2, 4, 6])
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    (pad, _) = Graph(model).ops
    np.testing.assert_array_equal(pad.forward(BK, {"x": x}), np.pad(x, [(0, 0), (0, 0), (1, 0), (0, 2)],
                                                                  constant_values=0.5))


def test_reduce_mean_over_the_batch_axis_at_unknown_rank_is_a_model_error():
    """A negative axis on an input of unknown rank is known to be the batch axis only at run time: a
    ModelError naming the node there (an Unsupported escaped the walk as a traceback)."""
    from onnxrap.errors import ModelError
    from onnxrap.ops.pooling import MeanReduce

    op = MeanReduce("rm", "ReduceMean", ["x"], "y", [-4], True)
    with pytest.raises(ModelError, match="rm"):
        op.forward(BK, {"x": np.ones((1, 2, 3, 4))})


def test_reshape_that_changes_the_batch_axis_is_refused():
    """(2, 3, 4) to (6, 4) folds channels into the first axis, which every rule reads as the batch."""
    model = _one("Reshape", inits=[const("s", np.array([6, 4]), np.int64)], extra=["s"], shape=(2, 3, 4))
    _refused(model, "n", "Reshape", "batch")


def test_reshape_that_keeps_the_batch_axis_is_kept():
    model = _one("Reshape", inits=[const("s", np.array([-1, 12]), np.int64)], extra=["s"], shape=(2, 3, 4))
    assert [op.op_type for op in Graph(model).ops] == ["Reshape", "Identity"]


def test_dropout_in_training_mode_is_refused():
    """Opset 12's training_mode input set to true makes Dropout drop at random: no identity."""
    inits = [const("ratio", np.array(0.5)), const("train", np.array(True), np.bool_)]
    model = _one("Dropout", inits=inits, extra=["ratio", "train"], shape=(1, 3))
    _refused(model, "n", "Dropout", "training_mode")


def test_dropout_at_inference_is_an_identity():
    inits = [const("ratio", np.array(0.5)), const("train", np.array(False), np.bool_)]
    model = _one("Dropout", inits=inits, extra=["ratio", "train"], shape=(1, 3))
    assert [op.kind for op in Graph(model).ops] == ["identity", "identity"]


def test_a_bias_that_adds_axes_is_not_absorbed():
    """MatMul (1, 4) x (4, 3) + c (1, 1, 3) is (1, 1, 3): absorbed as the MatMul's bias it was (1, 3), and
    float32 relevance came back shaped (1, 1, 4) for an input of (1, 4)."""
    from onnxrap import Explainer

    nodes = [node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["a"]), node("Relu", ["a"], ["r"]),
             node("Flatten", ["r"], ["f"]), node("MatMul", ["f", "w2"], ["logits"])]
    inits = [const("w", np.linspace(-1, 1, 12).reshape(4, 3)), const("b", [[[0.1, -0.2, 0.3]]]),
             const("w2", np.linspace(-1, 1, 6).reshape(3, 2))]
    model = make_model(nodes, [("x", [1, 4])], [("logits", [1, 2])], inits)
    x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
    for dtype in ("float32", "float64"):
        e = Explainer(model, dtype=dtype).explain(x, target=0, method="rap")
        assert e.relevance.shape == x.shape
        np.testing.assert_allclose(e.relevance.sum(), e.target_logit[0], rtol=1e-5)
    assert "Add" in [op.op_type for op in Graph(model).ops]


def test_a_bias_per_output_unit_is_absorbed():
    nodes = [node("MatMul", ["x", "w"], ["m"]), node("Add", ["m", "b"], ["logits"])]
    model = make_model(nodes, [("x", [1, 4])], [("logits", [1, 3])],
                       [const("w", np.ones((4, 3))), const("b", [[0.1, -0.2, 0.3]])])
    (op,) = Graph(model).ops
    np.testing.assert_allclose(op.bias_values, [0.1, -0.2, 0.3], rtol=1e-6)


def test_an_op_of_a_custom_domain_is_not_read_as_the_standard_op_of_its_name():
    """A "Relu" of com.example computes what its authors wrote; it was explained as ONNX's Relu."""
    custom = helper.make_node("Relu", ["h"], ["r"], name="their_relu", domain="com.example")
    graph = helper.make_graph([node("Gemm", ["x", "w"], ["h"], name="fc"), custom, node("Identity", ["r"], ["y"])],
                              "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [const("w", np.linspace(-1, 1, 12).reshape(4, 3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOpsError, match=r"their_relu \(Relu: an op of the custom domain com.example\)"):
        Graph(model)


def test_reduce_mean_with_no_axes_and_noop_is_an_identity():
    """ONNX: no axes and noop_with_empty_axes=1 leave the input as it is (it was refused)."""
    from onnxrap import Explainer

    model = _one("ReduceMean", {"noop_with_empty_axes": 1}, shape=(None, 3), opset=18, out_shape=[None, 3])
    x = np.random.default_rng(4).normal(size=(2, 3)).astype(np.float32)
    assert np.array_equal(run(model, x)[0], x)
    gradient = Explainer(model, dtype="float64").explain(x, method="gradient", target=1).relevance
    assert np.array_equal(gradient, np.tile([0.0, 1.0, 0.0], (2, 1)))


def test_max_pool_storage_order_matters_only_for_its_indices():
    kept = _one("MaxPool", {"kernel_shape": [2, 2], "storage_order": 1}, out_shape=[2, 3, 2, 2])
    assert [op.op_type for op in Graph(kept).ops] == ["MaxPool", "Identity"]
    n = node("MaxPool", ["x"], ["a", "where"], name="n", kernel_shape=[2, 2], storage_order=1)
    with_indices = make_model([n, node("Identity", ["a"], ["y"])], [("x", [2, 3, 4, 5])], [("y", None)],
                              [], opset=13, check=False)
    _refused(with_indices, "n", "storage_order")
