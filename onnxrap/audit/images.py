"""Thumbnails and the small pictures behind the per-class means.

Heatmaps use the colour scale of every onnxrap figure (``seismic``, symmetric
around zero: white is zero, red pushed the decision up, blue down).  Small
inputs are enlarged pixel for pixel so that they stay sharp; large ones are
shrunk by averaging, which for a heatmap keeps the relevance of each region.
"""
from __future__ import annotations

import io

import numpy as np

from ..viz import CMAP, as_image, symmetric_limit

THUMB = 96  # a thumbnail's longer side, in pixels
MEAN_SIDE = 64  # per-class means are kept at most this large: memory per class stays small on big inputs


def shrink(picture, side=MEAN_SIDE):
    """Average a 2-D (or H x W x 3) picture down to fit ``side`` (a linear map: means of shrunk pictures are
    shrunk means); pictures already that small come back unchanged, as float64."""
    from PIL import Image

    picture = np.asarray(picture, dtype=np.float64)
    h, w = picture.shape[:2]
    if max(h, w) <= side:
        return picture
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    channels = picture[..., None] if picture.ndim == 2 else picture
    out = np.stack([np.asarray(Image.fromarray(channels[..., c].astype(np.float32), mode="F")
                               .resize(size, Image.BOX)) for c in range(channels.shape[-1])], axis=-1)
    return out[..., 0].astype(np.float64) if picture.ndim == 2 else out.astype(np.float64)


def heatmap_rgb(heatmap, limit=None):
    """A heatmap as RGB bytes on the symmetric scale +-``limit`` (default: its own max |R|); NaN shows white."""
    from matplotlib import colormaps

    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    limit = symmetric_limit(heatmap) if limit is None else limit
    rgba = colormaps[CMAP]((heatmap / limit + 1) / 2, bytes=True)
    return rgba[..., :3]


def input_rgb(display):
    """A display image in [0, 1] (H x W or H x W x 3) as RGB bytes."""
    display = np.clip(np.nan_to_num(np.asarray(display, dtype=np.float64)), 0, 1)
    grey = display.ndim == 2
    rgb = np.repeat(display[..., None], 3, axis=2) if grey else display[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def png(rgb, side=THUMB):
    """RGB bytes -> PNG file bytes, resized so the longer side is ``side`` (enlarged pixel for pixel)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb))
    w, h = image.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def heatmap_thumbnail(heatmap):
    picture = as_image(heatmap)
    if max(picture.shape) > 2 * THUMB:
        picture = shrink(np.nan_to_num(picture), 2 * THUMB)
    return png(heatmap_rgb(picture))


def input_thumbnail(display):
    return None if display is None else png(input_rgb(display))
