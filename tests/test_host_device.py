"""Host and device arrays never mix, and the backward walk never waits for the device.

Runs the methods on the goldens (every one on the small goldens, a covering set on the large ones)
and the CLI on a stand-in GPU (tests/strict_backend.py) whose
arrays refuse NumPy exactly as CuPy's do, so these run on a CPU-only machine and fail wherever a
real GPU would: the first GPU run (issue 9, main at f1a2129) failed in ``engine.one_hot`` and in the
float64 conservation check, both caught here.
"""
import numpy as np
import pytest

import onnxrap.api
import strict_backend
from helpers import DIGIT_IMAGES, DIGITS, GOLDEN, GOLDEN_CASES, GOLDEN_PARAMS
from onnxrap import Explainer, methods
from onnxrap.cli import main

CASES = {name: np.load(GOLDEN / name / "case.npz") for name in GOLDEN_CASES}
OPTIONS = {"integrated-gradients": {"steps": 2}, "smoothgrad": {"samples": 2}}
# Every method on the small goldens; on the large ones (seconds per walk), methods that between them
# read every kind of constant (biases, BatchNormalization gains, pool divisors) and every rule family.
METHODS = {"mlp": list(methods.FACTORIES), "inception_mini": list(methods.FACTORIES),
           "vgg16_w8": ["rap", "lrp-eps"], "vgg16bn_w8": ["rap-reference", "gradient"],
           "resnet50_w4": ["rap", "rap-paper", "lrp-a2b1", "gradient"]}


@pytest.fixture
def strict_gpu(monkeypatch):
    """``device="cuda"`` (and auto) resolves to the stand-in GPU."""
    device = strict_backend.strict_device()
    monkeypatch.setattr(onnxrap.api, "resolve_device", lambda name, tf32=False: device)
    strict_backend.EVENTS.clear()
    return device


@pytest.fixture
def waits(monkeypatch):
    """What the stand-in GPU recorded inside the backward walk (engine.propagate): host waits, transfers."""
    walk, during = onnxrap.api.propagate, []

    def watched(*args, **kwargs):
        before = len(strict_backend.EVENTS)
        out = walk(*args, **kwargs)
        during.extend(strict_backend.EVENTS[before:])
        return out

    monkeypatch.setattr(onnxrap.api, "propagate", watched)
    return during


@pytest.fixture(scope="module")
def cpu_results():
    cache = {}

    def get(name, method):
        if (name, method) not in cache:
            ex = Explainer(GOLDEN / name / "model.onnx")
            cache[name, method] = ex.explain(CASES[name]["x"], method=method, **OPTIONS.get(method, {}))
        return cache[name, method]
    return get


@pytest.mark.parametrize("name", GOLDEN_PARAMS)
def test_every_method_on_device_arrays(strict_gpu, cpu_results, name):
    ex = Explainer(GOLDEN / name / "model.onnx", device="cuda")
    assert ex.device is strict_gpu
    for method in METHODS[name]:
        e = ex.explain(CASES[name]["x"], method=method, **OPTIONS.get(method, {}))
        cpu = cpu_results(name, method)
        assert type(e.relevance) is np.ndarray and type(e.logits) is np.ndarray and type(e.target) is np.ndarray
        # the same arithmetic: only where the arrays live differs
        np.testing.assert_array_equal(e.relevance, cpu.relevance, err_msg=method)
        np.testing.assert_array_equal(e.target, cpu.target)


def test_float64_redo_on_device_arrays(strict_gpu, monkeypatch):
    """A sum that drifts in float32 is redone in float64, from host logits and host relevance."""
    honest = Explainer._propagate
    calls = []

    def lossy(self, method, values, targets, sums, dtype):  # float32 goes wrong for the second sample
        out = honest(self, method, values, targets, sums, dtype)
        calls.append(dtype)
        return out * 1.5 if dtype == np.float32 and len(calls) == 2 else out

    monkeypatch.setattr(Explainer, "_propagate", lossy)
    ex = Explainer(GOLDEN / "mlp" / "model.onnx", device="cuda")
    x = np.concatenate([CASES["mlp"]["x"], CASES["mlp"]["x"] * 0.5])
    e = ex.explain(x, method="rap")
    assert e.recomputed == [1] and calls[-1] == np.float64
    np.testing.assert_allclose(e.relevance.sum(axis=1), e.target_logit, rtol=1e-5)


