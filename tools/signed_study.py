"""Issue 14's study: candidate rules for linear ops with signed inputs, side by side.

Registers one method per candidate, ``rap-s-KEY`` (``rap`` with that rule at
``conv.signed`` / ``dense.signed``; ``rap-s-abs`` is ``rap`` itself), ``rap-p-KEY`` (``rap``
with that rule at the projections, ``conv.projection`` / ``dense.projection``) and three diagnostics,
``rap-s-all-abs`` (the size rule at every hidden linear op), ``rap-s-depthwise-abs``
(at depthwise convolutions too) and ``rap-add-toward`` (residual Adds share by the summands
that push the sum's sign), then:

    python tools/signed_study.py mass MODEL PHOTOS [--limit N] [--every 4] [--methods a,b] [--csv F]
    python tools/signed_study.py per-image MODEL PHOTOS [--methods a,b] [--k 10000]
    python tools/signed_study.py figure MODEL IMAGE... [--methods a,b] -o OUT.png
    python tools/signed_study.py random-removal MODEL PHOTOS [--k 10000] [--seeds 5]
    python tools/signed_study.py cli evaluate MODEL PHOTOS --methods rap-s-w2,... -o OUT

``mass``: per method, sum |R| / |logit| over the images, the float32 sum's error and
how many images the float64 redo was needed for.  ``per-image``: which images keep
their class after the top k pixels of each sign are set to the minimum.  ``figure``:
photographs beside their heatmaps.  ``random-removal``: the random control per
preprocessing.  ``cli``: the onnxrap CLI, with the candidates known.
EVALUATION.md (section B, "Signed inputs" and "Issue 14's own setup") gives the runs and their results.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxrap import methods  # noqa: E402
from onnxrap.rules.joins import AddShare  # noqa: E402
from onnxrap.rules.signed import AbsShare, NetSignShare  # noqa: E402


# The candidates that lost (EVALUATION.md): like AbsShare, each shares a unit's relevance and
# then keeps the layer's sum; they differ in what they share by.
class PromoterShare(AbsShare):
    """By promoting contributions only, ``(x_i w_ij)+`` (LRP alpha1-beta0 on a signed input); a unit
    without promoters shares by ``|x w|``."""

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        xp, xn = bk.pos(x), bk.neg(x)
        wp, wn = w.pos, w.neg
        z = fwd(xp, wp) + fwd(xn, wn)  # x+ W+ and x- W-: both >= 0
        s = bk.sdiv(R, z)
        size, w_abs = abs(x), wp - wn
        rest = bk.sdiv(R * (z == 0), fwd(size, w_abs))
        return xp * adj((s, wp)) + xn * adj((s, wn)) + size * adj((rest, w_abs))


class WeightShare(AbsShare):
    """By the weights alone, ignoring the input: ``w_ij^2`` (LRP's w^2 rule) or 1 (the flat rule)."""

    def __init__(self, square: bool):
        self.square = square

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        ones = bk.xp.ones_like(x)
        share = w.pos * w.pos + w.neg * w.neg if self.square else bk.xp.ones_like(w.pos)
        return adj((bk.sdiv(R, fwd(ones, share)), share))


class SignedShare(AbsShare):
    """RAP's sign split, bounded: ``R_i = sum_j R_j (c_ij + |c_ij| 2N_j / (P_j + N_j)) / (P_j + N_j)``
    with ``c_ij = x_i w_ij`` and P, N the sums of its positive and negative parts.  Promoters get
    a positive and inhibitors a negative share as in RAP, scaled by 1 / (P + N) instead of
    1 / (P - N); the missing 2N / (P + N) of R_j is spread by |c|.  Mass grows at most 1.25x a layer."""

    def share(self, op, ctx, R):
        bk = ctx.bk
        x, w, fwd, adj = self._setup(op, ctx)
        xp, xn = bk.pos(x), bk.neg(x)
        wp, wn = w.pos, w.neg
        size, w_abs = abs(x), wp - wn
        total = fwd(size, w_abs)  # P + N
        inhibit = -(fwd(xp, wn) + fwd(xn, wp))  # N
        s = bk.sdiv(R, total)
        return x * adj((s, w.full)) + size * adj((2 * s * bk.sdiv(inhibit, total), w_abs))


CANDIDATES = {"abs": AbsShare(), "plus": PromoterShare(), "w2": WeightShare(square=True),
              "flat": WeightShare(square=False), "split": SignedShare(), "toward": NetSignShare()}
# Issue 14, second round: rules for the projections (signs.py: a linear op whose output reaches a signed
# input unrectified), with AbsShare at the signed inputs as in rap.  Registered as rap-p-KEY; rap-p-toward
# is today's rap, rap-a2-projections the rap before it.
PROJECTION_CANDIDATES = {"abs": AbsShare(), "split": SignedShare(), "toward": NetSignShare(), "plus": PromoterShare(),
                         "w2": WeightShare(square=True)}


def _register(name, positions, rule):
    """``name``: rap with ``rule`` at ``positions`` (methods.py's rule keys)."""
    def factory():
        m = methods.get("rap")
        m.rules.update({key: rule for key in positions})
        m.name = name
        return m

    methods.register(name)(factory)


for _key, _rule in CANDIDATES.items():
    _register(f"rap-s-{_key}", ("conv.signed", "dense.signed"), _rule)
for _key, _rule in PROJECTION_CANDIDATES.items():
    _register(f"rap-p-{_key}", ("conv.projection", "dense.projection"), _rule)


class ByGroups:
    """A diagnostic: ``grouped`` at grouped (depthwise) convolutions, ``other`` elsewhere (a static attribute)."""

    def __init__(self, grouped, other):
        self.grouped, self.other = grouped, other

    def __call__(self, op, ctx, R):
        return (self.grouped if getattr(op, "groups", 1) > 1 else self.other)(op, ctx, R)


@methods.register("rap-s-depthwise-abs")
def _depthwise_abs():
    """A diagnostic: rap with the size rule at depthwise convolutions too."""
    m = methods.get("rap")
    m.rules.update({"linear": ByGroups(AbsShare(), m.rules["linear"])})
    m.name = "rap-s-depthwise-abs"
    return m


class AddToward(AddShare):
    """A diagnostic: a residual Add shares by the summands that push the sum the way it goes,
    ``(a sign(a + b))+``, not by ``|a|`` (rap.ops); where none does, by ``|a|``."""

    def __call__(self, op, ctx, R):
        bk = ctx.bk
        xs = [ctx[name] for name in op.inputs]
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        sign = bk.xp.sign(total)
        parts = [bk.pos(x * sign) for x in xs]
        toward = parts[0]
        for part in parts[1:]:
            toward = toward + part
        rest = super().__call__(op, ctx, R * (toward == 0))
        s = bk.sdiv(R, toward)
        return [bk.unbroadcast(part * s, x.shape) + r for part, x, r in zip(parts, xs, rest)]


@methods.register("rap-add-toward")
def _add_toward():
    """A diagnostic: rap with AddToward at residual Adds (it would change the ResNet golden)."""
    m = methods.get("rap")
    m.rules.update({"add": AddToward(absolute=True, conserve=True)})
    m.name = "rap-add-toward"
    return m


@methods.register("rap-s-all-abs")
def _all_abs():
    """A diagnostic, not a candidate: the size rule at every hidden linear op, signed or not (rap.hidden
    nowhere), to see which layers decide the pixel ranking."""
    m = methods.get("rap")
    m.rules.update({"linear": AbsShare()})
    m.name = "rap-s-all-abs"
    return m


def mass(argv):
    from onnxrap.api import Explainer
    from onnxrap.inputs import Preprocess, read_image

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("photos", type=Path)
    p.add_argument("--limit", type=int, default=6)
    p.add_argument("--every", type=int, default=4, help="take every n-th image of labels.csv (4: the originals)")
    p.add_argument("--methods", default="rap-unbounded," + ",".join(f"rap-s-{k}" for k in CANDIDATES))
    p.add_argument("--csv", type=Path)
    p.add_argument("--preset", help="pixel scaling (default: the model's onnxrap.preprocess)")
    args = p.parse_args(argv)
    e = Explainer(args.model)
    prep = Preprocess.for_model(e.input_shape, e.layout, e.metadata, preset=args.preset)
    with open(args.photos / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:: args.every][: args.limit]
    x = np.concatenate([prep(read_image(args.photos / r["filename"]))[0] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    out = []
    for name in args.methods.split(","):
        t = time.perf_counter()
        ex = e.explain(x, target=y, method=name)
        dt = time.perf_counter() - t
        R = ex.relevance.reshape(len(x), -1).astype(np.float64)
        logit = ex.target_logit
        ratio = np.abs(R).sum(1) / np.abs(logit)
        err = np.abs(R.sum(1) - logit) / np.abs(logit)
        print(f"{name:16s} mass/logit min {ratio.min():10.4g} max {ratio.max():10.4g} "
              f"max rel. sum error {err.max():.2e} redone {len(ex.recomputed)}/{len(x)} {dt:6.1f} s", flush=True)
        out += [(name, r["filename"], lg, rt, er, i in ex.recomputed)
                for i, (r, lg, rt, er) in enumerate(zip(rows, logit, ratio, err))]
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "image", "logit", "mass_over_logit", "rel_sum_error", "redone"])
            w.writerows(out)


def per_image(argv):
    """Which images keep their class after removing the top k pixels of each sign (``min``), per method."""
    from onnxrap.api import Explainer
    from onnxrap.evaluate import Scorer, perturb, rank_pixels
    from onnxrap.inputs import Preprocess, read_image

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("photos", type=Path)
    p.add_argument("--methods", default="rap-unbounded,rap-s-abs")
    p.add_argument("--k", type=int, default=10000)
    p.add_argument("--cache", type=Path, help="folder for each method's relevance (reused when present)")
    args = p.parse_args(argv)
    e = Explainer(args.model)
    scorer = Scorer(e)
    prep = Preprocess.for_model(e.input_shape, e.layout, e.metadata)
    with open(args.photos / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    x = np.concatenate([prep(read_image(args.photos / r["filename"]))[0] for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    photos = {}  # source photograph -> its images' indices (make_eval_photos names them PHOTO_TAG.png)
    for i, r in enumerate(rows):
        photos.setdefault(r["filename"].rsplit("_", 1)[0], []).append(i)
    for name in args.methods.split(","):
        cached = args.cache / f"{name}.npy" if args.cache else None
        if cached and cached.exists():
            R = np.load(cached)
        else:
            R = e.explain(x, target=y, method=name).relevance
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, R)
        heat = R.sum(axis=1)
        line = []
        for removal in ("positive", "negative"):
            batch = []
            for i in range(len(x)):
                flat = x[i].reshape(x.shape[1], -1)
                order = rank_pixels(heat[i], removal)
                batch.append(perturb(flat, order, args.k, "min").reshape(x.shape[1:]))
            kept = scorer.logits(np.stack(batch)).argmax(axis=1) == y
            line.append(f"{removal[:3]} {kept.mean():.2f} " + " ".join(
                "".join("x" if kept[i] else "." for i in members) for members in photos.values()))
        print(f"{name:16s} " + "   ".join(line), flush=True)
    print("images: " + ", ".join(f"{name} ({len(members)})" for name, members in photos.items()))


def random_removal(argv):
    """How many correctly classified images keep their class after ``k`` random pixels are set to the
    minimum, per preprocessing (preset; whole image or the central 87.5%, torchvision's 256 -> 224
    crop), over several random rankings: what the random control measures depends on it."""
    from onnxrap.api import Explainer, softmax
    from onnxrap.evaluate import Scorer, perturb
    from onnxrap.inputs import Preprocess, read_image

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("photos", type=Path)
    p.add_argument("--k", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--presets", default="signed,imagenet")
    args = p.parse_args(argv)
    e = Explainer(args.model)
    scorer = Scorer(e)
    with open(args.photos / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["label"]) for r in rows])
    for preset in args.presets.split(","):
        prep = Preprocess.for_model(e.input_shape, e.layout, e.metadata, preset=preset)
        for kept_side in (1.0, 0.875):
            images = []
            for r in rows:
                image = read_image(args.photos / r["filename"])
                w, h = image.size
                cw, ch = round(w * kept_side), round(h * kept_side)
                images.append(prep(image.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)))[0])
            x = np.concatenate(images)
            logits = scorer.logits(x)
            correct = logits.argmax(axis=1) == y
            prob = softmax(logits)[np.arange(len(y)), y]
            flat = x.reshape(len(x), x.shape[1], -1)
            kept = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                batch = [perturb(flat[i], rng.permutation(flat.shape[2]), args.k, "min").reshape(x.shape[1:])
                         for i in range(len(x))]
                kept.append(float((scorer.logits(np.stack(batch)).argmax(axis=1) == y)[correct].mean()))
            print(f"{preset:9s} centre {kept_side:5.3f}: correct {correct.sum()}/{len(y)}, mean p(label) "
                  f"{prob[correct].mean():.3f}; random {args.k} px kept {np.mean(kept):.2f} "
                  f"(seeds: {' '.join(f'{v:.2f}' for v in kept)})", flush=True)


