"""The baselines: LRP composites and gradient methods (issue: baselines checked independently)."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import GOLDEN, rel_l2
from onnxrap import Explainer, InputError, methods


def random_input(case, seed=0):
    """A random input of the case's shape: no ties anywhere, so the model is differentiable at it."""
    return np.random.default_rng(seed).standard_normal(case["x"].shape).astype(np.float32)


def logits_of(name, x):
    sess = ort.InferenceSession(str(GOLDEN / name / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


@pytest.mark.parametrize("name", ["mlp", "inception_mini"])
def test_gradient_matches_finite_differences(golden, name):
    ex, case = golden(name)
    x = random_input(case)
    grad = ex.explain(x, method="gradient")
    t = int(grad.target[0])
    rng = np.random.default_rng(1)
    h = 1e-3  # small enough to cross no ReLU kink, large enough for float32 logits
    flat = x.reshape(-1)
    for i in rng.choice(flat.size, 8, replace=False):
        step = np.zeros_like(flat)
        step[i] = h
        up, down = (logits_of(name, (flat + s).reshape(x.shape))[0, t] for s in (step, -step))
        fd = (up - down) / (2 * h)
        assert abs(fd - grad.relevance.reshape(-1)[i]) < 2e-3 * max(1.0, abs(fd)), (i, fd)


def test_gradient_x_input_is_gradient_times_input(golden):
    ex, case = golden("inception_mini")
    g = ex.explain(case["x"], method="gradient").relevance
    gxi = ex.explain(case["x"], method="gradient-x-input").relevance
    np.testing.assert_allclose(gxi, g * case["x"], rtol=1e-6, atol=1e-9)


def test_integrated_gradients_completeness(golden):
    ex, case = golden("inception_mini")
    x = case["x"]
    ig = ex.explain(x, method="integrated-gradients", steps=64)
    t = int(ig.target[0])
    difference = logits_of("inception_mini", x)[0, t] - logits_of("inception_mini", np.zeros_like(x))[0, t]
    assert abs(ig.relevance.sum() - difference) < 0.01 * abs(difference)


def test_integrated_gradients_completeness_on_the_bundled_model():
    from helpers import DIGITS

    ex = Explainer(DIGITS)
    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:3]
    ig = ex.explain(x, method="integrated-gradients", steps=64)
    sess = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    rows = np.arange(3)
    difference = (sess.run(None, {"input": x})[0] - sess.run(None, {"input": np.zeros_like(x)})[0])[rows, ig.target]
    np.testing.assert_allclose(ig.relevance.sum(axis=(1, 2, 3)), difference, rtol=0.01)


def test_integrated_gradients_baseline_equal_to_input_gives_zero(golden):
    ex, case = golden("mlp")
    x = np.full_like(case["x"], 0.5)
    ig = ex.explain(x, method="integrated-gradients", baseline=0.5, steps=4)
    assert np.all(ig.relevance == 0)


def test_smoothgrad_without_noise_is_the_gradient(golden):
    ex, case = golden("inception_mini")
    g = ex.explain(case["x"], method="gradient").relevance
    sg = ex.explain(case["x"], method="smoothgrad", noise=0.0, samples=3)
    np.testing.assert_allclose(sg.relevance, g, rtol=1e-5, atol=1e-8)
    noisy = [ex.explain(case["x"], method="smoothgrad", samples=4, seed=7).relevance for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])  # seeded: reproducible
    assert rel_l2(noisy[0], g) > 1e-3


def bias_free_net(tmp_path, seed=0):
    """Conv(input) - Relu - Conv - Relu - GlobalAveragePool - Flatten - Gemm, no biases anywhere."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in
             [("w1", (6, 3, 3, 3)), ("w2", (8, 6, 3, 3)), ("w3", (8, 5))]]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "nobias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("method", ["lrp-eps", "lrp-a1b0", "lrp-a2b1", "lrp-ab"])
def test_lrp_conserves_without_biases(tmp_path, method):
    ex = Explainer(bias_free_net(tmp_path), dtype="float64")
    x = np.random.default_rng(3).standard_normal((1, 3, 10, 10)).astype(np.float32)
    e = ex.explain(x, method=method)
    logit = float(e.target_logit[0])
    # Seed: the logit; every rule here keeps the sum when no bias absorbs relevance
    # (epsilon up to its own 1e-6 term).
    assert abs(e.relevance.sum() - logit) < 1e-4 * abs(logit)


def test_lrp_eps_large_epsilon_absorbs_relevance(tmp_path):
    ex = Explainer(bias_free_net(tmp_path), dtype="float64")
    x = np.random.default_rng(3).standard_normal((1, 3, 10, 10)).astype(np.float32)
    small = ex.explain(x, method="lrp-eps", epsilon=1e-6).relevance.sum()
    large = ex.explain(x, method="lrp-eps", epsilon=10.0).relevance.sum()
    assert abs(large) < abs(small)


def test_presets_are_composites(golden):
    # preset A = epsilon 0.1 on dense layers + alpha1beta0 on convolutions (+ z^B at the input conv).
    ex, case = golden("vgg16_w8")
    preset = ex.explain(case["x"], method="lrp-preset-a").relevance
    composite = methods._lrp("custom", {"dense": methods.Epsilon(0.1), "conv": methods.AlphaBeta(1)}, "")
    methods.register("test-composite")(lambda: composite)
    try:
        by_hand = ex.explain(case["x"], method="test-composite").relevance
    finally:
        del methods.FACTORIES["test-composite"]
    np.testing.assert_array_equal(preset, by_hand)
    # On the MLP (dense layers only, no input convolution) preset A is plain lrp-eps(0.1).
    ex, case = golden("mlp")
    np.testing.assert_allclose(ex.explain(case["x"], method="lrp-preset-a").relevance,
                               ex.explain(case["x"], method="lrp-eps", epsilon=0.1).relevance, rtol=1e-6)


def test_method_options_are_checked(golden):
    ex, case = golden("mlp")
    with pytest.raises(InputError, match="takes no option epsilon"):
        ex.explain(case["x"], method="rap", epsilon=0.1)
    with pytest.raises(InputError, match="alpha >= 1"):
        ex.explain(case["x"], method="lrp-ab", alpha=0.5)
    with pytest.raises(InputError, match="unknown method"):
        ex.explain(case["x"], method="lrp-magic")


@pytest.mark.slow
def test_every_method_runs_on_the_bundled_model():
    from helpers import DIGITS

    ex = Explainer(DIGITS)
    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:2]
    for name in methods.FACTORIES:
        e = ex.explain(x, method=name)
        assert e.relevance.shape == x.shape and np.all(np.isfinite(e.relevance)), name


@pytest.mark.parametrize("name", ["lrp-eps", "lrp-preset-a", "lrp-preset-b"])
@pytest.mark.parametrize("epsilon", [-1e-3, float("nan")])
def test_a_negative_epsilon_is_refused(name, epsilon):
    with pytest.raises(InputError, match=rf"^{name} needs epsilon >= 0, got {epsilon}$"):
        methods.get(name, epsilon=epsilon)
    assert methods.get(name, epsilon=0.0).options["epsilon"] == 0.0  # LRP-0 is allowed
