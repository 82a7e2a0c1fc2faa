"""REPORT_DIR while an audit runs: records streamed to disk, thumbnails, running class means, resumption.

- ``records.jsonl``: one JSON record per input, appended as results arrive.
- ``thumbs/NNNN/``: each input's thumbnail and heatmaps, written as they are made.
- ``checkpoint.npz``: the per-class running sums (mean input, mean heatmap per
  method) and how many bytes of ``records.jsonl`` they cover, rewritten every
  ``CHECKPOINT_SECONDS`` and when the run stops, Ctrl-C included.
- ``audit-state.json``: what the records depend on (model, data, methods, preprocessing, onnxrap's code).

Rerunning the same command cuts ``records.jsonl`` back to the checkpoint (a
record written after it, or half a line from a killed run, is redone), and
explains only the inputs without a record.  Memory stays bounded: a batch of
heatmaps at a time, plus one small sum per class.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..evaluate.command import safe_name
from ..viz import atomic_write

STATE_VERSION = 1
CHECKPOINT_SECONDS = 15.0


def thumb_path(index, key):
    """Relative path of one thumbnail; a thousand inputs per folder."""
    return f"thumbs/{index // 1000:04d}/{index:07d}_{safe_name(key)}.png"


class ClassMeans:
    """Running sums per class: count, input picture, and each method's normalised heatmap."""

    def __init__(self):
        self.count, self.input, self.heat = {}, {}, {}

    def add(self, cls, picture, heat):
        if cls not in self.count:
            self.count[cls], self.input[cls], self.heat[cls] = 0, np.zeros_like(picture), np.zeros_like(heat)
        self.count[cls] += 1
        self.input[cls] += picture
        self.heat[cls] += heat

    def arrays(self):
        out = {}
        for cls in self.count:
            out[f"count_{cls}"] = np.asarray(self.count[cls])
            out[f"input_{cls}"] = self.input[cls]
            out[f"heat_{cls}"] = self.heat[cls]
        return out

    @classmethod
    def from_arrays(cls, arrays):
        means = cls()
        for key in arrays:
            if key.startswith("count_"):
                c = int(key[6:])
                means.count[c] = int(arrays[key])
                means.input[c] = np.array(arrays[f"input_{c}"], dtype=np.float64)
                means.heat[c] = np.array(arrays[f"heat_{c}"], dtype=np.float64)
        return means

    def mean(self, cls):
        n = self.count[cls]
        return self.input[cls] / n, self.heat[cls] / n


class AuditStore:
    """REPORT_DIR, held by one audit at a time (a lock file), ready to take records from where it stopped."""

    def __init__(self, out_dir, fingerprint, methods, restart=False):
        self.dir = Path(out_dir)
        self.methods = list(methods)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".lock", "w")
        try:  # two audits appending to one records file would interleave their records
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise InputError(f"{self.dir}: another audit is writing there now") from None
        try:
            self._open(fingerprint, restart)
        except BaseException:
            self._lock.close()
            raise

    def _open(self, fingerprint, restart):
        self.records_path = self.dir / "records.jsonl"
        self.checkpoint_path = self.dir / "checkpoint.npz"
        state_path = self.dir / "audit-state.json"
        state = {"version": STATE_VERSION, "fingerprint": fingerprint}
        stale = False
        if state_path.exists() and not restart:
            try:
                old = json.loads(state_path.read_text())
            except ValueError:
                old = None
            stale = old != state
            # Only records are worth keeping: a run that failed before its first record left nothing to lose.
            if stale and self.records_path.exists() and self.records_path.stat().st_size:
                raise InputError(f"{self.dir}: holds an audit made with another model, data, methods, "
                                 "preprocessing or onnxrap version; pass --restart to replace it, or choose another -o")
        if restart or stale:
            for p in (self.records_path, self.checkpoint_path):
                p.unlink(missing_ok=True)
        atomic_write(state_path, lambda tmp: Path(tmp).write_text(json.dumps(state)))

        self.means, covered = ClassMeans(), 0
        if self.checkpoint_path.exists():
            with np.load(self.checkpoint_path) as saved:
                arrays = {k: saved[k] for k in saved.files}
            covered = int(arrays.pop("records_bytes"))
            self.means = ClassMeans.from_arrays(arrays)
        with open(self.records_path, "ab") as f:  # drop what the checkpoint does not cover
            f.truncate(covered)
        self.done = {record["index"] for record in self.records()}
        self._file = open(self.records_path, "ab")
        self._saved_at = time.monotonic()

    def records(self):
        """Every record on disk, in the order written."""
        if not self.records_path.exists():
            return
        with open(self.records_path) as f:
            for line in f:
                yield json.loads(line)

    def add(self, result):
        """Store one batch of ``ExplainWorker`` results: thumbnails, records, class sums."""
        for k, index in enumerate(result["index"]):
            index = int(index)
            record = json.loads(result["record"][k])
            thumbs = {}
            pictures = [("input", result["thumb_input"][k])] + [
                (m, result[f"thumb_{j}"][k]) for j, m in enumerate(self.methods)]
            for key, data in pictures:
                if data:
                    path = self.dir / thumb_path(index, key)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    thumbs[key] = thumb_path(index, key)
            record["thumbs"] = thumbs
            cls = record["label"] if record["label"] is not None else record["predicted"]
            self.means.add(cls, np.asarray(result["mean_input"][k], dtype=np.float64),
                           np.asarray(result["mean_heat"][k], dtype=np.float64))
            self._file.write((json.dumps(record) + "\n").encode())
            self.done.add(index)
        self._file.flush()
        if time.monotonic() - self._saved_at > CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self):
        self._file.flush()
        os.fsync(self._file.fileno())
        arrays = dict(self.means.arrays(), records_bytes=np.asarray(self._file.tell()))

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(self.checkpoint_path, write)
        self._saved_at = time.monotonic()

    def close(self):
        if not self._file.closed:
            self.checkpoint()
            self._file.close()
            self._lock.close()
