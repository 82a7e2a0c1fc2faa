"""Agreement with zennit, an independent PyTorch LRP library (fixtures: tools/make_zennit_fixtures.py).

Where zennit and onnxrap (docs/rules.md, lrp) differ by design the fixture holds the configuration in
which they must agree (tests/fixtures/zennit/README.md has the details):
- zennit merges BatchNormalization into the convolution before LRP, so LRP is
  compared on the BN-folded export (alpha-beta ignores a positive per-channel
  scale, so it agrees on the BN-kept export too);
- zennit's alpha-beta puts the bias into its denominators and adds a 1e-6
  stabilizer; onnxrap (the RAP authors' LRP) ignores the bias and divides
  safely: the ``*_nobias_sdiv`` arrays switch both off in zennit;
- zennit's alpha-beta shares one denominator between positive and negative
  inputs; onnxrap splits them (its golden ``lrp_a1b0`` on the signed-input MLP
  holds that), so alpha-beta is not compared on the dense network, whose first
  layer sees signed inputs.
"""
from pathlib import Path

import numpy as np
import pytest

from helpers import rel_l2
from onnxrap import Explainer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "zennit"
NETWORKS = ["dense", "conv_bn", "residual"]


def case(name):
    return dict(np.load(FIXTURES / f"{name}.npz"))


def explain(model_file, x, method, **options):
    return Explainer(FIXTURES / model_file, dtype="float64").explain(x, method=method, **options)


def model_for(data, key):
    return str(data[f"{key}__onnx"]).removeprefix("onnx=")


@pytest.mark.parametrize("name", NETWORKS)
def test_gradient(name):
    data = case(name)
    e = explain(model_for(data, "gradient"), data["x"], "gradient")
    np.testing.assert_array_equal(e.target, data["target"])
    assert rel_l2(e.relevance, data["gradient"]) < 1e-5


@pytest.mark.parametrize("name", NETWORKS)
def test_epsilon(name):
    data = case(name)
    # A convolution that reads the input gets z^B in onnxrap's LRP composites (docs/rules.md, lrp.input).
    key = "epsilon_sdiv" if name == "dense" else "zbox_epsilon_sdiv"
    e = explain(model_for(data, key), data["x"], "lrp-eps", epsilon=1e-6)
    assert rel_l2(e.relevance, data[key]) < 1e-5
    if name != "dense":
        # zennit's default Norm rule at the average pool adds 1e-6 to a window *mean*:
        # the results move by up to 5e-4 where a channel's mean is tiny.
        assert rel_l2(e.relevance, data["zbox_epsilon"]) < 2e-3


@pytest.mark.parametrize("name", ["conv_bn", "residual"])
@pytest.mark.parametrize("alpha", [1, 2])
@pytest.mark.parametrize("folded", [True, False])
def test_alpha_beta(name, alpha, folded):
    data = case(name)
    key = f"zbox_alpha{alpha}beta{alpha - 1}_nobias_sdiv"
    model = model_for(data, key) if folded else f"{name}.onnx"
    e = explain(model, data["x"], f"lrp-a{alpha}b{alpha - 1}")
    assert rel_l2(e.relevance, data[key]) < 1e-5
