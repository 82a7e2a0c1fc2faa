"""Pad with mode edge, reflect or wrap: every padded element copies an input element, so relevance and
gradients go back to the elements copied (index routing, ops/routing.py)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxrap import Explainer

PADS = ((1, 2), (2, 1))  # height, width: before, after


def padded_classifier(mode, w):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode=mode),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    pads = [0, 0, PADS[0][0], PADS[1][0], 0, 0, PADS[0][1], PADS[1][1]]
    inits = [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.ravel()),
             helper.make_tensor("pads", TensorProto.INT64, [8], pads)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])  # wrap: opset 19
    model.ir_version = 9
    return model


@pytest.mark.parametrize("mode", ["edge", "reflect", "wrap"])
def test_gradient_and_rap_go_back_to_the_copied_elements(mode):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 7 * 8)).astype(np.float32)
    x = rng.normal(size=(2, 1, 4, 5)).astype(np.float32)
    explainer = Explainer(padded_classifier(mode, w), dtype="float64")  # the capture checks the forward vs ORT
    # d y_0 / d x: each padded position's weight, added at the element it copies (NumPy's np.pad agrees
    # with ONNX on these three modes)
    copied = np.pad(np.arange(20).reshape(4, 5), PADS, mode=mode).ravel()
    expected = np.zeros(20)
    np.add.at(expected, copied, w[0].astype(np.float64))
    gradient = explainer.explain(x, method="gradient", target=0).relevance
    for k in range(len(x)):
        np.testing.assert_allclose(gradient[k, 0].ravel(), expected, rtol=1e-12)
    rap = explainer.explain(x, method="rap")
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3)), rap.target_logit, rtol=1e-5)
    assert rap.unconserved == []
