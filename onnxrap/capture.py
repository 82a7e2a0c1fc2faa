"""One ONNX Runtime forward pass that captures every activation the rules read.

The data tensors the DAG reads are added as graph outputs.  ORT never fuses
a node whose output is a graph output, so BatchNormalization inputs and
outputs stay visible; the captured model's own output is then checked
against a plain session of the untouched model, so a capture that computed
something else is an error, never a silent wrong answer.  The two graphs
differ only in what they output, so by default the check runs on the first
batch of each input shape (``verify="always"`` checks every batch).

The activations come back as arrays of the device's backend (on CUDA they
stay on the GPU: see ``device.CudaDevice``).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from .errors import InputError, ModelError, SampleError, first_line
from .graph import FLOAT_INPUTS



# Models whose weights take more than this are served to ONNX Runtime from a temporary file.
EXTERNAL_WEIGHTS_BYTES = 64 * 2**20


def _weight_bytes(model):
    return sum(len(t.raw_data) for t in model.graph.initializer)


def session_options(spin=False):
    """``spin``: let ORT's threads spin between ops, as they do by default.  Off where NumPy runs next
    (they would steal its cores); on for a compiled graph, whose thousands of small ops each wait
    for a sleeping thread otherwise (MobileNetV2: 72 -> 64 ms)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: provider chatter is not for users
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


def batches(x, size, fixed=None):
    """``x`` in pieces for ONNX Runtime runs, each with how many of its samples are real.

    A model exported for a ``fixed`` batch size takes exactly that many samples a run: the
    pieces have that size, a short last one padded by repeating its last sample.  Otherwise
    a piece holds up to ``size`` samples.
    """
    step = fixed or max(1, int(size))
    for start in range(0, len(x), step):
        part = x[start:start + step]
        n = len(part)
        if fixed and n < fixed:
            part = np.concatenate([part, np.repeat(part[-1:], fixed - n, axis=0)])
        yield part, n


def finite_scores(label, logits):
    """The class scores per sample, ``(N, classes)``; a sample whose scores hold NaN or Inf is a SampleError."""
    scores = logits.reshape(logits.shape[0], -1)
    broken = ~np.isfinite(scores).all(axis=1)
    if broken.any():
        raise SampleError(label, "the model's output contains NaN or Inf", np.flatnonzero(broken), len(scores))
    return scores


