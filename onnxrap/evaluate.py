"""Faithfulness evaluation by region perturbation (spec section D; paper section V.B).

For every correctly classified input and every method, the relevance is
computed once and summed over channels to one value per pixel.  "Positive
removal" perturbs the pixels of positive relevance, highest first; "negative
removal" the pixels of negative relevance, most negative first; pixels of the
other sign or of zero relevance are never touched.  At each step of a grid the
top ``k`` pixels (all their channels) are perturbed in one of two ways:

- ``min``: set to the image's minimum value (over all its pixels and channels);
- ``shuffle``: the selected pixels' values are randomly permuted among them
  (a pixel's channels move together), with a seeded generator.

``k`` is capped at the number of pixels of that sign; the step ``all`` is all
of them.  The perturbed images are scored by a plain ONNX Runtime session.

Metrics, per method x removal x perturbation x step, averaged over the set:
accuracy (the top class is still the original target), the target's logit and
its softmax probability.  AOPC (Samek et al. 2017) per curve:
``mean over the grid's steps k (step 0 included) of score(0) - score(k)``, for
the logit and for the probability.  Concentration (paper eq. 12): with the
positive pixels ranked r_1..r_L, ``D_K = (1/K) sum_{n<=K} ||pos(r_1) -
pos(r_n)||^2`` (squared distance in pixels), averaged over the images that
have at least K positive pixels; the plain (not squared) mean distance is
reported beside it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError, first_line

REMOVALS = ("positive", "negative")
PERTURBATIONS = ("min", "shuffle")
PAPER_STEPS = "0,2000,4000,6000,8000,10000,all"
# The paper's grid as fractions of a 224x224 image (2000 / 50176 = 0.04 ...), with two finer first steps.
DEFAULT_FRACTIONS = "0,0.01,0.02,0.04,0.08,0.12,0.16,0.2,all"
DEFAULT_METHODS = "rap,rap-reference,lrp-a2b1,gradient-x-input"
RESULTS_VERSION = 2
# Controls, not relevance methods: pixels ranked at random (half "positive", half "negative"), or by distance
# from the image centre (the inner half "positive", centre first; the outer half "negative", corners first).
RANDOM, CENTRE = "random", "centre"
CONTROLS = (RANDOM, CENTRE)


# -- the grid ----------------------------------------------------------------------------------------------------

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
                    raise InputError(f"--steps takes pixel counts (whole numbers >= 0) or 'all', got {token!r}")
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


def concentration_grid(n_pixels, k_max=10000, points=20):
    """K values for D_K: 1, then ``points`` evenly spaced values up to min(k_max, n_pixels)."""
    top = int(min(k_max, n_pixels))
    ks = np.unique(np.round(np.linspace(0, top, points + 1)[1:]).astype(int))
    return [1] + [int(k) for k in ks if k > 1]


# -- per-image primitives ------------------------------------------------------------------------------------------

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


def softmax(logits):
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def aopc(scores):
    """Area over the perturbation curve of one curve ``scores[..., step]``: mean_k (score_0 - score_k)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores[..., :1] - scores))


# -- scoring -------------------------------------------------------------------------------------------------------

class Scorer:
    """A plain ONNX Runtime session on the model that returns the class scores the explainer explains.

    Where those are not a model output (a final Softmax is explained through), they are added as one.
    """

    def __init__(self, explainer, batch_size=64):
        graph = explainer.graph
        self.graph = graph
        self.batch_size = max(1, int(batch_size))
        outputs = {o.name for o in graph.model.graph.output}
        self.session = explainer.capture.session_with_outputs([] if graph.logits_name in outputs
                                                              else [graph.logits_name])
        self.dtype = explainer.capture.input_dtype
        self.fixed = graph.fixed_batch

    def logits(self, x):
        """(N, classes) float64 for the batch ``x``, fed ``batch_size`` (or the model's fixed batch) at a time."""
        x = np.asarray(x)
        size = self.fixed or self.batch_size
        out = []
        for start in range(0, len(x), size):
            part = np.ascontiguousarray(x[start:start + size], dtype=self.dtype)
            n = len(part)
            if self.fixed and n < self.fixed:  # pad a last short piece to the model's fixed batch
                part = np.concatenate([part, np.repeat(part[-1:], self.fixed - n, axis=0)])
            try:
                y = self.session.run([self.graph.logits_name], {self.graph.input_name: part})[0]
            except Exception as exc:
                raise InputError(f"{self.graph.label}: ONNX Runtime rejects an input of shape "
                                 f"{tuple(part.shape)}: {first_line(exc)}") from None
            out.append(np.asarray(y, dtype=np.float64).reshape(len(part), -1)[:n])
        return np.concatenate(out) if out else np.zeros((0, 0))


