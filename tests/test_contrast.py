"""Class-contrastive relevance (``contrast=``): the seed explains the target's logit minus the dual's.

What is conserved: a conserving method (rap) sums to the contrastive score ``z_t - w . z``
(``w = e_c``, or the other classes equally weighted for ``others``).  Methods linear in the
seed (LRP-epsilon, alpha-beta, the gradients) give exactly the target's map minus the dual's.
rap keeps the signs of the head's contributions to that score (docs/rules.md, contrast).
"""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import DIGIT_IMAGES, DIGITS
from onnxrap import Explainer
from onnxrap.cli import main
from onnxrap.errors import InputError


@pytest.fixture(scope="module")
def digits():
    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:3]
    return Explainer(DIGITS, dtype="float64"), x


def sums(relevance):
    return relevance.reshape(len(relevance), -1).sum(axis=1)


def gemm_model(w):
    """logits = x @ w.T: one Gemm, no bias."""
    w = np.asarray(w, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["logits"], name="gemm", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, w.shape[0]])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_rap_by_hand():
    """x = (1, 2); class rows (1, 1), (2, -1), (0, 1): logits 3, 0, 2.

    rap (one Gemm): target 0 gives C = x * w_0 = (1, 2).  ``contrast=1`` explains z_0 - z_1 = 3
    with the row w_0 - w_1 = (-1, 2): C = (-1, 4), kept signed (|C| rescaled would give
    (0.6, 2.4): input 0 speaks for class 1, not for class 0).  ``contrast=2``: w_0 - w_2 = (1, 0),
    C = (1, 0).  ``contrast="others"``: w_0 - (w_1 + w_2) / 2 = (0, 1), C = (0, 2) = 3 - (0 + 2) / 2.
    """
    ex = Explainer(gemm_model([[1, 1], [2, -1], [0, 1]]), dtype="float64")
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(ex.explain(x, target=0).relevance, [[1, 2]])
    np.testing.assert_allclose(ex.explain(x, target=0, contrast=1).relevance, [[-1, 4]])
    np.testing.assert_allclose(ex.explain(x, target=0, contrast=2).relevance, [[1, 0]])
    np.testing.assert_allclose(ex.explain(x, target=0, contrast="others").relevance, [[0, 2]])
    for method in ("rap-reference", "gradient-x-input"):  # one Gemm: both are x * (w_0 - w_1)
        np.testing.assert_allclose(ex.explain(x, target=0, contrast=1, method=method).relevance, [[-1, 4]],
                                   atol=1e-5)


@pytest.mark.parametrize("contrast", [1, "others"])
def test_rap_conserves_the_contrastive_score(digits, contrast):
    """rap sums to z_t - w . z on every digit and target (float64 rules; ONNX Runtime's float32 logits)."""
    ex, x = digits
    batch = np.repeat(x, 10, axis=0)
    targets = np.tile(np.arange(10), len(x))
    if contrast == 1:
        batch, targets = batch[targets != 1], targets[targets != 1]
    got = ex.explain(batch, target=targets, contrast=contrast)
    z = got.logits
    rows = np.arange(len(targets))
    dual = z[:, 1] if contrast == 1 else (z.sum(axis=1) - z[rows, targets]) / 9
    np.testing.assert_allclose(sums(got.relevance), z[rows, targets] - dual, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.target, targets)


@pytest.mark.parametrize("method, options", [("lrp-eps", {}), ("lrp-a2b1", {}), ("gradient", {}),
                                             ("gradient-x-input", {}), ("integrated-gradients", {"steps": 4})])
