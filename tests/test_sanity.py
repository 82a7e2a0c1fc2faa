"""Sanity checks (onnxrap/evaluate/sanity.py): the similarity measures by hand, the randomised
models, and ``onnxrap evaluate --sanity`` end to end."""
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import DIGITS
from onnxrap import Explainer
from onnxrap.cli import main
from onnxrap.evaluate.sanity import cascade_depths, linear_ops_top_down, randomised, ranks, spearman, ssim
from onnxrap.graph import Graph


def test_ranks_average_ties():
    np.testing.assert_array_equal(ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(ranks([[3, 1], [3, 3]]), [3, 1, 3, 3])


def test_spearman_by_hand():
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): deviations (-1.5, 0, 0, 1.5) and (-1.5, -.5, .5, 1.5),
    # so 4.5 / sqrt(4.5 * 5) (SciPy's spearmanr gives 0.9486832980505139)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0  # a constant map has no ranking


def test_ssim_by_hand():
    rng = np.random.default_rng(0)
    a = rng.random((9, 11))
    assert ssim(a, a) == pytest.approx(1)
    # one 7x7 window, both constant (0 and 0.5): (c1 * c2) / ((0.25 + c1) * c2) = c1 / (0.25 + c1)
    c1 = 0.01 ** 2
    assert ssim(np.zeros((7, 7)), np.full((7, 7), 0.5)) == pytest.approx(c1 / (0.25 + c1))
    # scikit-image 0.25's structural_similarity(a, b, data_range=1.0) on these arrays
    b = np.clip(a + 0.3 * rng.standard_normal((9, 11)), 0, 1)
    assert ssim(a, b) == pytest.approx(0.7487558242744489, abs=1e-12)


def test_cascade_depths():
    assert cascade_depths(3, 8) == [1, 2, 3]
    depths = cascade_depths(60, 8)
    assert depths[0] == 1 and depths[-1] == 60 and len(depths) <= 8 and depths == sorted(set(depths))


def test_randomised_models_are_valid_and_change_only_the_top_ops():
    graph = Graph(DIGITS)
    before = onnx.ModelProto()
    before.CopyFrom(graph.model)
    top = linear_ops_top_down(graph)
    assert top[0].op_type == "Gemm" and len(top) == 7
    model = randomised(graph, top[:2], seed=0)
    onnx.checker.check_model(model, full_check=True)
    assert graph.model == before  # the original is untouched
    nodes = {n.name: n for n in model.graph.node}
    touched = {name for op in top[:2] for name in nodes[op.name].input[1:]}
    old = {i.name: numpy_helper.to_array(i) for i in before.graph.initializer}
    for init in model.graph.initializer:
        new = numpy_helper.to_array(init)
        assert new.shape == old[init.name].shape and new.dtype == old[init.name].dtype
        assert np.array_equal(new, old[init.name]) == (init.name not in touched), init.name
    again = randomised(graph, top[:2], seed=0)
    assert again == model  # seeded
    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:2]
    e = Explainer(model).explain(x)  # loads through the graph layer and explains
    assert np.all(np.isfinite(e.relevance))
    assert not np.allclose(e.logits, Explainer(DIGITS).explain(x).logits)


def test_evaluate_with_sanity_checks(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", str(DIGITS), str(DIGITS.parent / "digits_holdout.npz"), "--limit", "3",
                 "--methods", "rap,gradient-x-input", "--contrast", "none,others", "--sanity", "2",
                 "--sanity-steps", "3", "--sanity-classes", "4", "--fractions", "0,0.1,all",
                 "--perturbations", "min", "-o", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"rap", "rap contrast=others", "gradient-x-input",
                                       "gradient-x-input contrast=others"}
    sanity = results["sanity"]
    assert sanity["depths"] == [1, 3, 7] and sanity["inputs"] == 2 and sanity["classes"] == 4
    for label, r in sanity["methods"].items():
        assert [p["depth"] for p in r["cascade"]] == [0, 1, 3, 7]
        assert r["cascade"][0]["ssim"] == 1.0
        for p in r["cascade"][1:]:
            assert all(-1 <= p[k] <= 1 for k in ("spearman_abs", "spearman_signed", "ssim")), (label, p)
    # rap's maps hardly change with the class; with contrast they do (tools/class_sensitivity.py)
    assert sanity["methods"]["rap"]["classes"]["across"]["abs_pearson"] > 0.8
    assert sanity["methods"]["rap contrast=others"]["classes"]["across"]["abs_pearson"] < 0.8
    rows = (out / "sanity.csv").read_text().splitlines()
    assert rows[0] == "method,check,step,layer,similarity,value" and len(rows) == 1 + 4 * (4 * 3 + 3 + 4)
    table = (out / "table.md").read_text()
    assert "## Sanity checks" in table and "| rap contrast=others |" in table
    assert (out / "sanity.png").stat().st_size > 10000


@pytest.mark.parametrize("args, message", [(["--contrast", "3"], "none and/or others"),
                                           (["--sanity", "-1"], "--sanity must be")])
def test_evaluate_bad_sanity_options(tmp_path, capsys, args, message):
    code = main(["evaluate", str(DIGITS), str(DIGITS.parent / "digits_holdout.npz"), "-o", str(tmp_path), *args])
    assert code == 2 and message in capsys.readouterr().err


def test_a_refused_randomised_model_is_reported(monkeypatch):
    """A randomised model onnxrap declines to explain is a step marked refused, not a crash."""
    from onnxrap.errors import ModelError
    from onnxrap.evaluate.sanity import Sanity, sanity_markdown

    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:1]
    sanity = Sanity(Explainer(DIGITS), x, [0], steps=2, classes=2)
    real = Sanity._cascade_explainer

    def refuse_the_last(self, depth):
        if depth == self.depths[-1]:
            raise ModelError("<model>: the captured forward pass disagrees")
        return real(self, depth)

    monkeypatch.setattr(Sanity, "_cascade_explainer", refuse_the_last)
    r = sanity.run_method("gradient")
    assert r["cascade"][-1]["ssim"] is None and "disagrees" in r["cascade"][-1]["refused"]
    assert r["cascade"][1]["ssim"] is not None
    table = sanity_markdown({"inputs": 1, "depths": sanity.depths, "layers": ["a"] * 7, "classes": 2,
                             "methods": {"gradient": r}})
    assert "| refused |" in table and "k=7: <model>: the captured forward pass disagrees" in table
