"""The paper's architectures, MobileNet-style linear bottlenecks and 3-D volumes (tools/zoo.py builds them)."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import rel_l2
from onnxrap import Explainer
from onnxrap.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import zoo  # noqa: E402

SMALL = {
    "vgg16": lambda: zoo.vgg16(width=1 / 16, size=32, num_classes=10),
    "vgg16_bn": lambda: zoo.vgg16(width=1 / 16, size=32, num_classes=10, batchnorm=True),
    "resnet50": lambda: zoo.resnet50(width=1 / 16, size=32, num_classes=10),
    "inception_v3": lambda: zoo.inception_v3(width=1 / 16, size=75, num_classes=10),
    "mobilenet_v2": lambda: zoo.mobilenet_v2_like(width=1 / 4, size=32, num_classes=10),
    "mobilenet_v2_reducemean_opset18": lambda: zoo.mobilenet_v2_like(width=1 / 4, size=32, num_classes=10,
                                                                      pool="reducemean", opset=18),
    "mobilenet_v2_opset11": lambda: zoo.mobilenet_v2_like(width=1 / 4, size=32, num_classes=10, opset=11),
}


def batch_for(model, n=2, seed=0):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal((n, *dims[1:])).astype(np.float32)


@pytest.mark.parametrize("name", SMALL)
def test_rap_conserves_and_matches_float64(name):
    model = SMALL[name]()
    x = batch_for(model)
    e32 = Explainer(model).explain(x, method="rap")
    e64 = Explainer(model, dtype="float64").explain(x, method="rap")
    for e in (e32, e64):
        assert np.all(np.isfinite(e.relevance))
        sums = e.relevance.sum(axis=(1, 2, 3), dtype=np.float64)
        np.testing.assert_allclose(sums, e.target_logit, rtol=1e-4)
    # float64 here is onnxrap's own float64 forward and rules: the float32 run is a rounding away.
    assert rel_l2(e32.relevance, e64.relevance) < 1e-3


def test_linear_bottlenecks_break_the_released_algorithm():
    # docs/rules.md, deviations: with signed residual streams (no activation after the
    # projection) rap-reference's per-sign shifts and a/(a+b) shares blow the sum up;
    # rap keeps it equal to the logit.
    model = SMALL["mobilenet_v2"]()
    x = batch_for(model)
    ex = Explainer(model, dtype="float64")
    reference = ex.explain(x, method="rap-reference")
    ratio = reference.relevance.sum(axis=(1, 2, 3)) / reference.target_logit
    assert np.max(np.abs(ratio - 1)) > 10
    rap = ex.explain(x, method="rap")
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3)) / rap.target_logit, 1, rtol=1e-4)


def test_depthwise_convolutions_are_grouped():
    model = SMALL["mobilenet_v2"]()
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert max(groups) > 1


def volume_model(size=16, seed=0):
    """The paper's lung-nodule setting in small: Conv3d + BN + Relu + MaxPool3d twice, GAP, Gemm."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "input"
    channels = 1
    for k, out in enumerate((4, 8)):
        w = rng.standard_normal((out, channels, 3, 3, 3)) * np.sqrt(2 / (channels * 27))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, out).astype(np.float32), f"s{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, out).astype(np.float32), f"b{k}"),
                  numpy_helper.from_array(rng.normal(0, 0.1, out).astype(np.float32), f"m{k}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, out).astype(np.float32), f"v{k}")]
        nodes += [helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], pads=[1] * 6),
                  helper.make_node("BatchNormalization", [f"c{k}", f"s{k}", f"b{k}", f"m{k}", f"v{k}"], [f"n{k}"]),
                  helper.make_node("Relu", [f"n{k}"], [f"r{k}"]),
                  helper.make_node("MaxPool", [f"r{k}"], [f"p{k}"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])]
        x, channels = f"p{k}", out
    inits += [numpy_helper.from_array(rng.standard_normal((channels, 2)).astype(np.float32), "wf"),
              numpy_helper.from_array(np.zeros(2, np.float32), "bf")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"])]
    graph = helper.make_graph(nodes, "volume", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["batch", 1, size, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_volume_from_the_command_line(tmp_path, capsys):
    onnx.save(volume_model(), tmp_path / "nodule.onnx")
    cube = np.random.default_rng(1).standard_normal((1, 16, 16, 16)).astype(np.float32)
    np.save(tmp_path / "cube.npy", cube)  # one sample without its batch axis
    code = main(["explain", str(tmp_path / "nodule.onnx"), str(tmp_path / "cube.npy"), "-o", str(tmp_path / "out"),
                 "--save-npy"])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]
    relevance = np.load(entry["methods"]["rap"]["npy"])
    assert relevance.shape == (1, 16, 16, 16)
    assert abs(relevance.sum() - entry["target_logit"]) < 1e-4 * abs(entry["target_logit"])
    assert Path(entry["figure"]).stat().st_size > 10_000  # input and heatmap as grids of slices


def conv_classifier(seed=0):
    """SqueezeNet/NiN style: the classifier is a 1x1 convolution, then Relu, GlobalAveragePool, Flatten."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * np.sqrt(2 / np.prod(s[1:]))).astype(np.float32), n)
             for n, s in [("w1", (16, 3, 3, 3)), ("w2", (32, 16, 3, 3)), ("wh", (10, 32, 1, 1))]]
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, n).astype(np.float32), f"b{k}")
              for k, n in (("1", 16), ("2", 32), ("h", 10))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "wh", "bh"], ["ch"]),
             helper.make_node("Relu", ["ch"], ["rh"]),
             helper.make_node("GlobalAveragePool", ["rh"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "convhead", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                ["batch", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_convolutional_classifier_behind_a_global_pool_conserves():
    # The seed reaches a 1x1-convolution head through Relu and a global pool: rap sends it
    # as the logit's gradient, so the head's rule (docs/rules.md, rap.head) sums to the logit; rap-reference shares it
    # by the pooled values (the released behaviour) and does not.
    model = conv_classifier()
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ex = Explainer(model, dtype="float64")
    rap = ex.explain(x, method="rap")
    np.testing.assert_allclose(rap.relevance.sum(axis=(1, 2, 3)), rap.target_logit, rtol=1e-4)
    reference = ex.explain(x, method="rap-reference")
    assert np.max(np.abs(reference.relevance.sum(axis=(1, 2, 3)) / reference.target_logit - 1)) > 1e-2


NEWEST_OPSET = onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset", sorted({11, 13, 17, 18, 21, NEWEST_OPSET}))
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_opsets_from_11_to_the_newest(name, opset):
    # Clip's bounds, Pad's pads and ReduceMean's axes moved from attributes to inputs over these opsets.
    build = {"resnet50": zoo.resnet50, "mobilenet_v2": zoo.mobilenet_v2_like}[name]
    kwargs = {"pool": "reducemean"} if name == "mobilenet_v2" else {}
    model = build(width=1 / 16, size=32, num_classes=10, opset=opset, **kwargs)
    x = batch_for(model)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an onnxruntime older than the onnx package
        if "opset" in str(exc).lower() or "ir version" in str(exc).lower():
            pytest.skip(f"this onnxruntime cannot run opset {opset}: {exc}")
        raise
    e = Explainer(model).explain(x, method="rap")
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3), dtype=np.float64), e.target_logit, rtol=1e-4)


def dynamic_size_model(seed=0):
    """Batch, height and width all dynamic: Conv - Relu - GlobalAveragePool - Flatten - Gemm."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "wf")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "wf"], ["logits"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("size_args,shape", [(["--size", "40"], (3, 40, 40)), (["--size", "24x36"], (3, 24, 36)),
                                             ([], (3, 30, 50))])
def test_dynamic_spatial_size(tmp_path, capsys, size_args, shape):
    from PIL import Image

    onnx.save(dynamic_size_model(), tmp_path / "dyn.onnx")
    pixels = np.random.default_rng(3).integers(0, 255, (30, 50, 3), dtype=np.uint8)  # H 30, W 50
    Image.fromarray(pixels).save(tmp_path / "img.png")
    code = main(["explain", str(tmp_path / "dyn.onnx"), str(tmp_path / "img.png"), "-o", str(tmp_path / "out"),
                 "--save-npy", *size_args])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]
    relevance = np.load(entry["methods"]["rap"]["npy"])
    assert relevance.shape == shape  # without --size a dynamic model takes the image as it is
    assert abs(relevance.sum() - entry["target_logit"]) < 1e-4 * max(1.0, abs(entry["target_logit"]))