# -- data ----------------------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    x: np.ndarray  # model inputs, batch first
    labels: np.ndarray | None  # class per input, or None: the model's own prediction
    names: list
    label_source: str
    display_shape: tuple = field(default=None)


def _class_index(text, class_names, where):
    text = str(text).strip()
    if class_names and text in class_names:
        return class_names.index(text)
    try:
        return int(text)
    except ValueError:
        hint = "" if class_names else " (give the class names with --labels FILE)"
        raise InputError(f"{where}: label {text!r} is neither a class index nor a class name{hint}") from None


def list_images(path, labels_csv=None, class_names=None):
    """A folder of images -> (files, labels or None, where the labels come from), without reading any image."""
    from .io import IMAGE_SUFFIXES

    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    labels = None
    if labels_csv:
        files, labels = _read_labels_csv(labels_csv, path, class_names)
        source = f"{labels_csv}"
    elif not files:
        raise InputError(f"{path}: no images (PNG, JPEG, BMP, TIFF) in the folder")
    else:
        depth = {len(p.relative_to(path).parts) for p in files}
        if depth == {1}:
            source = "prediction"
        elif depth == {2}:
            labels = [_class_index(p.parent.name, class_names, p.parent) for p in files]
            source = "folder names"
        else:
            raise InputError(f"{path}: images must all sit in the folder itself (labels: the model's prediction "
                             "or --labels-csv) or all in one level of class folders")
    if not files:
        raise InputError(f"{labels_csv}: lists no images")
    return files, labels, source


def load_dataset(path, make_preprocess, input_rank=None, labels_csv=None, class_names=None):
    """A folder of images or an ``.npz`` (``x``, optional ``y``) -> Dataset (unfiltered)."""
    from .io import read_image

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise InputError(f"{path}: DATA is a folder of images or an .npz with arrays x (and y)")
        if labels_csv:
            raise InputError("--labels-csv applies to a folder of images; an .npz carries its labels in y")
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as exc:
            raise InputError(f"{path}: cannot read the archive ({first_line(exc)})") from None
        if "x" not in arrays:
            raise InputError(f"{path}: no array named x (found: {', '.join(sorted(arrays)) or 'none'})")
        x = arrays["x"]
        if not np.issubdtype(x.dtype, np.number):
            raise InputError(f"{path}: x holds {x.dtype}, not numbers")
        if input_rank is not None and x.ndim != input_rank:
            raise InputError(f"{path}: x has shape {x.shape}; the model takes rank-{input_rank} batches")
        y = arrays.get("y")
        if y is not None:
            y = np.asarray(y).reshape(-1)
            if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
                raise InputError(f"{path}: y must hold one integer class per sample of x ({len(x)}), "
                                 f"got {y.dtype} {y.shape}")
        return Dataset(x.astype(np.float32), None if y is None else y.astype(np.int64),
                       [f"{path.name}[{i}]" for i in range(len(x))], "y in the .npz" if y is not None else "prediction")

    files, labels, source = list_images(path, labels_csv, class_names)
    preprocess = make_preprocess()
    xs = []
    for p in files:
        xs.append(preprocess(read_image(p))[0])
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise InputError(f"{path}: the images have different sizes after preprocessing "
                         f"({', '.join(str(s) for s in sorted(shapes))}); pass --size")
    return Dataset(np.concatenate(xs), None if labels is None else np.asarray(labels, dtype=np.int64),
                   [str(p.relative_to(path)) for p in files], source)


