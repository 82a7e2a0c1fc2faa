"""Candidate rules for linear ops whose input has a floor (signs.py: a SiLU's, HardSwish's, Mish's
output, negative only down to a finite bound): rap's maps on EfficientNet-B0-style networks are all
positive with the size rule there (docs/rules.md, signed.floored; EVALUATION.md, section D).

Registers ``rap-f-KEY``: ``rap`` with the candidate KEY at ``conv.floored`` / ``dense.floored``
(``rap-f-abs``, the size rule there, is ``rap-floors-signed``), and ``rap-fn-KEY``: the same, but rap's
projection rule (NetSignShare) at the floored ops that write into a signed stream (signs.py's
``writes_signed_stream``), as at a projection reading a Relu's output (``rap-fn-prod`` is
``rap``).  Then:

    python tools/floored_study.py stats MODEL DATA.npz [--methods a,b] [--limit N]
    python tools/floored_study.py figure MODEL DATA.npz --index 0,1,2 [--methods a,b] -o OUT.png
    python tools/floored_study.py cli evaluate MODEL DATA.npz --methods rap-f-prod,... -o OUT

``stats``: per method, the share of negative pixels (heatmap summed over channels), of negative pixels
on the ink (x != 0), the overlap (of the ink pixels where gradient x input, blurred, is negative, the
share the method marks negative: chance is the share on the ink), sum |R| / |logit|, the largest
relative error of the sum, and how many inputs needed the float64 redo.  ``figure``:
inputs beside their heatmaps.  ``cli``: the onnxrap CLI with the candidates known.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxrap import methods  # noqa: E402
from onnxrap.rules.linear import RapHidden  # noqa: E402
from onnxrap.rules.signed import AbsShare, FlooredShare, SignedProductA2  # noqa: E402


class PositivePartA2(RapHidden):
    """rap.hidden on ``x+`` alone, as if the floored input were a ReLU's: ``x-`` gets nothing."""

    def __init__(self):
        super().__init__(per_sign=False, conserve=True)

    def parts(self, op, ctx, R):
        return super().parts(op, ctx, R)[:1]


class PositiveA2NegativeSize(RapHidden):
    """rap.hidden on ``x+`` for the share of each unit's relevance that ``x+`` moves by size, and the
    size rule (AbsShare) on ``x-`` for the rest: ``R-share_j = R_j L_|W|(|x-|)_j / L_|W|(|x|)_j``."""

    def __init__(self):
        super().__init__(per_sign=False, conserve=True)

    def parts(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        xp, small = bk.pos(x), -bk.neg(x)
        w_abs = w.pos - w.neg
        size_p, size_n = fwd(xp, w_abs), fwd(small, w_abs)
        s_n = bk.sdiv(R, size_p + size_n)
        Rp = R * bk.sdiv(size_p, size_p + size_n)
        conv = op.family == "conv"
        return [self._part(bk, Rp, xp, w.pos, 1.0, w.neg, -1.0, conv, fwd, adj), small * adj((s_n, w_abs))]


CANDIDATES = {"abs": AbsShare(), "a2": RapHidden(per_sign=False, conserve=True), "prod": SignedProductA2(),
              "plus": PositivePartA2(), "posabs": PositiveA2NegativeSize()}


def _register(name, keys, rule):
    def factory():
        m = methods.get("rap")
        m.rules.update({key: rule for key in keys})
        m.name = name
        return m

    methods.register(name)(factory)


for _key, _rule in CANDIDATES.items():
    _register(f"rap-f-{_key}", ("conv.floored", "dense.floored"), _rule)
    _register(f"rap-fn-{_key}", ("conv.floored", "dense.floored"), FlooredShare(hidden=_rule))


def _load(model, data, limit):
    from onnxrap.api import Explainer

    e = Explainer(model)
    d = np.load(data)
    x, y = d["x"][:limit], d["y"][:limit]
    return e, x, y


def stats(argv):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data", type=Path)
    p.add_argument("--methods", default="rap-floors-signed,rap,rap-f-prod,lrp-a2b1,integrated-gradients,gradient-x-input")
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    e, x, y = _load(args.model, args.data, args.limit)
    ink = x.sum(axis=1).reshape(len(x), -1) != 0  # where gradient x input can be nonzero
    reference = _blurred(e.explain(x, target=y, method="gradient-x-input").relevance.sum(axis=1))
    against = ink & (reference < 0)
    print(f"{'method':20s} {'neg px':>7s} {'neg ink':>7s} {'overlap':>7s} "
          f"{'mass/logit median':>17s} {'(max)':>8s} {'max rel err':>11s} redone")
    for name in args.methods.split(","):
        ex = e.explain(x, target=y, method=name)
        heat = ex.relevance.sum(axis=1).reshape(len(x), -1)
        R = ex.relevance.reshape(len(x), -1).astype(np.float64)
        ratio = np.abs(R).sum(1) / np.abs(ex.target_logit)
        err = np.abs(R.sum(1) - ex.target_logit) / np.abs(ex.target_logit)
        print(f"{name:20s} {(heat < 0).mean():7.3f} {(heat < 0)[ink].mean():7.3f} {(heat < 0)[against].mean():7.3f} "
              f"{np.median(ratio):17.3g} {ratio.max():8.3g} {err.max():11.1e} {len(ex.recomputed)}/{len(x)}", flush=True)


def _blurred(heat):
    """Each map smoothed by a 5x5 binomial kernel (zero outside), flattened: gradient x input's sign flips
    from pixel to pixel, so its regions, not its pixels, are compared."""
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    for axis in (1, 2):
        heat = np.apply_along_axis(np.convolve, axis, heat, kernel, mode="same")
    return heat.reshape(len(heat), -1)


def figure(argv):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("data", type=Path)
    p.add_argument("--index", default="0,1,2,3")
    p.add_argument("--methods", default="rap-floors-signed,rap,gradient-x-input")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    e, x, y = _load(args.model, args.data, None)
    index = [int(i) for i in args.index.split(",")]
    x, y = x[index], y[index]
    names = args.methods.split(",")
    fig = Figure(figsize=(1.9 * (1 + len(names)), 2.0 * len(x)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(x), 1 + len(names), squeeze=False)
    for j, name in enumerate(names):
        ex = e.explain(x, target=y, method=name)
        for i in range(len(x)):
            heat = ex.relevance[i].sum(axis=0)
            limit = float(np.abs(heat).max()) or 1.0
            ax = axes[i, 1 + j]
            ax.imshow(heat, cmap="seismic", vmin=-limit, vmax=limit)
            ax.set_title(f"{name}\nnegative px {(heat < 0).mean():.2f}", fontsize=7)
            ax.axis("off")
            if j == 0:
                axes[i, 0].imshow(x[i, 0], cmap="gray")
                axes[i, 0].set_title(f"holdout #{index[i]}, label {y[i]}", fontsize=7)
                axes[i, 0].axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "stats":
        stats(rest)
    elif command == "figure":
        figure(rest)
    else:
        from onnxrap.cli import main

        sys.exit(main(rest))
