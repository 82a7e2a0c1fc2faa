"""Faithfulness of the audited heatmaps on a sample, by ``evaluate``'s region perturbation (the paper's Table I).

The sample is ``--faithfulness N`` correctly classified inputs spread evenly
over the records (in input order), written to ``faithfulness/sample.npz`` and
given to ``onnxrap evaluate`` itself, with the ``random`` control beside the
audited methods; its results (``results.json``, ``table.md``, plots) sit in
``faithfulness/`` and a rerun reuses them (``--resume``).
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..viz import atomic_write

CONTROL = "random"


def sample(ctx, size):
    """Indices and targets of up to ``size`` correctly classified inputs, evenly spread."""
    right = [(r["index"], r["predicted"]) for r in ctx.store.records() if r["correct"] is not False]
    right.sort()
    if not right:
        return [], []
    picks = np.unique(np.round(np.linspace(0, len(right) - 1, min(size, len(right)))).astype(int))
    return [right[p][0] for p in picks], [right[p][1] for p in picks]


def load_inputs(ctx, indices):
    from ..inputs import load_input

    payloads = ctx.source.payloads
    if isinstance(payloads, np.ndarray):
        return payloads[indices]
    rank = len(ctx.explainer.input_shape) if ctx.explainer.input_shape else None
    return np.concatenate([load_input(payloads[i], ctx.make_preprocess, rank, ctx.explainer.channel_axis)[0]
                           for i in indices])


def run(ctx):
    """Run evaluate on the sample; the page's summary of its results, or None with ``--faithfulness 0``."""
    from ..evaluate import Settings, run as evaluate

    size = ctx.args.faithfulness
    if not size:
        return None
    indices, targets = sample(ctx, size)
    if not indices:
        return {"note": "no correctly classified input to perturb"}
    out = Path(ctx.args.out_dir) / "faithfulness"
    x = load_inputs(ctx, indices)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=np.asarray(targets, dtype=np.int64))

    atomic_write(out / "sample.npz", save)
    a = ctx.args
    methods = tuple(ctx.methods) + ((CONTROL,) if CONTROL not in ctx.methods else ())
    settings = Settings(model=a.model, data=out / "sample.npz", out_dir=out, methods=methods,
                        method_options={m: ctx.options.get(m, {}) for m in ctx.methods}, labels=a.labels,
                        resume=True, quiet=a.quiet, batch_size=a.batch_size, device=a.device,
                        input_name=a.input_name, output_name=a.output_name, layout=a.layout)
    ctx.note(f"faithfulness: region perturbation of {len(indices)} correctly classified inputs -> {out}")
    with contextlib.redirect_stdout(io.StringIO() if a.quiet else sys.stderr):  # its summary: in the page
        evaluate(settings)
    results = json.loads((out / "results.json").read_text())
    perts = results["settings"]["perturbations"]
    rows = []
    for r in results["methods"].values():
        rows.append({"method": r["label"], "control": r["method"] == CONTROL,
                     "positive": [p["accuracy"] for p in r["curves"]["positive"][perts[0]]],
                     "negative": [p["accuracy"] for p in r["curves"]["negative"][perts[0]]],
                     "aopc": {f"{removal} {p}": r["aopc"][removal][p]["logit"]
                              for removal in ("positive", "negative") for p in perts}})
    return {"inputs": len(indices), "indices": indices, "steps": results["settings"]["grid"]["labels"],
            "grid": results["settings"]["grid"]["description"], "perturbation": perts[0], "methods": rows,
            "aopc_columns": [f"{removal} {p}" for removal in ("positive", "negative") for p in perts],
            "files": {"table": "faithfulness/table.md", "results": "faithfulness/results.json",
                      "csv": "faithfulness/results.csv", "plot": f"faithfulness/perturbation_{perts[0]}.png"}}


def sanity(ctx):
    """Issue 11's sanity checks and class sensitivity for the sample: the hook where they plug in.

    They will live in ``onnxrap.evaluate.sanity``; until that module exists the page says so.
    """
    try:
        from ..evaluate import sanity as checks  # noqa: F401
    except ImportError:
        return {"available": False,
                "note": "Sanity checks (model-randomisation test) and class sensitivity are not part of this "
                        "onnxrap version yet (onnxrap.evaluate.sanity, issue 11); this section fills in once "
                        "they are."}
    return {"available": False,
            "note": "onnxrap.evaluate.sanity exists, but this audit version does not run it yet."}
