"""Choosing where an explanation runs: ``cpu``, ``cuda`` or ``auto``.

``cuda`` needs three things, checked in this order so that a CPU-only
machine never makes ONNX Runtime try (and loudly fail) to load CUDA: the
CUDA execution provider in the installed onnxruntime, CuPy with a device,
and a session that really runs on CUDA (the provider loads its libraries
only then, and falls back to the CPU silently when they are missing).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from .backend import Backend, numpy_backend
from .errors import DeviceError, InputError, first_line

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@dataclass
class Device:
    name: str  # "cpu" or "cuda"
    backend: Backend
    providers: list
    note: str  # what was chosen and why, for the user

    def run(self, session, names, feed):
        """``session``'s named outputs for the host arrays ``feed``, as arrays of this device's backend."""
        return {name: self.backend.to_device(v) for name, v in zip(names, session.run(names, feed))}


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


def resolve(device: str = "cpu") -> Device:
    if device == "cpu":
        return Device("cpu", numpy_backend(), CPU, "cpu")
    if device == "cuda":
        return _cuda()
    if device == "auto":
        try:
            return _cuda()
        except DeviceError as why:
            return Device("cpu", numpy_backend(), CPU, f"cpu (no GPU: {why})")
    raise InputError(f"unknown device {device!r} (auto, cpu or cuda)")


def _cuda() -> Device:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError("CUDA: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    backend = cupy_backend()
    _probe_session()
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return CudaDevice("cuda", backend, CUDA, f"cuda ({name})")


_CUPY = []


def cupy_backend() -> Backend:
    """The CuPy backend, or a DeviceError that says what is missing."""
    if not _CUPY:
        try:
            import cupy
        except ImportError:
            raise DeviceError("CUDA needs CuPy, which is not installed (pip install 'onnxrap[gpu]')") from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError, or a driver library that fails to load
            raise DeviceError(f"CUDA: no usable NVIDIA driver or device ({first_line(exc)})") from None
        if count < 1:
            raise DeviceError("CUDA: CuPy sees no CUDA device")
        from .gpu import CupyBackend

        _CUPY.append(CupyBackend())
    return _CUPY[0]


_PROBED = []


def _probe_session():
    """A one-node session on CUDA: proves the provider's CUDA and cuDNN libraries load."""
    if _PROBED:
        return
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), so, providers=CUDA)
    except Exception as exc:
        raise DeviceError(f"CUDA: onnxruntime's CUDA provider cannot start ({first_line(exc)})") from None
    if "CUDAExecutionProvider" not in session.get_providers():
        raise DeviceError("CUDA: onnxruntime's CUDA provider did not load (are the CUDA and cuDNN "
                          "libraries that onnxruntime-gpu needs installed?)")
    _PROBED.append(True)
