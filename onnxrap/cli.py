"""Command line: ``onnxrap explain MODEL IMAGE [IMAGE ...]``.

Every error a user can cause is one line on stderr and exit code 2; nothing
is written until every input has been read and explained.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__, methods
from .evaluate import DEFAULT_FRACTIONS, DEFAULT_METHODS, PAPER_STEPS, PERTURBATIONS
from .errors import InputError, OnnxrapError, SampleError
from .inputs import CHANNEL_ORDERS, DEFAULT_RESIZE, RESIZE_POLICIES, preprocessing_options

EXIT_USAGE = 2
MASS_WARNING = 1e3  # sum |R| / |logit| beyond which a heatmap mostly shows cancelling mass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2, like ours
        self.exit(EXIT_USAGE, f"onnxrap: error: {message}\n")


def _floats(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text):
    """A comma-separated list as a tuple of its non-empty names."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _size(text):
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH, got {text!r}")
    return (parts[0], parts[-1])


def _model_options(p):
    p.add_argument("--input", dest="input_name", help="the model input to explain, if it has several")
    p.add_argument("--output", dest="output_name", help="the model output holding the class scores, if it has several")


def _image_options(p):
    p.add_argument("--size", type=_size, help="resize images to SIZE or HEIGHTxWIDTH (default: the model's input size)")
    p.add_argument("--layout", choices=["nchw", "nhwc"], help="input layout (default: read from the model)")
    p.add_argument("--preset", help="pixel scaling: imagenet, unit ([0,1]), raw ([0,255]), signed ([-1,1]), caffe "
                                     "(BGR, [0,255] minus ImageNet's mean, as Keras' caffe mode); default: the model's "
                                     "onnxrap.preprocess metadata, else imagenet for RGB, unit otherwise")
    p.add_argument("--channel-order", choices=CHANNEL_ORDERS,
                   help="the colour order the model reads: rgb, or bgr (OpenCV, Caffe, PaddlePaddle); --mean and "
                        "--std are given in it, a preset's values per colour (default: the model's "
                        "onnxrap.channel_order metadata, else the preset's: bgr for caffe, rgb otherwise)")
    p.add_argument("--mean", type=_floats, help="per-channel mean subtracted after scaling (overrides the preset)")
    p.add_argument("--std", type=_floats, help="per-channel std divided by after scaling (overrides the preset)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=DEFAULT_RESIZE,
                   help="an image whose aspect ratio differs from the model's input: center-crop (shorter side "
                        "to fit, the centre kept: the ImageNet convention), pad (fitted whole, padded with the "
                        "mean) or stretch (default: %(default)s)")


class _Renamed(argparse.Action):
    """A flag that was renamed: one line naming its successors, exit 2."""

    def __init__(self, option_strings, dest, successor, **kw):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kw)
        self.successor = successor

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.successor}")


def _method_options(p):
    """Each method's own options."""
    p.add_argument("--epsilon", type=float, help="lrp-eps, lrp-preset-a/b: the epsilon")
    p.add_argument("--alpha", type=float, help="lrp-ab: alpha (beta = alpha - 1)")
    p.add_argument("--ig-steps", type=int, help="integrated-gradients: points on the path (default 32)")
    p.add_argument("--baseline", type=float, help="integrated-gradients: the constant baseline input (default 0)")
    p.add_argument("--samples", type=int, help="smoothgrad: noisy copies (default 16)")
    p.add_argument("--noise", type=float, help="smoothgrad: noise std as a fraction of the input's range (default 0.15)")
    p.add_argument("--flow", choices=["sum", "normal", "inversion"],
                   help="rap-paper: the normal flow, the inversion flow, or their sum (default)")
    p.add_argument("--steps", action=_Renamed, successor="--ig-steps (integrated-gradients' path points) "
                                                          "or, in evaluate, --grid (the perturbation steps)")


# The command line's name for a method option where it differs from the keyword.
_OPTION_FLAGS = {"steps": "ig-steps"}


