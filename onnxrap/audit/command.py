"""``onnxrap audit MODEL DATA -o REPORT_DIR``: explain a whole dataset into one report.

DATA is read as ``evaluate`` reads it (a folder of images with labels from
``--labels-csv``, class folders or the model's prediction, or an ``.npz`` with
``x`` and optionally ``y``), but a folder's images are read a batch at a time
by the workers, never all at once.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..provenance import code_hash
from .store import AuditStore
from .worker import Settings


@dataclass
class Source:
    """DATA as a list of inputs: names, labels (-1: unknown), payloads (image paths, or model inputs)."""

    names: list
    labels: np.ndarray
    label_source: str
    payloads: object  # list of str, or an array batch-first
    identity: str  # a digest of the whole of DATA (before --limit)

    def __len__(self):
        return len(self.names)

    def batch(self, indices):
        return {"index": np.asarray(indices, dtype=np.int64), "name": [self.names[i] for i in indices],
                "label": self.labels[indices], "payload": [self.payloads[i] for i in indices]}

    def items(self, indices):
        """One dict per input, for Ray Data."""
        return [{"index": int(i), "name": self.names[i], "label": int(self.labels[i]), "payload": self.payloads[i]}
                for i in indices]


def open_source(data, make_preprocess, rank, labels_csv=None, class_names=None, limit=None):
    from ..evaluate import list_images, load_dataset

    path = Path(data)
    if path.is_file() or not path.exists():
        loaded = load_dataset(path, make_preprocess, rank, labels_csv, class_names)
        if not np.all(np.isfinite(loaded.x)):
            raise InputError(f"{data}: the inputs contain NaN or Inf")
        names, labels, source, payloads = loaded.names, loaded.labels, loaded.label_source, loaded.x
    else:
        files, labels, source = list_images(path, labels_csv, class_names)
        make_preprocess()  # settles (and notes) the preprocessing before any worker starts
        names, payloads = [str(p.relative_to(path)) for p in files], [str(p) for p in files]
    labels = np.full(len(names), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    digest = hashlib.sha256(json.dumps([list(names), labels.tolist()]).encode())
    if isinstance(payloads, np.ndarray):
        digest.update(np.ascontiguousarray(payloads).tobytes())
    if limit:
        names, labels, payloads = names[:limit], labels[:limit], payloads[:limit]
    return Source(list(names), labels, source, payloads, digest.hexdigest())


def fingerprint(settings, source):
    """What the records depend on; the number of inputs is not in it, so a larger --limit extends an audit."""
    h = hashlib.sha256(Path(settings.model).read_bytes())
    h.update(code_hash().encode())
    h.update(json.dumps(settings.describe(), sort_keys=True, default=str).encode())
    h.update(source.identity.encode())
    return h.hexdigest()


def run(args, per_method):
    """``args``: the command line's; ``per_method``: each method's options (``cli.method_options``)."""
    from tqdm import tqdm

    from .. import methods as registry
    from ..api import Explainer
    from ..inputs import class_names_of, preprocess_factory, preprocessing_options
    from ..viz import OutputFolder
    from . import report
    from .runners import run_here, run_processes, run_ray

    chosen = list(args.methods)
    if not chosen:
        raise InputError("--methods names no method")
    twice = sorted({m for m in chosen if chosen.count(m) > 1})
    if twice:
        raise InputError(f"--methods names {', '.join(twice)} more than once")
    for name, value in (("--limit", args.limit), ("--batch-size", args.batch_size), ("--workers", args.workers)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1")
    if args.faithfulness < 0 or args.sanity < 0:
        raise InputError(f"--{'faithfulness' if args.faithfulness < 0 else 'sanity'} must be at least 0")
    if args.sanity_steps < 1 or args.sanity_classes < 2:
        raise InputError("--sanity-steps must be at least 1 and --sanity-classes at least 2")
    note = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    report.check_templating()
    OutputFolder.check(Path(args.out_dir))  # -o's path errors: one line, before any work

    explainer = Explainer(args.model, input_name=args.input_name, output_name=args.output_name, device=args.device)
    note(f"device: {explainer.device.note}")
    if args.layout:
        explainer.layout = args.layout
    class_names = class_names_of(explainer, args.labels)
    make_preprocess = preprocess_factory(explainer, explainer.layout, note, **preprocessing_options(args))
    rank = len(explainer.input_shape) if explainer.input_shape else None
    source = open_source(args.data, make_preprocess, rank, args.labels_csv, class_names, args.limit)
    for m in chosen:
        registry.get(m, **per_method.get(m, {})).check(explainer.graph)
    settings = Settings(model=str(args.model), methods=tuple(chosen),
                        options={m: per_method.get(m, {}) for m in chosen},
                        input_name=args.input_name, output_name=args.output_name,
                        device=explainer.device.name if args.device == "auto" else args.device,
                        layout=args.layout, size=args.size, preset=args.preset,
                        mean=tuple(args.mean) if args.mean else None, std=tuple(args.std) if args.std else None,
                        resize=args.resize, channel_order=args.channel_order)

    out_dir = Path(args.out_dir)
    store = AuditStore(out_dir, fingerprint(settings, source), chosen, restart=args.restart)
    todo = [i for i in range(len(source)) if i not in store.done]
    if store.done:
        note(f"{out_dir}: {len(source) - len(todo)} of {len(source)} inputs already audited; continuing")
    batches = (source.batch(todo[s:s + args.batch_size]) for s in range(0, len(todo), args.batch_size))
    if args.ray:
        results = run_ray(settings, source.items(todo), args.ray, args.batch_size, args.workers, args.quiet)
    elif args.workers > 1:
        results = run_processes(settings, batches, args.workers)
    else:
        results = run_here(settings, batches)
    bar = tqdm(total=len(source), initial=len(source) - len(todo), unit="input", desc="audit",
               disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        for result in results if todo else ():
            store.add(result)
            bar.update(len(result["index"]))
    except KeyboardInterrupt:
        bar.close()
        print(f"onnxrap: audit stopped with {len(store.done)} of {len(source)} inputs in {store.records_path}; "
              "run the same command again to continue", file=sys.stderr)
        raise
    finally:
        bar.close()
        store.close()
        close = getattr(results, "close", None)
        if close:
            close()

    context = report.Context(args=args, options=per_method, make_preprocess=make_preprocess, explainer=explainer,
                             source=source, store=store, methods=chosen, class_names=class_names,
                             preprocessing=(make_preprocess.built[0].describe() if make_preprocess.built
                                            else "none: the .npz holds model inputs"), note=note)
    index = report.write(context)
    print(f"wrote {index}")
    return 0
