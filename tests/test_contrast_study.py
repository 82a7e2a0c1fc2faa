"""tools/contrast_study.py: the inhibitors' share of R+ is the only thing its methods change.

At share 1 the study's rule is rap's rap.hidden (to rounding), for a plain seed it is rap; at other shares a contrast's
relevance still sums to its score (the per-sign rescale carries the sums) and the maps differ.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import contrast_study  # noqa: E402

from onnxrap import Explainer  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x = np.load(ROOT / "models" / "digits_holdout.npz")["x"][:3]
    return Explainer(str(ROOT / "models" / "digits_cnn.onnx")), np.repeat(x, 2, axis=0), np.array([0, 3, 1, 7, 2, 9])


def test_share_one_is_rap(digits):
    explainer, x, targets = digits
    name = contrast_study._register(1.0)
    study = explainer.explain(x, target=targets, method=name, contrast="others").relevance
    rap = explainer.explain(x, target=targets, method="rap", contrast="others").relevance
    scale = np.abs(rap).max()
    np.testing.assert_allclose(study, rap, rtol=0, atol=1e-6 * scale)  # R+ Zb / (Za + Zb) / Zb written as R+ / (Za + Zb)


@pytest.mark.parametrize("lam", [0.0, -1.0])
def test_other_shares_conserve_the_score_and_change_the_map(digits, lam):
    explainer, x, targets = digits
    e = explainer.explain(x, target=targets, method=contrast_study._register(lam), contrast="others")
    rap = explainer.explain(x, target=targets, method="rap", contrast="others").relevance
    logits = explainer.explain(x, target=targets, method="gradient").logits.astype(np.float64)
    score = logits[np.arange(len(x)), targets] - (logits.sum(axis=1) - logits[np.arange(len(x)), targets]) / 9
    np.testing.assert_allclose(e.relevance.reshape(len(x), -1).sum(axis=1, dtype=np.float64), score, rtol=1e-4, atol=1e-5)
    assert not np.allclose(e.relevance, rap, atol=1e-3)


def test_plain_seeds_get_rap(digits):
    explainer, x, targets = digits
    study = explainer.explain(x, target=targets, method=contrast_study._register(-1.0)).relevance
    assert np.array_equal(study, explainer.explain(x, target=targets, method="rap").relevance)
