"""Region perturbation's primitives: the grid of steps, the ranking of pixels, and the two perturbations.

For every input the relevance is summed over channels to one value per pixel.
"Positive removal" perturbs the pixels of positive relevance, highest first;
"negative removal" the pixels of negative relevance, most negative first;
pixels of the other sign or of zero relevance are never touched.  At each step
of a grid the top ``k`` pixels (all their channels) are perturbed in one of two
ways:

- ``min``: set to the image's minimum value (over all its pixels and channels);
- ``shuffle``: the selected pixels' values are randomly permuted among them
  (a pixel's channels move together), with a seeded generator.

``k`` is capped at the number of pixels of that sign; the step ``all`` is all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

REMOVALS = ("positive", "negative")
PERTURBATIONS = ("min", "shuffle")
PAPER_STEPS = "0,2000,4000,6000,8000,10000,all"
# The paper's grid as fractions of a 224x224 image (2000 / 50176 = 0.04 ...), with two finer first steps.
DEFAULT_FRACTIONS = "0,0.01,0.02,0.04,0.08,0.12,0.16,0.2,all"
# Controls, not relevance methods: pixels ranked at random (half "positive", half "negative"), or by distance
# from the image centre (the inner half "positive", centre first; the outer half "negative", corners first).
RANDOM, CENTRE = "random", "centre"
CONTROLS = (RANDOM, CENTRE)


@dataclass(frozen=True)
class Grid:
    """Steps of the perturbation curve: pixel counts or fractions of the image's pixels, and ``all``."""

    kind: str  # "counts" or "fractions"
    values: tuple  # ascending numbers, then possibly "all"; always starts with 0

    @classmethod
    def parse(cls, text, kind):
        values, has_all = [], False
        for token in str(text).split(","):
            token = token.strip().lower()
            if not token:
                continue
            if token == "all":
                has_all = True
                continue
            try:
                v = float(token)
            except ValueError:
                raise InputError(f"bad step {token!r} in {text!r} (numbers or 'all')") from None
            if kind == "counts":
                if v < 0 or v != int(v):
                    raise InputError(f"--grid takes pixel counts (whole numbers >= 0) or 'all', got {token!r}")
                v = int(v)
            elif not 0 <= v <= 1:
                raise InputError(f"--fractions takes fractions of the image's pixels in [0, 1] or 'all', got {token!r}")
            values.append(v)
        values = sorted(set(values) | {0})  # step 0 (the unperturbed image) is every curve's reference
        if len(values) + has_all < 2:
            raise InputError(f"the grid {text!r} has no step beyond 0")
        return cls(kind, tuple(values) + (("all",) if has_all else ()))

    @property
    def labels(self):
        return [v if v == "all" else (str(v) if self.kind == "counts" else f"{v:g}") for v in self.values]

    def pixels(self, n_pixels, available):
        """The number of pixels perturbed at each step for an image of ``n_pixels`` with ``available`` of a sign."""
        out = []
        for v in self.values:
            k = available if v == "all" else (v if self.kind == "counts" else int(round(v * n_pixels)))
            out.append(int(min(k, available)))
        return out

    def describe(self):
        unit = "pixels" if self.kind == "counts" else "fractions of the image's pixels"
        return f"{','.join(self.labels)} ({unit}; all = every pixel of that sign)"


def default_grid(spatial_shape):
    """The paper's absolute steps for images of at least 224x224, else fractions."""
    if spatial_shape is not None and len(spatial_shape) >= 2 and min(spatial_shape[-2:]) >= 224:
        return Grid.parse(PAPER_STEPS, "counts")
    return Grid.parse(DEFAULT_FRACTIONS, "fractions")


def channels_first(sample, channel_axis):
    """One sample (no batch axis) -> (channels, pixels) and a function that undoes it."""
    sample = np.asarray(sample)
    if channel_axis is None:
        shape = sample.shape
        return sample.reshape(1, -1), lambda flat: flat.reshape(shape)
    axis = channel_axis - 1 if channel_axis > 0 else channel_axis  # the sample has no batch axis
    moved = np.moveaxis(sample, axis, 0)
    shape = moved.shape
    return moved.reshape(shape[0], -1), lambda flat: np.moveaxis(flat.reshape(shape), 0, axis)


def rank_pixels(pixel_relevance, removal):
    """Flat indices of the pixels of one sign, in removal order (ties: lower index first).

    ``positive``: relevance > 0, highest first; ``negative``: relevance < 0, most negative first.
    """
    r = np.asarray(pixel_relevance, dtype=np.float64).ravel()
    if removal == "positive":
        idx = np.flatnonzero(r > 0)
        return idx[np.argsort(-r[idx], kind="stable")]
    if removal == "negative":
        idx = np.flatnonzero(r < 0)
        return idx[np.argsort(r[idx], kind="stable")]
    raise ValueError(f"unknown removal {removal!r}")


def perturb(flat, order, k, perturbation, rng=None, fill=None):
    """A copy of ``flat`` (channels, pixels) with the pixels ``order[:k]`` perturbed in all channels.

    ``min``: set to ``fill`` (default: the minimum of ``flat``); ``shuffle``: their values permuted
    among them by ``rng``, each pixel's channels together.
    """
    out = np.array(flat, copy=True)
    selected = np.asarray(order[:k])
    if len(selected) == 0:
        return out
    if perturbation == "min":
        out[:, selected] = flat.min() if fill is None else fill
    elif perturbation == "shuffle":
        out[:, selected] = flat[:, selected[rng.permutation(len(selected))]]
    else:
        raise ValueError(f"unknown perturbation {perturbation!r}")
    return out


def shuffle_rng(seed, image, removal, k):
    """The generator for one shuffled image: the same image, sign and k always get the same permutation."""
    return np.random.default_rng([int(seed), int(image), REMOVALS.index(removal), int(k)])
