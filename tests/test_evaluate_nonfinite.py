"""``onnxrap evaluate``: a method whose maps are NaN or Inf (lrp-eps with a tiny epsilon on a deep
network) is reported as not evaluated, in every output, and the other methods go on."""
import json

import numpy as np
import pytest

from helpers import DIGITS
from onnxrap import methods
from onnxrap.cli import main
from onnxrap.rules import Rule


class Overflow(Rule):
    """What float32 overflow does to a rule's output: Inf where the relevance is not zero."""

    def __call__(self, op, ctx, R):
        x = ctx[op.inputs[0]]
        return [np.where(x != 0, np.inf, 0.0).astype(x.dtype) * np.sign(R.sum())]


@pytest.fixture
def overflowing():
    methods.register("test-overflow")(lambda: methods.Composite({"conv.input": Overflow()}, base="lrp-eps",
                                                                 name="test-overflow"))
    yield "test-overflow"
    del methods.FACTORIES["test-overflow"]


def test_a_method_with_non_finite_maps_is_reported_not_fatal(tmp_path, capsys, overflowing):
    out = tmp_path / "eval"
    code = main(["evaluate", str(DIGITS), str(DIGITS.parent / "digits_holdout.npz"), "--limit", "3",
                 "--methods", f"rap,{overflowing},gradient", "--sanity", "2", "--sanity-steps", "2",
                 "--sanity-classes", "3", "--fractions", "0,0.1,all", "--perturbations", "min", "-o", str(out),
                 "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"rap", "gradient"}
    assert results["failed"] == {overflowing: f"method {overflowing} gave NaN or Inf relevance for 3 of 3 inputs"}
    assert set(results["sanity"]["methods"]) == {"rap", "gradient"}
    assert "NaN or Inf relevance for 2 of 2 inputs" in results["sanity"]["failed"][overflowing]
    table = (out / "table.md").read_text()
    assert f"**Not evaluated:** {overflowing}: method {overflowing} gave NaN" in table
    assert f"**Not checked:** {overflowing}:" in table
    assert f"{overflowing:<22} not evaluated: method {overflowing} gave NaN" in captured.out
    assert overflowing not in (out / "results.csv").read_text()


def test_evaluate_fails_when_no_method_can_be_evaluated(tmp_path, capsys, overflowing):
    code = main(["evaluate", str(DIGITS), str(DIGITS.parent / "digits_holdout.npz"), "--limit", "2",
                 "--methods", overflowing, "--fractions", "0,all", "--perturbations", "min", "-o", str(tmp_path),
                 "--quiet"])
    assert code == 2
    assert f"no method could be evaluated: method {overflowing} gave NaN or Inf" in capsys.readouterr().err
