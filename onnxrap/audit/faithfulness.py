"""Faithfulness of the audited heatmaps on a sample, by ``evaluate``'s region perturbation (the paper's Table I).

The sample is ``--faithfulness N`` correctly classified inputs spread evenly
over the records (in input order), written to ``faithfulness/sample.npz`` and
given to ``onnxrap evaluate`` itself, with the ``random`` control beside the
audited methods; its results (``results.json``, ``table.md``, plots) sit in
``faithfulness/`` and a rerun reuses them (``--resume``).  The sanity checks
run on ``--sanity N`` inputs chosen the same way, into ``sanity/``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from ..provenance import code_hash
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
    """``evaluate``'s sanity checks and class sensitivity (``onnxrap.evaluate.sanity``) for ``--sanity N`` inputs
    of the faithfulness sample's kind; the page's summary, or None with ``--sanity 0``.

    The numbers go to ``sanity/`` as ``evaluate --sanity`` writes them (results.json, sanity.csv, table.md,
    sanity.png); a rerun reuses them while the model, the sample and the settings are the same.
    """
    from ..evaluate.report import write_rows
    from ..evaluate.sanity import Sanity, sanity_markdown, sanity_rows, save_sanity_plot

    a = ctx.args
    if not a.sanity:
        return None
    indices, targets = sample(ctx, a.sanity)
    if not indices:
        return {"note": "no correctly classified input to check"}
    out = Path(a.out_dir) / "sanity"
    x = load_inputs(ctx, indices)
    key = sanity_fingerprint(ctx, x, targets)
    path = out / "results.json"
    stored = None
    if path.exists():
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(path.read_text())
    if stored and stored.get("fingerprint") == key:
        ctx.note(f"sanity checks: results exist in {path}; reused")
        results = stored["sanity"]
    else:
        ctx.note(f"sanity checks: cascading randomisation and class sensitivity of {len(indices)} correctly "
                 f"classified inputs -> {out}")
        checks = Sanity(ctx.explainer, x, targets, a.sanity_steps, a.sanity_classes, batch_size=a.batch_size)
        results = {"inputs": len(indices), "indices": indices, "depths": checks.depths,
                   "layers": [op.name for op in checks.top_down], "classes": checks.classes,
                   "methods": {m: checks.run_method(m, ctx.options.get(m, {})) for m in ctx.methods}}
        write_rows(out / "sanity.csv", ["method", "check", "step", "layer", "similarity", "value"],
                   sanity_rows(results))
        atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(sanity_markdown(results)))
        save_sanity_plot(out / "sanity.png", results)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"fingerprint": key, "sanity": results},
                                                                       indent=1)))
    rows = []
    for m, r in results["methods"].items():
        last = r["cascade"][-1]
        rows.append({"method": m, "randomised": {k: last.get(k) for k in ("spearman_abs", "ssim")},
                     "refused": sum("refused" in p for p in r["cascade"]),
                     "top_vs_second": r["classes"]["top_vs_second"]["spearman_abs"],
                     "across": r["classes"]["across"]["abs_pearson"]})
    return {**results, "rows": rows, "all_layers": results["depths"][-1] == len(results["layers"]),
            "files": {"table": "sanity/table.md", "results": "sanity/results.json", "csv": "sanity/sanity.csv",
                      "plot": "sanity/sanity.png"}}


def sanity_fingerprint(ctx, x, targets):
    """What the sanity results depend on: the model, the sample, the methods and the checks' settings."""
    a = ctx.args
    h = hashlib.sha256(Path(a.model).read_bytes())
    h.update(code_hash().encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.asarray(targets, dtype=np.int64).tobytes())
    h.update(json.dumps([[m, sorted((k, str(v)) for k, v in ctx.options.get(m, {}).items())] for m in ctx.methods]
                        + [a.sanity_steps, a.sanity_classes, ctx.explainer.device.name, ctx.explainer.layout]
                        ).encode())
    return h.hexdigest()
