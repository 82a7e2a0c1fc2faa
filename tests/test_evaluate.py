"""Region perturbation (docs/rules.md, "Evaluation"): metric code on cases whose answer is known by construction,
and ``onnxrap evaluate`` end to end on the bundled digits model."""
import csv
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import DIGIT_IMAGES, DIGITS, ROOT, run_cli
from onnxrap import Explainer
from onnxrap.cli import main
from onnxrap.capture import batches
from onnxrap.errors import InputError
from onnxrap.evaluate import (Evaluation, Grid, Scorer, Settings, aopc, channels_first, concentration, perturb,
                              rank_pixels, run, shuffle_rng)

HOLDOUT = ROOT / "models" / "digits_holdout.npz"


def linear_model(w, bias, softmax=False):
    """(N, 1, 4, 4) -> Flatten -> Gemm(W: 16 x classes) [-> Softmax]: the logits are linear in the pixels."""
    classes = w.shape[1]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "W", "b"], ["logits"])]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(3)
    w0 = rng.permutation(np.linspace(-1.5, 2.0, 16))  # distinct weights of both signs
    w = np.stack([w0, np.zeros(16)], axis=1)
    x = rng.permutation(np.linspace(0.1, 1.0, 16)).reshape(1, 1, 4, 4).astype(np.float32)
    logit0 = float(w0 @ x.ravel())
    bias = np.array([0.0, logit0 - 0.5])  # class 1: a constant just below class 0's logit
    return Explainer(linear_model(w, bias)), x, w0, bias


def test_gradient_x_input_on_a_linear_model_is_w_times_x(linear_case):
    explainer, x, w0, _ = linear_case
    exp = explainer.explain(x, target=0, method="gradient-x-input")
    np.testing.assert_allclose(exp.heatmap.ravel(), w0 * x.ravel(), rtol=1e-6, atol=1e-7)


def test_min_removal_lowers_the_logit_by_exactly_the_removed_contributions(linear_case):
    explainer, x, w0, bias = linear_case
    xs = x.ravel().astype(np.float64)
    grid = Grid.parse("0,1,2,3,5,all", "counts")
    ev = Evaluation(explainer, x, [0], grid, perturbations=("min",))
    result = ev.run_method("gradient-x-input")
    relevance = w0 * xs
    logit0 = float(w0 @ xs)
    low = xs.min()
    for removal, sign in (("positive", 1), ("negative", -1)):
        order = np.argsort(-sign * relevance)
        order = order[sign * relevance[order] > 0]  # only pixels of that sign, most extreme first
        curve = result["curves"][removal]["min"]
        for point, k in zip(curve, grid.pixels(16, len(order))):
            removed = order[:k]
            expected = logit0 - float(np.sum(w0[removed] * (xs[removed] - low)))
            assert point["pixels"] == k
            assert point["pixels_changed"] == k - int(np.argmin(xs) in removed)  # the minimum pixel stays put
            assert point["logit"] == pytest.approx(expected, abs=1e-5)
            assert point["accuracy"] == float(expected > bias[1])
        # the curve moves the way the sign says: positive removal only lowers the logit, negative only raises it
        logits = [p["logit"] for p in curve]
        assert all(sign * (b - a) <= 1e-6 for a, b in zip(logits, logits[1:]))
    assert result["curves"]["positive"]["min"][0]["accuracy"] == 1.0
    assert result["curves"]["positive"]["min"][-1]["accuracy"] == 0.0  # removing every promoter flips it
    assert result["curves"]["negative"]["min"][-1]["accuracy"] == 1.0
    # AOPC: the mean over the steps of logit(0) - logit(k)
    pos = [p["logit"] for p in result["curves"]["positive"]["min"]]
    assert result["aopc"]["positive"]["min"]["logit"] == pytest.approx(np.mean(pos[0] - np.array(pos)))


def test_scorer_reads_the_logits_under_a_final_softmax(linear_case):
    _, x, w0, bias = linear_case
    w = np.stack([w0, np.zeros(16)], axis=1)
    scorer = Scorer(Explainer(linear_model(w, bias, softmax=True)), batch_size=1)
    got = scorer.logits(np.repeat(x, 3, axis=0))
    np.testing.assert_allclose(got, np.tile([w0 @ x.ravel(), bias[1]], (3, 1)), rtol=1e-5)


