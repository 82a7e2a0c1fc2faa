"""Agreement with the RAP authors' released implementation (tests/golden, see its README)."""
import numpy as np
import pytest

from helpers import GOLDEN_PARAMS, rel_l2


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
def test_forward_matches_pytorch(golden, name):
    ex, case = golden(name)
    e = ex.explain(case["x"], method="rap")
    np.testing.assert_allclose(e.logits, case["logits"], rtol=1e-4, atol=1e-4)
    assert int(e.target[0]) == int(case["target"])


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
def test_rap_matches_robust_golden(golden, name):
    ex, case = golden(name)
    e = ex.explain(case["x"], method="rap")
    assert e.relevance.shape == case["x"].shape
    assert e.relevance.dtype == np.float32
    assert rel_l2(e.relevance, case["rap_robust64"]) < 1e-4


@pytest.mark.parametrize("name", GOLDEN_PARAMS[:4])
def test_rap_reference_matches_authors(golden, name):
    ex, case = golden(name)
    e = ex.explain(case["x"], method="rap-reference")
    assert rel_l2(e.relevance, case["rap64"]) < 1e-4


@pytest.mark.slow
def test_rap_reference_on_resnet_by_correlation(golden):
    # The released algorithm divides by a + b at residual Adds, so float32 rounding in the
    # forward pass moves it by several percent (the authors' own float32 and float64 runs
    # differ by 6.5%): compare by correlation, as tests/golden/README.md says.
    ex, case = golden("resnet50_w4")
    e = ex.explain(case["x"], method="rap-reference")
    assert np.corrcoef(e.relevance.ravel(), case["rap64"].ravel())[0, 1] > 0.99


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
@pytest.mark.parametrize("method", ["lrp-a1b0", "lrp-a2b1"])
def test_lrp_matches_authors(golden, name, method):
    ex, case = golden(name)
    e = ex.explain(case["x"], method=method)
    assert rel_l2(e.relevance, case[method.replace("-", "_")]) < 1e-4


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
def test_rap_conserves_the_logit(golden, name):
    ex, case = golden(name)
    e = ex.explain(case["x"], method="rap")
    logit = float(e.target_logit[0])
    assert abs(float(e.relevance.sum(dtype=np.float64)) - logit) < 1e-4 * abs(logit)


@pytest.mark.slow
def test_rap_conserves_in_float64_arithmetic():
    from helpers import GOLDEN
    from onnxrap import Explainer

    ex = Explainer(GOLDEN / "resnet50_w4" / "model.onnx", dtype="float64")
    case = np.load(GOLDEN / "resnet50_w4" / "case.npz")
    e = ex.explain(case["x"], method="rap", trace=True)
    logit = float(e.target_logit[0])
    assert e.relevance.dtype == np.float64
    assert abs(e.relevance.sum() - logit) < 1e-6 * abs(logit)
    # rap keeps the sum through every op, not only overall: what enters an op leaves it
    # (the head turns the seed 1 into the logit).
    head, *rest = e.layer_sums
    assert head[2][0] == 1.0 and abs(head[3][0] - logit) < 1e-6 * abs(logit)
    for name, op_type, out_sum, in_sum in rest:
        assert abs(out_sum[0] - in_sum[0]) < 1e-6 * abs(logit), (name, op_type, out_sum, in_sum)


@pytest.mark.parametrize("name", [GOLDEN_PARAMS[1], GOLDEN_PARAMS[4]])
def test_batch_equals_single_samples(golden, name):
    # These models are exported with a fixed batch of 1: a batch goes through in pieces.
    ex, case = golden(name)
    rng = np.random.default_rng(0)
    xs = np.concatenate([case["x"], rng.standard_normal(case["x"].shape).astype(np.float32)])
    batch = ex.explain(xs, method="rap")
    for i in range(2):
        single = ex.explain(xs[i:i + 1], method="rap")
        np.testing.assert_allclose(batch.relevance[i:i + 1], single.relevance, rtol=1e-5, atol=1e-7)
        assert batch.target[i] == single.target[0]