class Capture:
    """Runs ``graph``'s model on ``device`` once per batch and returns its activations by tensor name."""

    def __init__(self, graph, device, verify="once"):
        if verify not in ("once", "always"):
            raise ValueError(f"verify is 'once' (per input shape) or 'always', not {verify!r}")
        self.graph = graph
        self.device = device
        self.verify = verify
        self.verified_shapes = set()
        wanted = {graph.logits_name}
        for op in graph.ops:
            wanted.update(op.inputs)
            wanted.add(op.output)
        wanted -= {op.output for op in graph.ops if op.synthetic}
        existing = {o.name for o in graph.model.graph.output}
        self.names = sorted(wanted - existing) + [graph.output_name]
        if graph.weights_home is None and graph.owns_model and _weight_bytes(graph.model) > EXTERNAL_WEIGHTS_BYTES:
            self._externalise_weights()
        # on the graph, not here: a second Capture of the same graph (compile_graph without ``capture``)
        # finds the weights where the first one moved them
        self._weights_dir = graph.weights_home
        self.extra_outputs = sorted(wanted - existing)
        self._session = self._plain = None
        self.input_dtype = FLOAT_INPUTS[graph.input_type]  # other types: refused by graph.problems() first

    def _externalise_weights(self):
        """Move a large model's weights into one file of a private temporary folder.

        Saving with external data clears them from the in-memory model, so the
        sessions (built from small files that point at them) and the graph no
        longer each hold a copy: for VGG-16 that is 0.5 GB a copy.
        """
        self.graph.weights_home = tempfile.TemporaryDirectory(prefix="onnxrap-")
        onnx.save_model(self.graph.model, os.path.join(self.graph.weights_home.name, "model.onnx"),
                        save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                        size_threshold=4096)

    @property
    def weights_dir(self):
        """The folder the model's weights were moved to, or None where they stayed in memory."""
        return None if self._weights_dir is None else self._weights_dir.name

    def session_with_outputs(self, extra_outputs):
        """An ONNX Runtime session of the model that also outputs the named tensors."""
        graph = self.graph
        model = onnx.ModelProto()
        model.CopyFrom(graph.model)  # light where the weights are external
        for name in extra_outputs:
            elem = graph._types.get(name) or onnx.TensorProto.FLOAT
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        providers = self.device.providers
        try:
            if self._weights_dir is None:
                return ort.InferenceSession(model.SerializeToString(), session_options(), providers=providers)
            with tempfile.NamedTemporaryFile(dir=self._weights_dir.name, suffix=".onnx") as f:
                onnx.save_model(model, f.name)
                return ort.InferenceSession(f.name, session_options(), providers=providers)
        except Exception as exc:
            raise ModelError(f"{graph.label}: ONNX Runtime cannot load the model: {first_line(exc)}") from None

    @property
    def session(self):
        """The capture session, built on first use (after the first plain run: see _verify)."""
        if self._session is None:
            self._session = self.session_with_outputs(self.extra_outputs)
        return self._session

    def plain_logits(self, feed):
        """The untouched model's output for ``feed``.  Checking once per shape, the session lives
        only for this call, so a large model's weights are never held by two sessions at once."""
        session = self._plain or self.session_with_outputs([])
        if self.verify == "always":
            self._plain = session
        try:
            return session.run([self.graph.output_name], feed)[0]
        except Exception as exc:
            raise InputError(f"{self.graph.label}: ONNX Runtime rejects the input: {first_line(exc)}") from None

    def run(self, x: np.ndarray) -> dict:
        """Activations for the host batch ``x``, as the device's arrays (``x`` itself stays on the host);
        raises if the capture disagrees with a plain run."""
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        self.check_input(x)
        feed = {self.graph.input_name: x}
        verify = self.verify == "always" or x.shape not in self.verified_shapes
        plain = self.plain_logits(feed) if verify else None  # before the capture session exists
        try:
            values = self.device.run(self.session, self.names, feed)
        except Exception as exc:
            raise InputError(f"{self.graph.label}: ONNX Runtime rejects an input of shape "
                             f"{tuple(x.shape)}: {first_line(exc)}") from None
        if verify:
            self._verify(values[self.graph.output_name], plain)
            self.verified_shapes.add(x.shape)
        values[self.graph.input_name] = x
        return values

    def _verify(self, got, plain):
        """The capture's output must equal a plain run of the untouched model."""
        got = self.device.backend.to_host(got)
        scale = max(1.0, float(np.max(np.abs(plain))) if plain.size else 1.0)
        rtol, atol = self.device.agreement()  # a capture that computed something else still shows
        finite_scores(self.graph.label, plain)
        if got.shape != plain.shape or not np.allclose(got, plain, rtol=rtol, atol=atol * scale):
            worst = float(np.max(np.abs(got - plain))) if got.shape == plain.shape else float("nan")
            hint = (": two TF32 runs of this model disagree by that much, explain it without --tf32"
                    if self.device.tf32 else "")
            raise ModelError(f"{self.graph.label}: the captured forward pass disagrees with a plain ONNX Runtime "
                             f"run (max difference {worst:.3g}); refusing to explain{hint}")

    def check_input(self, x):
        """Refuse NaN, Inf and inputs of the wrong shape, with one line."""
        if not np.all(np.isfinite(x)):
            raise InputError("the input contains NaN or Inf values")
        self._check_shape(x)

    def _check_shape(self, x):
        expected = self.graph.input_shape
        if expected is None:
            return
        if len(expected) != x.ndim or any(e is not None and e != s for e, s in zip(expected, x.shape)):
            shown = tuple("?" if e is None else e for e in expected)
            raise InputError(f"{self.graph.label}: input {self.graph.input_name} expects shape {shown}, "
                             f"got {tuple(x.shape)}")

