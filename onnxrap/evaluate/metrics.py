"""What region perturbation measures, per method x removal x perturbation x step, averaged over the set.

- accuracy: the top class is still the original target;
- the target's logit and its softmax probability;
- AOPC (Samek et al. 2017) per curve: the mean over the grid's steps k (step 0
  included) of score(0) - score(k), for the logit and for the probability;
- concentration (paper eq. 12): with the positive pixels ranked r_1..r_L,
  ``D_K = (1/K) sum_{n<=K} ||pos(r_1) - pos(r_n)||^2`` (squared distance in
  pixels), averaged over the images that have at least K positive pixels; the
  plain (not squared) mean distance is reported beside it.

docs/rules.md, section "Evaluation", gives the definitions with the reasons.
"""
from __future__ import annotations

import math

import numpy as np

from ..api import softmax
from .perturbation import rank_pixels


def concentration_grid(n_pixels, k_max=10000, points=20):
    """K values for D_K: 1, then ``points`` evenly spaced values up to min(k_max, n_pixels)."""
    top = int(min(k_max, n_pixels))
    ks = np.unique(np.round(np.linspace(0, top, points + 1)[1:]).astype(int))
    return [1] + [int(k) for k in ks if k > 1]


def concentration(pixel_relevance, ks):
    """(D_K, mean distance) for one image at each K; NaN where it has fewer than K positive pixels.

    ``pixel_relevance`` keeps its spatial shape: positions are its index tuples.
    """
    r = np.asarray(pixel_relevance, dtype=np.float64)
    order = rank_pixels(r, "positive")
    d_k = np.full(len(ks), np.nan)
    dist = np.full(len(ks), np.nan)
    if len(order) == 0:
        return d_k, dist
    pos = np.stack(np.unravel_index(order, r.shape), axis=1).astype(np.float64)
    sq = ((pos - pos[0]) ** 2).sum(axis=1)
    cum_sq, cum = np.cumsum(sq), np.cumsum(np.sqrt(sq))
    for i, k in enumerate(ks):
        if k <= len(order):
            d_k[i] = cum_sq[k - 1] / k
            dist[i] = cum[k - 1] / k
    return d_k, dist


def aopc(scores):
    """Area over the perturbation curve of one curve ``scores[..., step]``: mean_k (score_0 - score_k)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores[..., :1] - scores))




def curve_summary(scores, targets, pixels, changed, labels):
    """One curve (a removal with a perturbation) as JSON-ready points, and its AOPC.

    ``scores``: (N, steps, classes) class scores of each input at each step; ``pixels``, ``changed``:
    (N, steps) pixels selected and pixels whose value the perturbation really changed; ``labels``
    name the steps.  Each point holds the set's means.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(targets)
    rows = np.arange(n)
    logit = scores[rows, :, targets]  # (N, steps)
    prob = softmax(scores)[rows, :, targets]
    correct = scores.argmax(axis=-1) == np.asarray(targets)[:, None]
    points = [{"step": step, "pixels": float(pixels[:, j].mean()), "pixels_changed": float(changed[:, j].mean()),
               "accuracy": float(correct[:, j].mean()), "logit": float(logit[:, j].mean()),
               "logit_sem": float(logit[:, j].std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
               "probability": float(prob[:, j].mean())}
              for j, step in enumerate(labels)]
    return points, {"logit": aopc(logit), "probability": aopc(prob)}


def concentration_summary(heat, ks):
    """D_K and the mean distance at each K, averaged over the images with at least K positive pixels."""
    d_k = np.full((len(heat), len(ks)), np.nan)
    dist = np.full((len(heat), len(ks)), np.nan)
    for i, image in enumerate(heat):
        d_k[i], dist[i] = concentration(image, ks)
    summary = []
    for j, k in enumerate(ks):
        have = ~np.isnan(d_k[:, j])
        summary.append({"K": int(k), "D_K": float(d_k[have, j].mean()) if have.any() else None,
                        "mean_distance": float(dist[have, j].mean()) if have.any() else None,
                        "n_images": int(have.sum())})
    return summary
