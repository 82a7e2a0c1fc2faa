"""A new user's sweep of every command (issue 16): what gave a traceback, an internal error, a misleading
message or a silent choice, each as the user met it."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import DIGIT_IMAGES, DIGITS, ROOT, assert_one_line_error, run_cli
from onnx_helpers import const, node

LABELS = ROOT / "models" / "digits_labels.txt"


def save_model(path, nodes, inputs, outputs, initializers=()):
    """A float32 model from ``(name, shape)`` pairs, saved to ``path``."""
    graph = helper.make_graph(nodes, "sweep",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def assert_nothing_written(out_dir):
    assert not out_dir.exists() or not any(out_dir.iterdir())


# -- images ------------------------------------------------------------------------------------------

def test_an_image_over_pillows_size_guard_is_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 128x128 digit is then past twice the guard
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, DIGIT_IMAGES[0].name, "too large")
    assert "internal error" not in err
    assert_nothing_written(tmp_path / "out")


def test_a_folder_stands_for_its_images(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i, source in enumerate(DIGIT_IMAGES[:3]):
        (folder / ("more" if i == 2 else "") / source.name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(DIGIT_IMAGES[3].read_bytes())
    np.save(folder / "more" / "z.npy", np.zeros((1, 32, 32), np.float32))
    code, out, err = run_cli(["explain", DIGITS, folder, DIGIT_IMAGES[4], "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    explained = [line.split(":")[0] for line in out.strip().splitlines()]
    assert explained == [str(folder / DIGIT_IMAGES[0].name), str(folder / DIGIT_IMAGES[1].name),
                         str(folder / "more" / DIGIT_IMAGES[2].name), str(folder / "more" / "z.npy"),
                         str(DIGIT_IMAGES[4])]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["inputs"]) == 5


@pytest.mark.parametrize("name", ["empty", "empty.png"])
def test_a_folder_without_images_is_one_line(tmp_path, capsys, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "notes.txt").write_text("not an image")
    code, _, err = run_cli(["explain", DIGITS, tmp_path / name, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, name, "folder without images or arrays")
    assert_nothing_written(tmp_path / "out")


# -- classes on the command line --------------------------------------------------------------------------

def test_target_by_label_name(tmp_path, capsys):
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--labels", labels,
                              "--target", "seven", "--quiet"], capsys)
    assert code == 0, err
    assert "explained 7 (seven)" in out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]["target"] == 7


@pytest.mark.parametrize("target, fragments", [("elephant", ["--target 'elephant'", "label name"]),
                                                ("-1", ["target -1", "out of range"]),
                                                ("10", ["target 10", "out of range"])])
def test_a_target_that_names_no_class(tmp_path, capsys, target, fragments):
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--labels", LABELS,
                            "--target", target], capsys)
    assert_one_line_error(code, err, *fragments)
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("flag", ["--target", "--contrast"])
def test_a_label_name_of_several_classes_is_refused(tmp_path, capsys, flag):
    labels = tmp_path / "names.txt"
    labels.write_text("\n".join(["odd" if k % 2 else "even" for k in range(10)]))
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--labels", labels,
                            flag, "odd"], capsys)
    assert_one_line_error(code, err, f"{flag} 'odd'", "1, 3, 5, 7, 9", "index")


def test_a_method_named_twice_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--method",
                            "rap,gradient,rap"], capsys)
    assert_one_line_error(code, err, "--method", "rap more than once")
    assert_nothing_written(tmp_path / "out")


# -- models ------------------------------------------------------------------------------------------

def test_a_model_without_a_data_input(tmp_path, capsys):
    model = save_model(tmp_path / "constant.onnx", [node("Relu", ["w"], ["y"])], [("w", [1, 4])], [("y", [1, 4])],
                       [const("w", np.ones((1, 4)))])
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    code, _, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "constant.onnx", "no data input")
    assert "pick one" not in err


def test_the_output_chosen_among_several_is_said(tmp_path, capsys):
    w = const("w", np.arange(12).reshape(3, 4) / 10)
    model = save_model(tmp_path / "two.onnx", [node("MatMul", ["x", "w"], ["scores"]), node("Relu", ["x"], ["feat"])],
                       [("x", [1, 3])], [("scores", [1, 4]), ("feat", [1, 3])], [w])
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    code, out, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    assert "2 outputs (scores, feat); explaining scores" in err and "--output" in err
    code, out, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out2", "--output", "scores",
                              "--quiet"], capsys)
    assert code == 0 and "outputs" not in err
    code, out, _ = run_cli(["inspect", model], capsys)
    assert "first of 2 outputs: scores, feat" in out


def test_shapes_read_with_free_dimensions_as_question_marks():
    from onnxrap.graph import shown_shape

    assert shown_shape([None, 3, 224, 224]) == "[?, 3, 224, 224]"
    assert shown_shape(None) == "unknown"


# -- compile ------------------------------------------------------------------------------------------

def test_compile_into_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "dir").mkdir()
    code, _, err = run_cli(["compile", DIGITS, "-o", tmp_path / "dir"], capsys)
    assert_one_line_error(code, err, "dir", "is a folder")
    assert not any((tmp_path / "dir").iterdir())


def test_compile_into_a_missing_folder_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["compile", DIGITS, "-o", tmp_path / "gone" / "x.onnx"], capsys)
    assert_one_line_error(code, err, "x.onnx", "cannot write")
    assert not (tmp_path / "gone").exists()


def test_compile_size_that_contradicts_the_model(tmp_path, capsys):
    code, _, err = run_cli(["compile", DIGITS, "-o", tmp_path / "x.onnx", "--size", "64"], capsys)
    assert_one_line_error(code, err, "--size 64x64", "32x32")
    assert not (tmp_path / "x.onnx").exists()


# -- evaluate and audit ------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_an_npz_with_no_inputs(tmp_path, capsys, command):
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 1, 32, 32), np.float32))
    code, _, err = run_cli([command, DIGITS, tmp_path / "none.npz", "-o", tmp_path / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, "none.npz", "no inputs")


# -- method options and what a run can meet -------------------------------------------------------------

@pytest.mark.parametrize("method, flag", [("smoothgrad", "--noise"), ("integrated-gradients", "--baseline"),
                                          ("lrp-eps", "--epsilon")])
def test_a_method_option_that_is_not_a_number(tmp_path, capsys, method, flag):
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--method", method,
                            flag, "nan"], capsys)
    assert_one_line_error(code, err, flag, "finite", "nan")
    assert "the input contains" not in err  # not blamed on the image


def test_a_model_whose_output_is_nan_is_named(tmp_path, capsys):
    w = np.ones((3, 4))
    w[0, 0] = np.nan
    model = save_model(tmp_path / "broken.onnx", [node("MatMul", ["x", "w"], ["y"])], [("x", [1, 3])],
                       [("y", [1, 4])], [const("w", w)])
    np.save(tmp_path / "x.npy", np.ones((1, 3), np.float32))
    code, _, err = run_cli(["explain", model, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "broken.onnx", "output contains NaN or Inf")
    assert "disagrees" not in err
    assert_nothing_written(tmp_path / "out")


def test_running_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    from onnxrap.api import Explainer

    def too_much(*args, **kw):
        raise MemoryError("Unable to allocate 745. GiB")

    monkeypatch.setattr(Explainer, "explain", too_much)
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out"], capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("onnxrap: error: out of memory") and "745. GiB" in last and "--batch-size" in last
    assert "internal error" not in err and "Traceback" not in err
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("command", ["evaluate", "audit"])
def test_a_method_named_twice_is_named(tmp_path, capsys, command):
    code, _, err = run_cli([command, DIGITS, ROOT / "models" / "images", "-o", tmp_path / "out", "--methods",
                            "rap,gradient,rap"], capsys)
    assert_one_line_error(code, err, "--methods names rap more than once")


def test_an_npz_given_to_explain_points_to_evaluate_and_audit(tmp_path, capsys):
    np.savez(tmp_path / "set.npz", x=np.zeros((2, 1, 32, 32), np.float32))
    code, _, err = run_cli(["explain", DIGITS, tmp_path / "set.npz", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "set.npz", ".npy", "evaluate", "audit")


def test_a_model_whose_external_weights_are_missing(tmp_path, capsys):
    onnx.save(onnx.load(DIGITS), tmp_path / "split.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.onnx.data", size_threshold=0)
    (tmp_path / "split.onnx.data").unlink()
    code, _, err = run_cli(["inspect", tmp_path / "split.onnx"], capsys)
    assert_one_line_error(code, err, "split.onnx", "external weights", "split.onnx.data")
    assert "not an ONNX model" not in err


def test_perturbation_plot_leaves_out_a_removal_that_removes_nothing(tmp_path, monkeypatch):
    """rap contrast=others on EfficientNet-Lite1 had no negative pixel: its flat 'negative removal' curve
    read as the ideal one. It is not drawn, and the legend says why."""
    from onnxrap.evaluate import plots

    point = {"accuracy": 1.0, "logit": 2.0, "probability": 0.5}
    curves = {removal: {"min": [point, point]} for removal in ("positive", "negative")}
    method = lambda label, negative: {"label": label, "pixels_positive": 10.0, "pixels_negative": negative,  # noqa: E731
                                      "curves": curves, "concentration": []}
    results = {"settings": {"grid": {"labels": ["0", "all"], "kind": "counts"}, "perturbations": ["min"]},
               "images": {"evaluated": 2},
               "methods": {"a": method("a", 4.0), "b contrast=others": method("b contrast=others", 0.0)}}
    figures = []
    monkeypatch.setattr("onnxrap.viz.atomic_write", lambda path, write: figures.append(write.__defaults__[0]))
    plots.save_plots(tmp_path, results)
    perturbation = figures[0]
    for ax in perturbation.axes:
        styles = sorted(line.get_linestyle() for line in ax.get_lines())
        assert styles == ["-", "-", "--"]  # a: both removals; b: positive only
    labels = [t.get_text() for t in perturbation.legends[0].get_texts()]
    assert "b contrast=others\n(no negative pixels)" in labels and "a" in labels


@pytest.mark.parametrize("n_methods", [2, 4, 9])
def test_sanity_plot_legend_covers_no_bar(tmp_path, monkeypatch, n_methods):
    """The class-sensitivity legend sat over the last method's bars (four methods on EfficientNet-Lite1)."""
    from onnxrap.evaluate.sanity import save_sanity_plot

    point = {"spearman_abs": 0.5, "spearman_signed": 0.5, "ssim": 0.5}
    method = {"cascade": [dict(point, depth=d) for d in (0, 1, 2)],
              "classes": {"top_vs_second": {"spearman_abs": 1.0}, "across": {"abs_pearson": 1.0}}}
    sanity = {"inputs": 1, "depths": [1, 2], "classes": 10, "methods": {f"m{i}": method for i in range(n_methods)}}
    figures = []
    monkeypatch.setattr("onnxrap.viz.atomic_write", lambda path, write: figures.append(write))
    save_sanity_plot(tmp_path / "sanity.png", sanity)
    fig = [cell.cell_contents for cell in figures[0].__closure__ if hasattr(cell.cell_contents, "axes")][0]
    fig.canvas.draw()
    bars_ax = fig.axes[3]
    legend = bars_ax.get_legend().get_window_extent()
    bars = [patch.get_window_extent() for patch in bars_ax.patches]
    assert len(bars) == 2 * n_methods
    assert not any(legend.overlaps(bar) for bar in bars)


