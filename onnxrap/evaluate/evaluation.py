"""Region perturbation of one set of correctly classified inputs, one method at a time."""
from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from ..errors import ModelError
from .metrics import concentration_grid, concentration_summary, curve_summary
from .perturbation import (CENTRE, PERTURBATIONS, RANDOM, REMOVALS, channels_first, default_grid, perturb,
                           rank_pixels, shuffle_rng)
from .scoring import Scorer


class NonFiniteRelevance(ModelError):
    """A method gave NaN or Inf relevance: evaluate reports that method as failed and goes on."""


def check_finite(heat, method):
    """``heat`` (N, ...) as it is, or NonFiniteRelevance naming the method and how many inputs failed."""
    finite = np.isfinite(heat).reshape(len(heat), -1).all(axis=1)
    if not finite.all():
        raise NonFiniteRelevance(f"method {method} gave NaN or Inf relevance for {int((~finite).sum())} of "
                                 f"{len(heat)} inputs")
    return heat


class Evaluation:
    """Explains ``x`` for ``targets`` with a method, perturbs the inputs along ``grid`` and scores them.

    ``grid`` None: the default for the inputs' size (see ``default_grid``).  ``quiet``: no progress bars.
    """

    def __init__(self, explainer, x, targets, grid=None, perturbations=PERTURBATIONS, seed=0, batch_size=16,
                 score_batch_size=64, concentration_max=10000, quiet=True, scorer=None):
        self.explainer = explainer
        self.x = np.asarray(x, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.perturbations = tuple(perturbations)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.scorer = scorer or Scorer(explainer, score_batch_size)
        self.quiet = quiet
        self.channel_axis = explainer.channel_axis
        flat, _ = channels_first(self.x[0], self.channel_axis)
        self.n_pixels = flat.shape[1]
        self.spatial_shape = self._spatial_shape()
        self.grid = grid or default_grid(self.spatial_shape)
        self.ks = concentration_grid(self.n_pixels, concentration_max)
        self.base_logits = self.scorer.logits(self.x)

    def _spatial_shape(self):
        shape = self.x.shape[1:]
        if self.channel_axis is None:
            return shape
        axis = self.channel_axis - 1 if self.channel_axis > 0 else len(shape) + self.channel_axis
        return tuple(d for i, d in enumerate(shape) if i != axis)

    def _bar(self, total, label):
        return tqdm(total=total, desc=label, unit="input", disable=self.quiet)

    def heat(self, method, options, label):
        """Per-pixel relevance (N, *spatial) and each input's relevance sum."""
        n = len(self.x)
        heat = np.zeros((n,) + tuple(self.spatial_shape), dtype=np.float64)
        sums = np.zeros(n)
        if method == RANDOM:
            return np.random.default_rng([self.seed, 7]).standard_normal(heat.shape), sums
        if method == CENTRE:
            grids = np.meshgrid(*[np.arange(d) - (d - 1) / 2 for d in self.spatial_shape], indexing="ij")
            distance = np.sqrt(sum(g ** 2 for g in grids))
            heat[:] = np.median(distance) - distance
            return heat, sums
        with self._bar(n, f"{label}: explain") as bar:
            for s in range(0, n, self.batch_size):
                exp = self.explainer.explain(self.x[s:s + self.batch_size],
                                             target=self.targets[s:s + self.batch_size], method=method, **options)
                m = len(exp.target)
                heat[s:s + m] = exp.heatmap.reshape((m,) + tuple(self.spatial_shape))
                sums[s:s + m] = exp.relevance.reshape(m, -1).sum(axis=1)
                bar.update(m)
        return check_finite(heat, label), sums

    def run_method(self, method, options=None, label=None):
        """Every number for one method (or control), as a JSON-ready dict."""
        options = dict(options or {})
        n = len(self.x)
        label = label or method
        start = time.monotonic()
        heat, relevance_sums = self.heat(method, options, label)
        explain_seconds = time.monotonic() - start

        # Every distinct perturbed image once: (image, removal, perturbation, k); k = 0 is the original.
        start_scoring = time.monotonic()
        steps, orders, tasks = {}, {}, []  # steps: (i, removal) -> k per grid step
        for i in range(n):
            for removal in REMOVALS:
                orders[i, removal] = order = rank_pixels(heat[i].ravel(), removal)
                steps[i, removal] = ks = self.grid.pixels(self.n_pixels, len(order))
                tasks += [(i, removal, p, k) for p in self.perturbations for k in sorted(set(ks) - {0})]
        scores = {}
        changed = {}  # pixels whose value really changed (setting a pixel already at the minimum changes nothing)
        flats = {}
        chunk = self.scorer.chunk
        with self._bar(len(tasks), f"{label}: score") as bar:
            for s in range(0, len(tasks), chunk):
                batch = tasks[s:s + chunk]
                images = []
                for i, removal, perturbation, k in batch:
                    if i not in flats:
                        flats.clear()  # tasks come image by image: keep one image's flat view
                        flats[i] = channels_first(self.x[i], self.channel_axis)
                    flat, unflatten = flats[i]
                    rng = shuffle_rng(self.seed, i, removal, k) if perturbation == "shuffle" else None
                    moved = perturb(flat, orders[i, removal], k, perturbation, rng)
                    changed[i, removal, perturbation, k] = int(np.any(moved != flat, axis=0).sum())
                    images.append(unflatten(moved))
                for task, row in zip(batch, self.scorer.logits(np.stack(images))):
                    scores[task] = row
                bar.update(len(batch))
        scoring_seconds = time.monotonic() - start_scoring

        curves, aopcs = {}, {}
        for removal in REMOVALS:
            for perturbation in self.perturbations:
                at = lambda i, k: self.base_logits[i] if k == 0 else scores[i, removal, perturbation, k]  # noqa: E731
                grid_scores = np.stack([[at(i, k) for k in steps[i, removal]] for i in range(n)])
                pixels = np.array([steps[i, removal] for i in range(n)], dtype=np.float64)
                moved = np.array([[changed[i, removal, perturbation, k] if k else 0 for k in steps[i, removal]]
                                  for i in range(n)], dtype=np.float64)
                points, area = curve_summary(grid_scores, self.targets, pixels, moved, self.grid.labels)
                curves.setdefault(removal, {})[perturbation] = points
                aopcs.setdefault(removal, {})[perturbation] = area

        flat_heat = heat.reshape(n, -1)
        return {
            "method": method, "label": label, "options": options,
            "pixels_positive": float((flat_heat > 0).sum(axis=1).mean()),
            "pixels_negative": float((flat_heat < 0).sum(axis=1).mean()),
            "relevance_sum_mean": float(relevance_sums.mean()),
            "seconds": {"explain": round(explain_seconds, 2), "score": round(scoring_seconds, 2),
                        "perturbed_images": len(tasks)},
            "curves": curves, "aopc": aopcs, "concentration": concentration_summary(heat, self.ks),
        }
