"""A conserving method whose sum misses the logit even after the float64 redo is said, never silent."""
import json

import numpy as np

from helpers import DIGIT_IMAGES, DIGITS, run_cli
from onnxrap import Explainer, methods
from onnxrap.rules import Rule


class Halves(Rule):
    """Loses half of the relevance at every activation: a rule set that does not conserve."""

    def __call__(self, op, ctx, R):
        return [R * 0.5]


def _leaky_rap():
    return methods.Composite({"activation": Halves()}, base="rap", name="leaky-rap", conserves=True)


def test_a_sum_that_misses_in_float64_is_reported_per_sample():
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    for dtype in ("float32", "float64"):
        exp = Explainer(DIGITS, dtype=dtype).explain(x, method=_leaky_rap())
        assert exp.unconserved == [0, 1]
        assert exp.recomputed == ([] if dtype == "float64" else [0, 1])  # float32 tried float64 first


def test_plain_rap_conserves_and_says_so(tmp_path, capsys):
    exp = Explainer(DIGITS).explain(np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32))
    assert exp.unconserved == []
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path, "--quiet"], capsys)
    assert code == 0 and "warning" not in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["inputs"][0]["methods"]["rap"]["conserved"] is True


def test_a_method_that_promises_no_sum_is_not_said_to_conserve(tmp_path, capsys):
    code, _, _ = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "--method", "rap,gradient-x-input", "-o", tmp_path,
                          "--quiet"], capsys)
    assert code == 0
    methods_of = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]["methods"]
    assert methods_of["rap"]["conserved"] is True and methods_of["gradient-x-input"]["conserved"] is None


def test_the_cli_warns_when_a_registered_method_misses(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(methods.FACTORIES, "leaky-rap", _leaky_rap)
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "--method", "leaky-rap", "-o", tmp_path, "--quiet"],
                           capsys)
    assert code == 0
    assert "leaky-rap: warning: the relevance sums to" in err and "even in float64" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["inputs"][0]["methods"]["leaky-rap"]["conserved"] is False


class Overflows(Rule):
    """Divides by zero at every activation: relevance that is Inf or NaN."""

    def __call__(self, op, ctx, R):
        return [R / (R * 0)]


def test_relevance_that_overflows_is_reported_per_sample_without_numpy_warnings(recwarn):
    broken = methods.Composite({"activation": Overflows()}, base="lrp-eps", name="overflowing")
    exp = Explainer(DIGITS).explain(np.random.default_rng(2).random((2, 1, 32, 32), dtype=np.float32), method=broken)
    assert exp.nonfinite == [0, 1]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert Explainer(DIGITS).explain(np.random.default_rng(2).random((2, 1, 32, 32), dtype=np.float32),
                                     method="lrp-eps").nonfinite == []


def test_the_cli_warns_about_relevance_that_overflows(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(methods.FACTORIES, "overflowing",
                        lambda: methods.Composite({"activation": Overflows()}, base="lrp-eps", name="overflowing"))
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "--method", "overflowing,rap", "-o", tmp_path,
                            "--quiet"], capsys)
    assert code == 0
    assert "overflowing: warning: the relevance holds NaN or Inf" in err and "RuntimeWarning" not in err
    entry = json.loads((tmp_path / "summary.json").read_text())["inputs"][0]["methods"]
    assert entry["overflowing"]["finite"] is False and entry["rap"]["finite"] is True


def test_features_by_samples_in_float32_are_checked_per_sample():
    """Gemm transA reads the input as (features, samples): the float32 check summed the wrong axis (a
    broadcast error) and ONNX Runtime's batches would have cut the features apart."""
    from test_rules_dense import mlp

    model, _ = mlp(2, n_in=40, trans_a=True)
    x = np.random.default_rng(3).random((40, 5), dtype=np.float32)  # 40 features > one ORT batch of 16
    exp = Explainer(model, dtype="float32").explain(x, target=np.array([0, 1, 2, 3, 0]))
    assert exp.relevance.shape == (40, 5) and exp.unconserved == [] and exp.nonfinite == []
    np.testing.assert_allclose(exp.relevance.sum(axis=0), exp.target_logit, rtol=1e-4)


class OverflowsInFloat32(Rule):
    """What float32 overflow does to a conserving method's sum (Inf - Inf): NaN in float32 only."""

    def __call__(self, op, ctx, R):
        return [R * np.nan if R.dtype == np.float32 else R]


def test_a_conserving_method_that_overflows_in_float32_is_redone_in_float64():
    """A NaN sum misses the logit like any other: the samples are redone in float64 (timm's ResNeSt at
    64 px overflowed float32 rap and came back NaN, where float64 conserves)."""
    method = methods.Composite({"activation": OverflowsInFloat32()}, base="rap", name="rap-float32-overflow",
                               conserves=True)
    x = np.random.default_rng(3).random((2, 1, 32, 32), dtype=np.float32)
    exp = Explainer(DIGITS).explain(x, method=method)
    assert exp.recomputed == [0, 1] and exp.unconserved == [] and exp.nonfinite == []
    np.testing.assert_allclose(exp.relevance.sum(axis=(1, 2, 3)), exp.target_logit, rtol=1e-5)
