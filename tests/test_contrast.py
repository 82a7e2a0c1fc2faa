"""Class-contrastive relevance (``contrast=``): the target's relevance minus its dual's, rescaled.

What is conserved: the target's walk sums to logit_t and the dual's walk to
``w . logits`` (rap: exactly); the dual's relevance is rescaled to the target's
sum, so a contrastive map sums to 0.
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

    rap (A1, one Gemm): target 0 gives C = x * w_0 = (1, 2); class 2 gives (0, 2).
    ``contrast=2``: (1, 2) - 3/2 (0, 2) = (1, -1).  ``contrast="others"``: the dual's seed is
    (0, 1/2, 1/2), so C = x * (1, 0) = (1, 0), summing to 1 = (0 + 2) / 2, rescaled to 3:
    (1, 2) - 3 (1, 0) = (-2, 2).
    """
    ex = Explainer(gemm_model([[1, 1], [2, -1], [0, 1]]), dtype="float64")
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_allclose(ex.explain(x, target=0).relevance, [[1, 2]])
    np.testing.assert_allclose(ex.explain(x, target=0, contrast=2).relevance, [[1, -1]])
    np.testing.assert_allclose(ex.explain(x, target=0, contrast="others").relevance, [[-2, 2]])


@pytest.mark.parametrize("method", ["rap", "rap-reference", "rap-paper", "lrp-a2b1", "lrp-eps"])
def test_contrast_class_is_target_minus_rescaled_class(digits, method):
    ex, x = digits
    plain = ex.explain(x, method=method)
    t = plain.target
    c = (t + 3) % 10
    against = ex.explain(x, target=c, method=method)
    for i in range(len(x)):
        one = ex.explain(x[i:i + 1], target=int(t[i]), method=method, contrast=int(c[i])).relevance[0]
        expected = plain.relevance[i] - against.relevance[i] * plain.relevance[i].sum() / against.relevance[i].sum()
        np.testing.assert_allclose(one, expected, rtol=1e-9, atol=1e-12)
        assert abs(one.sum()) <= 1e-9 * np.abs(one).sum()


def test_rap_parts_sum_to_the_logits(digits):
    """rap: contrast c is z_t (R_t / z_t - R_c / z_c), each part summing to its own logit."""
    ex, x = digits
    plain = ex.explain(x)
    t = plain.target
    for i in range(len(x)):
        c = (int(t[i]) + 5) % 10
        z = plain.logits[i]
        against = ex.explain(x[i:i + 1], target=c).relevance[0]
        # the logits are ONNX Runtime's (float32); the rules run in float64
        np.testing.assert_allclose(plain.relevance[i].sum(), z[t[i]], rtol=1e-5)
        np.testing.assert_allclose(against.sum(), z[c], rtol=1e-5)
        got = ex.explain(x[i:i + 1], contrast=c).relevance[0]
        expected = plain.relevance[i] - against * z[t[i]] / z[c]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3 * np.abs(got).max())


@pytest.mark.parametrize("method, options", [("gradient-x-input", {}),
                                             ("integrated-gradients", {"steps": 4})])
def test_others_is_the_mean_of_the_other_classes(digits, method, options):
    """Gradient methods are linear in the seed: the dual of ``others`` is the mean over the other classes."""
    ex, x = digits
    x = x[:2]
    per_class = np.stack([ex.explain(x, target=k, method=method, **options).relevance for k in range(10)])
    got = ex.explain(x, target=[1, 7], method=method, contrast="others", **options)
    for i, t in enumerate([1, 7]):
        dual = np.delete(per_class[:, i], t, axis=0).mean(axis=0)
        expected = per_class[t, i] - dual * per_class[t, i].sum() / dual.sum()
        np.testing.assert_allclose(got.relevance[i], expected, rtol=1e-8, atol=1e-10)
    assert "contrast=others" in got.method


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
    assert entry["contrast"] == 8 and abs(entry["methods"]["rap"]["relevance_sum"]) < 1e-4
    assert main(["explain", str(DIGITS), str(image), "-o", str(tmp_path), "--contrast", "others"]) == 0
    assert "rather than the others" in capsys.readouterr().out
    assert main(["explain", str(DIGITS), str(image), "-o", str(tmp_path), "--contrast", "eight"]) == 2
    assert "--contrast 'eight'" in capsys.readouterr().err
