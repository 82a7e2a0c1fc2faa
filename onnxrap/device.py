"""Choosing where an explanation runs: ``cpu``, ``cuda`` or ``auto``; the GPU backend is made here.

``cuda`` is checked in the order a user can act on, and each failure is one
line naming what is missing and how to get it:

1. an NVIDIA driver that sees a GPU, asked of the driver itself, so that a
   CPU-only machine says "no GPU found" and never makes ONNX Runtime try (and
   loudly fail) to load CUDA;
2. ONNX Runtime's CUDA provider: onnxruntime-gpu, alone (beside the CPU-only
   onnxruntime the two share one module, and the last installed wins);
3. the CUDA and cuDNN libraries, which ``pip install 'onnxrap[gpu]'`` brings as
   nvidia-* wheels and ``onnxruntime.preload_dlls()`` loads (CuPy finds them
   itself);
4. CuPy, with a kernel compiled and run (NVRTC);
5. a one-node session that really runs on CUDA (the provider falls back to
   the CPU silently when a library is missing; the message then names those
   that preloading did not find).

Float32 stays exact on the GPU: TF32 (10-bit mantissas in matmuls and
convolutions) is off in ONNX Runtime and in CuPy unless asked for.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import re
import sys
from dataclasses import dataclass

import onnxruntime as ort

from .backend import Backend, numpy_backend
from .errors import DeviceError, InputError, first_line

CPU = ["CPUExecutionProvider"]
GET_GPU = "pip install 'onnxrap[gpu]'"


@dataclass
class Device:
    name: str  # "cpu" or "cuda"
    backend: Backend
    providers: list
    note: str  # what was chosen and why, for the user
    tf32: bool = False

    def run(self, session, names, feed):
        """``session``'s named outputs for the host arrays ``feed``, as arrays of this device's backend."""
        return {name: self.backend.to_device(v) for name, v in zip(names, session.run(names, feed))}

    def use(self):
        """Make this device's arithmetic settings current (called before each explanation)."""

    def agreement(self):
        """``(rtol, atol)`` within which two ONNX Runtime runs of one model agree here (atol as a share of the
        largest logit): the capture's check against a plain run (capture.py).  On the CPU two float32 runs
        differ by kernel rounding, about 1e-6 of the largest logit."""
        return 1e-3, 1e-4


class CudaDevice(Device):
    def run(self, session, names, feed):
        """The outputs stay on the GPU: bound to it with IOBinding and handed to CuPy through DLPack,
        without a copy."""
        import cupy

        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cuda", cupy.cuda.Device().id)
        session.run_with_iobinding(binding)
        return {name: cupy.from_dlpack(value) for name, value in zip(names, binding.get_outputs())}

    def agreement(self):
        # The capture session and the plain one pick their cuDNN kernels apart, and a deep network amplifies
        # the difference: an H200 with ONNX Runtime 1.31.1 ran a random-weight ResNet-50 at batch 128 3.4e-4
        # of the largest logit apart (each run as far from the CPU's), bench/README.md.  TF32 rounds every
        # product to 11 bits: the check then catches only differences above 1%.
        return (1e-2, 1e-2) if self.tf32 else (1e-3, 1e-3)

    def use(self):
        # CuPy's float32 matmul mode is one setting per process: set it for this explainer.
        import numpy as np
        from cupy._core import _routines_linalg as linalg

        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if self.tf32 else linalg.COMPUTE_TYPE_DEFAULT)


def cuda_providers(device_id: int = 0, tf32: bool = False):
    """ONNX Runtime's CUDA provider with TF32 off unless asked for (it is on by default), then the CPU."""
    return [("CUDAExecutionProvider", {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"})] + CPU


def resolve(device: str = "cpu", tf32: bool = False) -> Device:
    """The device for ``cpu``, ``cuda`` or ``auto``; ``tf32`` lets a GPU round float32 matmuls and
    convolutions to TF32 (faster, about 1e-3 relative error; ignored on the CPU)."""
    if device == "cpu":
        return Device("cpu", numpy_backend(), CPU, "cpu")
    if device == "cuda":
        return _cuda(tf32)
    if device == "auto":
        try:
            return _cuda(tf32)
        except DeviceError as why:
            return Device("cpu", numpy_backend(), CPU, f"cpu ({why})")
    raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")


def _cuda(tf32) -> Device:
    gpus, why = driver_gpus()
    if not gpus:
        raise DeviceError(f"CUDA: no GPU found ({why})")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError(f"CUDA: {_ort_without_cuda()}")
    missing = preload_cuda_libraries()  # first, so that CuPy finds them loaded too
    backend = cupy_backend()
    import cupy

    device_id = cupy.cuda.Device().id
    _probe_session(device_id, missing)
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return CudaDevice("cuda", backend, cuda_providers(device_id, tf32), f"cuda ({name}{', TF32' if tf32 else ''})",
                      tf32)


def driver_gpus() -> tuple[int, str]:
    """GPUs the NVIDIA driver sees, asked of its library (libcuda / nvcuda.dll); 0 and why if none."""
    try:
        driver = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver on this machine"
    count = ctypes.c_int(0)
    status = driver.cuInit(0)
    if status == 0:
        status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value < 1:
        return 0, "the NVIDIA driver sees no GPU" + (f" (CUDA driver error {status})" if status else "")
    return count.value, ""


def _ort_without_cuda() -> str:
    """Why this onnxruntime has no CUDA provider, and the fix."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            installed.append(f"{dist} {metadata.version(dist)}")
    if len(installed) == 2:
        return (f"{' and '.join(installed)} are both installed and share one module, now the CPU-only one; "
                f"fix: pip uninstall -y onnxruntime onnxruntime-gpu && {GET_GPU}")
    return f"this onnxruntime has no CUDA provider ({GET_GPU})"


_CUPY = []


def cupy_backend() -> Backend:
    """The CuPy backend, with one of its kernels compiled and run, or a DeviceError that says what is missing."""
    if not _CUPY:
        try:
            import cupy  # noqa: F401
        except ImportError:
            raise DeviceError(f"CUDA needs CuPy, which is not installed ({GET_GPU})") from None
        try:
            from .gpu import CupyBackend

            backend = CupyBackend()
            backend.sdiv(backend.to_device([1.0]), backend.to_device([2.0])).sum().item()
        except Exception as exc:  # CUDARuntimeError, CompileException, a library that fails to load
            raise DeviceError(f"CUDA: CuPy cannot run on the GPU ({first_line(exc)}; {GET_GPU} brings the "
                              "CUDA libraries it needs)") from None
        _CUPY.append(backend)
    return _CUPY[0]


_PROBED = set()


def _probe_session(device_id, missing):
    """A one-node session on CUDA: proves the provider's CUDA and cuDNN libraries load (``missing``: those
    that preloading could not find, named if the provider fails)."""
    if device_id in _PROBED:
        return
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=cuda_providers(device_id))
    except Exception as exc:
        raise DeviceError(f"CUDA: onnxruntime's CUDA provider cannot start ({first_line(exc)})") from None
    if "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceError(f"CUDA: onnxruntime's CUDA provider did not load: {', '.join(missing) or 'a library'} "
                          f"missing ({GET_GPU} brings CUDA and cuDNN as nvidia-* wheels)")
    _PROBED.add(device_id)


def preload_cuda_libraries() -> list[str]:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels (onnxruntime.preload_dlls, which prints
    what fails); return the names of those that failed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21; older ones rely on the system's libraries
            ort.preload_dlls()
    return sorted(set(re.findall(r"Failed to load (?:\S*/)?([^\s/:]+)", printed.getvalue())))