def test_a_layout_that_does_not_fit_names_the_model_and_the_layout(tmp_path, capsys):
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path / "out", "--layout", "nhwc"], capsys)
    assert_one_line_error(code, err, DIGITS.name, "[?, 1, 32, 32] read as nhwc", "32 channels", "--layout")


@pytest.mark.parametrize("options, what", [(["--target", "7"], "logit"), (["--contrast", "others"], "logit difference")])
def test_the_score_a_map_sums_to_is_printed_when_it_is_not_the_predicted_logit(tmp_path, capsys, options, what):
    """rap's map sums to the explained score; with --target or --contrast that is not the predicted logit, which
    was the only number beside the figure's 'sum'."""
    code, out, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[2], "-o", tmp_path / "out", "--quiet", *options], capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]
    score = entry["contrast_score"] if "contrast_score" in entry else entry["target_logit"]
    assert f"({what} {score:.4g})" in out
    assert abs(entry["methods"]["rap"]["relevance_sum"] - score) < 1e-3 * max(1.0, abs(score))


def test_the_audit_page_says_which_heatmap_is_which_method(tmp_path, capsys):
    """The per-class means and the cards show one heatmap per method, named only on hover."""
    pytest.importorskip("jinja2")
    code, _, err = run_cli(["audit", DIGITS, ROOT / "models" / "digits_holdout.npz", "-o", tmp_path / "audit",
                            "--methods", "rap,gradient", "--limit", "6", "--faithfulness", "0", "--sanity", "0",
                            "--quiet"], capsys)
    assert code == 0, err
    page = (tmp_path / "audit" / "index.html").read_text()
    assert page.count("heatmap of rap, then gradient") == 2  # the per-class means and the cards
    assert "input [?, 1, 32, 32]" in page  # free dimensions as inspect writes them, not None


