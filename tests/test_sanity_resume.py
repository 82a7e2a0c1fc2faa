"""``onnxrap evaluate --sanity``: each method's sanity checks are stored as soon as they are done, and
``--resume`` reuses them while the model, the inputs and the checks' settings are the same (a long run on a
large model that is stopped keeps what it finished)."""
import json

from helpers import DIGITS
from onnxrap.cli import main
from onnxrap.evaluate.sanity import Sanity


def evaluate(out, *extra):
    return main(["evaluate", str(DIGITS), str(DIGITS.parent / "digits_holdout.npz"), "--limit", "2",
                 "--methods", "rap,gradient", "--sanity", "2", "--sanity-classes", "3", "--fractions", "0,all",
                 "--perturbations", "min", "-o", str(out), "--quiet", *extra])


def test_sanity_results_are_stored_per_method_and_reused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "eval"
    assert evaluate(out, "--sanity-steps", "2") == 0
    first = json.loads((out / "results.json").read_text())["sanity"]
    assert sorted(p.name for p in (out / "sanity_methods").iterdir()) == ["gradient.json", "rap.json"]
    calls = []
    real = Sanity.run_method
    monkeypatch.setattr(Sanity, "run_method", lambda self, m, o=None: calls.append(m) or real(self, m, o))
    assert evaluate(out, "--sanity-steps", "2", "--resume") == 0
    assert calls == [] and json.loads((out / "results.json").read_text())["sanity"] == first
    assert evaluate(out, "--sanity-steps", "3", "--resume") == 0  # other checks: computed again
    assert calls == ["rap", "gradient"]
    assert len(json.loads((out / "results.json").read_text())["sanity"]["depths"]) == 3
    assert evaluate(out, "--sanity-steps", "3") == 0  # without --resume: computed again
    assert calls == ["rap", "gradient"] * 2
