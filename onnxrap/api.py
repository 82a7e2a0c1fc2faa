"""The Python API: ``Explainer(model).explain(x, target=None, method="rap")``."""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

import numpy as np

from . import methods
from .device import resolve as resolve_device
from .capture import Capture, batches, finite_scores
from .engine import Context, propagate, recompute
from .errors import InputError, ModelError, UnsupportedOpsError
from .graph import Graph


def softmax(logits):
    """Class probabilities from class scores, along the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass
class Explanation:
    """Relevance for a batch, with what was explained."""

    relevance: np.ndarray  # shaped like the model input
    logits: np.ndarray  # (N, classes)
    target: np.ndarray  # (N,) class explained per sample
    method: str
    channel_axis: int | None  # None: the input has no channel axis (features)
    layer_sums: list = field(default_factory=list)  # (op name, op type, sum at output, sum at inputs) per sample
    recomputed: list = field(default_factory=list)  # samples redone in float64 to keep conservation
    unconserved: list = field(default_factory=list)  # samples a conserving method's sum misses even in float64
    nonfinite: list = field(default_factory=list)  # samples whose relevance holds NaN or Inf (a rule overflowed)
    conserves: bool = False  # the method promises relevance summing to the explained score

    @property
    def heatmap(self) -> np.ndarray:
        """Per-pixel relevance: the sum over channels."""
        if self.channel_axis is None:
            return self.relevance
        return self.relevance.sum(axis=self.channel_axis)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def target_logit(self) -> np.ndarray:
        return self.logits[np.arange(len(self.target)), self.target]


class Explainer:
    """Loads a model once; explains batches of inputs with any registered method.

    ``dtype`` is the arithmetic of the relevance rules: float32 by default,
    float64 for checking.  ``recompute`` (default: on for float64) replaces
    ONNX Runtime's float32 activations by onnxrap's own forward pass in
    ``dtype`` from the same input, after checking that it reproduces the
    model's logits.
    """

    def __init__(self, model, input_name=None, output_name=None, dtype="float32", device="cpu", recompute=None,
                 verify="once", tf32=False, engine="eager"):
        """``device``: ``cpu``, ``cuda`` or ``auto`` (a GPU if ONNX Runtime's CUDA provider and CuPy
        both work, else the CPU; ``self.device.note`` says which and why).  ``verify``: check the
        captured logits against a plain ONNX Runtime run ``once`` per input shape or ``always``.
        ``tf32``: let the GPU round float32 matmuls and convolutions to TF32 (faster, about 1e-3
        relative error; off by default, so float32 is exact float32 everywhere).
        ``engine``: ``eager`` (the rules on NumPy/CuPy), ``onnx`` (the method compiled into the model's
        graph, run by ONNX Runtime, cached on disk) or ``auto`` (the faster of the two, measured per
        method and input shape; ``self.engine_note`` says which)."""
        if engine not in ("auto", "eager", "onnx"):
            raise InputError(f"unknown engine {engine!r} (auto, eager or onnx)")
        self._source = (model, input_name, output_name)
        self.graph = Graph(model, input_name, output_name, strict=False)
        if self.graph.unsupported and not self.graph.sample_dims_free:
            raise UnsupportedOpsError(self.graph.unsupported)
        problems = self.graph.problems()  # the same checks inspect reports
        if problems:
            raise ModelError(f"{self.graph.label}: {problems[0]}")
        self.device = resolve_device(device, tf32)
        self.bk = self.device.backend
        self.dtype = np.dtype(dtype)
        self.recompute = self.dtype == np.float64 if recompute is None else recompute
        self.capture = Capture(self.graph, self.device, verify)
        self.verify = verify
        self.max_batch = 32  # samples per ONNX Runtime run where the batch size is free
        self._layout = None
        self.engine = engine
        self.engine_note = engine
        self._engines = {}  # (method label, input shape) -> the engine auto chose
        self._compiled = {}  # (method label, dtype, input shape) -> CompiledModel, or None: eager only
        self._model_hash = None

    @property
    def input_shape(self):
        return self.graph.input_shape

    @property
    def metadata(self) -> dict:
        return {p.key: p.value for p in self.graph.model.metadata_props}

    @property
    def labels(self):
        """Class names from the model's metadata, None if it has none: ``onnxrap.labels``, a JSON list (names
        may hold commas) or comma-separated; else Ultralytics' ``names``, a Python dict literal
        ``{0: 'name', ...}`` (its classification exports carry it); else Hugging Face's ``id2label`` in the
        ``config.json`` beside the model file (``optimum-cli export onnx`` writes it there, not into the model)."""
        return self._metadata_labels()[1]

    @property
    def labels_key(self):
        """The metadata key the class names came from; None without names."""
        return self._metadata_labels()[0]

    def _metadata_labels(self):
        meta, where = self.metadata, self.graph.label
        text = (meta.get("onnxrap.labels") or "").strip()
        if text.startswith("["):
            try:
                return "onnxrap.labels", [str(t) for t in json.loads(text)]
            except ValueError:
                raise ModelError(f"{where}: metadata onnxrap.labels is not a valid JSON list") from None
        if text:
            return "onnxrap.labels", [t.strip() for t in text.split(",")]
        if "names" in meta:
            try:
                names = ast.literal_eval(meta["names"])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                names = None
            if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
                raise ModelError(f"{where}: metadata names is not a dict of class indices 0, 1, ... to names "
                                 "(Ultralytics' form; give --labels)")
            return "names", [str(names[k]) for k in range(len(names))]
        return self._config_labels()

    def _config_labels(self):
        config = self.graph.path.parent / "config.json" if self.graph.path is not None else None
        if config is None or not config.is_file():
            return None, None
        try:
            id2label = json.loads(config.read_text()).get("id2label")
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            return None, None  # not Hugging Face's config: not ours to judge
        if id2label is None:
            return None, None
        try:
            names = {int(k): str(v) for k, v in id2label.items()}
        except (AttributeError, ValueError):
            names = None
        if names is None or sorted(names) != list(range(len(names))):
            raise ModelError(f"{config}: id2label is not a map of class indices 0, 1, ... to names (give --labels)")
        return "config.json id2label", [names[k] for k in range(len(names))]

    @property
    def layout(self) -> str:
        """``nchw`` (channels first, any rank), ``nhwc`` (channels last) or ``features``; settable."""
        return self._layout or self.graph.layout

    @layout.setter
    def layout(self, value):
        if value not in ("nchw", "nhwc", "features"):
            raise InputError(f"unknown layout {value!r} (nchw, nhwc or features)")
        self._layout = value

    @property
    def channel_axis(self):
        return {"features": None, "nchw": 1, "nhwc": -1}[self.layout]

    def explain(self, x, target=None, method="rap", trace=False, contrast=None, **options) -> Explanation:
        """Relevance of ``x`` (a batch shaped like the model input) for ``target``.

        ``target``: None (each sample's top class), an int, or one int per sample.
        ``contrast``: None (why the target), a class index c (why the target rather than c) or
        ``"others"`` (rather than the other classes on average): the seed explains the target's
        logit minus the dual's (``methods.contrast_seed``), and a conserving method's relevance
        sums to that difference.  Runs on the eager engine (the compiled graph takes a class index).
        ``method``: a registered name or a ``methods.Method`` (e.g. a ``methods.Composite``).
        ``options``: a registered method's own (``epsilon``, ``alpha``, ``steps``, ``baseline``, ...).
        ``trace``: also record, per op, the relevance sum at its output and at its inputs.
        """
        m = methods.get(method, **options)
        self._fix_sample_shape(np.shape(x))
        m.check(self.graph)
        self.device.use()
        x = np.asarray(x, dtype=self.capture.input_dtype)  # the same object reaches backprop: captured once
        sums = [] if trace else None
        # A rule that overflows (LRP-epsilon's R / z near z = 0) shows as non-finite relevance, said below
        # per sample; NumPy's warnings from deep inside the walk would name no input.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            relevance, logits, targets, seeds = self._attribute(m, x, target, sums, contrast, trace)
            relevance, recomputed, unconserved = self._keep_conservation(m, relevance, logits, seeds, x, trace)
        per_sample = np.moveaxis(np.isfinite(relevance), self.graph.sample_axis, 0)
        nonfinite = [int(i) for i in np.flatnonzero(~per_sample.reshape(len(per_sample), -1).all(axis=1))]
        label = m.label if contrast is None else f"{m.label} contrast={contrast}"
        return Explanation(relevance, logits, targets, label, self.channel_axis, sums or [], recomputed, unconserved,
                           nonfinite, m.conserves)

    def _fix_sample_shape(self, shape):
        """Parse the model again with its free sample dimensions set to ``shape``'s where, left free, some op is
        not supported (optimum's exports: Swin's window pads and BEiT's position bias are computed from height
        and width, and fold into constants only at one size); its ops are refused there if still not supported.
        Later inputs must have the same shape (``Capture`` says so in one line)."""
        if not self.graph.unsupported:
            return
        if len(shape) < 2:  # no sample shape to fix: refused as exported
            raise UnsupportedOpsError(self.graph.unsupported)
        model, input_name, output_name = self._source
        self.graph = Graph(model, input_name, output_name, sample_shape=shape[1:])
        self.capture = Capture(self.graph, self.device, self.verify)

    def _attribute(self, m, x, target, sums, contrast, trace):
        """Relevance, logits, targets and the seeds' targets (a contrast's: its seed weights) on the engine
        that serves this call."""
        if contrast is not None:  # a seed weighing the classes: eager (the compiled graph seeds a class index)
            if self.engine == "onnx":
                self.engine_note = "eager: a contrast's seed weighs the classes; the compiled graph takes a class index"
            relevance, logits, seeds = self._attribute_eager(m, x, target, self.dtype, sums, contrast)
            return relevance, logits, seeds.argmax(axis=1), seeds
        if not trace and self._engine_for(m, x, target) == "onnx":
            relevance, logits, targets = self._attribute_compiled(m, x, target, self.dtype)
        else:
            relevance, logits, targets = self._attribute_eager(m, x, target, self.dtype, sums)
        return relevance, logits, targets, targets

    def _attribute_eager(self, m, x, target, dtype, sums, contrast=None):
        """Relevance, logits and targets with the rules run on the backend's arrays; with a
        ``contrast``, its seed weights (N, classes) in place of the targets."""
        captured = [(part, self.capture.run(part)) for part in self._pieces(x)]
        # The logits cross to the host once, here: targets, seeds and the conservation check read them there.
        logits = np.concatenate([self._class_vector(self.bk.to_host(v[self.graph.logits_name])) for _, v in captured])
        targets = target if np.ndim(target) == 2 else self._targets(target, logits)  # 2-D: a float64 redo's weights
        if contrast is not None:
            targets = methods.contrast_seed(targets, logits.shape[1], contrast)

        def backprop(method_, xs, ts):
            pieces = captured if xs is x else ((part, None) for part in self._pieces(xs))
            out, start = [], 0
            for part, values in pieces:
                values = values if values is not None else self.capture.run(part)
                out.append(self._propagate(method_, values, ts[start:start + len(part)], sums, dtype))
                start += len(part)
            return np.concatenate(out)

        return m.attribute(backprop, x, targets), logits, targets

    def _attribute_compiled(self, m, x, target, dtype):
        """The same with the method compiled into the model's graph (see compile.py); eager where
        ONNX Runtime lacks the kernels (CPU convolutions in float64) or the tracer some ops."""
        compiled = self._compiled_model(m, dtype, x.shape[1:])
        if compiled is None:
            return self._attribute_eager(m, x, target, dtype, None)

        def run(xs, ts):
            parts, start = [], 0
            for part in self._pieces(xs):
                self.capture.check_input(part)
                t = None if ts is None else ts[start:start + len(part)]
                parts.append(compiled.run(part, t))
                start += len(part)
            return (np.concatenate([self._class_vector(lg) for lg, _ in parts]),
                    np.concatenate([r for _, r in parts]))

        given = None if target is None else np.broadcast_to(np.asarray(target, dtype=np.int64), (len(x),))
        logits, relevance = run(x, given)
        targets = self._targets(target, logits)
        if m.batched:  # the graph is the backward walk; the method calls it on its batches
            relevance = m.attribute(lambda method_, xs, ts: run(xs, ts)[1], x, targets)
        return relevance, logits, targets

    def _compiled_model(self, m, dtype, shape):
        from .compile import (CompiledModel, MissingKernels, NotCompilable, cached_compile, method_key, model_hash,
                              shared_initializers)

        key = (method_key(m), np.dtype(dtype).str, tuple(shape))
        if key not in self._compiled:
            if self._model_hash is None:
                self._model_hash = model_hash(self.graph)
            try:
                path = cached_compile(self.graph, self._model_hash, m, dtype, shape, self.recompute, self.capture)
            except NotCompilable as exc:  # the eager engine explains these ops
                self.engine_note = f"eager: {exc}"
                self._compiled[key] = None
                return None
            try:
                shared = shared_initializers(self.graph, path, np.dtype(dtype))
                self._compiled[key] = CompiledModel(path, self.device.providers, label=f"{self.graph.label} ({m.label})",
                                                    shared=shared)
            except MissingKernels:
                self._compiled[key] = None
        return self._compiled[key]

    def _engine_for(self, m, x, target):
        """``eager`` or ``onnx``; ``auto`` times both once per method and input shape (after a
        warm-up run each, on at most one batch piece) and keeps the faster."""
        if self.engine != "auto":
            return self.engine
        key = (m.label, x.shape[1:])
        if key not in self._engines:
            import time

            sample = self._pieces(x)[0]
            t = None if target is None else np.broadcast_to(np.asarray(target), (len(x),))[:len(sample)]
            seconds = {}
            for engine, attribute in (("eager", self._attribute_eager), ("onnx", self._attribute_compiled)):
                args = (m, sample, t, self.dtype) + ((None,) if engine == "eager" else ())
                attribute(*args)
                start = time.perf_counter()
                attribute(*args)
                seconds[engine] = time.perf_counter() - start
            chosen = min(seconds, key=seconds.get)
            self._engines[key] = chosen
            self.engine_note = (f"auto: {chosen} ({m.label}: eager {seconds['eager']:.3g} s, onnx "
                                f"{seconds['onnx']:.3g} s per {len(sample)} input(s) of shape {tuple(x.shape[1:])})")
        return self._engines[key]

    def _keep_conservation(self, m, relevance, logits, targets, x, trace):
        """Redo in float64 the samples where float32 rounding broke a conserving method's sum:
        compiled where ONNX Runtime has float64 kernels for the graph, else eager (always eager with
        ``trace``, whose sums stay those of the first pass).  Methods that promise no sum, and float64
        runs, come back as they are.

        Relevance that grows large and cancels (deep networks with signed residual
        streams) can leave float32 a sum far from the logit: a wrong number that
        would otherwise be silent.  Returns the relevance, the samples redone, and the
        samples whose sum still misses in float64 (a case the method's rules do not cover).
        """
        if not m.conserves:
            return relevance, [], []
        logit = (targets * logits).sum(axis=1) if targets.ndim == 2 else logits[np.arange(len(targets)), targets]

        axis = self.graph.sample_axis

        def missing(r):  # a NaN or Inf sum (float32 overflowed) misses too
            sums = r.sum(axis=tuple(a for a in range(r.ndim) if a != axis), dtype=np.float64)
            return ~(np.abs(sums - logit) <= 1e-3 * np.maximum(np.abs(logit), 1e-6))

        bad = missing(relevance)
        if self.dtype == np.float64 or not bad.any():  # already float64, or nothing to redo
            return relevance, [], [int(i) for i in np.flatnonzero(bad)]
        relevance = relevance.astype(np.float64)
        redo = np.flatnonzero(bad)
        engine = "eager" if trace or targets.ndim == 2 else self._engine_for(m, x, targets)  # 2-D: a contrast's
        attribute = self._attribute_compiled if engine == "onnx" else \
            lambda *args: self._attribute_eager(*args, None)  # noqa: E731
        fixed = self.graph.fixed_batch
        samples = (slice(None),) * axis + (redo,)
        if (fixed and fixed > 1) or axis:  # whole batches only: a fixed batch, or samples along axis 1
            relevance[samples] = attribute(m, x, targets, np.float64)[0][samples]
        else:
            relevance[redo] = attribute(m, x[redo], targets[redo], np.float64)[0]
        return relevance, [int(i) for i in redo], [int(i) for i in np.flatnonzero(missing(relevance))]

    def _pieces(self, x):
        """Batches for ONNX Runtime.  A fixed-batch model gets whole batches only: padding would add
        samples nobody asked to explain, so another count is left to the capture's shape check."""
        if not x.ndim or self.graph.sample_axis:  # features x samples (Gemm transA): one piece
            return [x]
        fixed = self.graph.fixed_batch
        return [part for part, _ in batches(x, self.max_batch, fixed if fixed and len(x) % fixed == 0 else None)]

    def _propagate(self, method, values, targets, sums, dtype):
        bk = self.bk
        weights = np.asarray(targets)  # 2-D: a contrast's seed weights, negative at the dual
        contrast = bk.to_device((weights.min(axis=1) < 0).astype(dtype)) if weights.ndim == 2 else None
        ctx = Context(bk, {k: bk.to_device(v, dtype=dtype if np.issubdtype(v.dtype, np.floating) else v.dtype)
                           for k, v in values.items()}, self.graph.constants, contrast)
        for op in self.graph.ops:  # tensors inside fused nodes: not in the graph, so computed here
            if op.synthetic:
                ctx[op.output] = op.forward(bk, ctx)
        if self.recompute:
            deviation = recompute(self.graph, ctx)
            if deviation > 1e-3:
                raise ModelError(f"{self.graph.label}: onnxrap's own forward pass differs from ONNX Runtime's "
                                 f"logits by {deviation:.2g} (relative); cannot recompute in {dtype}")
        seed = method.seed(bk, ctx[self.graph.logits_name], targets)

        def record(op, R, R_inputs):
            total = lambda a: bk.to_host(bk.sample_sum(a, keepdims=False))  # noqa: E731
            sums.append((op.name, op.op_type, total(R), sum(total(r) for r in R_inputs if r is not None)))

        relevance = propagate(self.graph, method, ctx, seed, trace=record if sums is not None else None)
        return bk.to_host(relevance)

    def _class_vector(self, logits):
        problem = self.graph.class_scores_problem(logits.shape)
        if problem:
            raise ModelError(f"{self.graph.label}: {problem}")
        return finite_scores(self.graph.label, logits).astype(np.float64)

    @staticmethod
    def check_target(target, classes):
        """``target`` (an int or one per sample) as an array; fails if a class is out of range."""
        t = np.asarray(target, dtype=np.int64)
        bad = t[(t < 0) | (t >= classes)]
        if bad.size:
            raise InputError(f"target {int(bad.flat[0])} is out of range: the model has {classes} classes "
                             f"(0..{classes - 1})")
        return t

    def _targets(self, target, logits):
        n, classes = logits.shape
        if target is None:
            return logits.argmax(axis=1)
        return np.broadcast_to(self.check_target(target, classes), (n,)).copy()
