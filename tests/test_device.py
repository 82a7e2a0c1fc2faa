"""Device selection and its messages on any machine; on a GPU, its accuracy judged against float64.

The GPU tests skip without a usable CUDA GPU.  Set ONNXRAP_DEVICE_REPORT=path to have the float64
comparison write its table of errors there (the GPU run records it in bench/README.md).
"""
import json
import os
import sys

import numpy as np
import pytest

from helpers import DIGIT_IMAGES, DIGITS, GOLDEN, GOLDEN_CASES, rel_l2
from onnx_helpers import const, make_model, node
from onnxrap import DeviceError, Explainer, InputError, device as device_module
from onnxrap.cli import main
from onnxrap.device import cuda_providers, preload_cuda_libraries, resolve


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
    assert device.note.startswith("cpu (CUDA")


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
    if not device_module.driver_gpus()[0]:
        assert err.startswith("onnxrap: error: CUDA: no GPU found (")
    assert not (tmp_path / "out").exists()


def _pretend(monkeypatch, gpus=1, providers=("CUDAExecutionProvider", "CPUExecutionProvider"), installed=()):
    """A machine with ``gpus`` GPUs, this onnxruntime's ``providers`` and these ORT distributions."""
    from importlib import metadata

    def version(dist):
        if dist not in installed:
            raise metadata.PackageNotFoundError(dist)
        return "1.31.1"

    monkeypatch.setattr(device_module, "driver_gpus", lambda: (gpus, "no NVIDIA driver on this machine"))
    monkeypatch.setattr(device_module.ort, "get_available_providers", lambda: list(providers))
    monkeypatch.setattr(metadata, "version", version)


def test_no_gpu_is_said_before_anything_else_is_asked(monkeypatch):
    _pretend(monkeypatch, gpus=0, providers=())
    monkeypatch.setattr(device_module, "cupy_backend", lambda: pytest.fail("CuPy asked on a machine without a GPU"))
    with pytest.raises(DeviceError, match=r"^CUDA: no GPU found \(no NVIDIA driver on this machine\)$"):
        resolve("cuda")
    assert resolve("auto").note == "cpu (CUDA: no GPU found (no NVIDIA driver on this machine))"


def test_onnxruntime_beside_onnxruntime_gpu_is_named_with_the_fix(monkeypatch):
    _pretend(monkeypatch, providers=["CPUExecutionProvider"], installed=("onnxruntime", "onnxruntime-gpu"))
    with pytest.raises(DeviceError) as why:
        resolve("cuda")
    message = str(why.value)
    assert "onnxruntime 1.31.1 and onnxruntime-gpu 1.31.1 are both installed and share one module" in message
    assert message.endswith("fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxrap[gpu]'")


def test_cpu_only_onnxruntime_says_how_to_get_the_gpu_one(monkeypatch):
    _pretend(monkeypatch, providers=["CPUExecutionProvider"], installed=("onnxruntime",))
    with pytest.raises(DeviceError, match=r"no CUDA provider \(pip install 'onnxrap\[gpu\]'\)$"):
        resolve("cuda")


def test_missing_cupy_says_how_to_get_it(monkeypatch):
    _pretend(monkeypatch, installed=("onnxruntime-gpu",))
    monkeypatch.setattr(device_module, "_CUPY", [])
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(DeviceError, match=r"^CUDA needs CuPy, which is not installed \(pip install 'onnxrap\[gpu\]'\)"):
        resolve("cuda")


def test_missing_cuda_libraries_are_named(monkeypatch, capsys):
    def preload_dlls():  # what onnxruntime prints when the nvidia-* wheels are absent
        print("Failed to load /venv/site-packages/nvidia/cu13/lib/libcublasLt.so.13: cannot open shared object file")
        print("Failed to load libcudnn.so.9: libcudnn.so.9: cannot open shared object file: No such file")
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(device_module.ort, "preload_dlls", preload_dlls, raising=False)
    assert preload_cuda_libraries() == ["libcublasLt.so.13", "libcudnn.so.9"]
    assert capsys.readouterr().out == ""  # onnxruntime's lines do not reach the user

    class FellBackToTheCpu:  # what ONNX Runtime does when the CUDA provider's libraries do not load
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(device_module.ort, "InferenceSession", FellBackToTheCpu)
    monkeypatch.setattr(device_module, "_PROBED", set())
    with pytest.raises(DeviceError, match=r"^CUDA: onnxruntime's CUDA provider did not load: libcublasLt.so.13, "
                                          r"libcudnn.so.9 missing \(pip install 'onnxrap\[gpu\]' brings"):
        device_module._probe_session(0, preload_cuda_libraries())


