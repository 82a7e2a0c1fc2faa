"""The public composite builder (onnxrap.methods): methods built from rules without private names,
and wrappers (SmoothGrad, integrated gradients, times input) around any method."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxrap import Explainer, InputError, methods
from onnxrap.rules.linear import AlphaBeta, Epsilon


def linear_model(w):
    """(N, 4) -> Gemm(W: 4 x 2, no bias): the logits are exactly linear in the input."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W"], ["logits"])], "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_composite_from_a_base_equals_the_preset_it_spells_out(golden):
    ex, case = golden("inception_mini")
    mine = methods.Composite({"dense": Epsilon(0.1), "conv": AlphaBeta(1)}, base="lrp-eps", name="mine")
    assert mine.seed_kind == "logit"  # the base's seed
    got = ex.explain(case["x"], method=mine)
    want = ex.explain(case["x"], method="lrp-preset-a")
    np.testing.assert_array_equal(got.relevance, want.relevance)
    assert got.method == "mine"


def test_a_registered_composite_takes_options_by_name(golden, monkeypatch):
    ex, case = golden("mlp")
    monkeypatch.setitem(methods.FACTORIES, "my-eps", lambda epsilon=0.5: methods.Composite(
        {"linear": Epsilon(epsilon)}, base="lrp-eps", name="my-eps", options={"epsilon": epsilon}))
    assert methods.split_options(["my-eps"], {"epsilon": 0.25}) == {"my-eps": {"epsilon": 0.25}}
    got = ex.explain(case["x"], method="my-eps", epsilon=0.25)
    np.testing.assert_array_equal(got.relevance, ex.explain(case["x"], method="lrp-eps", epsilon=0.25).relevance)
    assert got.method == "my-eps(epsilon=0.25)"


def test_lrp_presets_keep_their_epsilon(golden):
    ex, case = golden("mlp")  # dense ops only: the preset's epsilon rule is everywhere
    small = ex.explain(case["x"], method="lrp-preset-b", epsilon=0.01)
    large = ex.explain(case["x"], method="lrp-preset-b", epsilon=10.0)
    assert small.method == "lrp-preset-b(epsilon=0.01)" and large.method == "lrp-preset-b(epsilon=10.0)"
    assert not np.allclose(small.relevance, large.relevance)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rules={"cnov": AlphaBeta(1)}), "no op has the rule key 'cnov'"),
    (dict(rules={}, seed="half"), "seed"),
    (dict(rules={}, base="smoothgrad"), "base must be a composite"),
    (dict(rules={}, base="nope"), "unknown method"),
])
def test_composite_refuses_what_cannot_work(kwargs, message):
    with pytest.raises(InputError, match=message):
        methods.Composite(**kwargs)


def test_rule_keys_name_every_kind_and_position():
    keys = methods.rule_keys()
    assert {"conv.head", "conv.input", "dense.head", "dense.input", "conv", "dense", "linear", "tail",
            "batchnorm", "maxpool", "avgpool", "add", "concat", "activation", "scale", "identity", "shape"} <= keys
    # every key a registered method uses is one of them
    for name in methods.FACTORIES:
        m = methods.get(name)
        inner = getattr(m, "inner", m)
        for flow in getattr(m, "flows", {}).values():
            assert set(flow.rules) <= keys, name
        assert set(inner.rules) <= keys, name


def test_a_method_object_passes_through_get_but_takes_no_options():
    m = methods.get("rap")
    assert methods.get(m) is m
    with pytest.raises(InputError, match="constructor"):
        methods.get(m, epsilon=1.0)


def test_smoothgrad_wraps_any_method(golden):
    ex, case = golden("inception_mini")
    rap = ex.explain(case["x"], method="rap").relevance
    # without noise every copy is the input itself: the mean is rap's relevance
    still = ex.explain(case["x"], method=methods.SmoothGrad(methods.get("rap"), samples=3, noise=0.0)).relevance
    np.testing.assert_allclose(still, rap, rtol=1e-5, atol=1e-6 * np.abs(rap).max())
    named = ex.explain(case["x"], method="smoothgrad", of="rap", samples=2, noise=0.1)
    assert named.method == "smoothgrad(samples=2, noise=0.1, seed=0, of=rap)"
    assert not np.allclose(named.relevance, rap)


def test_integrated_gradients_wraps_any_method_at_its_path_points():
    w = np.array([[1.0, 0.0], [-2.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
    ex = Explainer(linear_model(w))
    x = np.array([[0.5, 1.0, -2.0, 0.25]], dtype=np.float32)
    # one path point, at x / 2: gradient x input there is w * x / 2, and IG multiplies by x - 0
    got = ex.explain(x, target=0, method="integrated-gradients", of="gradient-x-input", steps=1).relevance
    np.testing.assert_allclose(got[0], w[:, 0] * x[0] ** 2 / 2, rtol=1e-6)
    # of the gradient (the default) it is plain integrated gradients: w * x on a linear model
    ig = ex.explain(x, target=0, method="integrated-gradients", steps=4).relevance
    np.testing.assert_allclose(ig[0], w[:, 0] * x[0], rtol=1e-6)
    assert ex.explain(x, target=0, method="integrated-gradients").method == \
        "integrated-gradients(steps=32, baseline=0.0)"  # the gradient is not named: labels stay as they were


def test_times_input_wraps_any_method(golden):
    ex, case = golden("mlp")
    rap = ex.explain(case["x"], method="rap").relevance
    got = ex.explain(case["x"], method=methods.TimesInput(methods.get("rap"))).relevance
    np.testing.assert_allclose(got, rap * case["x"], rtol=1e-6)