def test_rank_pixels_orders_each_sign_and_skips_the_rest():
    r = np.array([0.0, 3.0, -1.0, 0.5, -4.0, 0.0, 3.0, -0.2])
    assert rank_pixels(r, "positive").tolist() == [1, 6, 3]  # ties: lower index first
    assert rank_pixels(r, "negative").tolist() == [4, 2, 7]


@pytest.mark.parametrize("removal", ["positive", "negative"])
@pytest.mark.parametrize("perturbation", ["min", "shuffle"])
def test_removal_touches_only_pixels_of_its_sign(removal, perturbation):
    rng = np.random.default_rng(1)
    relevance = rng.standard_normal(100) * (rng.random(100) > 0.3)  # 30% exact zeros
    flat = rng.random((3, 100)) + 0.5  # no pixel equals the minimum by chance
    order = rank_pixels(relevance, removal)
    for k in (0, 1, 7, len(order)):
        out = perturb(flat, order, k, perturbation, shuffle_rng(0, 0, removal, k))
        changed = np.flatnonzero(np.any(out != flat, axis=0))
        allowed = relevance > 0 if removal == "positive" else relevance < 0
        assert np.all(allowed[changed])
        assert set(changed) <= set(order[:k])
        if perturbation == "min" and k:
            assert np.all(out[:, order[:k]] == flat.min())
            assert len(changed) == k


def test_shuffle_keeps_the_multiset_of_pixels_and_moves_channels_together():
    rng = np.random.default_rng(2)
    flat = rng.random((3, 64))
    order = rng.permutation(64)[:20]
    out = perturb(flat, order, 20, "shuffle", np.random.default_rng(5))
    untouched = np.setdiff1d(np.arange(64), order)
    np.testing.assert_array_equal(out[:, untouched], flat[:, untouched])
    before = sorted(map(tuple, flat[:, order].T))  # each pixel's channels as one tuple
    after = sorted(map(tuple, out[:, order].T))
    assert before == after
    assert np.any(out != flat)  # 20 pixels: a permutation that fixes all of them is vanishingly unlikely
    # the same seed gives the same image; a different one does not
    again = perturb(flat, order, 20, "shuffle", np.random.default_rng(5))
    np.testing.assert_array_equal(out, again)


def test_channels_first_round_trips_both_layouts():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    flat, back = channels_first(x[0], 1)
    assert flat.shape == (3, 20)
    np.testing.assert_array_equal(back(flat), x[0])
    nhwc = x.transpose(0, 2, 3, 1)
    flat2, back2 = channels_first(nhwc[0], -1)
    np.testing.assert_array_equal(flat2, flat)  # the same pixels in the same order
    np.testing.assert_array_equal(back2(flat2), nhwc[0])


