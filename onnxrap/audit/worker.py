"""The unit of work of an audit: one Explainer turning a batch of inputs into records.

The same ``ExplainWorker`` runs in the plain loop, in each ``--workers``
process and as each Ray Data actor, so the three give the same records.  A
batch is a dict of columns (``index``, ``name``, ``label`` with -1 for
unknown, ``payload``: an image path or a model input); the answer is a dict
of columns too: the JSON record, the thumbnails as PNG bytes and, for the
per-class means, the input and each method's heatmap shrunk to at most
``MEAN_SIDE`` pixels (heatmaps scaled to sum |R| = 1, so that every input
weighs the same in a class's mean).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..api import softmax
from ..viz import as_image
from .images import heatmap_thumbnail, input_thumbnail, shrink
from .scores import off_object

TOP = 3  # classes listed per input with their probabilities


@dataclass(frozen=True)
class Settings:
    """What a worker needs to load the model and read inputs as the command does; plain data, so it pickles."""

    model: str
    methods: tuple
    options: dict = field(default_factory=dict)  # method -> its keyword options
    input_name: str | None = None
    output_name: str | None = None
    device: str = "cpu"
    layout: str | None = None
    size: tuple | None = None
    preset: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    resize: str | None = None
    channel_order: str | None = None

    def describe(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if k != "device"}


def rounded(value):
    """Six significant digits: records stay short and equal across batchings of the same inputs."""
    return None if value is None else float(f"{value:.6g}")


class ExplainWorker:
    def __init__(self, settings: Settings):
        from ..api import Explainer
        from ..inputs import preprocess_factory

        self.settings = settings
        self.explainer = Explainer(settings.model, input_name=settings.input_name, output_name=settings.output_name,
                                   device=settings.device)
        if settings.layout:
            self.explainer.layout = settings.layout
        self.make_preprocess = preprocess_factory(self.explainer, self.explainer.layout, lambda note: None,
                                                  size=settings.size, preset=settings.preset, mean=settings.mean,
                                                  std=settings.std, resize=settings.resize,
                                                  channel_order=settings.channel_order)
        shape = self.explainer.input_shape
        self.rank = len(shape) if shape else None

    def load(self, payload):
        """(model input with batch 1, display image in [0, 1] or None)."""
        from ..inputs import array_display, load_input

        if isinstance(payload, str):
            return load_input(payload, self.make_preprocess, self.rank, self.explainer.channel_axis)
        x = np.asarray(payload, dtype=np.float32)[None]
        return x, array_display(x, self.explainer.channel_axis)

    def __call__(self, batch):
        loaded = [self.load(p) for p in batch["payload"]]
        by_shape = {}  # inputs of one shape are explained together
        for k, (x, _) in enumerate(loaded):
            by_shape.setdefault(x.shape, []).append(k)
        logits = [None] * len(loaded)
        heatmaps = [dict() for _ in loaded]
        for members in by_shape.values():
            x = np.concatenate([loaded[k][0] for k in members])
            for m in self.settings.methods:
                exp = self.explainer.explain(x, method=m, **self.settings.options.get(m, {}))
                for j, k in enumerate(members):
                    logits[k] = exp.logits[j]
                    heatmaps[k][m] = as_image(exp.heatmap[j])
        out = {"index": np.asarray(batch["index"], dtype=np.int64), "record": [], "thumb_input": [],
               "mean_input": [], "mean_heat": []}
        for j in range(len(self.settings.methods)):
            out[f"thumb_{j}"] = []
        for k, (name, label) in enumerate(zip(batch["name"], batch["label"])):
            out["record"].append(json.dumps(self._record(int(batch["index"][k]), str(name), int(label), logits[k],
                                                         heatmaps[k])))
            display = loaded[k][1]
            out["thumb_input"].append(input_thumbnail(display) or b"")
            first = heatmaps[k][self.settings.methods[0]]
            small_display = shrink(display) if display is not None and display.shape[:2] == first.shape else None
            heat = []
            for j, m in enumerate(self.settings.methods):
                h = heatmaps[k][m]
                out[f"thumb_{j}"].append(heatmap_thumbnail(h))
                total = float(np.abs(h).sum())
                heat.append(shrink(h / total if total > 0 else h))
            heat = np.stack(heat)
            out["mean_heat"].append(heat)
            out["mean_input"].append(small_display if small_display is not None
                                     else np.zeros(heat.shape[1:]))
        for key in ("record", "thumb_input", *(f"thumb_{j}" for j in range(len(self.settings.methods)))):
            out[key] = np.array(out[key], dtype=object)
        out["mean_input"] = np.stack(out["mean_input"])
        out["mean_heat"] = np.stack(out["mean_heat"])
        return out

    def _record(self, index, name, label, logits, heatmaps):
        probs = softmax(logits)
        predicted = int(np.argmax(probs))
        if label >= len(probs):
            raise InputError(f"{name}: label {label} is out of range: the model has {len(probs)} classes")
        known = label >= 0
        top = np.argsort(-probs, kind="stable")[:TOP]
        return {
            "index": index, "name": name, "label": label if known else None, "predicted": predicted,
            "confidence": rounded(probs[predicted]), "correct": (label == predicted) if known else None,
            "label_probability": rounded(probs[label]) if known else None,
            "top": [[int(c), rounded(probs[c])] for c in top],
            "methods": {m: {"relevance_sum": rounded(float(h.sum())), "off_object": rounded(off_object(h))}
                        for m, h in heatmaps.items()},
        }