def _read_labels_csv(csv_path, folder, class_names):
    try:
        text = Path(csv_path).read_text()
    except OSError as exc:
        raise InputError(f"{csv_path}: cannot read the labels CSV ({exc.strerror})") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in reader.fieldnames or []]
    if "filename" not in fields or "label" not in fields:
        raise InputError(f"{csv_path}: needs a header with columns filename,label (found: {','.join(fields)})")
    reader.fieldnames = fields
    files, labels = [], []
    for line, row in enumerate(reader, start=2):
        name = (row.get("filename") or "").strip()
        if not name:
            continue
        p = Path(folder) / name
        if not p.is_file():
            raise InputError(f"{csv_path}:{line}: {name}: no such image in {folder}")
        files.append(p)
        labels.append(_class_index(row.get("label", ""), class_names, f"{csv_path}:{line}"))
    return files, labels


# -- the evaluation ------------------------------------------------------------------------------------------------

class Progress:
    """One line on stderr, redrawn in place on a terminal, every 10% otherwise; nothing when quiet."""

    def __init__(self, quiet=False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._decile = {}

    def update(self, label, done, total, start):
        if self.quiet or total <= 0:
            return
        now = time.monotonic()
        decile = int(10 * done / total)
        if self.tty:
            if done < total and now - self._last < 0.2:
                return
            self._last = now
        elif self._decile.get(label) == decile and done < total:
            return
        self._decile[label] = decile
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else float("nan")
        width = 24
        bar = "#" * int(width * done / total) + "-" * (width - int(width * done / total))
        text = f"{label} [{bar}] {done}/{total} {elapsed:5.0f}s" + (f" eta {eta:4.0f}s" if done < total else "")
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(100) + ("\n" if done >= total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text):
        if not self.quiet:
            self.stream.write(text + "\n")
            self.stream.flush()


class Evaluation:
    """Region perturbation of one set of correctly classified inputs, one method at a time."""

    def __init__(self, explainer, x, targets, grid, perturbations=PERTURBATIONS, seed=0, batch_size=16,
                 score_batch_size=64, concentration_max=10000, progress=None, scorer=None):
        self.explainer = explainer
        self.x = np.asarray(x, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.perturbations = tuple(perturbations)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.scorer = scorer or Scorer(explainer, score_batch_size)
        self.progress = progress or Progress(quiet=True)
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

    def run_method(self, method, options=None, label=None):
        """Every number for one method, as a JSON-ready dict."""
        options = dict(options or {})
        n = len(self.x)
        label = label or method
        start = time.monotonic()
        heat = np.zeros((n,) + tuple(self.spatial_shape), dtype=np.float64)
        relevance_sums = np.zeros(n)
        if method == RANDOM:
            heat = np.random.default_rng([self.seed, 7]).standard_normal(heat.shape)
        elif method == CENTRE:
            grids = np.meshgrid(*[np.arange(d) - (d - 1) / 2 for d in self.spatial_shape], indexing="ij")
            distance = np.sqrt(sum(g ** 2 for g in grids))
            heat[:] = np.median(distance) - distance
        for s in range(0, n if method not in CONTROLS else 0, self.batch_size):
            exp = self.explainer.explain(self.x[s:s + self.batch_size], target=self.targets[s:s + self.batch_size],
                                         method=method, **options)
            heat[s:s + len(exp.target)] = exp.heatmap.reshape((len(exp.target),) + tuple(self.spatial_shape))
            relevance_sums[s:s + len(exp.target)] = exp.relevance.reshape(len(exp.target), -1).sum(axis=1)
            self.progress.update(f"{label}: explain", min(s + self.batch_size, n), n, start)
        explain_seconds = time.monotonic() - start
        if not np.all(np.isfinite(heat)):
            bad = int(np.sum(~np.isfinite(heat).reshape(n, -1).all(axis=1)))
            raise ModelError(f"method {method} gave NaN or Inf relevance for {bad} of {n} inputs")

        # Every distinct perturbed image once: (image, removal, perturbation, k); k = 0 is the original.
        start_scoring = time.monotonic()
        steps = {}  # (i, removal) -> list of k per grid step
        orders = {}
        tasks = []
        for i in range(n):
            flat_heat = heat[i].ravel()
            for removal in REMOVALS:
                order = rank_pixels(flat_heat, removal)
                orders[i, removal] = order
                ks = self.grid.pixels(self.n_pixels, len(order))
                steps[i, removal] = ks
                for perturbation in self.perturbations:
                    for k in sorted(set(ks) - {0}):
                        tasks.append((i, removal, perturbation, k))
        logits = {}
        changed = {}  # pixels whose value the perturbation really changed (setting a pixel at the minimum to it
        flats = {}    # changes nothing)
        chunk = self.scorer.fixed or self.scorer.batch_size
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
            out = self.scorer.logits(np.stack(images))
            for task, row in zip(batch, out):
                logits[task] = row
            self.progress.update(f"{label}: score", min(s + chunk, len(tasks)), len(tasks), start_scoring)
        scoring_seconds = time.monotonic() - start_scoring

        n_steps = len(self.grid.values)
        curves = {}
        aopcs = {}
        for removal in REMOVALS:
            for perturbation in self.perturbations:
                logit = np.zeros((n, n_steps))
                prob = np.zeros((n, n_steps))
                correct = np.zeros((n, n_steps), dtype=bool)
                pixels = np.zeros((n, n_steps))
                moved = np.zeros((n, n_steps))
                for i in range(n):
                    for j, k in enumerate(steps[i, removal]):
                        moved[i, j] = changed[i, removal, perturbation, k] if k else 0
                        z = self.base_logits[i] if k == 0 else logits[i, removal, perturbation, k]
                        t = self.targets[i]
                        logit[i, j] = z[t]
                        prob[i, j] = softmax(z)[t]
                        correct[i, j] = int(np.argmax(z)) == t
                        pixels[i, j] = k
                curve = []
                for j, step in enumerate(self.grid.labels):
                    curve.append({"step": step, "pixels": float(pixels[:, j].mean()),
                                  "pixels_changed": float(moved[:, j].mean()),
                                  "accuracy": float(correct[:, j].mean()),
                                  "logit": float(logit[:, j].mean()),
                                  "logit_sem": float(logit[:, j].std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
                                  "probability": float(prob[:, j].mean())})
                curves.setdefault(removal, {})[perturbation] = curve
                aopcs.setdefault(removal, {})[perturbation] = {"logit": aopc(logit), "probability": aopc(prob)}

        d_k = np.full((n, len(self.ks)), np.nan)
        dist = np.full((n, len(self.ks)), np.nan)
        for i in range(n):
            d_k[i], dist[i] = concentration(heat[i], self.ks)
        conc = []
        for j, k in enumerate(self.ks):
            have = ~np.isnan(d_k[:, j])
            conc.append({"K": int(k), "D_K": float(d_k[have, j].mean()) if have.any() else None,
                         "mean_distance": float(dist[have, j].mean()) if have.any() else None,
                         "n_images": int(have.sum())})
        flat_heat = heat.reshape(n, -1)
        return {
            "method": method, "label": label, "options": options,
            "pixels_positive": float((flat_heat > 0).sum(axis=1).mean()),
            "pixels_negative": float((flat_heat < 0).sum(axis=1).mean()),
            "relevance_sum_mean": float(relevance_sums.mean()),
            "seconds": {"explain": round(explain_seconds, 2), "score": round(scoring_seconds, 2),
                        "perturbed_images": len(tasks)},
            "curves": curves, "aopc": aopcs, "concentration": conc,
        }


# -- outputs -------------------------------------------------------------------------------------------------------

def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "method"


def fingerprint(model_path, x, targets, grid, perturbations, seed, method, options, concentration_ks):
    """What a method's results depend on; --resume reuses a result only when this matches."""
    h = hashlib.sha256()
    h.update(Path(model_path).read_bytes() if Path(model_path).is_file() else str(model_path).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
    h.update(json.dumps([RESULTS_VERSION, grid.kind, list(map(str, grid.values)), list(perturbations), seed,
                         method, sorted((k, str(v)) for k, v in options.items()), list(concentration_ks)]).encode())
    return h.hexdigest()


def results_rows(results):
    """Every number as flat rows: method, metric, removal, perturbation, step, pixels, value, n."""
    rows = []
    for r in results["methods"].values():
        m = r["label"]
        for removal, per in r["curves"].items():
            for perturbation, curve in per.items():
                for point in curve:
                    for metric in ("accuracy", "logit", "logit_sem", "probability", "pixels_changed"):
                        rows.append([m, metric, removal, perturbation, point["step"], point["pixels"],
                                     point[metric], results["images"]["evaluated"]])
                for metric, value in r["aopc"][removal][perturbation].items():
                    rows.append([m, f"aopc_{metric}", removal, perturbation, "", "", value,
                                 results["images"]["evaluated"]])
        for point in r["concentration"]:
            for metric in ("D_K", "mean_distance"):
                rows.append([m, metric, "positive", "", point["K"], point["K"], point[metric], point["n_images"]])
    return rows


def write_csv(path, results):
    from .viz import atomic_write

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "metric", "removal", "perturbation", "step", "pixels", "value", "n_images"])
            for row in results_rows(results):
                w.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])

    atomic_write(path, write)


