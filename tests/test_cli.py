"""The command line end to end: outputs, formats, and one-line errors for bad input."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from helpers import DIGIT_IMAGES, DIGITS, GOLDEN, run_cli


def test_explain_bundled_model(tmp_path, capsys):
    code, out, err = run_cli(["explain", DIGITS, *DIGIT_IMAGES[:2], "-o", tmp_path, "--save-npy"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["inputs"]) == 2
    for entry, image in zip(summary["inputs"], DIGIT_IMAGES):
        true_label = int(image.stem.split("_")[1])
        assert entry["predicted"] == true_label == entry["target"]
        assert f"predicted {true_label}" in out
        rap = entry["methods"]["rap"]
        assert abs(rap["relevance_sum"] - entry["target_logit"]) < 1e-4 * abs(entry["target_logit"])
        relevance = np.load(rap["npy"])
        assert relevance.shape == (1, 32, 32)
        assert Image.open(entry["figure"]).size[0] > 300


def test_side_by_side_methods_and_target(tmp_path, capsys):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path,
                          "--method", "rap,rap-reference,lrp-a2b1", "--target", "5", "--overlay"], capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]
    assert entry["target"] == 5
    assert set(entry["methods"]) == {"rap", "rap-reference", "lrp-a2b1"}
    assert entry["figure"].endswith("rap+rap-reference+lrp-a2b1.png")


def test_method_options_from_the_command_line(tmp_path, capsys):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path, "--method",
                          "rap,lrp-eps,integrated-gradients,gradient-x-input", "--epsilon", "0.5", "--ig-steps", "8"],
                         capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]
    assert list(entry["methods"]) == ["rap", "lrp-eps", "integrated-gradients", "gradient-x-input"]
    assert_refused(tmp_path / "x", capsys, ["explain", DIGITS, DIGIT_IMAGES[0], "--epsilon", "0.5"],
                   "--epsilon is not an option of rap")
    assert_refused(tmp_path / "y", capsys, ["explain", DIGITS, DIGIT_IMAGES[0], "--method", "lrp-ab", "--alpha",
                                            "0.2"], "alpha >= 1")


@pytest.mark.parametrize("mode,suffix", [("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("RGB", ".bmp"),
                                         ("L", ".tiff")])
def test_image_formats_and_modes(tmp_path, capsys, mode, suffix):
    # A 3-channel model (inception_mini, 3x32x32) given grayscale, RGB and RGBA files of another size.
    rng = np.random.default_rng(1)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 255, size=(48, 40, channels), dtype=np.uint8)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(path)
    code, out, err = run_cli(["explain", GOLDEN / "inception_mini" / "model.onnx", path, "-o", tmp_path / "o",
                          "--save-npy"], capsys)
    assert code == 0, err
    assert "preset imagenet" in err
    assert np.load(tmp_path / "o" / "img_rap.npy").shape == (3, 32, 32)


def test_npy_input_and_labels(tmp_path, capsys):
    case = np.load(GOLDEN / "mlp" / "case.npz")
    np.save(tmp_path / "features.npy", case["x"][0])
    (tmp_path / "labels.txt").write_text("\n".join(f"class-{i}" for i in range(10)))
    code, out, err = run_cli(["explain", GOLDEN / "mlp" / "model.onnx", tmp_path / "features.npy", "-o", tmp_path / "o",
                          "--labels", tmp_path / "labels.txt", "--save-npy"], capsys)
    assert code == 0, err
    assert f"predicted {int(case['target'])} (class-{int(case['target'])})" in out
    np.testing.assert_allclose(np.load(tmp_path / "o" / "features_rap.npy"), case["rap_robust64"][0], rtol=1e-3,
                               atol=1e-5)


@pytest.mark.slow
def test_console_script_runs(tmp_path):
    # The installed console script beside this interpreter (a venv), else the module.
    exe = Path(sys.executable).parent / "onnxrap"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxrap"]
    proc = subprocess.run([*cmd, "explain", str(DIGITS), str(DIGIT_IMAGES[0]), "-o", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "summary.json").exists()


# -- bad input: one line on stderr, exit code 2, nothing written ------------------------------------

def tiny_model(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    # IR 8 (opset 17) so that any onnxruntime the tests meet can load it.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def assert_refused(tmp_path, capsys, args, *fragments):
    out_dir = tmp_path / "out"
    code, out, err = run_cli([*args, "-o", out_dir], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxrap: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return lines[0]


def test_missing_model(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", tmp_path / "nope.onnx", DIGIT_IMAGES[0]], "nope.onnx", "no such")


def test_truncated_model(tmp_path, capsys):
    data = DIGITS.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    assert_refused(tmp_path, capsys, ["explain", tmp_path / "cut.onnx", DIGIT_IMAGES[0]], "cut.onnx")


def test_not_an_onnx_file(tmp_path, capsys):
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    assert_refused(tmp_path, capsys, ["explain", tmp_path / "text.onnx", DIGIT_IMAGES[0]], "text.onnx")


def test_unreadable_image(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    assert_refused(tmp_path, capsys, ["explain", DIGITS, DIGIT_IMAGES[0], tmp_path / "broken.png"], "broken.png")


def test_missing_image(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", DIGITS, tmp_path / "gone.png"], "gone.png", "no such file")


def test_target_out_of_range(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", DIGITS, DIGIT_IMAGES[0], "--target", "10"], "target 10", "10 classes")


def test_shape_that_cannot_fit(tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.zeros((1, 5, 5), np.float32))
    assert_refused(tmp_path, capsys, ["explain", DIGITS, tmp_path / "wrong.npy"], "(1, 1, 5, 5)")
    np.save(tmp_path / "rank.npy", np.zeros((7,), np.float32))
    assert_refused(tmp_path, capsys, ["explain", DIGITS, tmp_path / "rank.npy"], "rank.npy")


def test_size_that_contradicts_the_model(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", DIGITS, DIGIT_IMAGES[0], "--size", "64"], "--size 64x64")


def test_nan_input(tmp_path, capsys):
    x = np.zeros((1, 1, 32, 32), np.float32)
    x[0, 0, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert_refused(tmp_path, capsys, ["explain", DIGITS, tmp_path / "nan.npy"], "NaN")


def test_output_not_a_class_vector(tmp_path, capsys):
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3], np.ones(18, np.float32))
    model = tiny_model(tmp_path / "seg.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], [w])
    np.save(tmp_path / "x.npy", np.ones((1, 1, 8, 8), np.float32))
    assert_refused(tmp_path, capsys, ["explain", model, tmp_path / "x.npy"], "(1, 2, 8, 8)", "not a vector")


def test_unsupported_ops_listed_at_once(tmp_path, capsys):
    model = tiny_model(tmp_path / "odd.onnx",
                       [helper.make_node("Sin", ["x"], ["a"], name="first_sin"),
                        helper.make_node("Relu", ["a"], ["b"], name="ok"),
                        helper.make_node("Cos", ["b"], ["y"], name="last_cos")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    line = assert_refused(tmp_path, capsys, ["explain", model, tmp_path / "x.npy"], "first_sin (Sin)", "last_cos (Cos)")
    assert "ok" not in line.replace("onnxrap", "")


def test_several_data_inputs_are_refused(tmp_path, capsys):
    model = tiny_model(tmp_path / "two.onnx", [helper.make_node("Add", ["a", "b"], ["y"])],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in "ab"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    assert_refused(tmp_path, capsys, ["explain", model, DIGIT_IMAGES[0]], "2 data inputs", "a, b", "no --input NAME helps")


def test_unknown_method(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", DIGITS, DIGIT_IMAGES[0], "--method", "rap,magic"], "magic")


def test_failure_on_a_later_image_writes_nothing(tmp_path, capsys):
    assert_refused(tmp_path, capsys, ["explain", DIGITS, DIGIT_IMAGES[0], DIGIT_IMAGES[1], tmp_path / "gone.png"],
                   "gone.png")


def test_inspect_an_explainable_model(capsys):
    code, out, err = run_cli(["inspect", DIGITS], capsys)
    assert code == 0, err
    assert "input: input float [?, 1, 32, 32] (layout nchw)" in out
    assert "BatchNormalization" in out and "supported" in out
    assert "explainable: yes" in out


def test_inspect_lists_every_node_that_stops_an_explanation(tmp_path, capsys):
    model = tiny_model(tmp_path / "odd.onnx",
                       [helper.make_node("Sin", ["x"], ["a"], name="first_sin"),
                        helper.make_node("Relu", ["a"], ["b"], name="ok"),
                        helper.make_node("Cos", ["b"], ["c"], name="last_cos"),
                        helper.make_node("Softmax", ["c"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    code, out, err = run_cli(["inspect", model], capsys)
    assert code == 2
    assert "explained through its Softmax: c" in out
    assert "first_sin (Sin)" in out and "last_cos (Cos)" in out
    assert "cannot explain: 2 node(s)" in out


def test_inspect_bad_file(tmp_path, capsys):
    code, out, err = run_cli(["inspect", tmp_path / "missing.onnx"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"onnxrap: error: {tmp_path / 'missing.onnx'}: no such model file"]


def test_onnxruntime_errors_lose_their_cpp_location():
    from onnxrap.errors import first_line

    raw = ("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:256 "
           "onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::ModelOptions&) "
           "Unsupported model IR version: 14, max supported IR version: 13\nmore")
    assert first_line(Exception(raw)) == "Unsupported model IR version: 14, max supported IR version: 13"


def test_inspect_names_a_final_sigmoid_as_what_it_explains_through(tmp_path, capsys):
    model = tiny_model(tmp_path / "multilabel.onnx",
                       [helper.make_node("Relu", ["x"], ["scores"], name="act"),
                        helper.make_node("Sigmoid", ["scores"], ["y"], name="probabilities")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    code, out, err = run_cli(["inspect", model], capsys)
    assert "explained through its Sigmoid: scores" in out
