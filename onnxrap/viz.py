"""Figures: the input beside its heatmaps, red for positive and blue for negative.

Colour scales are symmetric around zero (``seismic``, +-max|R|) as in the
paper's figures, so white is exactly zero relevance.  Files are written
atomically: a failed run never leaves a half-written PNG behind.
"""
from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import InputError

CMAP = "seismic"


def symmetric_limit(heatmap) -> float:
    limit = float(np.max(np.abs(heatmap))) if np.size(heatmap) else 0.0
    return limit if limit > 0 else 1.0


def temporary_beside(path) -> str:
    """A new empty file in ``path``'s folder with a hidden name, to be renamed to ``path`` when complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; outputs are ordinary files
    return tmp


def atomic_write(path, write):
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _exists(path):
    try:
        return path.exists()
    except OSError:  # a name too long for the file system: making it says so
        return False


class OutputFolder:
    """Where explain writes, all or nothing, as a context manager.

    Entering makes the folder and any missing parents and writes a probe file there, so that
    every path error (a file in the way, no permission, a name too long) is one line before any
    work.  Files go to temporary names beside their final ones and are renamed only by
    ``commit``; leaving on an error removes the temporary files and the folders made here.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.staged = []  # (temporary, final)
        self.created = []  # folders made here, deepest first

    def __enter__(self):
        chain = [self.folder, *self.folder.parents]
        missing = chain[:next(i for i, d in enumerate(chain) if _exists(d))]
        existing = chain[len(missing)]
        if not existing.is_dir():
            raise InputError(f"{existing}: exists and is not a folder (-o names where the results go)")
        try:
            for d in reversed(missing):
                d.mkdir()
                self.created.insert(0, d)
            Path(temporary_beside(self.folder / "probe")).unlink()
        except OSError as exc:
            self.abandon()
            raise InputError(f"{self.folder}: cannot write there ({exc.strerror or exc})") from None
        return self

    @classmethod
    def check(cls, folder):
        """Raise the one-line error that writing into ``folder`` would meet, and leave nothing behind."""
        with cls(folder) as out:
            out.abandon()

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            self.abandon()

    def path(self, name):
        return self.folder / name

    def _stage(self, name, write):
        final = self.folder / name
        try:
            tmp = temporary_beside(final)
            self.staged.append((tmp, final))
            write(tmp)
        except OSError as exc:
            raise InputError(f"{final}: cannot write ({exc.strerror or exc})") from None
        return final

    def write_text(self, name, text):
        return self._stage(name, lambda tmp: Path(tmp).write_text(text))

    def save_npy(self, name, array):
        return self._stage(name, lambda tmp: np.save(tmp, array, allow_pickle=False))

    def save_figure(self, name, *args, **kw):
        return self._stage(name, lambda tmp: save_explanation_figure(tmp, *args, **kw))

    def commit(self):
        """Every staged file to its final name; on failure none of them stays."""
        done = []
        try:
            for tmp, final in self.staged:
                os.replace(tmp, final)
                done.append(final)
        except OSError as exc:
            for final in done:
                final.unlink(missing_ok=True)
            raise InputError(f"{self.folder}: cannot write ({exc.strerror or exc})") from None
        self.staged = []

    def abandon(self):
        """Remove the staged files and the folders this run created."""
        for tmp, _ in self.staged:
            Path(tmp).unlink(missing_ok=True)
        self.staged = []
        for d in self.created:
            try:
                d.rmdir()
            except OSError:
                pass  # not empty, or never made


def _show_input(ax, image):
    if image is None:
        ax.set_axis_off()
        return
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("input")
    ax.set_axis_off()


def as_image(heatmap):
    """A 2-D picture of any heatmap: features as a strip, a volume as a grid of slices along its first axis."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim == 1:
        return heatmap[None, :]
    if heatmap.ndim == 2:
        return heatmap
    depth = heatmap.shape[0]
    slices = heatmap.reshape(depth, heatmap.shape[1], -1)
    cols = int(np.ceil(np.sqrt(depth)))
    rows = -(-depth // cols)
    h, w = slices.shape[1:]
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for d in range(depth):
        r, c = divmod(d, cols)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = slices[d]
    return grid


def _show_heatmap(fig, ax, heatmap, title, background=None):
    limit = symmetric_limit(np.nan_to_num(heatmap))
    heatmap = as_image(heatmap)
    if background is not None and background.shape[:2] != heatmap.shape:
        background = None
    if background is not None:
        gray = background if background.ndim == 2 else background.mean(axis=2)
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        shown = ax.imshow(heatmap, cmap=CMAP, vmin=-limit, vmax=limit, alpha=0.6, interpolation="nearest")
    else:
        shown = ax.imshow(heatmap, cmap=CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)


PANELS_PER_ROW = 4  # more methods wrap into further rows, not one ever wider strip


# Caption characters per panel column: a 3.2-inch column holds about 38 characters of 10-point text.
CAPTION_CHARS_PER_COLUMN = 34


def save_explanation_figure(path, image, heatmaps, caption, overlay=False):
    """``explanation_figure`` written to ``path``."""
    fig = explanation_figure(image, heatmaps, caption, overlay)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def explanation_figure(image, heatmaps, caption, overlay=False) -> Figure:
    """The input, then each ``(title, heatmap)``, in rows of ``PANELS_PER_ROW``; with ``overlay``
    each heatmap over the input."""
    panels = 1 + len(heatmaps)
    cols = min(panels, PANELS_PER_ROW)
    rows = -(-panels // cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows + 0.4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    _show_input(axes[0], image)
    for ax, (title, heatmap) in zip(axes[1:], heatmaps):
        _show_heatmap(fig, ax, heatmap, title, background=image if overlay else None)
    for ax in axes[panels:]:
        ax.set_axis_off()
    fig.suptitle(textwrap.fill(caption, width=CAPTION_CHARS_PER_COLUMN * cols), fontsize=10)
    fig.tight_layout()
    return fig