def method_options(args, names):
    """The method options given on the command line, split among the methods ``names`` that take them."""
    given = {"epsilon": args.epsilon, "alpha": args.alpha, "steps": args.ig_steps, "baseline": args.baseline,
             "samples": args.samples, "noise": args.noise, "flow": args.flow}
    for key, value in given.items():
        if isinstance(value, float) and not np.isfinite(value):
            raise InputError(f"--{_OPTION_FLAGS.get(key, key)} takes a finite number, got {value}")
    return methods.split_options(names, {k: v for k, v in given.items() if v is not None},
                                 flag=lambda k: "--" + _OPTION_FLAGS.get(k, k))


def _sanity_options(p, inputs, steps, which):
    """The sanity checks' options, shared by evaluate and audit (their defaults differ)."""
    p.add_argument("--sanity", type=int, default=inputs, metavar="N",
                   help=f"the sanity checks (Adebayo et al. 2018: cascading randomisation of the weights, class "
                        f"sensitivity) on {which}; 0: skip (default: %(default)s)")
    p.add_argument("--sanity-steps", type=int, default=steps,
                   help="cascading randomisation: at most this many steps, top layer first (default: %(default)s)")
    p.add_argument("--sanity-classes", type=int, default=10,
                   help="class sensitivity across the top N classes (default: %(default)s)")


def _device_option(p):
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="cuda: ONNX Runtime's CUDA provider and CuPy; auto: cuda where it works, else cpu "
                        "(default: %(default)s)")
    p.add_argument("--tf32", action="store_true",
                   help="let the GPU round float32 matmuls and convolutions to TF32: faster, about 1e-3 relative "
                        "error (default: exact float32)")


