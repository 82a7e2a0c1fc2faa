"""Hugging Face transformers' image classifiers, exported as users export them (tests/fixtures/hf, written by
``tools/hf_sweep.py --fixtures``; see the README there): transformers' own model code from small random configs,
through torch.onnx's TorchScript exporter or ``optimum-cli export onnx``.  Only onnx, onnxruntime and numpy are
needed: torch's logits and its float64 autograd gradient (computed before the export) are stored beside each model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import (assert_files_small, assert_logits_are_torchs, assert_one_line_error, assert_rap_conserves,
                     fixture_case, manifest_names, rel_l2, run_cli)
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.errors import InputError, UnsupportedOpsError
from onnxrap.graph import Graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["files"]
NAMES = manifest_names(FIXTURES)
EXPLAINED = [name for name in NAMES if MANIFEST[name]["refusal"] is None]
REFUSED = [name for name in NAMES if MANIFEST[name]["refusal"] is not None]


@pytest.fixture(params=EXPLAINED)
def case(request):
    return fixture_case(FIXTURES, request.param)


def test_every_file_is_small():
    assert_files_small(FIXTURES, NAMES, 1e6, 3e6)


def test_the_logits_are_onnx_runtimes_and_torchs(case):
    assert_logits_are_torchs(*case[1:])


def test_rap_conserves_the_logit_in_float32(case):
    assert_rap_conserves(*case[1:])


def test_the_gradient_is_torchs(case):
    """onnxrap's float64 gradient (its own forward from the input) against torch autograd's in float64."""
    _, path, data = case
    e = Explainer(path, dtype="float64").explain(data["x"], target=data["target"], method="gradient")
    assert rel_l2(e.relevance, data["torch_grad64"]) < 1e-5


def test_the_cli_explains_with_rap_and_gradient_x_input(case, tmp_path, capsys):
    """``onnxrap explain`` as the sweep runs it: rap's map sums to the logit in summary.json, and gradient x input
    is torch's gradient times the input."""
    _, path, data = case
    x = tmp_path / "x.npy"
    np.save(x, data["x"][:1])
    code, _, err = run_cli(["explain", path, x, "--method", "rap,gradient-x-input", "--save-npy", "--dtype",
                            "float64", "-o", tmp_path / "out", "--quiet"], capsys)
    assert code == 0, err
    entry = json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]
    assert entry["target"] == data["target"][0]
    assert entry["methods"]["rap"]["conserved"]
    assert entry["methods"]["rap"]["relevance_sum"] == pytest.approx(entry["target_logit"], rel=1e-6)
    gxi = np.load(entry["methods"]["gradient-x-input"]["npy"])
    assert rel_l2(gxi, data["torch_grad64"][0] * data["x"][0]) < 1e-5


@pytest.mark.parametrize("name", REFUSED)
def test_a_refusal_is_one_line_naming_the_nodes(name, tmp_path, capsys):
    _, path, data = fixture_case(FIXTURES, name)
    x = tmp_path / "x.npy"
    np.save(x, data["x"][:1])
    code, _, err = run_cli(["explain", path, x, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "unsupported ops in the data path", MANIFEST[name]["refusal"])
    assert not (tmp_path / "out").exists()


# -- optimum's free height and width ----------------------------------------------------------------------------

def test_optimum_leaves_channels_height_and_width_free():
    """What the fix below is for: Swin's window pads are computed from height and width, which fold into
    constants only at one size; the graph as exported refuses them."""
    model = onnx.load(FIXTURES / "swin_optimum.onnx")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch_size", "num_channels", "height", "width"]
    with pytest.raises(UnsupportedOpsError, match=r"Pad \(Pad: input 1 .* depends on the input's shape"):
        Graph(FIXTURES / "swin_optimum.onnx")
    graph = Graph(FIXTURES / "swin_optimum.onnx", sample_shape=(3, 32, 32))
    assert graph.unsupported == [] and graph.input_shape == (None, 3, 32, 32)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][2:] == ["height", "width"]