def test_explicit_target(golden):
    ex, case = golden("mlp")
    e = ex.explain(case["x"], target=3, method="rap")
    assert int(e.target[0]) == 3
    assert abs(e.relevance.sum() - e.logits[0, 3]) < 1e-4 * max(1, abs(e.logits[0, 3]))


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
def test_float64_recompute_matches_to_rounding(name):
    # dtype=float64 replaces ORT's float32 activations by onnxrap's own float64 forward pass:
    # then the rules' arithmetic is reproduced to rounding (the remaining ~1e-12 is
    # BatchNormalization's epsilon, stored as float32 in the ONNX file but 1e-5 in PyTorch).
    from helpers import GOLDEN
    from onnxrap import Explainer

    ex = Explainer(GOLDEN / name / "model.onnx", dtype="float64")
    case = np.load(GOLDEN / name / "case.npz")
    assert rel_l2(ex.explain(case["x"], method="rap").relevance, case["rap_robust64"]) < 1e-10
    # rap-reference divides by a + b at residual Adds: even 1e-12 moves it by 1e-8 there.
    tolerance = 1e-6 if name == "resnet50_w4" else 1e-10
    assert rel_l2(ex.explain(case["x"], method="rap-reference").relevance, case["rap64"]) < tolerance


def test_float32_rounding_that_breaks_conservation_is_redone_in_float64(monkeypatch):
    # Deep networks with signed residual streams grow large, cancelling relevance (EfficientNet-Lite1:
    # 1e8 times the logit), and float32 then misses the logit: rap redoes those samples in float64.
    from helpers import GOLDEN
    from onnxrap import Explainer

    ex = Explainer(GOLDEN / "mlp" / "model.onnx")
    case = np.load(GOLDEN / "mlp" / "case.npz")
    x = np.concatenate([case["x"], case["x"] * 0.5])
    honest = Explainer._propagate
    float32_calls = []

    def lossy(self, method, values, targets, sums, dtype):  # float32 goes wrong for the second sample
        out = honest(self, method, values, targets, sums, dtype)  # (this model takes one sample at a time)
        if dtype == np.float32:
            float32_calls.append(1)
            if len(float32_calls) == 2:
                out *= 1.5
        return out

    monkeypatch.setattr(Explainer, "_propagate", lossy)
    e = ex.explain(x, method="rap")
    assert e.recomputed == [1]
    np.testing.assert_allclose(e.relevance.sum(axis=1), e.target_logit, rtol=1e-5)
    assert ex.explain(x, method="lrp-a1b0").recomputed == []  # no promise, nothing redone


@pytest.mark.parametrize("verify", ["once", "always"])
def test_capture_that_disagrees_with_a_plain_run_is_an_error(verify, monkeypatch):
    from helpers import GOLDEN
    from onnxrap import Explainer, ModelError

    ex = Explainer(GOLDEN / "mlp" / "model.onnx", verify=verify)
    case = np.load(GOLDEN / "mlp" / "case.npz")
    ex.explain(case["x"])  # verified against the real plain session
    honest = ex.capture.plain_logits
    # What a dishonest capture would look like: the plain model says something else.
    monkeypatch.setattr(ex.capture, "plain_logits", lambda feed: honest(feed) + 1.0)
    if verify == "once":  # this shape is verified: the structure cannot change between batches
        ex.explain(case["x"])
        ex.capture.verified_shapes.clear()
    with pytest.raises(ModelError, match="disagrees with a plain ONNX Runtime run"):
        ex.explain(case["x"])


def test_large_weights_are_served_from_a_temporary_file(monkeypatch):
    # Models with more than EXTERNAL_WEIGHTS_BYTES of weights keep them in one temporary file that
    # every session reads, instead of a copy per session and one in the graph.  vgg16_w8: 1.74 MB of
    # weights, 1.74 MB of them in tensors large enough to move (4096 bytes and more).
    import onnx

    from helpers import GOLDEN
    from onnxrap import Explainer, capture, methods
    from onnxrap.compile import CompiledModel, compile_graph

    path = GOLDEN / "vgg16_w8" / "model.onnx"
    case = np.load(GOLDEN / "vgg16_w8" / "case.npz")
    expected = Explainer(path).explain(case["x"]).relevance
    monkeypatch.setattr(capture, "EXTERNAL_WEIGHTS_BYTES", 2**20)
    ex = Explainer(path)
    assert ex.capture._weights_dir is not None
    moved = [t for t in ex.graph.model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(moved) >= 13 and not any(t.raw_data for t in moved)
    np.testing.assert_array_equal(ex.explain(case["x"]).relevance, expected)
    # A second Capture of the same graph (compile_graph without capture=) finds the moved weights, though
    # what is left in memory is now under the threshold.
    compiled = compile_graph(ex.graph, methods.get("rap"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in compiled.graph.initializer)  # a whole copy
    _, relevance = CompiledModel(compiled).run(case["x"])
    np.testing.assert_allclose(relevance, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # A model the caller passes in is theirs: its weights stay where they are.
    model = onnx.load(str(path))
    before = model.SerializeToString()
    ex = Explainer(model)
    assert ex.capture._weights_dir is None and model.SerializeToString() == before
    np.testing.assert_array_equal(ex.explain(case["x"]).relevance, expected)