def build_parser():
    p = _Parser(prog="onnxrap", description="Explain ONNX image classifiers with Relative Attributing Propagation.")
    p.add_argument("--version", action="version", version=f"onnxrap {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("explain", help="heatmaps of why the model decided what it decided")
    e.add_argument("model", help="the .onnx classifier")
    e.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="PNG, JPEG, BMP, TIFF, WebP, GIF images or .npy arrays; a folder stands for those in it")
    e.add_argument("-o", "--out-dir", default="onnxrap-out", help="where figures and reports go (default: %(default)s)")
    e.add_argument("--method", default="rap",
                   help=f"one method or several, comma-separated, shown side by side; known: {', '.join(methods.FACTORIES)}")
    _method_options(e)
    e.add_argument("--target", help="class to explain, an index or a label name (default: each input's top class)")
    e.add_argument("--contrast", default="none", metavar="none|others|CLASS",
                   help="explain the target rather than CLASS (an index or a label name) or rather than the "
                        "others: the target's logit minus CLASS's (or the others' mean), which rap's map sums to "
                        "(default: none, why the target)")
    _model_options(e)
    _image_options(e)
    e.add_argument("--labels", help="class names, one per line (default: the model's onnxrap.labels, or "
                                    "Ultralytics' names, metadata, or the id2label of a Hugging Face config.json "
                                    "beside it)")
    e.add_argument("--save-npy", action="store_true", help="also save the input-shaped relevance as .npy")
    e.add_argument("--overlay", action="store_true", help="draw each heatmap over the input")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="arithmetic of the rules")
    _device_option(e)
    e.add_argument("--engine", choices=["auto", "eager", "onnx"], default="eager",
                   help="eager: the rules on NumPy/CuPy; onnx: the method compiled into the model's graph and run "
                        "by ONNX Runtime (cached on disk); auto: the faster, measured (default: %(default)s)")
    e.add_argument("--batch-size", type=int, default=16, help="inputs explained together (default: %(default)s)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(run=cmd_explain)

    v = sub.add_parser("evaluate", help="faithfulness by region perturbation (paper section V.B): "
                                        "accuracy and score as the most relevant pixels are perturbed")
    v.add_argument("model", help="the .onnx classifier")
    v.add_argument("data", help="a folder of images (labels: --labels-csv, class subfolders, or the model's "
                                "prediction) or an .npz with x (model inputs) and optionally y (labels)")
    v.add_argument("-o", "--out-dir", default="onnxrap-eval",
                   help="results.csv/.json, table.md, plots, and methods/ per method (default: %(default)s)")
    v.add_argument("--methods", type=_names, default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated (default: %(default)s); known: {', '.join(methods.FACTORIES)}, and "
                        "the controls random (a random ranking) and centre (centre pixels positive, corners negative)")
    grid = v.add_mutually_exclusive_group()
    grid.add_argument("--grid", help=f"the perturbation steps: pixels perturbed per step, comma-separated, 'all' = "
                                     f"every pixel of that sign (the paper: {PAPER_STEPS}; default for inputs of "
                                     "224x224 and larger)")
    grid.add_argument("--fractions", help="the perturbation steps as fractions of the image's pixels, and 'all' "
                                          f"(default for smaller inputs: {DEFAULT_FRACTIONS})")
    v.add_argument("--perturbations", type=_names, default=",".join(PERTURBATIONS),
                   help="min (set to the image's minimum) and/or shuffle (permute the selected pixels); "
                        "default: %(default)s")
    v.add_argument("--labels-csv", help="labels for a folder of images: a CSV with columns filename,label "
                                        "(label: class index or class name)")
    v.add_argument("--labels", help="class names, one per line (maps class folder names and CSV labels to indices; "
                                    "default: the model's onnxrap.labels, or Ultralytics' names, metadata, or "
                                    "the id2label of a Hugging Face config.json beside it)")
    v.add_argument("--limit", type=int, help="evaluate at most N correctly classified inputs (the first N)")
    v.add_argument("--seed", type=int, default=0, help="seed of the shuffle perturbation (default: %(default)s)")
    v.add_argument("--concentration-max", type=int, default=10000,
                   help="largest K of the concentration D_K (default: %(default)s, capped at the pixel count)")
    v.add_argument("--contrast", type=_names, default="none",
                   help="none and/or others, comma-separated: evaluate each method plain and/or explaining the "
                        "target rather than the other classes (default: %(default)s)")
    _sanity_options(v, inputs=0, steps=8, which="the first N evaluated inputs")
    v.add_argument("--resume", action="store_true",
                   help="reuse results of methods already in OUT/methods/ made with the same model, data and settings")
    v.add_argument("--quiet", action="store_true", help="no progress on stderr")
    v.add_argument("--batch-size", type=int, default=16, help="inputs explained together (default: %(default)s)")
    v.add_argument("--score-batch-size", type=int, default=64,
                   help="perturbed inputs per ONNX Runtime run (default: %(default)s)")
    _device_option(v)
    _method_options(v)
    _model_options(v)
    _image_options(v)
    v.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("compile", help="the method and the model as one ONNX graph: input and target in, "
                                        "logits and relevance out, for ONNX Runtime anywhere")
    c.add_argument("model", help="the .onnx classifier")
    c.add_argument("-o", "--out", required=True, help="the compiled .onnx file (weights over 2 GB go to OUT.data)")
    c.add_argument("--method", default="rap", help=f"default: %(default)s; known: {', '.join(methods.FACTORIES)}")
    _method_options(c)
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="arithmetic of the rules")
    c.add_argument("--size", type=_size, help="input HEIGHTxWIDTH where the model leaves it free")
    _model_options(c)
    c.set_defaults(run=cmd_compile)

    a = sub.add_parser("audit", help="explain a whole dataset into one self-contained HTML report "
                                     "(REPORT_DIR/index.html); resumable, on local processes or a Ray cluster")
    a.add_argument("model", help="the .onnx classifier")
    a.add_argument("data", help="read as evaluate reads it: a folder of images (labels: --labels-csv, class "
                                "subfolders, or none) or an .npz with x (model inputs) and optionally y (labels)")
    a.add_argument("-o", "--out-dir", required=True, metavar="REPORT_DIR",
                   help="index.html, records.jsonl, CSV/JSON, thumbnails; rerunning continues an interrupted audit")
    a.add_argument("--methods", type=_names, default="rap", help=f"comma-separated (default: %(default)s); known: "
                                                     f"{', '.join(methods.FACTORIES)}")
    a.add_argument("--labels-csv", help="labels for a folder of images: a CSV with columns filename,label")
    a.add_argument("--labels", help="class names, one per line (default: the model's onnxrap.labels, or "
                                    "Ultralytics' names, metadata, or the id2label of a Hugging Face config.json "
                                    "beside it)")
    a.add_argument("--limit", type=int, help="audit the first N inputs (a larger N later extends the audit)")
    a.add_argument("--workers", type=int, default=1,
                   help="local worker processes (with --device cuda: one per GPU); with --ray: Ray actors "
                        "(default: 1; with --ray: one per CPU or GPU of the cluster)")
    a.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster through Ray Data (needs onnxrap[ray]): "
                                                    "'local' starts one here, else an address for ray.init ('auto', "
                                                    "'ray://head:10001')")
    a.add_argument("--faithfulness", type=int, default=32, metavar="N",
                   help="region perturbation (evaluate's Table I) on N correctly classified inputs; 0: skip "
                        "(default: %(default)s)")
    _sanity_options(a, inputs=4, steps=3, which="N correctly classified inputs, spread over the data")
    a.add_argument("--batch-size", type=int, default=16, help="inputs explained together (default: %(default)s)")
    a.add_argument("--restart", action="store_true", help="discard REPORT_DIR's records and start over")
    a.add_argument("--quiet", action="store_true", help="no progress bar or notes on stderr")
    _device_option(a)
    _method_options(a)
    _model_options(a)
    _image_options(a)
    a.set_defaults(run=cmd_audit)

    i = sub.add_parser("inspect", help="what the model is and whether it can be explained, before running anything")
    i.add_argument("model", help="the .onnx classifier")
    _model_options(i)
    i.set_defaults(run=cmd_inspect)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except OnnxrapError as exc:
        print(f"onnxrap: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("onnxrap: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:  # an option that asks for too much (--ig-steps 1e11, a huge --size or batch)
        print(f"onnxrap: error: out of memory ({exc or 'MemoryError'}); ask for less: a smaller --batch-size, "
              "--size or method option", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into head: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except Exception as exc:  # a bug: still one line, with a way to see more
        if os.environ.get("ONNXRAP_DEBUG"):
            raise
        print(f"onnxrap: internal error: {type(exc).__name__}: {exc} (set ONNXRAP_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


def note(text):
    """Information for the user (not results): stderr, so that stdout stays the results."""
    print(text, file=sys.stderr)


def cmd_explain(args):
    from .api import Explainer
    from .inputs import class_names_of, expand_folders

    chosen = [m.strip() for m in args.method.split(",") if m.strip()]
    if not chosen:
        raise InputError("--method names no method")
    twice = sorted({m for m in chosen if chosen.count(m) > 1})
    if twice:
        raise InputError(f"--method names {', '.join(twice)} more than once")
    args.inputs = [str(p) for p in expand_folders(args.inputs)]
    per_method = method_options(args, chosen)
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    explainer = Explainer(args.model, input_name=args.input_name, output_name=args.output_name, dtype=args.dtype,
                          device=args.device, tf32=args.tf32, engine=args.engine)
    graph = explainer.graph
    outputs = [o.name for o in graph.model.graph.output]
    if args.output_name is None and len(outputs) > 1:
        note(f"{graph.label}: the model has {len(outputs)} outputs ({', '.join(outputs)}); explaining "
             f"{graph.output_name}, the first (--output picks another)")
    classes = graph.classes
    labels = class_names_of(explainer, args.labels)
    if args.target is not None:
        args.target = _class(args.target, labels, "--target")
    if args.target is not None and classes is not None:
        explainer.check_target(args.target, classes)
    contrast = _contrast(args.contrast, labels)
    from .viz import OutputFolder

    with OutputFolder(Path(args.out_dir)) as out:  # made and probed now; removed again if anything fails
        lines = _explain_into(out, explainer, args, chosen, per_method, classes, labels, contrast)
    for line in lines:  # once every file is in place
        print(line)
    if args.engine == "auto":
        print(f"engine: {explainer.engine_note}")
    return 0


def _explain_into(out, explainer, args, chosen, per_method, classes, labels, contrast):
    """Read, explain and write every input into ``out``; return the line to print per input."""
    from tqdm import tqdm

    from .inputs import load_input, preprocess_factory, read_labels

    layout = args.layout or explainer.layout
    if args.layout:
        explainer.layout = args.layout
    notes = [f"device: {explainer.device.note}"]
    make_preprocess = preprocess_factory(explainer, layout, notes.append, **preprocessing_options(args))

    rank = len(explainer.input_shape) if explainer.input_shape else None
    loaded = [load_input(path, make_preprocess, rank, explainer.channel_axis, notes.append) for path in args.inputs]

    # Inputs of one shape are explained together, a batch at a time.
    results = [dict() for _ in loaded]
    groups = {}
    for i, (x, _) in enumerate(loaded):
        groups.setdefault(x.shape, []).append(i)
    with tqdm(total=len(loaded) * len(chosen), unit="explanation", delay=1.0, file=sys.stderr,
              disable=True if args.quiet else None) as progress:  # None: shown on a terminal only
        for members in groups.values():
            for start in range(0, len(members), args.batch_size):
                batch = members[start:start + args.batch_size]
                xs = np.concatenate([loaded[i][0] for i in batch])
                for m in chosen:
                    try:
                        exp = explainer.explain(xs, target=args.target, method=m, contrast=contrast,
                                                **per_method[m])
                    except SampleError as exc:  # name the file, not its place in the batch
                        raise InputError(f"{args.inputs[batch[exc.samples[0]]]}: {exc.label}: {exc.reason}") from None
                    for text in notes:  # once a batch went through: a bad input is still a one-line error
                        progress.write(text, file=sys.stderr)
                    notes.clear()
                    for k, i in enumerate(batch):
                        results[i][m] = (exp, k)
                    progress.update(len(batch))
    if args.labels and classes is None:  # a dynamic output: its size is known now
        read_labels(args.labels, results[0][chosen[0]][0].logits.shape[1])

    stems = input_stems([Path(p) for p in args.inputs])
    preprocess = make_preprocess.built[0] if make_preprocess.built else None
    entries, lines = zip(*(_entry(Path(path), display, per_method_results, chosen, labels, out, stem, args,
                                  contrast)
                           for path, (_, display), per_method_results, stem in zip(args.inputs, loaded, results,
                                                                                   stems)))
    out.write_text("summary.json", json.dumps(
        {"model": str(args.model), "methods": chosen, "method_options": per_method, "dtype": args.dtype,
         "device": explainer.device.note, "preprocessing": _preprocessing_record(preprocess),
         "inputs": list(entries)}, indent=2))
    out.commit()
    return lines


def cmd_compile(args):
    from .compile import compile_graph, save
    from .graph import Graph
    from .viz import temporary_beside

    options = method_options(args, [args.method])[args.method]
    method = methods.get(args.method, **options)
    if method.batched:
        raise InputError(f"{args.method} is many calls of the gradient graph on changed inputs: "
                         "compile --method gradient and average its relevance over them")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder (-o names the compiled .onnx file)")
    try:  # before the work: a place that cannot be written is one line now, not after compiling
        Path(temporary_beside(out)).unlink()
    except OSError as exc:
        raise InputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    graph = Graph(args.model, input_name=args.input_name, output_name=args.output_name)
    shape = None
    if args.size:
        declared = graph.input_shape
        if declared is None or len(declared) != 4:
            raise InputError(f"{graph.label}: --size needs an image input (N, C, H, W)")
        if any(d is not None and d != s for d, s in zip(declared[2:], args.size)):
            raise InputError(f"--size {args.size[0]}x{args.size[1]} does not fit {graph.label}'s fixed input size "
                             f"{'x'.join('?' if d is None else str(d) for d in declared[2:])}")
        shape = (declared[1], *args.size)
    model = compile_graph(graph, method, args.dtype, shape)
    try:
        path = save(model, out)
    except OSError as exc:
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    print(f"{path}: {method.label} on {graph.label}; inputs {graph.input_name} and target "
          "(int64, one class per sample or one for all; default: the top class); outputs logits and relevance")
    return 0


def cmd_evaluate(args):
    from .evaluate import CONTROLS, Grid, Settings, run

    grid = (Grid.parse(args.grid, "counts") if args.grid is not None
            else Grid.parse(args.fractions, "fractions") if args.fractions is not None else None)
    return run(Settings(
        args.model, args.data, args.out_dir, methods=args.methods,
        method_options=method_options(args, [m for m in args.methods if m not in CONTROLS]), grid=grid,
        perturbations=args.perturbations, labels_csv=args.labels_csv, labels=args.labels, limit=args.limit,
        seed=args.seed, concentration_max=args.concentration_max, resume=args.resume, quiet=args.quiet,
        batch_size=args.batch_size, score_batch_size=args.score_batch_size, device=args.device, tf32=args.tf32,
        input_name=args.input_name, output_name=args.output_name, layout=args.layout,
        preprocessing=preprocessing_options(args),
        contrasts=tuple(None if c == "none" else c for c in args.contrast), sanity=args.sanity,
        sanity_steps=args.sanity_steps, sanity_classes=args.sanity_classes))


def cmd_audit(args):
    from .audit import run

    return run(args, method_options(args, args.methods))


def cmd_inspect(args):
    import collections

    import onnx

    from .graph import Graph, shown_shape
    from .ops import PARSERS

    graph = Graph(args.model, input_name=args.input_name, output_name=args.output_name, strict=False)
    model = graph.model
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    print(f"model: {graph.label} (IR {model.ir_version}; opsets {opsets}; "
          f"producer {model.producer_name or '?'} {model.producer_version})")
    elem = onnx.TensorProto.DataType.Name(graph.input_type).lower()
    print(f"input: {graph.input_name} {elem} {shown_shape(graph.input_shape)} (layout {graph.layout})")
    through = ", ".join(reversed(graph.explained_through))  # Softmax, Sigmoid, an int8 rounding, from the logits
    via = "" if graph.logits_name == graph.output_name else f" (explained through its {through}: {graph.logits_name})"
    outputs = [o.name for o in model.graph.output]
    others = (f" (the first of {len(outputs)} outputs: {', '.join(outputs)}; --output picks another)"
              if args.output_name is None and len(outputs) > 1 else "")
    print(f"output: {graph.output_name} {shown_shape(graph._shapes.get(graph.output_name))}{via}{others}")
    known = {op_type for _, op_type in PARSERS}
    bad = collections.Counter(op_type for _, op_type, _ in graph.unsupported)
    counts = collections.Counter(n.op_type for n in graph.data_nodes)
    print("ops on the data path:")
    for op_type, n in sorted(counts.items()):
        status = "supported" if op_type in known and not bad[op_type] else (
            f"NOT SUPPORTED ({bad[op_type]} of {n})" if op_type in known else "NOT SUPPORTED")
        print(f"  {op_type:<22} {n:>5}  {status}")
    if graph.batch_first_nodes:  # batch_first.py
        print(f"batch axis moved by the exporter (sequence-first attention): {graph.batch_first_nodes} node(s) "
              "rewritten batch-first, the rewritten model's outputs checked against the exported one's")
    fused = collections.defaultdict(collections.Counter)  # passes.layernorms_written_out, passes.heads_unbound
    for op, node in graph.fused_nodes:
        fused[op.op_type][node.op_type] += 1
    for op_type, counts in fused.items():
        what = {"LayerNormalization": "written-out LayerNorms, explained as LayerNormalization",
                "Transpose": "attention's q, k and v split off past the batch axis, explained as one Transpose each"}
        print(f"{what[op_type]}: " + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    folded = collections.Counter(n.op_type for n in graph.folded_nodes)
    if folded:
        print("folded to constants: " + ", ".join(f"{t} {n}" for t, n in sorted(folded.items())))
    problems = graph.problems()  # the checks explain runs before any work
    if graph.unsupported:
        print(f"cannot explain: {len(graph.unsupported)} node(s) stop it:")
        for name, op_type, why in graph.unsupported:
            print(f"  {name} ({op_type}){': ' + why if why else ': no rule for this op type'}")
    if graph.unsupported or problems:
        reasons = problems + ([f"{len(graph.unsupported)} unsupported node(s)"] if graph.unsupported else [])
        print(f"explainable: no ({'; '.join(reasons)})")
        return EXIT_USAGE
    usable = []
    for name in methods.FACTORIES:
        try:
            methods.get(name).check(graph)
            usable.append(name)
        except OnnxrapError:
            pass
    print(f"explainable: yes ({len(graph.ops)} ops after canonicalisation; methods: {', '.join(usable)})")
    return 0


def _class(text, labels, flag, also=""):
    """A class given on the command line as an index or a label name -> its index (range checked later)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    matches = [k for k, name in enumerate(labels or ()) if name == text]
    if len(matches) > 1:
        raise InputError(f"{flag} {text!r} names {len(matches)} classes ({', '.join(map(str, matches))}); "
                         "give the index")
    if matches:
        return matches[0]
    raise InputError(f"{flag} {text!r} is neither {also}a class index nor a label name"
                     + ("" if labels else " (the model has no labels; give --labels)"))


def _contrast(text, labels):
    """``--contrast``: none, others, a class index, or a label name -> the API's ``contrast``."""
    if text.strip().lower() in ("none", "others"):
        return None if text.strip().lower() == "none" else "others"
    return _class(text, labels, "--contrast", also="none, others, ")


def _preprocessing_record(preprocess):
    """What summary.json says of image preprocessing (None where only arrays were given)."""
    if preprocess is None:
        return None
    return {"size": list(preprocess.size) if preprocess.size else None, "resize": preprocess.resize,
            "channels": preprocess.channels, "layout": preprocess.layout, "preset": preprocess.preset,
            "mean": list(preprocess.mean), "std": list(preprocess.std), "channel_order": preprocess.channel_order}


# Longest file name written (bytes): below every common file system's limit of 255, with room for
# the temporary name's prefix and suffix.
MAX_NAME_BYTES = 180


def fitted_name(name, extension):
    """``name + extension``; a name too long for the file system is cut and ends in a hash of the
    whole, so that it stays unique and predictable."""
    import hashlib

    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[:MAX_NAME_BYTES - 11].decode(errors="ignore") + "-" + digest
    return name + extension


def input_stems(paths):
    """One unique, predictable name per input, for its output files.

    The file's stem; where stems collide (``cat/001.jpg``, ``dog/001.jpg``), each input takes the
    fewest parent folders that no other input shares (``cat_001``, ``dog_001``); inputs that differ
    only in their extension add it (``002_png``, ``002_jpg``); a name already taken (the same file
    given twice, or one that differs only in case, as file systems that ignore case would merge)
    gets ``-2``, ``-3``, the first of them still free.
    """
    resolved = [p.resolve() for p in paths]
    names = [p.stem for p in resolved]
    for stem in {n for n in names if names.count(n) > 1}:
        members = [resolved[i] for i, n in enumerate(names) if n == stem]
        for i, n in enumerate(names):
            if n == stem:
                names[i] = _distinct(resolved[i], members)
    taken, unique = set(), []
    for n in names:
        name, k = n, 1
        while name.casefold() in taken:
            k += 1
            name = f"{n}-{k}"
        taken.add(name.casefold())
        unique.append(name)
    return unique


def _distinct(path, others):
    """The shortest ``parent_..._stem`` (then with the extension) that no other path in ``others`` shares."""
    def key(p, depth, ext):
        return (*p.parent.parts[1:][len(p.parent.parts) - 1 - depth:], p.stem + (f"_{p.suffix[1:]}" if ext else ""))

    for ext in (False, True):
        for depth in range(len(path.parent.parts)):
            mine = key(path, depth, ext)
            if all(key(o, depth, ext) != mine for o in others if o != path):
                return "_".join(mine)
    return "_".join(key(path, 0, bool(path.suffix)))  # the same file twice: numbered by the caller


def _name(labels, k):
    if labels and k < len(labels) and labels[k] != str(k):
        return f"{k} ({labels[k]})"
    return str(k)


def _entry(path, display, per_method, chosen, labels, out, stem, args, contrast):
    """Stage one input's figure (and .npy files) in ``out``; return its summary entry and its line of results."""
    from .api import softmax

    first, k = per_method[chosen[0]]
    logits = first.logits[k]
    probs = softmax(logits)
    predicted, target = int(first.predicted[k]), int(first.target[k])
    versus = "" if contrast is None else f"_vs-{contrast}"
    figure = out.path(fitted_name(f"{stem}_{'+'.join(chosen)}{versus}", ".png"))
    entry = {"input": str(path), "predicted": predicted, "predicted_logit": float(logits[predicted]),
             "predicted_probability": float(probs[predicted]), "target": target,
             "target_logit": float(logits[target]), "contrast": contrast, "figure": str(figure), "methods": {}}
    if labels:  # the class names, where the model or --labels gives them
        entry["predicted_label"], entry["target_label"] = labels[predicted], labels[target]
    score = float(logits[target])  # what a conserving method's relevance sums to
    if contrast is not None:  # the target's logit minus the dual's
        score = entry["contrast_score"] = float(methods.contrast_seed([target], len(logits), contrast)[0] @ logits)
    panels = []
    for m in chosen:
        exp, _ = per_method[m]
        relevance, heatmap = exp.relevance[k], exp.heatmap[k]
        wide = relevance.astype(np.float64)  # sums of large float32 relevance would overflow in float32
        total = float(wide.sum())
        mass = float(np.abs(wide).sum()) / max(abs(float(logits[target])), 1e-30)
        recomputed = k in exp.recomputed
        entry["methods"][m] = {"relevance_sum": total,
                               "positive_sum": float(wide[wide > 0].sum()),
                               "negative_sum": float(wide[wide < 0].sum()),
                               "mass_over_logit": mass, "float64": args.dtype == "float64" or recomputed,
                               "recomputed_in_float64": recomputed,
                               "conserved": (k not in exp.unconserved) if exp.conserves else None,
                               "finite": k not in exp.nonfinite}
        if k in exp.nonfinite:
            note(f"{path}: {m}: warning: the relevance holds NaN or Inf: its rules overflow on this input "
                 "(lrp-eps: a larger --epsilon helps); its heatmap shows only the finite values")
        if recomputed:
            note(f"{path}: {m}: recomputed in float64: float32 rounding broke conservation")
        if k in exp.unconserved:
            note(f"{path}: {m}: warning: the relevance sums to {total:.6g}, not to the explained score "
                 f"{score:.6g}, even in float64: its rules lose relevance on this model (please report it)")
        if mass > MASS_WARNING:
            note(f"{path}: {m}: note: the relevance is large and cancels (|R| sums to {mass:.3g} times the logit); "
                 "its heatmap shows that mass more than the logit's make-up")
        panels.append((f"{m}  (" + (f"sum {total:.4g})" if k not in exp.nonfinite else "holds NaN or Inf)"), heatmap))
        if args.save_npy:
            npy = out.save_npy(fitted_name(f"{stem}_{m}{versus}", ".npy"), relevance)
            entry["methods"][m]["npy"] = str(npy)
    explained = _name(labels, target) + ("" if contrast is None else " rather than " + (
        "the others" if contrast == "others" else _name(labels, contrast)))
    # What a conserving method's map sums to, where it is not the predicted logit already shown.
    if contrast is not None:
        explained += f" (logit difference {entry['contrast_score']:.4g})"
    elif target != predicted:
        explained += f" (logit {logits[target]:.4g})"
    caption = (f"{path.name}: predicted {_name(labels, predicted)}, logit {logits[predicted]:.4g}, "
               f"p={probs[predicted]:.3f}; explained {explained}")
    out.save_figure(figure.name, display, panels, caption, overlay=args.overlay)
    line = (f"{path}: predicted {_name(labels, predicted)} (logit {logits[predicted]:.4g}, p={probs[predicted]:.3f}); "
            f"explained {explained} with {', '.join(chosen)} -> {figure}")
    return entry, line


if __name__ == "__main__":
    sys.exit(main())