def test_a_free_sample_size_is_fixed_by_the_first_input_and_kept():
    _, path, data = fixture_case(FIXTURES, "swin_optimum")
    ex = Explainer(path)
    e = ex.explain(data["x"], target=data["target"], method="rap")
    np.testing.assert_allclose(e.logits, data["torch_logits"], rtol=0, atol=1e-4 * np.abs(e.logits).max())
    assert ex.input_shape == (None, 3, 32, 32)
    with pytest.raises(InputError, match=r"expects shape \('\?', 3, 32, 32\), got \(1, 3, 48, 48\)"):
        ex.explain(np.zeros((1, 3, 48, 48), np.float32))


def test_a_callers_model_is_not_changed_by_fixing_its_sample_size():
    model = onnx.load(FIXTURES / "swin_optimum.onnx")
    before = model.SerializeToString()
    data = fixture_case(FIXTURES, "swin_optimum")[2]
    Explainer(model).explain(data["x"][:1], method="gradient")
    assert model.SerializeToString() == before


# -- transformers' EfficientNet: an average pool whose window is wider than its input ---------------------------

def test_a_ceil_mode_pool_wider_than_its_input_averages_what_it_covers():
    """transformers' EfficientNet pools with ``nn.AvgPool2d(hidden_dim, ceil_mode=True)``: a 1280-wide window over a
    7 x 7 map, one output that averages the whole map (onnxrap crashed with an internal error).  The same network
    with GlobalAveragePool is the reference: logits, rap and gradient alike."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    head = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)

    def network(pool):
        nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]), pool,
                 node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "head"], ["logits"], transB=1)]
        return make_model(nodes, [("x", [None, 3, 5, 5])], [("logits", None)], [const("w", w), const("head", head)])

    wide = network(node("AveragePool", ["r"], ["p"], kernel_shape=[9, 9], strides=[9, 9], ceil_mode=1))
    reference = network(node("GlobalAveragePool", ["r"], ["p"]))
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(wide, x)[0], run(reference, x)[0], rtol=1e-6)
    got = {m: Explainer(wide, dtype="float64").explain(x, method=m) for m in ("rap", "gradient")}
    for method, e in got.items():
        want = Explainer(reference, dtype="float64").explain(x, method=method)
        np.testing.assert_allclose(e.relevance, want.relevance, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["rap"].relevance.reshape(2, -1).sum(axis=1), got["rap"].target_logit, rtol=1e-6)


# -- optimum's class names: config.json beside model.onnx --------------------------------------------------------

def optimum_folder(tmp_path, id2label):
    """A folder as ``optimum-cli export onnx`` writes it: model.onnx and transformers' config.json."""
    (tmp_path / "model.onnx").write_bytes((FIXTURES / "swin_optimum.onnx").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin", "id2label": id2label}))
    return tmp_path / "model.onnx"


def test_class_names_come_from_optimums_config_json(tmp_path, capsys):
    path = optimum_folder(tmp_path, {str(k): f"kind {k}" for k in reversed(range(10))})
    assert Explainer(path).labels == [f"kind {k}" for k in range(10)]
    data = fixture_case(FIXTURES, "swin_optimum")[2]
    np.save(tmp_path / "x.npy", data["x"][:1])
    code, out, err = run_cli(["explain", path, tmp_path / "x.npy", "--target", "kind 3", "-o", tmp_path / "out",
                              "--quiet"], capsys)
    assert code == 0, err
    assert "predicted 8 (kind 8)" in out and "explained 3 (kind 3)" in out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["inputs"][0]["target_label"] == "kind 3"


def test_a_config_json_naming_other_classes_is_one_line(tmp_path, capsys):
    path = optimum_folder(tmp_path, {"0": "cat", "1": "dog"})
    data = fixture_case(FIXTURES, "swin_optimum")[2]
    np.save(tmp_path / "x.npy", data["x"][:1])
    code, _, err = run_cli(["explain", path, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "config.json id2label", "2 names", "10 classes", "--labels")
    broken = optimum_folder(tmp_path, {"0": "cat", "2": "dog"})
    code, _, err = run_cli(["explain", broken, tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "config.json: id2label is not a map of class indices")


def test_a_config_json_without_id2label_names_nothing(tmp_path):
    path = optimum_folder(tmp_path, None)
    assert Explainer(path).labels is None
