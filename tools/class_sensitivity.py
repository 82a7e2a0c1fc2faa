"""Class sensitivity on the bundled digits model: do the maps change with the target?

For each of the first N held-out digits (models/digits_holdout.npz) every
method explains all 10 targets; per digit, the Pearson correlation of every
pair of targets' heatmaps is taken, and its absolute value averaged over the
45 pairs and the digits ("mean abs. correlation"); likewise for the
correlation of abs. relevance.  Low means the map depends on the target.

    python tools/class_sensitivity.py [--digits 8] [--methods rap,lrp-a2b1] [--contrast none,others]

Prints a Markdown table; ``--json PATH`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxrap import Explainer  # noqa: E402


def mean_abs_correlation(maps):
    """Mean over pairs of |Pearson correlation| of flattened maps (constant maps count as 0)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1)
    values = [abs(flat[i] @ flat[j]) / (norm[i] * norm[j]) if norm[i] * norm[j] > 0 else 0.0
              for i, j in combinations(range(len(maps)), 2)]
    return float(np.mean(values))


def class_sensitivity(explainer, x, method, contrast):
    """(mean abs. correlation of signed heatmaps, of abs. heatmaps) over the digits, all targets."""
    classes = explainer.explain(x[:1], method="gradient").logits.shape[1]
    signed, absolute = [], []
    for digit in x:
        batch = np.repeat(digit[None], classes, axis=0)
        targets = np.arange(classes)
        if isinstance(contrast, int):  # a class is no contrast to itself: that target is skipped
            batch, targets = batch[targets != contrast], targets[targets != contrast]
        maps = explainer.explain(batch, target=targets, method=method, contrast=contrast).heatmap
        signed.append(mean_abs_correlation(maps))
        absolute.append(mean_abs_correlation(np.abs(maps)))
    return float(np.mean(signed)), float(np.mean(absolute))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_cnn.onnx"))
    p.add_argument("--data", default=str(ROOT / "models" / "digits_holdout.npz"))
    p.add_argument("--digits", type=int, default=8, help="the first N held-out digits")
    p.add_argument("--methods", default="rap,rap-reference,rap-paper,lrp-a2b1,lrp-eps,gradient-x-input")
    p.add_argument("--contrast", default="none,others", help="none, others and/or class indices")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    x = np.load(args.data)["x"][:args.digits]
    explainer = Explainer(args.model)
    contrasts = [None if c == "none" else c if c == "others" else int(c) for c in args.contrast.split(",")]
    rows = []
    print("| method | contrast | mean abs. correlation between targets | correlation of abs. relevance |")
    print("|---|---|---|---|")
    for method in args.methods.split(","):
        for contrast in contrasts:
            signed, absolute = class_sensitivity(explainer, x, method, contrast)
            rows.append(dict(method=method, contrast=str(contrast).lower(), signed=signed, absolute=absolute))
            print(f"| {method} | {str(contrast).lower()} | {signed:.3f} | {absolute:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(digits=args.digits, rows=rows), indent=2))


if __name__ == "__main__":
    main()