def test_the_ray_extra_can_join_a_cluster_from_outside():
    """README: `--ray ray://HEAD:10001` from outside the cluster. Ray Client needs ray[client] (grpcio); with
    ray[data] alone that command stopped at 'Ray Client requires pip package ray[client]'."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ray = [r for r in extras["ray"] if r.startswith("ray[")]
    assert ray and "client" in ray[0].split("]")[0] and "data" in ray[0].split("]")[0]


@pytest.mark.parametrize("command", ["explain", "evaluate", "audit"])
def test_label_metadata_that_does_not_name_every_class(tmp_path, capsys, command):
    """A model's onnxrap.labels with 9 names for 10 classes was used as it was: classes past the ninth went
    unnamed and the others could be named wrongly."""
    model = onnx.load(DIGITS)
    for p in model.metadata_props:
        if p.key == "onnxrap.labels":
            p.value = ",".join("abcdefghi")
    onnx.save(model, tmp_path / "nine.onnx")
    data = DIGIT_IMAGES[0] if command == "explain" else ROOT / "models" / "digits_holdout.npz"
    code, _, err = run_cli([command, tmp_path / "nine.onnx", data, "-o", tmp_path / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, "nine.onnx", "onnxrap.labels", "9 names", "10 classes", "--labels")
    code, _, err = run_cli(["explain", tmp_path / "nine.onnx", DIGIT_IMAGES[0], "-o", tmp_path / "out", "--quiet",
                            "--labels", ROOT / "models" / "digits_labels.txt"], capsys)
    assert code == 0, err  # --labels overrides the metadata


def test_webp_and_an_animated_gif_read_as_the_png_they_were_made_from(tmp_path, capsys):
    from PIL import Image

    source = Image.open(DIGIT_IMAGES[0])
    source.save(tmp_path / "digit.webp", lossless=True)
    other = Image.fromarray(255 - np.asarray(source.convert("L")))  # a second frame that would read differently
    source.convert("L").save(tmp_path / "digit.gif", save_all=True, append_images=[other])
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], tmp_path / "digit.webp", tmp_path / "digit.gif",
                            "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    assert f"{tmp_path / 'digit.gif'}: the first of its 2 frames" in err
    logits = [i["predicted_logit"] for i in json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"]]
    assert logits[1] == logits[0] and logits[2] == logits[0]


@pytest.mark.parametrize("batch_size", ["1", "16"])
def test_an_input_the_model_turns_into_nan_is_named(tmp_path, capsys, batch_size):
    fine, overflowing = tmp_path / "fine.npy", tmp_path / "overflowing.npy"
    np.save(fine, np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
    np.save(overflowing, np.full((1, 1, 32, 32), 3e38, np.float32))  # finite, but the convolutions overflow
    code, _, err = run_cli(["explain", DIGITS, fine, overflowing, "--batch-size", batch_size,
                            "-o", tmp_path / "out", "--quiet"], capsys)
    # with a batch of one, the first batch's notes (device, preprocessing) come before the error
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"onnxrap: error: {overflowing}: ") and "output contains NaN or Inf" in last
    assert str(fine) not in err


def test_the_api_says_which_sample_of_a_batch_turned_into_nan():
    from onnxrap import Explainer
    from onnxrap.errors import SampleError

    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    x[2] = 3e38
    with pytest.raises(SampleError, match="for input 2 of the batch") as caught:
        Explainer(DIGITS).explain(x)
    assert caught.value.samples == [2]


def test_a_negative_smoothgrad_noise_is_refused(tmp_path, capsys):
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "--method", "smoothgrad", "--noise", "-1",
                            "-o", tmp_path / "out", "--quiet"], capsys)
    assert_one_line_error(code, err, "noise >= 0", "-1")
