"""``onnxrap evaluate``: settings in, the report's files out."""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import methods as registry
from ..errors import InputError, ModelError
from ..provenance import code_hash
from .data import load_dataset
from .evaluation import Evaluation, NonFiniteRelevance
from .perturbation import CONTROLS, PERTURBATIONS, Grid
from .report import summary_lines, write_outputs
from .sanity import Sanity
from .scoring import Scorer

DEFAULT_METHODS = ("rap", "rap-reference", "lrp-a2b1", "gradient-x-input")
RESULTS_VERSION = 2  # part of every --resume fingerprint: bump it when a stored result's meaning changes


@dataclass
class Settings:
    """Everything ``run`` needs.  Messages name the command line's flags, which set these fields."""

    model: object  # a path or a ModelProto
    data: object  # a folder of images or an .npz (see data.load_dataset)
    out_dir: object = "onnxrap-eval"
    methods: tuple = DEFAULT_METHODS  # registered method names and the controls random, centre
    method_options: dict = field(default_factory=dict)  # method name -> its options (methods.split_options)
    grid: Grid | None = None  # None: the default for the inputs' size
    perturbations: tuple = PERTURBATIONS
    labels_csv: object = None
    labels: object = None  # a class-names file; default: the model's onnxrap.labels metadata
    limit: int | None = None
    seed: int = 0
    concentration_max: int = 10000
    resume: bool = False
    quiet: bool = False
    batch_size: int = 16
    score_batch_size: int = 64
    device: str = "auto"
    tf32: bool = False  # let the GPU round float32 matmuls to TF32
    input_name: str | None = None
    output_name: str | None = None
    layout: str | None = None
    preprocessing: dict = field(default_factory=dict)  # keyword arguments of inputs.preprocess_factory
    contrasts: tuple = (None,)  # each method is evaluated once per contrast: None (plain) and/or "others"
    sanity: int = 0  # sanity checks (sanity.py) on the first N evaluated inputs; 0: none
    sanity_steps: int = 8  # cascading randomisation: at most this many steps
    sanity_classes: int = 10  # class sensitivity across the top N classes

    def check(self):
        """Fail on bad settings before any model is loaded."""
        if not self.methods:
            raise InputError("--methods names no method")
        twice = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if twice:
            raise InputError(f"--methods names {', '.join(twice)} more than once")
        bad = [p for p in self.perturbations if p not in PERTURBATIONS]
        if bad or not self.perturbations:
            raise InputError(f"unknown perturbation {bad[0] if bad else ''!r} ({', '.join(PERTURBATIONS)})")
        for m in self.methods:  # unknown names and bad options fail before any work
            if m not in CONTROLS:
                registry.get(m, **self.method_options.get(m, {}))
        bad = [c for c in self.contrasts if c not in (None, "others")]
        if bad or not self.contrasts:
            raise InputError(f"evaluate's --contrast is none and/or others, not {bad[0] if bad else ''!r}")
        if self.sanity < 0 or self.sanity_classes < 2:
            raise InputError("--sanity must be at least 0 and --sanity-classes at least 2")
        for name, value in (("--sanity-steps", self.sanity_steps), ("--limit", self.limit), ("--batch-size", self.batch_size),
                            ("--score-batch-size", self.score_batch_size),
                            ("--concentration-max", self.concentration_max)):
            if value is not None and value < 1:
                raise InputError(f"{name} must be at least 1")