def table_markdown(results):
    """The paper's Table I: per removal, rows method x (accuracy %, mean target logit, mean probability),
    columns the steps; each cell ``min (shuffle)``."""
    meta = results["images"]
    grid = results["settings"]["grid"]
    perts = results["settings"]["perturbations"]
    lines = [f"# Region perturbation: {results['model']}", "",
             f"{meta['evaluated']} correctly classified inputs from {results['data']} "
             f"({meta['dropped_misclassified']} misclassified of {meta['total']} dropped"
             f"{'; limited to ' + str(meta['limit']) if meta.get('limit') else ''}). "
             f"Steps: {grid['description']}.", ""]
    if perts == ["min", "shuffle"]:
        lines.append("Each cell: perturbation `min` (pixels set to the image's minimum), "
                     "in parentheses `shuffle` (the selected pixels permuted among themselves), as in the paper.")
    else:
        lines.append(f"Perturbation: {', '.join(perts)}.")
    lines.append("Accuracy: % of inputs whose top class is still the original target. "
                 "Logit / probability: mean over the set of the original target's logit / softmax probability.")
    lines.append("")

    def cell(r, removal, metric, j, fmt):
        values = [r["curves"][removal][p][j][metric] for p in perts]
        values = [v * 100 if metric == "accuracy" else v for v in values]
        text = fmt.format(values[0])
        return text + "".join(f" ({fmt.format(v)})" for v in values[1:])

    steps = grid["labels"]
    for removal in REMOVALS:
        lines.append(f"## {removal.capitalize()} removal")
        lines.append("")
        lines.append("| method | metric | " + " | ".join(steps) + " |")
        lines.append("| --- | --- | " + " | ".join("---:" for _ in steps) + " |")
        for r in results["methods"].values():
            for metric, name, fmt in (("accuracy", "accuracy %", "{:.1f}"), ("logit", "logit", "{:.2f}"),
                                      ("probability", "probability", "{:.3f}")):
                lines.append(f"| {r['label'] if metric == 'accuracy' else ''} | {name} | "
                             + " | ".join(cell(r, removal, metric, j, fmt) for j in range(len(steps))) + " |")
        for p in perts:
            pixels = " | ".join(
                "/".join(f"{r['curves'][removal][p][j]['pixels']:.0f}" for r in results["methods"].values())
                for j in range(len(steps)))
            moved = " | ".join(
                "/".join(f"{r['curves'][removal][p][j]['pixels_changed']:.0f}" for r in results["methods"].values())
                for j in range(len(steps)))
            if p == perts[0]:
                lines.append(f"| pixels selected (mean; methods in row order) | | {pixels} |")
            lines.append(f"| of which changed by {p} | | {moved} |")
        lines.append("")
    lines.append("## AOPC (mean over the steps, step 0 included, of score at step 0 minus score at step k)")
    lines.append("")
    head = [f"{rm} {p} {s}" for rm in REMOVALS for p in perts for s in ("logit", "prob.")]
    lines.append("| method | " + " | ".join(head) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in head) + " |")
    for r in results["methods"].values():
        vals = []
        for rm in REMOVALS:
            for p in perts:
                vals += [f"{r['aopc'][rm][p]['logit']:.3f}", f"{r['aopc'][rm][p]['probability']:.4f}"]
        lines.append(f"| {r['label']} | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("## Concentration D_K (paper eq. 12: mean squared distance, in pixels^2, of the top K "
                 "positive pixels from the top one)")
    lines.append("")
    first = next(iter(results["methods"].values()))
    ks = [c["K"] for c in first["concentration"]]
    shown = [j for j in range(len(ks)) if j in (0, len(ks) - 1) or j % max(1, len(ks) // 6) == 0]
    lines.append("| method | positive pixels (mean) | " + " | ".join(f"K={ks[j]}" for j in shown) + " |")
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in shown) + " |")
    for r in results["methods"].values():
        vals = []
        for j in shown:
            c = r["concentration"][j]
            vals.append("-" if c["D_K"] is None else f"{c['D_K']:.1f} ({c['n_images']})")
        lines.append(f"| {r['label']} | {r['pixels_positive']:.0f} | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("In parentheses: how many inputs have at least K positive pixels (the mean is over those).")
    lines.append("")
    return "\n".join(lines)


def save_plots(out_dir, results):
    """accuracy/logit/probability vs pixels perturbed per perturbation, and D_K vs K."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from .viz import atomic_write

    written = []
    grid = results["settings"]["grid"]
    labels = grid["labels"]
    methods = list(results["methods"].values())
    colours = [f"C{i % 10}" for i in range(len(methods))]
    xs = np.arange(len(labels))
    legend = [Line2D([], [], color=c, marker="o", markersize=3, label=r["label"]) for r, c in zip(methods, colours)]
    legend += [Line2D([], [], color="k", linestyle="-", label="positive removal"),
               Line2D([], [], color="k", linestyle="--", label="negative removal")]
    for perturbation in results["settings"]["perturbations"]:
        fig = Figure(figsize=(16, 4.4), dpi=90)
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3)
        for ax, metric, title in zip(axes, ("accuracy", "logit", "probability"),
                                     ("accuracy (top class unchanged)", "mean target logit",
                                      "mean target probability")):
            for r, colour in zip(methods, colours):
                for removal, style in (("positive", "-"), ("negative", "--")):
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


def write_outputs(out_dir, results):
    from .viz import atomic_write

    out_dir = Path(out_dir)
    atomic_write(out_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    write_csv(out_dir / "results.csv", results)
    atomic_write(out_dir / "table.md", lambda tmp: Path(tmp).write_text(table_markdown(results)))
    plots = save_plots(out_dir, results)
    return [out_dir / "results.json", out_dir / "results.csv", out_dir / "table.md", *plots]


# -- the command ---------------------------------------------------------------------------------------------------

def run(args, options):
    """``onnxrap evaluate``: the CLI's arguments and method options -> files in ``args.out_dir``; returns 0."""
    from . import methods as registry
    from .api import Explainer
    from .io import preprocess_factory, read_labels
    from .viz import atomic_write

    progress = Progress(quiet=args.quiet)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not chosen:
        raise InputError("--methods names no method")
    if len(set(chosen)) != len(chosen):
        raise InputError("--methods names a method twice")
    per_method = {m: {} for m in chosen if m in CONTROLS}
    per_method.update(registry.split_options([m for m in chosen if m not in CONTROLS], options,
                                             flag=lambda k: "--" + {"steps": "ig-steps"}.get(k, k)))
    perturbations = [p.strip() for p in args.perturbations.split(",") if p.strip()]
    bad = [p for p in perturbations if p not in PERTURBATIONS]
    if bad or not perturbations:
        raise InputError(f"unknown perturbation {bad[0] if bad else args.perturbations!r} (min, shuffle)")
    for name, value, low in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                             ("--score-batch-size", args.score_batch_size, 1),
                             ("--concentration-max", args.concentration_max, 1)):
        if value is not None and value < low:
            raise InputError(f"{name} must be at least {low}")
    grid = None
    if args.steps is not None:
        grid = Grid.parse(args.steps, "counts")
    elif args.fractions is not None:
        grid = Grid.parse(args.fractions, "fractions")

    explainer = Explainer(args.model, input_name=args.input_name, output_name=args.output_name, device=args.device)
    progress.note(f"device: {explainer.device.note}")
    if args.layout:
        explainer.layout = args.layout
    layout = explainer.layout
    class_names = read_labels(args.labels) if args.labels else explainer.labels
    make_preprocess = preprocess_factory(explainer, layout, progress.note, size=args.size, preset=args.preset,
                                         mean=args.mean, std=args.std)

    rank = len(explainer.input_shape) if explainer.input_shape else None
    data = load_dataset(args.data, make_preprocess, rank, args.labels_csv, class_names)
    scorer = Scorer(explainer, args.score_batch_size)
    if not np.all(np.isfinite(data.x)):
        raise InputError(f"{args.data}: the inputs contain NaN or Inf")
    logits = scorer.logits(data.x)
    classes = logits.shape[1]
    predicted = logits.argmax(axis=1)
    if data.labels is not None:
        out_of_range = data.labels[(data.labels < 0) | (data.labels >= classes)]
        if out_of_range.size:
            raise InputError(f"label {int(out_of_range[0])} is out of range: the model has {classes} classes")
        labels = data.labels
    else:
        labels = predicted
    correct = np.flatnonzero(predicted == labels)
    keep = correct[:args.limit] if args.limit else correct
    dropped = len(data.x) - len(correct)
    if len(keep) == 0:
        raise InputError(f"{args.data}: none of the {len(data.x)} inputs is classified correctly; nothing to evaluate")
    x, targets = data.x[keep], labels[keep]
    evaluation = Evaluation(explainer, x, targets, grid, perturbations, args.seed,
                            args.batch_size, args.score_batch_size, args.concentration_max, progress, scorer)
    grid = evaluation.grid
    progress.note(f"{len(data.x)} inputs (labels: {data.label_source}); {dropped} misclassified dropped; "
                  f"evaluating {len(keep)}; steps {grid.describe()}")

    out_dir = Path(args.out_dir)
    method_dir = out_dir / "methods"
    results = {
        "model": str(args.model), "data": str(args.data),
        "images": {"total": int(len(data.x)), "correct": int(len(correct)), "dropped_misclassified": int(dropped),
                   "limit": args.limit, "evaluated": int(len(keep)), "labels": data.label_source,
                   "names": [data.names[i] for i in keep]},
        "settings": {"grid": {"kind": grid.kind, "labels": grid.labels, "description": grid.describe()},
                     "perturbations": perturbations, "seed": args.seed,
                     "n_pixels": evaluation.n_pixels, "spatial_shape": list(evaluation.spatial_shape),
                     "concentration_K": evaluation.ks,
                     "preprocessing": (make_preprocess.built[0].describe() if make_preprocess.built
                                       else "as stored in the .npz"),
                     "scores": "logit = the original target's class score (the model's output, or the input of "
                               "its final Softmax); probability = its softmax",
                     "aopc": "mean over the grid's steps k (step 0 included) of score(step 0) - score(step k), "
                             "averaged over the inputs (Samek et al. 2017), for the logit and the probability"},
        "methods": {},
    }
    for number, m in enumerate(chosen, start=1):
        key = fingerprint(args.model, x, targets, grid, perturbations, args.seed, m, per_method[m], evaluation.ks)
        path = method_dir / f"{safe_name(m)}.json"
        if args.resume and path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):
                stored = None
            if stored and stored.get("fingerprint") == key:
                results["methods"][m] = stored["result"]
                progress.note(f"[{number}/{len(chosen)}] {m}: results exist in {path}; skipped (--resume)")
                continue
            progress.note(f"[{number}/{len(chosen)}] {m}: {path} was made with other settings or is damaged; "
                          "computing again")
        progress.note(f"[{number}/{len(chosen)}] {m}")
        result = evaluation.run_method(m, per_method[m], label=m)
        atomic_write(path, lambda tmp, r=result: Path(tmp).write_text(json.dumps({"fingerprint": key, "result": r})))
        results["methods"][m] = result
        progress.note(f"[{number}/{len(chosen)}] {m}: explained in {result['seconds']['explain']:.1f}s, "
                      f"{result['seconds']['perturbed_images']} perturbed inputs scored in "
                      f"{result['seconds']['score']:.1f}s -> {path}")
    written = write_outputs(out_dir, results)
    summary = _summary_lines(results)
    for line in summary:
        print(line)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _summary_lines(results):
    labels = results["settings"]["grid"]["labels"]
    perts = results["settings"]["perturbations"]
    lines = [f"{results['images']['evaluated']} inputs; accuracy at steps {','.join(labels)} "
             f"({perts[0]} perturbation):"]
    for r in results["methods"].values():
        pos = " ".join(f"{p['accuracy']:.2f}" for p in r["curves"]["positive"][perts[0]])
        neg = " ".join(f"{p['accuracy']:.2f}" for p in r["curves"]["negative"][perts[0]])
        lines.append(f"  {r['label']:<22} positive removal {pos} | negative removal {neg}")
    return lines