def test_linear_methods_give_target_minus_dual(digits, method, options):
    """Methods linear in the seed: ``contrast=c`` is R_t - R_c, ``others`` is R_t minus the mean of the others'
    (LRP's seed is weighted by the logits, so its dual's maps enter as they are)."""
    ex, x = digits
    x = x[:2]
    per_class = np.stack([ex.explain(x, target=k, method=method, **options).relevance for k in range(10)])
    t = np.array([1, 7])
    for contrast in (4, "others"):
        got = ex.explain(x, target=t, method=method, contrast=contrast, **options)
        for i in range(len(x)):
            dual = per_class[4, i] if contrast == 4 else np.delete(per_class[:, i], t[i], axis=0).mean(axis=0)
            expected = per_class[t[i], i] - dual
            np.testing.assert_allclose(got.relevance[i], expected, rtol=1e-7, atol=1e-9 * np.abs(expected).max())
        assert f"contrast={contrast}" in got.method


@pytest.mark.parametrize("method", ["rap-paper", "lrp-eps", "lrp-a2b1"])
def test_logit_seeded_methods_on_one_gemm(method):
    """Methods seeded with the logit get ``(e_t - w) * z``; on one Gemm each is linear in its seed, so
    ``contrast=2`` is the map of target 0 minus the map of target 2 (logits 3 and 2, as above)."""
    ex = Explainer(gemm_model([[1, 1], [2, -1], [0, 1]]), dtype="float64")
    x = np.array([[1.0, 2.0]], np.float32)
    plain = [ex.explain(x, target=t, method=method).relevance for t in (0, 2)]
    got = ex.explain(x, target=0, contrast=2, method=method).relevance
    np.testing.assert_allclose(got, plain[0] - plain[1], atol=1e-9)
    assert not np.allclose(got, plain[0])


def test_compiled_engine_explains_contrast_eagerly(digits):
    """The compiled graph seeds a class index: a contrast runs on the eager engine and says so."""
    _, x = digits
    eager = Explainer(DIGITS, dtype="float64").explain(x, contrast="others").relevance
    onnx_engine = Explainer(DIGITS, dtype="float64", engine="onnx")
    got = onnx_engine.explain(x, contrast="others").relevance
    np.testing.assert_array_equal(got, eager)
    assert "contrast" in onnx_engine.engine_note


def test_contrast_maps_depend_on_the_target(digits):
    """The point of the option: rap's plain maps hardly change with the target, contrastive ones do."""
    ex, x = digits
    batch = np.repeat(x[:1], 10, axis=0)

    def mean_abs_correlation(maps):
        c = np.corrcoef(maps.reshape(10, -1))
        return np.abs(c[np.triu_indices(10, 1)]).mean()

    plain = ex.explain(batch, target=np.arange(10)).heatmap
    contrasted = ex.explain(batch, target=np.arange(10), contrast="others").heatmap
    assert mean_abs_correlation(plain) > 0.9
    assert mean_abs_correlation(contrasted) < 0.7


@pytest.mark.parametrize("contrast, message", [(3, "is the target of input 0"), (10, "out of range"),
                                               (-1, "out of range"), ("rest", "none, others or a class")])
def test_bad_contrast(digits, contrast, message):
    ex, x = digits
    with pytest.raises(InputError, match=message):
        ex.explain(x[:1], target=3, contrast=contrast)


def test_cli_contrast(tmp_path, capsys):
    image = next(p for p in DIGIT_IMAGES if p.stem.startswith("digit_3"))
    assert main(["explain", str(DIGITS), str(image), "-o", str(tmp_path), "--contrast", "8"]) == 0
    out = capsys.readouterr().out
    assert "explained 3 rather than 8" in out
    entry = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]
    assert entry["contrast"] == 8 and entry["contrast_score"] != entry["target_logit"]
    assert abs(entry["methods"]["rap"]["relevance_sum"] - entry["contrast_score"]) < 1e-3 * abs(entry["contrast_score"])
    assert main(["explain", str(DIGITS), str(image), "-o", str(tmp_path), "--contrast", "others"]) == 0
    assert "rather than the others" in capsys.readouterr().out
    assert main(["explain", str(DIGITS), str(image), "-o", str(tmp_path), "--contrast", "eight"]) == 2
    assert "--contrast 'eight'" in capsys.readouterr().err
