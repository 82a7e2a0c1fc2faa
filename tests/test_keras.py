"""Real Keras models converted by tf2onnx (tests/fixtures/keras, tools/make_keras_fixtures.py).

Six small models built from Keras' own application blocks (MobileNetV2 and V3, EfficientNet, ResNet,
DenseNet) and a Sequential CNN, each through the exporter paths users take: tf2onnx on a tf.function,
tf2onnx's command line on a SavedModel (also with ``--inputs-as-nchw``), Keras 3's
``model.export(format="onnx")`` and Keras -> TFLite -> tf2onnx (float, int8 weights, int8 throughout).
They take raw [0, 255] pixels and scale them inside the graph.  Only onnx, onnxruntime and numpy are
needed here: TensorFlow wrote the files once.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from helpers import assert_one_line_error, rel_l2, run_cli
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.graph import Graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODELS = sorted(MANIFEST["files"])
FAMILIES = sorted({name.rsplit("_", 1)[0] for name in MODELS})
INT8 = [name for name in MODELS if name.endswith("_tflite-int8")]
# rounded activations: int8 throughout, or a Dense layer's input quantised with a scale fitted to the data
ROUNDED = INT8 + [name for name in MODELS if "DynamicQuantizeLinear" in MANIFEST["files"][name]["op_types"]]
# The int8 MobileNetV3's top logit (a random network's) lies past its grid's end after rounding on the way:
# the rounding holds it, its gradient is 0, and rap, seeded with it at the head, explains nothing.
SATURATED = "mobilenet_v3_small_tflite-int8"
SATURATED_REASON = "the top logit saturates the int8 grid: gradient 0, rap 0 (a random network's ranges)"


def unless_saturated(names):
    return [pytest.param(name, marks=pytest.mark.xfail(reason=SATURATED_REASON, strict=True))
            if name == SATURATED else name for name in names]


METHODS = ["rap", "rap-reference", "lrp-a2b1", "gradient-x-input"]

_explainers = {}


def load(name):
    if name not in _explainers:
        _explainers[name] = Explainer(FIXTURES / f"{name}.onnx"), dict(np.load(FIXTURES / f"{name}.npz"))
    return _explainers[name]


def test_the_fixtures_are_what_the_readme_says():
    ops = {name: entry["op_types"] for name, entry in MANIFEST["files"].items()}
    assert len(FAMILIES) == 6 and all(f"{family}_tflite" in ops for family in FAMILIES)
    assert all(entry["bytes"] < 1_000_000 and entry["input"][1][1:] == ([3, 32, 32] if name.endswith("-nchw")
                                                                        else [32, 32, 3])
               for name, entry in MANIFEST["files"].items())
    # hard-swish: spelt out as x * Relu6(x + 3) / 6 by tf2onnx, a HardSwish op by the TFLite path
    assert "HardSwish" not in ops["mobilenet_v3_small_tf2onnx"] and ops["mobilenet_v3_small_tflite"]["HardSwish"] == 5
    assert ops["efficientnet_small_saved"]["Sigmoid"] == 13  # 7 swish, 6 in the squeeze-excitations' gates
    # Keras' Normalization layer: tf2onnx on a tf.function leaves its statistics as graph inputs
    assert {"efficientnet_small_tf2onnx", "efficientnet_small_keras"} <= set(MANIFEST["failed"])
    assert not any(name.startswith("efficientnet_small") for name in MANIFEST["failed"] if name not in ops
                   and not name.endswith(("_tf2onnx", "_keras")))


@pytest.mark.parametrize("name", MODELS)
def test_inspect_is_clean(name, capsys):
    code, out, err = run_cli(["inspect", FIXTURES / f"{name}.onnx"], capsys)
    assert code == 0, err
    layout = "nchw" if name.endswith("-nchw") else "nhwc"  # tf2onnx --inputs-as-nchw transposes the input
    assert "explainable: yes" in out and "NOT SUPPORTED" not in out and f"(layout {layout})" in out


@pytest.mark.parametrize("name", unless_saturated(MODELS))
def test_rap_conserves_and_the_logits_are_onnx_runtimes(name):
    """rap sums to the logit; onnxrap's capture (extra outputs) leaves ONNX Runtime's logits as they were,
    and they are Keras' own before its softmax.  An int8 model's logits are its head's float output before
    the rounding to the grid (the probabilities it outputs are rounded to 1/256)."""
    ex, case = load(name)
    e = ex.explain(case["x"], method="rap")
    assert e.relevance.shape == case["x"].shape and np.all(np.isfinite(e.relevance))
    np.testing.assert_allclose(e.logits, case["ort_logits"], rtol=1e-5, atol=1e-6)
    softmax = np.exp(e.logits - e.logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, case["ort_probabilities"], atol=1e-6 if name not in INT8 else 4e-3)
    if "tflite-" not in name:  # quantised weights move Keras' probabilities by up to 1e-4
        np.testing.assert_allclose(softmax, case["keras_probabilities"], atol=1e-5)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3), dtype=np.float64), e.target_logit, rtol=1e-5)
    assert e.recomputed == []


@pytest.mark.parametrize("name, method", [
    pytest.param(name, method, marks=pytest.mark.xfail(reason=SATURATED_REASON, strict=True))
    if name == SATURATED and method in ("rap", "gradient-x-input") else (name, method)
    for name in MODELS for method in METHODS])
def test_compiled_agrees_with_eager(name, method):
    ex, case = load(name)
    eager = ex.explain(case["x"][:1], method=method)
    assert np.all(np.isfinite(eager.relevance)) and np.abs(eager.relevance).max() > 0
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"][:1])
    err = rel_l2(relevance, eager.relevance)
    if err <= 1e-5:
        return
    # rap-reference (the authors' rules, no stabiliser) moves by 1.2e-4 between float32 and float64 on the
    # MobileNetV3s; two float32 runs that round differently differ by 4e-5.  The compiled run must then be
    # as close to float64 as the eager one, within a factor 4 (as tests/test_compile.py asks).
    assert method == "rap-reference", err
    exact = Explainer(FIXTURES / f"{name}.onnx", dtype="float64").explain(case["x"][:1], method=method)
    own = rel_l2(eager.relevance, exact.relevance)
    assert rel_l2(relevance, exact.relevance) < 4 * max(own, 1e-5), (err, own)


@pytest.mark.parametrize("method", ["gradient", "rap", "rap-reference"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_exporter_path_explains_alike(family, method):
    """One Keras model, four exporters: the function is the same, and so must the explanation be.  The
    TFLite path pads the NHWC image before its Transpose to NCHW; until that Pad was moved to the Conv it
    feeds, rap on ResNet and DenseNet differed by 27% and 7% between paths (the gradient did not)."""
    names = [name for name in MODELS if name.startswith(family + "_") and "tflite-" not in name]  # float weights
    x = load(names[0])[1]["x"]
    # In float64: float32 rounding alone moves rap-reference by up to 7.5e-4 on these models.  The TFLite
    # converter folds BatchNormalization into the weights in float32, and rap-reference, the authors' rules
    # without a stabiliser, turns that rounding into up to 7e-5 (gradient and rap: below 1e-7).
    tolerance = 2e-4 if method == "rap-reference" else 1e-6
    maps = {}
    for name in names:  # an NCHW file takes the images transposed, and its map comes back transposed
        ex = Explainer(FIXTURES / f"{name}.onnx", dtype="float64")
        if name.endswith("-nchw"):
            maps[name] = ex.explain(x.transpose(0, 3, 1, 2), method=method).relevance.transpose(0, 2, 3, 1)
        else:
            maps[name] = ex.explain(x, method=method).relevance
    for name in names[1:]:
        assert rel_l2(maps[name], maps[names[0]]) < tolerance, name


@pytest.mark.parametrize("name", ["resnet_small_tflite", "resnet_small_saved-nchw"])
def test_a_black_half_stays_black_in_the_heatmap(name):
    """The heatmap is in the image's layout: with the left half of the picture black (0),
    gradient x input is 0 on the left half of the heatmap, columns, not rows."""
    ex, case = load(name)
    x = case["x"][:1].copy()
    if name.endswith("-nchw"):
        x[:, :, :, :16] = 0  # columns 0-15
    else:
        x[:, :, :16, :] = 0
    heatmap = ex.explain(x, method="gradient-x-input").heatmap
    assert heatmap.shape == (1, 32, 32)
    assert np.all(heatmap[:, :, :16] == 0) and np.abs(heatmap[:, :16, 16:]).max() > 0


@pytest.mark.parametrize("name", ["mobilenet_v3_small_tf2onnx", "efficientnet_small_tflite"])
def test_cli_explains_a_photo_as_the_api_does(tmp_path, capsys, name):
    """An RGB PNG through the command line (raw pixels: the models scale them themselves) is fed as it is,
    NHWC, not transposed: the saved relevance is the API's on the same pixels."""
    ex, case = load(name)
    pixels = np.clip(case["x"][0], 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    code, _, err = run_cli(["explain", FIXTURES / f"{name}.onnx", tmp_path / "photo.png", "--preset", "raw",
                            "--method", "rap,gradient-x-input", "--save-npy", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "photo_rap+gradient-x-input.png").is_file()
    for method in ("rap", "gradient-x-input"):
        saved = np.load(tmp_path / "out" / f"photo_{method}.npy")
        assert saved.shape == (32, 32, 3)
        api = ex.explain(pixels[None].astype(np.float32), method=method).relevance[0]
        assert rel_l2(saved, api) < 1e-6


def test_an_export_with_its_constants_as_inputs_is_refused_in_one_line(tmp_path, capsys):
    """tf2onnx on a tf.function leaves the statistics of Keras' Normalization layer as graph inputs:
    ONNX Runtime itself cannot run such a file without them."""
    model = FIXTURES / "efficientnet_small_tf2onnx.onnx"
    np.save(tmp_path / "x.npy", load("efficientnet_small_saved")[1]["x"][0])
    code, _, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "3 data inputs", "normalization_1/Sub/y:0", "--input")
    code, _, err = run_cli(["explain", model, tmp_path / "x.npy", "--input", "image", "-o", tmp_path / "out"],
                           capsys)
    assert_one_line_error(code, err, "also needs input(s)", "normalization_1/Sqrt/x:0", "cannot feed")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [name for name in MODELS if name.endswith("_tflite-dynamic")])
