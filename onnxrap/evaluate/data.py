"""The data ``onnxrap evaluate`` reads: a folder of images or an ``.npz`` of model inputs, with labels.

A folder's labels come from a CSV (``filename,label``), from one level of class
folders, or, where neither is given, from the model's own prediction.  Labels
are class indices or, with class names, names.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, first_line


@dataclass
class Dataset:
    """Model inputs with their labels, in file order, before any filtering."""

    x: np.ndarray  # model inputs, batch first, float32
    labels: np.ndarray | None  # class per input, or None: the model's own prediction
    names: list  # per input: its path under the folder, or ``file.npz[i]``
    label_source: str  # where the labels came from, for the report


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
    from ..inputs import image_files

    path = Path(path)
    files = image_files(path)
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
    """A folder of images or an ``.npz`` (``x``, optional ``y``) -> Dataset (unfiltered).

    ``make_preprocess()`` returns the function that turns a read image into a batch of one
    model input (see ``inputs.preprocess_factory``); it is called only for a folder.
    ``input_rank``: the model's input rank, checked against an ``.npz``'s ``x``.
    ``class_names`` map label names (class folders, the CSV) to indices.
    """
    from ..inputs import read_image

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
        if not x.ndim or not x.shape[0]:
            raise InputError(f"{path}: x holds no inputs (shape {x.shape})")
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
