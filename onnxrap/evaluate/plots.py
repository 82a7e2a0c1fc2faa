"""The figures ``onnxrap evaluate`` draws: the perturbation curves and the concentration D_K."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def save_plots(out_dir, results):
    """accuracy/logit/probability vs pixels perturbed per perturbation, and D_K vs K."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from ..viz import atomic_write

    written = []
    grid = results["settings"]["grid"]
    labels = grid["labels"]
    methods = list(results["methods"].values())
    colours = [f"C{i % 10}" for i in range(len(methods))]
    xs = np.arange(len(labels))
    # A method whose maps hold no pixels of one sign removes nothing there: its flat curve would read as the
    # ideal one, so it is left out and the legend says why.
    removals = [[removal for removal in ("positive", "negative") if r.get(f"pixels_{removal}", 1) > 0]
                for r in methods]
    legend = [Line2D([], [], color=c, marker="o", markersize=3,
                     label=r["label"] + "".join(f"\n(no {removal} pixels)" for removal in ("positive", "negative")
                                                if removal not in drawn))
              for r, c, drawn in zip(methods, colours, removals)]
    legend += [Line2D([], [], color="k", linestyle="-", label="positive removal"),
               Line2D([], [], color="k", linestyle="--", label="negative removal")]
    for perturbation in results["settings"]["perturbations"]:
        fig = Figure(figsize=(16, 4.4), dpi=90)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        for ax, metric, title in zip(axes, ("accuracy", "logit", "probability"),
                                     ("accuracy (top class unchanged)", "mean target logit",
                                      "mean target probability")):
            for r, colour, drawn in zip(methods, colours, removals):
                for removal, style in (("positive", "-"), ("negative", "--")):
                    if removal not in drawn:
                        continue
                    ys = [p[metric] for p in r["curves"][removal][perturbation]]
                    ax.plot(xs, ys, style, color=colour, marker="o", markersize=3)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=45 if grid["kind"] == "counts" else 0, fontsize=8)
            unit = "pixels perturbed" if grid["kind"] == "counts" else "fraction of the image's pixels perturbed"
            ax.set_xlabel(unit + " (all: every pixel of that sign)", fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].set_ylim(-0.02, 1.02)
        fig.legend(handles=legend, loc="center right", fontsize=8)
        fig.suptitle(f"perturbation '{perturbation}': solid = positive removal, dashed = negative removal "
                     f"({results['images']['evaluated']} inputs)", fontsize=10)
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        path = Path(out_dir) / f"perturbation_{perturbation}.png"
        atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, format="png"))
        written.append(path)

    # D_K only where at least half the set has K positive pixels: past that the mean is over a shrinking subset.
    n = results["images"]["evaluated"]
    fig = Figure(figsize=(12, 4.4), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for r, colour in zip(methods, colours):
        points = [c for c in r["concentration"] if c["D_K"] is not None and 2 * c["n_images"] >= n]
        ks = [c["K"] for c in points]
        axes[0].plot(ks, [c["D_K"] for c in points], color=colour, marker="o", markersize=3, label=r["label"])
        axes[1].plot(ks, [c["mean_distance"] for c in points], color=colour, marker="o", markersize=3,
                     label=r["label"])
    axes[0].set_title("D_K (eq. 12): mean squared distance to the top pixel", fontsize=10)
    axes[0].set_ylabel("pixels^2")
    axes[1].set_title("mean (not squared) distance to the top pixel", fontsize=10)
    axes[1].set_ylabel("pixels")
    for ax in axes:
        ax.set_xlabel("K (top positive pixels; shown while >= half the inputs have K)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "concentration.png"
    atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, format="png"))
    written.append(path)
    return written