def test_int8_weights_fold_to_what_onnx_runtime_dequantizes(name):
    """TFLite's dynamic-range quantisation stores the larger weights as int8 behind DequantizeLinear (a scale
    and zero point per output channel); onnx's reference evaluator has that op only from opset 19, so onnxrap
    folds it itself.  The folded weights are ONNX Runtime's own, bit for bit."""
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    weights = {init.name for init in model.graph.initializer}
    dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and set(n.input) <= weights]
    assert dequantize and any(a.name == "axis" for n in dequantize for a in n.attribute)
    outputs = [onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in dequantize]
    weights_only = onnx.helper.make_model(onnx.helper.make_graph(dequantize, "dequantize", [], outputs,
                                                                  model.graph.initializer),
                                          opset_imports=model.opset_import, ir_version=model.ir_version)
    expected = ort.InferenceSession(weights_only.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    from onnx import numpy_helper
    from onnxrap.graph import _dequantized

    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for n, value in zip(dequantize, expected):
        np.testing.assert_array_equal(_dequantized(n, [arrays[t] for t in n.input]), value)
    Graph(FIXTURES / f"{name}.onnx")  # and the graph folds them: no DequantizeLinear of weights is refused


def test_a_scale_per_channel_on_the_data_path_is_refused_in_one_line(tmp_path, capsys):
    """Quantised activations are explained with one scale per tensor (what TFLite and ONNX Runtime's
    quantiser write); a scale per channel on the data path is refused, naming the nodes."""
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("s", TensorProto.FLOAT, [3], [0.5, 0.25, 1.0]),
             helper.make_tensor("z", TensorProto.INT8, [3], [0, 1, -1]),
             helper.make_tensor("w", TensorProto.FLOAT, [3, 2], np.ones(6))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="per_channel_q", axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["r"], name="per_channel_dq", axis=1),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "per_channel_q (QuantizeLinear", "per_channel_dq (DequantizeLinear",
                          "a scale per channel")


