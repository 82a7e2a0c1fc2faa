"""The report: every number from the records in CSV/JSON, the class means as pictures, and ``index.html``.

``index.html`` is rendered with Jinja2 (autoescaped: file and class names
cannot break the page) and opens from ``file://``: its CSS and JS sit beside
it (``audit.css``, ``audit.js``) and the records come as ``data.js``, a script
rather than a fetched JSON file, which browsers refuse on ``file://``.
"""
from __future__ import annotations

import collections
import csv
import heapq
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..graph import shown_shape
from ..evaluate.command import safe_name
from ..viz import atomic_write
from .images import THUMB, heatmap_rgb, input_rgb, png
from .scores import BAND
from .store import thumb_path

HERE = Path(__file__).parent
WORST_LISTED = 24  # worst cases in summary.json and the page's "worst cases" strip
CONFUSION_MATRIX_MAX = 30  # classes up to which the page shows the full matrix (the CSV always has it)


def check_templating():
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise InputError("onnxrap audit writes its page with Jinja2: pip install 'onnxrap[audit]'") from None


@dataclass
class Context:
    args: object
    options: dict  # method -> options
    make_preprocess: object
    explainer: object
    source: object
    store: object
    methods: list
    class_names: list | None
    preprocessing: str
    note: object

    def class_label(self, c):
        names = self.class_names
        if c is None:
            return ""
        return f"{c} ({names[c]})" if names and c < len(names) and names[c] != str(c) else str(c)


def worst_key(record, method):
    """Worst first: wrong answers, most confident first; then right answers, most off the object first."""
    off = record["methods"][method]["off_object"]
    if record["correct"] is False:
        return (1, record["confidence"])
    return (0, -1.0 if off is None else off)


def summarise(ctx):
    """One pass over records.jsonl: records.csv, data.js's records, and the counts behind every table."""
    first = ctx.methods[0]
    total = labelled = correct = 0
    confusion = collections.Counter()
    per_class = collections.defaultdict(lambda: {"n": 0, "labelled": 0, "correct": 0, "confidence": 0.0,
                                                 "off": collections.defaultdict(lambda: [0.0, 0])})
    worst = []
    out = Path(ctx.args.out_dir)
    columns = ["index", "name", "label", "predicted", "correct", "confidence", "label_probability"] + [
        f"{m}_{k}" for m in ctx.methods for k in ("off_object", "relevance_sum")]
    with open(out / ".records.csv.tmp", "w", newline="") as f_csv, open(out / ".data.js.tmp", "w") as f_js:
        w = csv.writer(f_csv)
        w.writerow(columns)
        f_js.write("window.AUDIT_RECORDS = [\n")
        for r in ctx.store.records():  # streamed: a million records never sit in memory together
            index = r["index"]
            total += 1
            cls = r["label"] if r["label"] is not None else r["predicted"]
            c = per_class[cls]
            c["n"] += 1
            c["confidence"] += r["confidence"]
            for m in ctx.methods:
                if r["methods"][m]["off_object"] is not None:
                    c["off"][m][0] += r["methods"][m]["off_object"]
                    c["off"][m][1] += 1
            if r["label"] is not None:
                labelled += 1
                correct += bool(r["correct"])
                c["labelled"] += 1
                c["correct"] += bool(r["correct"])
                confusion[r["label"], r["predicted"]] += 1
            item = (worst_key(r, first), -index)
            if len(worst) < WORST_LISTED:
                heapq.heappush(worst, item)
            else:
                heapq.heappushpop(worst, item)
            w.writerow([r["index"], r["name"], r["label"], r["predicted"], r["correct"], r["confidence"],
                        r["label_probability"]] + [r["methods"][m][k] for m in ctx.methods
                                                   for k in ("off_object", "relevance_sum")])
            f_js.write(json.dumps(r, separators=(",", ":")) + ",\n")
        f_js.write("];\n")
    os.replace(out / ".records.csv.tmp", out / "records.csv")
    os.replace(out / ".data.js.tmp", out / "data.js")
    worst = [-i for _, i in sorted(worst, reverse=True)]
    classes = []
    for cls in sorted(per_class):
        c = per_class[cls]
        classes.append({"class": cls, "name": ctx.class_label(cls), "n": c["n"],
                        "accuracy": c["correct"] / c["labelled"] if c["labelled"] else None,
                        "mean_confidence": c["confidence"] / c["n"],
                        "mean_off_object": {m: total / n for m, (total, n) in c["off"].items()}})
    return {"inputs": total, "labelled": labelled, "correct": correct,
            "accuracy": correct / labelled if labelled else None,
            "confusion": sorted(([int(t), int(p), n] for (t, p), n in confusion.items())),
            "classes": classes, "worst": worst}


def confusion_table(ctx, counts):
    """Rows and columns of the confusion matrix (classes seen as a label or a prediction), row-normalised shade."""
    seen = sorted({t for t, _, _ in counts} | {p for _, p, _ in counts})
    if not seen or len(seen) > CONFUSION_MATRIX_MAX:
        return None
    cell = {(t, p): n for t, p, n in counts}
    rows = []
    for t in seen:
        row_total = sum(cell.get((t, p), 0) for p in seen)
        rows.append({"label": ctx.class_label(t), "cells": [
            {"n": cell.get((t, p), 0), "share": cell.get((t, p), 0) / row_total if row_total else 0,
             "diagonal": t == p} for p in seen]})
    return {"columns": [ctx.class_label(p) for p in seen], "rows": rows}


