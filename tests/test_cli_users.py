"""What a new user hit on the command line: output names and paths, reports, inspect, small things."""
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from helpers import DIGIT_IMAGES, DIGITS, assert_one_line_error, run_cli
from onnxrap.cli import input_stems


def copies(tmp_path, *relative):
    """The same digit image under several relative paths."""
    paths = []
    for r in relative:
        path = tmp_path / r
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DIGIT_IMAGES[len(paths) % len(DIGIT_IMAGES)].read_bytes())
        paths.append(path)
    return paths


# -- output names ------------------------------------------------------------------------------------

def test_same_file_names_in_different_folders_do_not_collide(tmp_path, capsys):
    cat, dog = copies(tmp_path, "cat/001.png", "dog/001.png")
    code, out, err = run_cli(["explain", DIGITS, cat, dog, "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    entries = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]
    figures = [Path(e["figure"]) for e in entries]
    assert [f.name for f in figures] == ["cat_001_rap.png", "dog_001_rap.png"]
    assert all(f.is_file() for f in figures)
    assert [e["input"] for e in entries] == [str(cat), str(dog)]


def test_input_stems_are_unique_and_predictable(tmp_path):
    paths = [tmp_path / p for p in ("a/x/001.png", "b/x/001.png", "a/001.png", "c/002.png", "c/002.jpg")]
    assert input_stems(paths) == ["a_x_001", "b_x_001", "a_001", "002_png", "002_jpg"]
    twice = input_stems([tmp_path / "one.png", tmp_path / "one.png"])
    assert twice[1] == twice[0] + "-2"


def test_long_file_names_never_fail(tmp_path, capsys):
    names = ["x" * 240 + ".png", "x" * 240 + "y.png"]  # two long names that agree in their first 240 characters
    paths = copies(tmp_path, *names)
    code, out, err = run_cli(["explain", DIGITS, *paths, "-o", tmp_path / "out", "--save-npy",
                          "--method", "rap,lrp-eps,gradient,gradient-x-input"], capsys)
    assert code == 0, err
    entries = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]
    figures = {entry["figure"] for entry in entries}
    assert len(figures) == 2 and all(Path(f).is_file() and len(Path(f).name) < 255 for f in figures)
    assert len(list((tmp_path / "out").iterdir())) == 1 + 2 + 2 * 4  # summary, 2 figures, 8 .npy


# -- output-path errors: one line, exit 2, nothing left behind -----------------------------------------

def test_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "taken"], capsys)
    assert_one_line_error(code, err, "taken", "not a folder")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("where", ["new/" + "n" * 300, "n" * 300 + "/new", "n" * 300])
def test_out_dir_with_a_name_too_long_leaves_nothing(tmp_path, capsys, where):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / where], capsys)
    assert_one_line_error(code, err, "too long")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where nobody may create files")
def test_out_dir_where_nothing_can_be_created(capsys):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", "/proc/onnxrap-out"], capsys)
    assert_one_line_error(code, err, "/proc", "cannot write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_dir_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", locked / "out"], capsys)
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, "locked", "cannot write")
    assert not any(locked.iterdir())


def test_a_failure_while_writing_leaves_no_file_and_no_folder(tmp_path, capsys, monkeypatch):
    import onnxrap.viz

    calls = []

    def failing_savefig(path, *args, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        Path(path).write_bytes(b"png")

    monkeypatch.setattr(onnxrap.viz, "save_explanation_figure", failing_savefig)
    out_dir = tmp_path / "new" / "out"
    code, out, err = run_cli(["explain", DIGITS, *DIGIT_IMAGES[:2], "-o", out_dir], capsys)
    errors = [line for line in err.splitlines() if line.startswith("onnxrap: error: ")]
    assert code == 2 and errors == [err.strip().splitlines()[-1]] and "No space left on device" in errors[0]
    assert len(calls) == 2 and not (tmp_path / "new").exists()


# -- reports -------------------------------------------------------------------------------------------

def test_stderr_says_device_and_preprocessing_and_summary_records_the_options(tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 60, 3), dtype=np.uint8)).save(photo)
    code, out, err = run_cli(["explain", DIGITS, photo, "-o", tmp_path / "out", "--method", "rap,lrp-eps",
                          "--epsilon", "0.01", "--dtype", "float64", "--resize", "pad"], capsys)
    assert code == 0, err
    assert "device: cpu" in err and "preprocessing: 32x32, 1 channel(s)" in err and "resize pad" in err
    assert f"{photo}: colour dropped to grey" in err and "30x60 -> 32x32" in err and "padded" in err
    assert not any(line.startswith(("device", "preprocessing")) for line in out.splitlines())  # stdout: results
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dtype"] == "float64" and summary["method_options"] == {"rap": {}, "lrp-eps": {"epsilon": 0.01}}
    assert summary["preprocessing"]["resize"] == "pad" and summary["preprocessing"]["preset"] == "unit"
    assert summary["device"].startswith("cpu")
    assert all(m["float64"] for m in summary["inputs"][0]["methods"].values())  # what was used


def test_float32_run_records_float32(tmp_path, capsys):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path, "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dtype"] == "float32" and summary["preprocessing"]["resize"] == "center-crop"
    assert summary["inputs"][0]["methods"]["rap"]["float64"] is False