@pytest.mark.parametrize("name", unless_saturated(ROUNDED))
def test_an_int8_model_is_explained_as_the_float_model_it_rounds(name):
    """Full integer quantisation rounds every activation to an int8 grid (QuantizeLinear/DequantizeLinear
    around every op, Transposes and Reshapes between them on the integers); dynamic-range quantisation
    rounds a Dense layer's input to a uint8 grid fitted to it (DynamicQuantizeLinear).  The same linear ops read signed
    inputs as in the float model (a quantised ReLU stays non-negative, a quantised sigmoid a gate), and
    rap's and the gradient's maps are the float model's up to the rounding."""
    from onnxrap.ops.linear import Linear

    ex, case = load(name)
    float_ex, _ = load(name.rsplit("_", 1)[0] + "_tflite")
    signed = [[op.signed_input for op in e.graph.ops if isinstance(op, Linear)] for e in (ex, float_ex)]
    assert signed[0] == signed[1]
    for method in ("rap", "gradient"):
        e = ex.explain(case["x"], method=method)
        reference = float_ex.explain(case["x"], method=method, target=e.target)
        assert np.corrcoef(e.relevance.ravel(), reference.relevance.ravel())[0, 1] > 0.95, method


def test_the_gradient_through_a_rounding_is_1_within_the_grid_and_0_beyond():
    """x -> QuantizeLinear(scale 0.5, zero point 10, int8) -> DequantizeLinear -> MatMul: the rounding's
    gradient is the straight-through one where x / 0.5 + 10 lands in [-128, 127], 0 where the grid holds
    it; rap's relevance passes the rounding and sums to the logit."""
    from onnx import TensorProto, helper

    w = np.array([[1.0, -2.0], [3.0, 0.5], [-1.0, 1.0]], np.float32)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("z", TensorProto.INT8, [], [10]),
             helper.make_tensor("w", TensorProto.FLOAT, [3, 2], w.ravel())]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.array([[1.2, 3.3, 2.0], [80.0, 1.0, -0.7]], np.float32)  # 80 / 0.5 + 10 = 170: beyond the grid
    ex = Explainer(model)
    e = ex.explain(x, method="gradient", target=0)
    np.testing.assert_allclose(e.relevance, [[1.0, 3.0, -1.0], [0.0, 3.0, -1.0]])
    rounded = np.clip(np.rint(x / 0.5) + 10, -128, 127) - 10
    np.testing.assert_allclose(e.logits, (0.5 * rounded) @ w, rtol=1e-6)
    r = ex.explain(x, method="rap")
    np.testing.assert_allclose(r.relevance.sum(axis=1), r.target_logit, rtol=1e-5)
    _, compiled = CompiledModel(compile_graph(ex.graph, methods.get("gradient"))).run(x, [0, 0])
    np.testing.assert_allclose(compiled, e.relevance, atol=1e-6)


def test_dequantize_folds_per_tensor_and_per_axis_by_hand():
    from onnxrap.graph import _dequantized

    x = np.array([[-128, 0, 5], [127, 10, -3]], dtype=np.int8)
    per_tensor = onnx.helper.make_node("DequantizeLinear", ["x", "s"], ["y"])
    np.testing.assert_array_equal(_dequantized(per_tensor, [x, np.float32(0.5), None]), x.astype(np.float32) * 0.5)
    per_column = onnx.helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])  # axis 1 by default
    y = _dequantized(per_column, [x, np.array([1, 2, 4], np.float32), np.array([0, 1, -3], np.int8)])
    np.testing.assert_array_equal(y, [[-128, -2, 32], [127, 18, 0]])
    assert y.dtype == np.float32
    blocked = onnx.helper.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=1, block_size=2)
    assert _dequantized(blocked, [x, np.ones((2, 2), np.float32), None]) is None
