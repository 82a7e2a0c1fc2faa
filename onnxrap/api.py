"""The Python API: ``Explainer(model).explain(x, target=None, method="rap")``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from . import methods
from .device import resolve as resolve_device
from .capture import Capture, batches
from .engine import Context, propagate, recompute
from .errors import InputError, ModelError
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
                 verify="once"):
        """``device``: ``cpu``, ``cuda`` or ``auto`` (a GPU if ONNX Runtime's CUDA provider and CuPy
        both work, else the CPU; ``self.device.note`` says which and why).  ``verify``: check the
        captured logits against a plain ONNX Runtime run ``once`` per input shape or ``always``."""
        self.graph = Graph(model, input_name, output_name)
        problems = self.graph.problems()  # the same checks inspect reports
        if problems:
            raise ModelError(f"{self.graph.label}: {problems[0]}")
        self.device = resolve_device(device)
        self.bk = self.device.backend
        self.dtype = np.dtype(dtype)
        self.recompute = self.dtype == np.float64 if recompute is None else recompute
        self.capture = Capture(self.graph, self.device.providers, verify)
        self.max_batch = 32  # samples per ONNX Runtime run where the batch size is free
        self._layout = None

    @property
    def input_shape(self):
        return self.graph.input_shape

    @property
    def metadata(self) -> dict:
        return {p.key: p.value for p in self.graph.model.metadata_props}

    @property
    def labels(self):
        """Class names from the model's ``onnxrap.labels`` metadata: a JSON list (names may hold
        commas) or comma-separated; None if absent."""
        text = (self.metadata.get("onnxrap.labels") or "").strip()
        if text.startswith("["):
            try:
                return [str(t) for t in json.loads(text)]
            except ValueError:
                raise ModelError(f"{self.graph.label}: metadata onnxrap.labels is not a valid JSON list") from None
        return [t.strip() for t in text.split(",")] if text else None

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
        ``"others"`` (rather than the other classes): the method runs once more for the dual (c, or
        the other classes equally weighted) and the dual's relevance, rescaled to the same sum, is
        subtracted (``methods.contrasted``); the result sums to 0.
        ``method``: a registered name or a ``methods.Method`` (e.g. a ``methods.Composite``).
        ``options``: a registered method's own (``epsilon``, ``alpha``, ``steps``, ``baseline``, ...).
        ``trace``: also record, per op, the relevance sum at its output and at its inputs.
        """
        m = methods.get(method, **options)
        m.check(self.graph)
        x = np.asarray(x, dtype=self.capture.input_dtype)  # the same object reaches backprop: captured once
        captured = [(part, self.capture.run(part)) for part in self._pieces(x)]
        logits = np.concatenate([self._class_vector(v[self.graph.logits_name]) for _, v in captured])
        targets = self._targets(target, logits)
        dual = None if contrast is None else methods.contrast_dual(targets, logits.shape[1], contrast)
        sums = [] if trace else None

        def backprop_in(dtype, sums):
            def backprop(method_, xs, ts):
                pieces = captured if xs is x else ((part, None) for part in self._pieces(xs))
                out, start = [], 0
                for part, values in pieces:
                    values = values if values is not None else self.capture.run(part)
                    out.append(self._propagate(method_, values, ts[start:start + len(part)], sums, dtype))
                    start += len(part)
                return np.concatenate(out)
            return backprop

        def attribute(seed_targets, sums):
            relevance = m.attribute(backprop_in(self.dtype, sums), x, seed_targets)
            if m.conserves and self.dtype != np.float64:  # the trace keeps the first pass's sums
                return self._keep_conservation(m, relevance, logits, seed_targets, x, backprop_in(np.float64, None))
            return relevance, []

        relevance, recomputed = attribute(targets, sums)
        if dual is not None:  # the trace follows the target's walk only
            dual_relevance, dual_recomputed = attribute(dual, None)
            relevance = methods.contrasted(relevance, dual_relevance)
            recomputed = sorted(set(recomputed) | set(dual_recomputed))
        label = m.label if contrast is None else f"{m.label} contrast={contrast}"
        return Explanation(relevance, logits, targets, label, self.channel_axis, sums or [], recomputed)

    def _keep_conservation(self, m, relevance, logits, targets, x, backprop64):
        """Redo in float64 the samples where float32 rounding broke a conserving method's sum.

        Relevance that grows large and cancels (deep networks with signed residual
        streams) can leave float32 a sum far from the logit: a wrong number that
        would otherwise be silent.
        """
        axes = tuple(range(1, relevance.ndim))
        logit = (targets * logits).sum(axis=1) if targets.ndim == 2 else logits[np.arange(len(targets)), targets]
        sums = relevance.sum(axis=axes, dtype=np.float64)
        bad = np.abs(sums - logit) > 1e-3 * np.maximum(np.abs(logit), 1e-6)
        if not bad.any():
            return relevance, []
        relevance = relevance.astype(np.float64)
        redo = np.flatnonzero(bad)
        fixed = self.graph.fixed_batch
        if fixed and fixed > 1:  # a model exported for a fixed batch takes only whole batches
            relevance[redo] = m.attribute(backprop64, x, targets)[redo]
        else:
            relevance[redo] = m.attribute(backprop64, x[redo], targets[redo])
        return relevance, [int(i) for i in redo]

    def _pieces(self, x):
        """Batches for ONNX Runtime.  A fixed-batch model gets whole batches only: padding would add
        samples nobody asked to explain, so another count is left to the capture's shape check."""
        if not x.ndim:
            return [x]
        fixed = self.graph.fixed_batch
        return [part for part, _ in batches(x, self.max_batch, fixed if fixed and len(x) % fixed == 0 else None)]

    def _propagate(self, method, values, targets, sums, dtype):
        bk = self.bk
        ctx = Context(bk, {k: bk.asarray(v, dtype=dtype if np.issubdtype(v.dtype, np.floating) else v.dtype)
                           for k, v in values.items()}, self.graph.constants)
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
            total = lambda a: bk.to_numpy(bk.sample_sum(a, keepdims=False))  # noqa: E731
            sums.append((op.name, op.op_type, total(R), sum(total(r) for r in R_inputs if r is not None)))

        relevance = propagate(self.graph, method, ctx, seed, trace=record if sums is not None else None)
        return bk.to_numpy(relevance)

    def _class_vector(self, logits):
        problem = self.graph.class_scores_problem(logits.shape)
        if problem:
            raise ModelError(f"{self.graph.label}: {problem}")
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"{self.graph.label}: the model's output contains NaN or Inf for this input")
        return logits.reshape(logits.shape[0], -1).astype(np.float64)

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
