"""The files ``onnxrap evaluate`` writes: results.json, results.csv (every number as a row), table.md
(the paper's Table I), and the lines it prints."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .perturbation import REMOVALS
from .plots import save_plots
from .sanity import sanity_markdown, sanity_rows, save_sanity_plot


def results_rows(results):
    """Every number as flat rows: method, metric, removal, perturbation, step, pixels, value, n."""
    rows = []
    for r in results["methods"].values():
        m = r["label"]
        for removal, per in r["curves"].items():
            for perturbation, curve in per.items():
                for point in curve:
                    for metric in ("accuracy", "logit", "logit_sem", "probability", "pixels_changed"):
                        rows.append([m, metric, removal, perturbation, point["step"], point["pixels"],
                                     point[metric], results["images"]["evaluated"]])
                for metric, value in r["aopc"][removal][perturbation].items():
                    rows.append([m, f"aopc_{metric}", removal, perturbation, "", "", value,
                                 results["images"]["evaluated"]])
        for point in r["concentration"]:
            for metric in ("D_K", "mean_distance"):
                rows.append([m, metric, "positive", "", point["K"], point["K"], point[metric], point["n_images"]])
    return rows


def write_csv(path, results):
    write_rows(path, ["method", "metric", "removal", "perturbation", "step", "pixels", "value", "n_images"],
               results_rows(results))


def write_rows(path, header, rows):
    from ..viz import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for row in rows:
                w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])

    atomic_write(path, write)


def table_markdown(results):
    """The paper's Table I: per removal, rows method x (accuracy %, mean target logit, mean probability),
    columns the steps; each cell ``min (shuffle)``."""
    meta = results["images"]
    grid = results["settings"]["grid"]
    perts = results["settings"]["perturbations"]
    lines = [f"# Region perturbation: {results['model']}", "",
             f"{meta['evaluated']} correctly classified inputs from {results['data']} "
             f"({meta['dropped_misclassified']} misclassified of {meta['total']} dropped"
             f"{'; limited to ' + str(meta['limit']) if meta.get('limit') else ''}). "
             f"Steps: {grid['description']}.", ""]
    if perts == ["min", "shuffle"]:
        lines.append("Each cell: perturbation `min` (pixels set to the image's minimum), "
                     "in parentheses `shuffle` (the selected pixels permuted among themselves), as in the paper.")
    else:
        lines.append(f"Perturbation: {', '.join(perts)}.")
    lines.append("Accuracy: % of inputs whose top class is still the original target. "
                 "Logit / probability: mean over the set of the original target's logit / softmax probability.")
    lines.append("")
    lines += failed_lines(results.get("failed"))

    def cell(r, removal, metric, j, fmt):
        values = [r["curves"][removal][p][j][metric] for p in perts]
        values = [v * 100 if metric == "accuracy" else v for v in values]
        text = fmt.format(values[0])
        return text + "".join(f" ({fmt.format(v)})" for v in values[1:])

    steps = grid["labels"]
    for removal in REMOVALS:
        lines.append(f"## {removal.capitalize()} removal")
        lines.append("")
        lines.append("| method | metric | " + " | ".join(steps) + " |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in steps) + " |")
        for r in results["methods"].values():
            for metric, name, fmt in (("accuracy", "accuracy %", "{:.1f}"), ("logit", "logit", "{:.2f}"),
                                      ("probability", "probability", "{:.3f}")):
                lines.append(f"| {r['label'] if metric == 'accuracy' else ''} | {name} | "
                             + " | ".join(cell(r, removal, metric, j, fmt) for j in range(len(steps))) + " |")
        for p in perts:
            pixels = " | ".join(
                "/".join(f"{r['curves'][removal][p][j]['pixels']:.0f}" for r in results["methods"].values())
                for j in range(len(steps)))
            moved = " | ".join(
                "/".join(f"{r['curves'][removal][p][j]['pixels_changed']:.0f}" for r in results["methods"].values())
                for j in range(len(steps)))
            if p == perts[0]:
                lines.append(f"| pixels selected (mean; methods in row order) | | {pixels} |")
            lines.append(f"| of which changed by {p} | | {moved} |")
        lines.append("")
    lines.append("## AOPC (mean over the steps, step 0 included, of score at step 0 minus score at step k)")
    lines.append("")
    head = [f"{rm} {p} {s}" for rm in REMOVALS for p in perts for s in ("logit", "prob.")]
    lines.append("| method | " + " | ".join(head) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in head) + " |")
    for r in results["methods"].values():
        vals = []
        for rm in REMOVALS:
            for p in perts:
                vals += [f"{r['aopc'][rm][p]['logit']:.3f}", f"{r['aopc'][rm][p]['probability']:.4f}"]
        lines.append(f"| {r['label']} | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("## Concentration D_K (paper eq. 12: mean squared distance, in pixels^2, of the top K "
                 "positive pixels from the top one)")
    lines.append("")
    first = next(iter(results["methods"].values()))
    ks = [c["K"] for c in first["concentration"]]
    shown = [j for j in range(len(ks)) if j in (0, len(ks) - 1) or j % max(1, len(ks) // 6) == 0]
    lines.append("| method | positive pixels (mean) | " + " | ".join(f"K={ks[j]}" for j in shown) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in shown) + " |")
    for r in results["methods"].values():
        vals = []
        for j in shown:
            c = r["concentration"][j]
            vals.append("-" if c["D_K"] is None else f"{c['D_K']:.1f} ({c['n_images']})")
        lines.append(f"| {r['label']} | {r['pixels_positive']:.0f} | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("In parentheses: how many inputs have at least K positive pixels (the mean is over those).")
    lines.append("")
    return "\n".join(lines)


def failed_lines(failed):
    """The methods left out of a table, each with why (Markdown lines)."""
    return [f"**Not evaluated:** {label}: {why}." for label, why in (failed or {}).items()] + ([""] if failed else [])


def write_outputs(out_dir, results):
    """Every file of the report into ``out_dir``; returns their paths."""
    from ..viz import atomic_write

    out_dir = Path(out_dir)
    atomic_write(out_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    write_csv(out_dir / "results.csv", results)
    checked = results.get("sanity", {}).get("methods")  # none where every method failed
    table = table_markdown(results) + ("\n" + sanity_markdown(results["sanity"]) if "sanity" in results else "")
    atomic_write(out_dir / "table.md", lambda tmp: Path(tmp).write_text(table))
    written = [out_dir / "results.json", out_dir / "results.csv", out_dir / "table.md", *save_plots(out_dir, results)]
    if checked:
        write_rows(out_dir / "sanity.csv", ["method", "check", "step", "layer", "similarity", "value"],
                   sanity_rows(results["sanity"]))
        written += [out_dir / "sanity.csv", save_sanity_plot(out_dir / "sanity.png", results["sanity"])]
    return written


def summary_lines(results):
    """The accuracy curves of the first perturbation, one line per method, for the terminal."""
    labels = results["settings"]["grid"]["labels"]
    perts = results["settings"]["perturbations"]
    lines = [f"{results['images']['evaluated']} inputs; accuracy at steps {','.join(labels)} "
             f"({perts[0]} perturbation):"]
    for r in results["methods"].values():
        pos = " ".join(f"{p['accuracy']:.2f}" for p in r["curves"]["positive"][perts[0]])
        neg = " ".join(f"{p['accuracy']:.2f}" for p in r["curves"]["negative"][perts[0]])
        lines.append(f"  {r['label']:<22} positive removal {pos} | negative removal {neg}")
    lines += [f"  {label:<22} not evaluated: {why}" for label, why in results.get("failed", {}).items()]
    return lines