def figure(argv):
    """Photographs beside their heatmaps under each method, one row per photograph."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from onnxrap.api import Explainer
    from onnxrap.inputs import Preprocess, read_image

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--methods", default="rap-unbounded,rap")
    p.add_argument("-o", "--out", type=Path, required=True)
    args = p.parse_args(argv)
    e = Explainer(args.model)
    prep = Preprocess.for_model(e.input_shape, e.layout, e.metadata)
    shown = [prep(read_image(path)) for path in args.images]
    x = np.concatenate([s[0] for s in shown])
    names = args.methods.split(",")
    fig = Figure(figsize=(2.6 * (1 + len(names)), 2.8 * len(x)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(x), 1 + len(names), squeeze=False)
    labels = e.labels
    for j, name in enumerate(names):
        ex = e.explain(x, method=name)
        for i in range(len(x)):
            heat = ex.heatmap[i]
            limit = float(np.abs(heat).max()) or 1.0
            ratio = np.abs(ex.relevance[i]).sum() / abs(ex.target_logit[i])
            ax = axes[i, 1 + j]
            ax.imshow(heat, cmap="seismic", vmin=-limit, vmax=limit)
            ax.set_title(f"{name}\nmass/logit {ratio:.3g}", fontsize=8)
            ax.axis("off")
            if j == 0:
                axes[i, 0].imshow(shown[i][1])
                title = labels[ex.target[i]] if labels else str(ex.target[i])
                axes[i, 0].set_title(f"{args.images[i].stem}\n{title}", fontsize=8)
                axes[i, 0].axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "mass":
        mass(rest)
    elif command == "per-image":
        per_image(rest)
    elif command == "random-removal":
        random_removal(rest)
    elif command == "figure":
        figure(rest)
    else:
        from onnxrap.cli import main

        sys.exit(main(rest))