def test_many_methods_wrap_into_a_grid(tmp_path, capsys):
    chosen = "rap,rap-reference,lrp-eps,lrp-a1b0,lrp-a2b1,gradient,gradient-x-input,smoothgrad"
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path, "--method", chosen], capsys)
    assert code == 0, err
    figure = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]["figure"]
    width, height = Image.open(figure).size
    assert width <= 4 * 3.2 * 120 and height > 2 * 3.2 * 120  # 9 panels: rows of 4, three rows


# -- inspect and explain agree -----------------------------------------------------------------------------

def feature_map_model(path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3, 3], np.ones(18, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_inspect_refuses_what_explain_refuses(tmp_path, capsys):
    model = feature_map_model(tmp_path / "seg.onnx")
    code, out, err = run_cli(["inspect", model], capsys)
    assert code == 2
    assert "explainable: no (output y has shape (1, 2, 8, 8), not a vector of class scores per sample)" in out
    np.save(tmp_path / "x.npy", np.ones((1, 1, 8, 8), np.float32))
    code, out, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "output y has shape (1, 2, 8, 8), not a vector of class scores per sample")


# -- smaller things -------------------------------------------------------------------------------------------

def test_a_folder_given_as_the_model(tmp_path, capsys):
    code, out, err = run_cli(["explain", tmp_path, DIGIT_IMAGES[0], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, f"{tmp_path}: is a folder, not a file")


def test_labels_file_with_the_wrong_number_of_lines(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("zero\none\ntwo\n")
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--labels",
                          tmp_path / "labels.txt"], capsys)
    assert_one_line_error(code, err, "labels.txt: 3 labels, but the model has 10 classes")
    assert not (tmp_path / "out").exists()


def test_nan_input_names_the_file_without_a_warning(tmp_path, capsys):
    x = np.zeros((1, 1, 32, 32), np.float32)
    x[0, 0, 3, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    code, out, err = run_cli(["explain", DIGITS, tmp_path / "bad.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "bad.npy", "NaN or Inf")


def test_a_preset_that_does_not_fit_the_model(tmp_path, capsys):
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--preset", "imagenet"],
                         capsys)
    assert_one_line_error(code, err, "the preset imagenet has 3 channels; the model takes 1")


def test_16_bit_image_on_the_command_line(tmp_path, capsys):
    pixels = np.asarray(Image.open(DIGIT_IMAGES[0]).convert("L")).astype(np.uint16) * 257
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    code, out8, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "a"], capsys)
    code16, out16, err16 = run_cli(["explain", DIGITS, tmp_path / "deep.png", "-o", tmp_path / "b"], capsys)
    assert code == code16 == 0, err16
    assert "16-bit grey" in err16
    logit = lambda folder: json.loads((tmp_path / folder / "summary.json").read_text())["inputs"][0]["target_logit"]  # noqa: E731
    # Equal up to resampling 128x128 -> 32x32: the 8-bit path rounds the resized pixels to whole levels.
    assert logit("b") == pytest.approx(logit("a"), rel=3e-3)


def test_inspect_and_explain_agree_on_an_integer_input(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("MatMul", ["f", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], np.ones(6, np.float32))])
    path = tmp_path / "ints.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    code, out, err = run_cli(["inspect", path], capsys)
    assert code == 2 and "explainable: no (input x is not a float tensor (INT64))" in out
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    code, out, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "input x is not a float tensor (INT64)")


def test_numbered_names_never_take_another_inputs_name(tmp_path):
    # The same file twice beside a file whose stem is already what the second copy would be numbered,
    # and two stems that differ only in case (one file on macOS and Windows).
    x, x2, upper = tmp_path / "x.png", tmp_path / "x-2.png", tmp_path / "X.png"
    names = input_stems([x, x, x2, upper])
    assert names == ["x", "x-2", "x-2-2", "X-3"]


class RecordedBar:
    """tqdm as explain uses it, recording what it was told."""

    made = []

    def __init__(self, total, disable=None, **kw):
        self.total, self.disable, self.done, self.written = total, disable, 0, []
        RecordedBar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.done += n

    def write(self, text, file=None):
        self.written.append(text)


@pytest.mark.parametrize("quiet", [False, True])
def test_explain_counts_every_explanation_on_its_progress_bar(tmp_path, capsys, monkeypatch, quiet):
    import tqdm

    monkeypatch.setattr(tqdm, "tqdm", RecordedBar)
    RecordedBar.made.clear()
    paths = copies(tmp_path, "a.png", "b.png", "c.png")
    code, out, err = run_cli(["explain", DIGITS, *paths, "--method", "rap,gradient", "--batch-size", 2,
                          "-o", tmp_path / "out"] + (["--quiet"] if quiet else []), capsys)
    assert code == 0, err
    (bar,) = RecordedBar.made
    assert bar.total == bar.done == 3 * 2  # inputs x methods, counted as they finish
    assert bar.disable is (True if quiet else None)  # None: tqdm shows it on a terminal only
    assert any(text.startswith("device: ") for text in bar.written)  # notes go above the bar, not through it