def test_concentration_hand_computed_on_3x3():
    r = np.array([[0, 5, -1],
                  [3, 0, 2],
                  [-2, 4, 1]], dtype=float)
    # ranked: 5 (0,1), 4 (2,1), 3 (1,0), 2 (1,2), 1 (2,2); squared distances to (0,1): 0, 4, 2, 2, 5
    d_k, dist = concentration(r, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(d_k[:5], [0, 4 / 2, 6 / 3, 8 / 4, 13 / 5])
    assert np.isnan(d_k[5])  # only 5 positive pixels
    sq2, sq5 = np.sqrt(2), np.sqrt(5)
    np.testing.assert_allclose(dist[:5], [0, 1, (2 + sq2) / 3, (2 + 2 * sq2) / 4, (2 + 2 * sq2 + sq5) / 5])


def test_grid_parse_and_pixel_counts():
    g = Grid.parse("2000,all,4000", "counts")
    assert g.values == (0, 2000, 4000, "all") and g.labels == ["0", "2000", "4000", "all"]
    assert g.pixels(50176, 3000) == [0, 2000, 3000, 3000]  # capped at the pixels of that sign
    f = Grid.parse("0,0.1,0.5", "fractions")
    assert f.pixels(1024, 400) == [0, 102, 400]
    for bad, kind in (("0,1.5", "fractions"), ("0,2.5", "counts"), ("0,x", "counts"), ("0", "counts")):
        with pytest.raises(InputError):
            Grid.parse(bad, kind)


def test_aopc_is_the_mean_drop():
    assert aopc([[2.0, 1.0, 0.0]]) == pytest.approx(1.0)
    assert aopc([[1.0, 1.0], [3.0, 1.0]]) == pytest.approx((0 + 0 + 0 + 2) / 4)


@pytest.mark.slow
def test_evaluate_end_to_end_on_the_digits_model(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "eval"
    args = ["evaluate", DIGITS, HOLDOUT, "--limit", 20, "--methods", "rap,gradient-x-input",
            "--fractions", "0,0.05,0.2,all", "-o", out_dir]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    for name in ("results.csv", "results.json", "table.md", "perturbation_min.png", "perturbation_shuffle.png",
                 "concentration.png", "methods/rap.json", "methods/gradient-x-input.json"):
        assert (out_dir / name).is_file(), name
    results = json.loads((out_dir / "results.json").read_text())
    assert results["images"]["evaluated"] == 20
    assert results["settings"]["grid"]["labels"] == ["0", "0.05", "0.2", "all"]
    for method in ("rap", "gradient-x-input"):
        r = results["methods"][method]
        for removal in ("positive", "negative"):
            for perturbation in ("min", "shuffle"):
                curve = r["curves"][removal][perturbation]
                assert curve[0]["accuracy"] == 1.0 and curve[0]["pixels"] == 0
                assert len(curve) == 4
        assert r["concentration"][0]["D_K"] == 0.0  # K = 1: the top pixel is at distance 0 from itself
    rap = results["methods"]["rap"]["curves"]
    # the paper's claim, on this model: removing all positive pixels hurts, removing all negative ones does not
    assert rap["positive"]["min"][-1]["accuracy"] < 0.5 < rap["negative"]["min"][-1]["accuracy"]
    with open(out_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} >= {"accuracy", "logit", "probability", "aopc_logit", "aopc_probability",
                                          "D_K"}
    table = (out_dir / "table.md").read_text()
    assert "Positive removal" in table and "Negative removal" in table and "| rap |" in table

    # --resume reuses both methods' results and writes the same numbers
    code, out, err = run_cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert err.count("skipped (--resume)") == 2
    assert json.loads((out_dir / "results.json").read_text())["methods"] == results["methods"]

    # results made by other onnxrap code are stale, even under the same method names
    import onnxrap.evaluate.command as command
    monkeypatch.setattr(command, "code_hash", lambda: "other code")
    code, out, err = run_cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert "skipped (--resume)" not in err and err.count("by other onnxrap code") == 2


@pytest.mark.slow
def test_evaluate_image_folders_with_class_folders_and_csv(tmp_path, capsys):
    data = tmp_path / "data"
    for image in DIGIT_IMAGES:  # digit_<label>_<k>.png
        label = image.stem.split("_")[1]
        (data / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, data / label / image.name)
    code, out, err = run_cli(["evaluate", DIGITS, data, "--methods", "gradient-x-input,random", "--fractions", "0,0.1",
                              "--perturbations", "min", "-o", tmp_path / "a", "--quiet"], capsys)
    assert code == 0, err
    assert err == ""  # --quiet
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["images"]["labels"] == "folder names"
    assert results["images"]["total"] == len(DIGIT_IMAGES) == results["images"]["evaluated"]
    control = results["methods"]["random"]  # a random ranking: about half the pixels on each side
    assert 0.3 < control["pixels_positive"] / 1024 < 0.7 and 0.3 < control["pixels_negative"] / 1024 < 0.7

    # a CSV that gives one image a wrong label: that image is dropped as misclassified
    flat = tmp_path / "flat"
    flat.mkdir()
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("filename,label\n")
        for i, image in enumerate(DIGIT_IMAGES):
            shutil.copy(image, flat / image.name)
            label = int(image.stem.split("_")[1])
            f.write(f"{image.name},{(label + 1) % 10 if i == 0 else label}\n")
    code, out, err = run_cli(["evaluate", DIGITS, flat, "--labels-csv", tmp_path / "labels.csv", "--methods", "rap",
                              "--fractions", "0,0.1", "-o", tmp_path / "b", "--quiet"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["images"]["dropped_misclassified"] == 1
    assert results["images"]["evaluated"] == len(DIGIT_IMAGES) - 1


@pytest.mark.parametrize("extra, message", [
    (["--methods", "nope"], "unknown method"),
    (["--grid", "0,10,x"], "bad step"),
    (["--fractions", "0,2"], "--fractions"),
    (["--limit", "0"], "--limit"),
    (["--perturbations", "blur"], "unknown perturbation"),
    (["--alpha", "2", "--methods", "rap"], "--alpha is not an option"),
])
def test_evaluate_errors_are_one_line(tmp_path, capsys, extra, message):
    code, out, err = run_cli(["evaluate", DIGITS, HOLDOUT, "-o", tmp_path / "x", *extra], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_evaluate_rejects_an_npz_without_x(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 1, 32, 32), np.float32))
    code, out, err = run_cli(["evaluate", DIGITS, tmp_path / "bad.npz", "-o", tmp_path / "x"], capsys)
    assert code == 2 and "no array named x" in err


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_the_old_steps_flag_names_its_successors(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as exit_:  # argparse's own errors exit inside parse_args
        main([command, str(DIGITS), str(HOLDOUT if command == "evaluate" else DIGIT_IMAGES[0]),
              "--steps", "8", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "--ig-steps" in err and "--grid" in err
    assert not (tmp_path / "x").exists()


def test_ig_steps_reaches_integrated_gradients_in_evaluate(tmp_path, capsys):
    code, out, err = run_cli(["evaluate", DIGITS, HOLDOUT, "--limit", 2, "--methods", "integrated-gradients",
                              "--ig-steps", 3, "--grid", "0,10,all", "--perturbations", "min", "--quiet",
                              "-o", tmp_path / "x"], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "x" / "results.json").read_text())
    assert results["methods"]["integrated-gradients"]["options"] == {"steps": 3}
    assert results["settings"]["grid"]["labels"] == ["0", "10", "all"]


@pytest.mark.slow
def test_run_takes_settings_without_the_command_line(tmp_path, capsys):
    settings = Settings(DIGITS, HOLDOUT, tmp_path / "api", methods=("gradient", "centre"),
                        method_options={"gradient": {}}, grid=Grid.parse("0,0.5", "fractions"),
                        perturbations=("shuffle",), limit=3, quiet=True)
    assert run(settings) == 0
    assert capsys.readouterr().err == ""  # quiet: no notes, no progress bars
    results = json.loads((tmp_path / "api" / "results.json").read_text())
    assert list(results["methods"]) == ["gradient", "centre"]
    assert results["settings"]["perturbations"] == ["shuffle"]
    with pytest.raises(InputError, match="--limit"):
        run(Settings(DIGITS, HOLDOUT, tmp_path / "bad", limit=0))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("n, size, fixed, expected", [
    (5, 2, None, [(2, 2), (2, 2), (1, 1)]),
    (5, 9, None, [(5, 5)]),
    (5, 9, 2, [(2, 2), (2, 2), (2, 1)]),  # a fixed batch of 2 ignores the size; the last piece is padded
])
def test_batches_for_onnx_runtime(n, size, fixed, expected):
    x = np.arange(n * 3).reshape(n, 3)
    pieces = list(batches(x, size, fixed))
    assert [(len(p), real) for p, real in pieces] == expected
    np.testing.assert_array_equal(np.concatenate([p[:real] for p, real in pieces]), x)
    last, real = pieces[-1]
    assert (last[real:] == x[-1]).all()  # padding repeats the last sample


def test_scorer_on_a_fixed_batch_model_drops_the_padding(linear_case):
    _, x, w0, bias = linear_case
    model = linear_model(np.stack([w0, np.zeros(16)], axis=1), bias)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # exported for batches of exactly 2
    scorer = Scorer(Explainer(model), batch_size=64)
    xs = np.concatenate([x, 2 * x, 3 * x])
    got = scorer.logits(xs)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[:, 0], [(k * x.ravel()) @ w0 for k in (1, 2, 3)], rtol=1e-5)