def run(settings: Settings):
    """Evaluates every method of ``settings`` and writes the report into ``settings.out_dir``; returns 0."""
    from ..api import Explainer
    from ..inputs import class_names_of, preprocess_factory, read_labels
    from ..viz import OutputFolder

    settings.check()
    OutputFolder.check(Path(settings.out_dir))  # -o's path errors: one line, before any work
    note = (lambda text: None) if settings.quiet else (lambda text: print(text, file=sys.stderr, flush=True))

    explainer = Explainer(settings.model, input_name=settings.input_name, output_name=settings.output_name,
                          device=settings.device, tf32=settings.tf32)
    note(f"device: {explainer.device.note}")
    if settings.layout:
        explainer.layout = settings.layout
    classes = explainer.graph.classes
    class_names = class_names_of(explainer, settings.labels)
    make_preprocess = preprocess_factory(explainer, explainer.layout, note, **settings.preprocessing)
    rank = len(explainer.input_shape) if explainer.input_shape else None
    data = load_dataset(settings.data, make_preprocess, rank, settings.labels_csv, class_names)
    scorer = Scorer(explainer, settings.score_batch_size)
    if settings.labels and classes is None and len(data.x):  # a dynamic output: one input tells its size
        read_labels(settings.labels, scorer.logits(data.x[:1]).shape[1])
    labels, correct = correctly_classified(data, scorer, settings.data)
    keep = correct[:settings.limit] if settings.limit else correct
    x, targets = data.x[keep], labels[keep]
    evaluation = Evaluation(explainer, x, targets, settings.grid, settings.perturbations, settings.seed,
                            settings.batch_size, settings.score_batch_size, settings.concentration_max,
                            quiet=settings.quiet, scorer=scorer)
    grid = evaluation.grid
    dropped = len(data.x) - len(correct)
    note(f"{len(data.x)} inputs (labels: {data.label_source}); {dropped} misclassified dropped; "
         f"evaluating {len(keep)}; steps {grid.describe()}")

    results = {
        "model": str(settings.model), "data": str(settings.data),
        "images": {"total": int(len(data.x)), "correct": int(len(correct)), "dropped_misclassified": int(dropped),
                   "limit": settings.limit, "evaluated": int(len(keep)), "labels": data.label_source,
                   "names": [data.names[i] for i in keep]},
        "settings": {"grid": {"kind": grid.kind, "labels": grid.labels, "description": grid.describe()},
                     "perturbations": list(settings.perturbations), "seed": settings.seed,
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
    out_dir = Path(settings.out_dir)
    runs = method_runs(settings)
    failed = results["failed"] = {}  # label -> why: a method with NaN or Inf maps is reported, the others go on
    for number, (m, options, label) in enumerate(runs, start=1):
        progress = lambda text: note(f"[{number}/{len(runs)}] {label}{text}")  # noqa: E731
        try:
            results["methods"][label] = evaluate_method(evaluation, m, options, label, settings, out_dir / "methods",
                                                        progress)
        except NonFiniteRelevance as exc:
            failed[label] = str(exc)
            progress(f": not evaluated: {exc}")
    if not results["methods"]:
        raise ModelError("no method could be evaluated: " + "; ".join(failed.values()))
    if settings.sanity:
        sanity = Sanity(explainer, x[:settings.sanity], targets[:settings.sanity], settings.sanity_steps,
                        settings.sanity_classes, settings.seed, settings.batch_size)
        results["sanity"] = {"inputs": int(min(settings.sanity, len(x))), "depths": sanity.depths,
                             "layers": [op.name for op in sanity.top_down], "classes": sanity.classes, "methods": {},
                             "failed": {}}
        for m, options, label in runs:
            if m not in CONTROLS:
                try:
                    results["sanity"]["methods"][label] = sanity_method(sanity, m, options, label, settings,
                                                                        out_dir / "sanity_methods", note)
                except NonFiniteRelevance as exc:
                    results["sanity"]["failed"][label] = str(exc)
                    note(f"sanity checks: {label}: not checked: {exc}")
    written = write_outputs(out_dir, results)
    for line in summary_lines(results):
        print(line)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def method_runs(settings):
    """(method, options, label) per method and contrast; the controls once, without a contrast."""
    runs = []
    for m in settings.methods:
        for contrast in (None,) if m in CONTROLS else settings.contrasts:
            options = settings.method_options.get(m, {})
            if contrast is None:
                runs.append((m, options, m))
            else:
                runs.append((m, {**options, "contrast": contrast}, f"{m} contrast={contrast}"))
    return runs


def correctly_classified(data, scorer, where):
    """Each input's label (given, or the model's prediction) and the indices of the inputs the model gets right."""
    if not np.all(np.isfinite(data.x)):
        raise InputError(f"{where}: the inputs contain NaN or Inf")
    logits = scorer.logits(data.x)
    predicted = logits.argmax(axis=1)
    labels = predicted
    if data.labels is not None:
        out_of_range = data.labels[(data.labels < 0) | (data.labels >= logits.shape[1])]
        if out_of_range.size:
            raise InputError(f"label {int(out_of_range[0])} is out of range: the model has {logits.shape[1]} classes")
        labels = data.labels
    correct = np.flatnonzero(predicted == labels)
    if len(correct) == 0:
        raise InputError(f"{where}: none of the {len(data.x)} inputs is classified correctly; nothing to evaluate")
    return labels, correct


def evaluate_method(evaluation, method, options, label, settings, method_dir, note):
    """One method's results, computed and stored in ``method_dir``, or with ``--resume`` read from there
    when they were made from the same model, inputs and settings."""
    key = fingerprint(settings.model, evaluation, method, options)
    path = method_dir / f"{safe_name(label)}.json"
    result, computed = stored_or_computed(path, key, settings.resume,
                                          lambda: evaluation.run_method(method, options, label=label), note)
    if computed:
        note(f": explained in {result['seconds']['explain']:.1f}s, {result['seconds']['perturbed_images']} "
             f"perturbed inputs scored in {result['seconds']['score']:.1f}s -> {path}")
    return result


def sanity_method(sanity, method, options, label, settings, method_dir, note):
    """One method's sanity checks, stored in ``method_dir`` as soon as they are done (a long run that is
    stopped keeps them), or with ``--resume`` read from there when made from the same model, inputs and
    settings."""
    key = fingerprint(settings.model, sanity, method, options,
                      [sanity.depths, sanity.classes, [op.name for op in sanity.top_down]])
    result, _ = stored_or_computed(method_dir / f"{safe_name(label)}.json", key, settings.resume,
                                   lambda: sanity.run_method(method, options), note, f"sanity checks: {label}")
    return result


def stored_or_computed(path, key, resume, compute, note, prefix=""):
    """``(result, computed)``: with ``resume``, the result stored at ``path`` if its fingerprint is ``key``;
    else ``compute()``'s, stored there with ``key``.  ``note(text)`` reports which, after ``prefix``."""
    from ..viz import atomic_write

    if resume and path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = None
        if stored and stored.get("fingerprint") == key:
            note(f"{prefix}: results exist in {path}; skipped (--resume)")
            return stored["result"], False
        note(f"{prefix}: {path} was made with other settings, by other onnxrap code or is damaged; computing again")
    note(prefix)
    result = compute()
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"fingerprint": key, "result": result})))
    return result, True


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "method"


def fingerprint(model, evaluation, method, options, checks=None):
    """What a method's results depend on; --resume reuses a result only when this matches.  ``evaluation``:
    an Evaluation, or with ``checks`` (the cascade's depths, classes, layers) a Sanity."""
    h = hashlib.sha256(code_hash().encode())
    h.update(Path(model).read_bytes() if isinstance(model, (str, Path)) and Path(model).is_file()
             else str(model).encode())
    h.update(np.ascontiguousarray(evaluation.x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(evaluation.targets, dtype=np.int64).tobytes())
    options = sorted((k, str(v)) for k, v in options.items())
    if checks is not None:
        h.update(json.dumps([RESULTS_VERSION, "sanity", evaluation.seed, method, options, checks]).encode())
        return h.hexdigest()
    grid = evaluation.grid
    h.update(json.dumps([RESULTS_VERSION, grid.kind, list(map(str, grid.values)), list(evaluation.perturbations),
                         evaluation.seed, method, options, list(evaluation.ks)]).encode())
    return h.hexdigest()