def write_means(ctx):
    """means/*.png (the mean input and each method's mean heatmap per class) and means.npz."""
    out = Path(ctx.args.out_dir)
    means = ctx.store.means
    arrays, rows = {}, []
    for cls in sorted(means.count):
        picture, heat = means.mean(cls)
        arrays[f"input_{cls}"], arrays[f"heatmap_{cls}"] = picture, heat
        entry = {"class": cls, "name": ctx.class_label(cls), "n": means.count[cls],
                 "input": f"means/class_{cls}_input.png", "heatmaps": []}
        atomic_write(out / entry["input"], lambda tmp, p=picture: Path(tmp).write_bytes(png(input_rgb(p), THUMB)))
        for j, m in enumerate(ctx.methods):
            rel = f"means/class_{cls}_{safe_name(m)}.png"
            atomic_write(out / rel, lambda tmp, h=heat[j]: Path(tmp).write_bytes(png(heatmap_rgb(h), THUMB)))
            entry["heatmaps"].append({"method": m, "path": rel})
        rows.append(entry)

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, methods=np.asarray(ctx.methods), **arrays)

    atomic_write(out / "means.npz", save)
    return rows


def model_facts(ctx):
    """What ``onnxrap inspect`` says about the model, and its op counts."""
    graph = ctx.explainer.graph
    command = [sys.executable, "-m", "onnxrap", "inspect", str(ctx.args.model)]
    for flag, value in (("--input", ctx.args.input_name), ("--output", ctx.args.output_name)):
        if value:
            command += [flag, value]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent.parent)] + [
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    inspected = subprocess.run(command, capture_output=True, text=True, env=env)
    shape = graph.input_shape
    return {
        "path": str(ctx.args.model), "label": graph.label,
        "input": f"{graph.input_name} {shown_shape(shape)} (layout {ctx.explainer.layout})",
        "output": graph.output_name, "explained_output": graph.logits_name,
        "preprocessing": ctx.preprocessing,
        "op_counts": dict(sorted(collections.Counter(n.op_type for n in graph.data_nodes).items())),
        "inspect": (inspected.stdout + inspected.stderr).strip(),
        "explainable": inspected.returncode == 0,
    }


def write_csvs(out, summary):
    def classes(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            methods = sorted({m for c in summary["classes"] for m in c["mean_off_object"]})
            w.writerow(["class", "name", "n", "accuracy", "mean_confidence"]
                       + [f"{m}_mean_off_object" for m in methods])
            for c in summary["classes"]:
                w.writerow([c["class"], c["name"], c["n"], c["accuracy"], c["mean_confidence"]]
                           + [c["mean_off_object"].get(m) for m in methods])

    def confusion(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "predicted", "count"])
            w.writerows(summary["confusion"])

    atomic_write(out / "classes.csv", classes)
    atomic_write(out / "confusion.csv", confusion)


def write(ctx):
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from . import faithfulness

    out = Path(ctx.args.out_dir)
    ctx.note("summarising the records")
    summary = summarise(ctx)
    if summary["inputs"] == 0:
        raise InputError(f"{ctx.args.data}: no inputs to audit")
    means = write_means(ctx)
    model = model_facts(ctx)
    faith = faithfulness.run(ctx)
    sanity = faithfulness.sanity(ctx)
    report = {
        "model": model, "data": str(ctx.args.data), "labels": ctx.source.label_source,
        "methods": {m: ctx.options.get(m, {}) for m in ctx.methods},
        "off_object": {"definition": f"share of the heatmap's positive relevance in the border band (the outer "
                                     f"{BAND:g} of the rows and of the columns on each side)", "band": BAND},
        "explained": "each input's predicted class",
        "summary": summary, "means": means, "faithfulness": faith, "sanity": sanity,
    }
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    write_csvs(out, summary)
    for name in ("audit.css", "audit.js"):
        shutil.copyfile(HERE / "static" / name, out / name)
    page_data = {"methods": ctx.methods, "worst": summary["worst"], "labelled": summary["labelled"] > 0,
                 "classNames": {str(c["class"]): c["name"] for c in summary["classes"]},
                 "offBand": BAND}
    atomic_write(out / "summary.js", lambda tmp: Path(tmp).write_text(
        "window.AUDIT_SUMMARY = " + json.dumps(page_data) + ";\n"))
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    env.filters["num"] = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"
    html = env.get_template("index.html.j2").render(
        report=report, summary=summary, model=model, means=means, faith=faith, sanity=sanity,
        methods=ctx.methods, confusion=confusion_table(ctx, summary["confusion"]),
        top_confusions=sorted((c for c in summary["confusion"] if c[0] != c[1]), key=lambda c: -c[2])[:10],
        class_label=ctx.class_label, band=BAND, thumb_path=thumb_path)
    index = out / "index.html"
    atomic_write(index, lambda tmp: Path(tmp).write_text(html))
    return index