def test_float64_explainer_on_device_arrays(strict_gpu):
    ex = Explainer(GOLDEN / "vgg16bn_w8" / "model.onnx", device="cuda", dtype="float64")
    e = ex.explain(CASES["vgg16bn_w8"]["x"], method="rap", trace=True)
    assert e.relevance.dtype == np.float64
    assert abs(e.relevance.sum() - e.target_logit[0]) < 1e-6 * abs(e.target_logit[0])


@pytest.mark.parametrize("method", ["rap", "lrp-a2b1", "gradient"])
def test_index_routing_on_device_arrays(strict_gpu, waits, method):
    """Gather's positions (a real dynamo export) cross to the device once, like every constant."""
    fixture = GOLDEN.parent / "fixtures" / "gather" / "dynamo_as_strided"
    x = np.load(f"{fixture}.npz")["x"]
    cpu = Explainer(f"{fixture}.onnx").explain(x, method=method)
    ex = Explainer(f"{fixture}.onnx", device="cuda")
    assert any(op.op_type == "Gather" for op in ex.graph.ops)
    np.testing.assert_array_equal(ex.explain(x, method=method).relevance, cpu.relevance)
    waits.clear()
    ex.explain(x, method=method)
    assert waits == []


def test_cli_on_device_arrays(strict_gpu, tmp_path, capsys):
    code = main(["explain", str(DIGITS), *map(str, DIGIT_IMAGES[:2]), "-o", str(tmp_path), "--device", "cuda",
                 "--method", "rap,lrp-eps,gradient"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.startswith("device: strict")  # notes go to stderr
    assert (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("name, method", [
    pytest.param(n, m, marks=pytest.mark.slow) if n not in ("mlp", "inception_mini") else (n, m)
    for n in GOLDEN_CASES for m in METHODS[n]])
def test_the_backward_walk_never_waits_for_the_device(strict_gpu, waits, name, method):
    """No host synchronisation or transfer between the seed and the input's relevance (constants are
    on the device from the first batch on), so the GPU runs the whole walk without the host waiting."""
    ex = Explainer(GOLDEN / name / "model.onnx", device="cuda")
    options = OPTIONS.get(method, {})
    ex.explain(CASES[name]["x"], method=method, **options)  # the first batch brings the constants over
    waits.clear()
    strict_backend.EVENTS.clear()
    ex.explain(CASES[name]["x"], method=method, **options)
    assert waits == []
    # outside the walk: each batch's logits and relevance come to the host, nothing else
    assert strict_backend.EVENTS and all(e.startswith(("to_host", "to_device")) for e in strict_backend.EVENTS)


def test_the_stand_in_refuses_what_cupy_refuses():
    bk = strict_backend.StrictBackend()
    a = bk.to_device(np.arange(3.0))
    for mix in (lambda: np.asarray(a), lambda: a + np.ones(3), lambda: np.ones(3) * a, lambda: np.sum(a),
                lambda: np.maximum(a, 0), lambda: bk.xp.where(np.ones(3, bool), a, 0), lambda: bk.to_host(np.ones(3))):
        with pytest.raises(TypeError):
            mix()
    strict_backend.EVENTS.clear()
    assert bool((a > 1).any()) and float(a.sum()) == 3.0
    assert [e.split()[0] for e in strict_backend.EVENTS] == ["bool()", "float()"]
    np.testing.assert_array_equal(bk.to_host(bk.xp.maximum(a * np.float32(2), 1)), [1, 2, 4])