def test_tf32_is_off_unless_asked_for():
    assert cuda_providers(0) == [("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    assert cuda_providers(1, tf32=True)[0] == ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "1"})


def test_cli_auto_reports_the_device(tmp_path, capsys):
    code = main(["explain", str(DIGITS), str(DIGIT_IMAGES[0]), "-o", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.startswith("device: cuda" if HAS_GPU else "device: cpu (CUDA")  # notes go to stderr
    assert "warning" not in err.lower()  # no provider chatter on CPU-only machines


def test_unknown_device():
    with pytest.raises(InputError, match="unknown device"):
        Explainer(DIGITS, device="tpu")


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


# -- on a GPU: accuracy against float64 ------------------------------------------------------------
GPU_METHODS = ["rap", "rap-reference", "lrp-a1b0", "lrp-a2b1", "lrp-eps", "gradient"]
# float32's own noise in a relative L2 error: below it, "twice the CPU's error" means nothing.
NOISE = 1e-6


class Report(list):
    """Rows of the GPU-vs-float64 table, written to ONNXRAP_DEVICE_REPORT as each comes (a run cut short
    keeps what it measured)."""

    def append(self, row):
        super().append(row)
        path = os.environ.get("ONNXRAP_DEVICE_REPORT")
        if path:
            with open(path, "w") as f:
                json.dump(self, f, indent=1)


@pytest.fixture(scope="module")
def report():
    return Report()


def conditioning(model, x, method, target, truth, gpu_forward):
    """How far float32-sized perturbations move the float64 result, the most of: float64 rules on the
    CPU's float32 activations, on the GPU's float32 activations, and on inputs moved by one float32 ulp
    per element (three random directions).  What any float32 implementation may be off by on this
    case: a ReLU pre-activation within rounding of zero flips, a tiny LRP epsilon divides by rounding."""
    exact = Explainer(model, dtype="float64")
    worst = max(rel_l2(Explainer(model, device=device, dtype="float64", recompute=False)
                       .explain(x, method=method, target=target).relevance, truth)
                for device in (["cpu", "cuda"] if gpu_forward else ["cpu"]))
    rng = np.random.default_rng(0)
    for _ in range(3):
        nudged = np.where(rng.random(x.shape) < 0.5, np.nextafter(x, np.inf), np.nextafter(x, -np.inf))
        worst = max(worst, rel_l2(exact.explain(nudged.astype(x.dtype), method=method, target=target).relevance,
                                  truth))
    return worst


@needs_gpu
@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_gpu_is_as_close_to_float64_as_the_cpu(report, name):
    """The GPU's float32 forward pass agrees with the CPU's to rounding, and per method its error to the
    float64 result is at most about twice the CPU's, and under 1e-4 wherever the CPU's is.  Where it is
    not, the case must be ill-conditioned by measure: float32-sized perturbations move the float64
    result as far (``conditioning``, recorded in the table); the bound is never loosened by hand."""
    model, x = GOLDEN / name / "model.onnx", np.load(GOLDEN / name / "case.npz")["x"]
    exact = Explainer(model, dtype="float64")
    cpu, gpu = Explainer(model), Explainer(model, device="cuda")
    gpu_tf32 = Explainer(model, device="cuda", tf32=True)
    forward = rel_l2(gpu.explain(x, method="gradient").logits, cpu.explain(x, method="gradient").logits)
    assert forward < 1e-5, f"{name}: the GPU's float32 logits differ from the CPU's by {forward:.2e}"
    failures = []
    for method in GPU_METHODS:
        reference = exact.explain(x, method=method)
        truth, target = reference.relevance, reference.target
        e_cpu = rel_l2(cpu.explain(x, method=method, target=target).relevance, truth)
        e_gpu = rel_l2(gpu.explain(x, method=method, target=target).relevance, truth)
        e_tf32 = rel_l2(gpu_tf32.explain(x, method=method, target=target).relevance, truth)  # measured only
        within = e_gpu <= 2 * e_cpu + NOISE and (e_cpu >= 1e-4 or e_gpu < 1e-4)
        kappa = None if within else conditioning(model, x, method, target, truth, gpu_forward=True)
        ill_conditioned = not within and e_gpu <= 2 * kappa + NOISE
        report.append(dict(model=name, method=method, cpu=e_cpu, gpu=e_gpu, gpu_tf32=e_tf32, conditioning=kappa,
                           ill_conditioned=ill_conditioned, forward=forward))
        if not within and not ill_conditioned:
            failures.append(f"{method}: GPU {e_gpu:.2e} vs CPU {e_cpu:.2e} (conditioning {kappa:.2e})")
    assert not failures, f"{name}: " + "; ".join(failures)


@needs_gpu
def test_gpu_float32_is_exact_float32_by_default():
    """1.0001 * 1 summed 256 times is 256.0256 in float32; TF32 would drop 1.0001's low bits and give 256.0
    (whether it does when asked for is cuBLAS's choice per shape: measured in bench/, not asserted)."""
    import cupy

    model = make_model([node("MatMul", ["x", "w"], "y")], [("x", [64, 256])], [("y", [64, 64])],
                       [const("w", np.ones((256, 64)))])
    x = np.full((64, 256), 1.0001, np.float32)
    ex = Explainer(model, device="cuda")
    ex.device.use()
    captured = cupy.asnumpy(ex.capture.run(x)[ex.graph.logits_name])
    product = cupy.asnumpy(cupy.asarray(x) @ cupy.ones((256, 64), np.float32))
    np.testing.assert_allclose(captured, 256.0256, atol=1e-3, err_msg="ONNX Runtime")
    np.testing.assert_allclose(product, 256.0256, atol=1e-3, err_msg="CuPy")
