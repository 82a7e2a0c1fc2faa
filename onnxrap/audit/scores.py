"""Per-input numbers of an audit: the model's confidence and the "off the object" score.

The off-the-object score of a heatmap is the share of its positive relevance
that lies in the border band: the outer ``BAND`` (1/8) of the rows at the top
and at the bottom and of the columns at the left and at the right.  The band
covers 1 - (3/4)^2 = 43.75% of the pixels, so relevance spread evenly scores
about 0.44; relevance on a centred object scores near 0, relevance on frames,
corner text, watermarks or background near the edges scores near 1.  It reads
"on the object" as "in the central region": true of most classification sets,
whose photos are framed on their subject; for others it still says how much of
the evidence sits at the image's edges.  Negative relevance does not count (it
argues against the class).  A heatmap without positive relevance has no score
(None), and so has one that is not a 2-D picture.
"""
from __future__ import annotations

import numpy as np

BAND = 0.125


def border_mask(shape, band=BAND):
    """True on the border band of a 2-D shape: ``round(band * side)`` rows/columns on each side, at least 1."""
    h, w = shape
    by, bx = max(1, int(round(band * h))), max(1, int(round(band * w)))
    mask = np.zeros((h, w), dtype=bool)
    mask[:by], mask[h - by:], mask[:, :bx], mask[:, w - bx:] = True, True, True, True
    return mask


def off_object(heatmap, band=BAND):
    """Share of the positive relevance of a 2-D heatmap in its border band; None without positive relevance
    or for a heatmap that is not 2-D."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or not np.all(np.isfinite(heatmap)):
        return None
    positive = np.maximum(heatmap, 0.0)
    total = positive.sum()
    if not total > 0:
        return None
    return float(positive[border_mask(heatmap.shape, band)].sum() / total)

