"""Device selection on a machine without a GPU, and GPU-vs-CPU agreement where one exists."""
import numpy as np
import pytest

from helpers import DIGIT_IMAGES, DIGITS, GOLDEN, GOLDEN_CASES, rel_l2
from onnxrap import DeviceError, Explainer, InputError
from onnxrap.cli import main
from onnxrap.device import resolve


def gpu_available():
    try:
        resolve("cuda")
        return True
    except DeviceError:
        return False


HAS_GPU = gpu_available()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no usable CUDA GPU (onnxruntime CUDA provider and CuPy)")
no_gpu = pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")


def test_cpu_is_numpy():
    device = resolve("cpu")
    assert device.name == "cpu" and device.backend.xp is np and device.providers == ["CPUExecutionProvider"]


@no_gpu
def test_auto_falls_back_to_the_cpu_and_says_why():
    device = resolve("auto")
    assert device.name == "cpu"
    assert device.note.startswith("cpu (no GPU: CUDA")


@no_gpu
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(DeviceError, match="CUDA"):
        Explainer(DIGITS, device="cuda")


@no_gpu
def test_cli_cuda_without_a_gpu(tmp_path, capsys):
    code = main(["explain", str(DIGITS), str(DIGIT_IMAGES[0]), "-o", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxrap: error: CUDA")
    assert not (tmp_path / "out").exists()


def test_cli_auto_reports_the_device(tmp_path, capsys):
    code = main(["explain", str(DIGITS), str(DIGIT_IMAGES[0]), "-o", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.startswith("device: cuda" if HAS_GPU else "device: cpu (no GPU: ")  # notes go to stderr
    assert "warning" not in err.lower()  # no provider chatter on CPU-only machines


def test_unknown_device():
    with pytest.raises(InputError, match="unknown device"):
        Explainer(DIGITS, device="tpu")


@needs_gpu
@pytest.mark.parametrize("name", GOLDEN_CASES)
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0", "lrp-a2b1", "lrp-eps", "gradient"])
def test_gpu_matches_cpu_on_the_goldens(name, method):
    case = np.load(GOLDEN / name / "case.npz")
    cpu = Explainer(GOLDEN / name / "model.onnx", device="cpu").explain(case["x"], method=method)
    gpu = Explainer(GOLDEN / name / "model.onnx", device="cuda").explain(case["x"], method=method)
    if method == "rap-reference" and name == "resnet50_w4":  # chaotic in float32: see test_golden
        assert np.corrcoef(gpu.relevance.ravel(), cpu.relevance.ravel())[0, 1] > 0.99
    else:
        assert rel_l2(gpu.relevance, cpu.relevance) < 1e-4


@needs_gpu
def test_gpu_batch_and_float64():
    x = np.load(DIGITS.parent / "digits_holdout.npz")["x"][:32]
    cpu = Explainer(DIGITS, device="cpu", dtype="float64").explain(x)
    gpu = Explainer(DIGITS, device="cuda", dtype="float64").explain(x)
    assert rel_l2(gpu.relevance, cpu.relevance) < 1e-10
    np.testing.assert_allclose(gpu.relevance.sum(axis=(1, 2, 3)), gpu.target_logit, rtol=1e-4)


@needs_gpu
def test_fused_kernels_match_numpy():
    import cupy

    cpu, gpu = resolve("cpu").backend, resolve("cuda").backend
    rng = np.random.default_rng(0)
    R, za, zb = (rng.standard_normal((2, 50)) * (rng.random((2, 50)) > 0.3) for _ in range(3))
    za, zb = np.abs(za), np.abs(zb)
    for conv in (True, False):
        want = cpu.rap_shares(R, za, zb, conv)
        got = gpu.rap_shares(*(cupy.asarray(a) for a in (R, za, zb)), conv)
        for w, g in zip(want, got):
            np.testing.assert_allclose(cupy.asnumpy(g), w, rtol=1e-12, atol=0)
    np.testing.assert_allclose(cupy.asnumpy(gpu.sdiv(cupy.asarray(R), cupy.asarray(za))), cpu.sdiv(R, za), rtol=1e-12)
