#!/usr/bin/env python3
"""CPU benchmark of onnxrap on full-size zoo classifiers: RAP time in forward passes and peak memory.

For each model (built with random weights by ``tools/zoo.py`` and cached as
ONNX under ``--cache-dir``) and each method, in one run of this script, in a
child process of its own (so that memory peaks don't mix):

* peak RSS: ``ru_maxrss`` of the child after it has loaded the model with
  ``onnxrap.Explainer(path)`` and explained it twice (the first call fills
  onnxrap's caches), before it creates anything else;
* ``ORT fwd``: a plain ``onnxruntime.InferenceSession`` (default session
  options, CPU provider) on the same input: median of ``--repeat`` runs after
  one warm-up run;
* ``explain``: ``Explainer.explain(x, method=...)``: median of ``--repeat``
  runs after the warm-up (it includes onnxrap's capture forward pass and its
  check against a plain run), timed right after the forward passes.  The two
  are timed in blocks, not alternately: right after an explain, ORT's
  forward pass runs slower (the BLAS threads of the explain still spin), and
  that is not the cost of a forward pass;
* ``RAP time in fwd passes``: explain / ORT fwd (medians);
* ``capture``: ``Explainer.capture.run(x)`` alone (the ORT part of explain);
* conservation: sum of the relevance vs the target logit (a sanity check).

The OpenBLAS variables are not touched here: to benchmark a current numpy,
unset them in the command itself::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_cpu.py

The script prints which OpenBLAS kernel ("architecture") numpy actually uses.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
RESULT_TAG = "BENCH_RESULT "

# name -> (zoo builder name, default input size)
MODELS = {
    "vgg16": ("vgg16", 224),
    "resnet50": ("resnet50", 224),
    "inception_v3": ("inception_v3", 299),
    "mobilenet_v2": ("mobilenet_v2_like", 224),
    "efficientnet_b0": ("efficientnet_b0_like", 224),
    "mobilenet_v3": ("mobilenet_v3_large_like", 224),
}
ALIASES = {"mobilenet_v2_like": "mobilenet_v2", "mobilenet": "mobilenet_v2", "vgg": "vgg16",
           "resnet": "resnet50", "inception": "inception_v3",
           "efficientnet_b0_like": "efficientnet_b0", "efficientnet": "efficientnet_b0",
           "mobilenet_v3_large_like": "mobilenet_v3", "mobilenet_v3_large": "mobilenet_v3"}


# ----------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded (numpy must be imported)."""
    import numpy  # noqa: F401  (loads numpy's BLAS)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{k: v for k, v in info.items() if k != "filepath"} | {"file": Path(info["filepath"]).name}
            for info in threadpool_info()]


def machine_info() -> dict:
    import numpy as np
    import onnxruntime as ort

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        import threadpoolctl
        tpc = threadpoolctl.__version__
    except ImportError:
        tpc = None
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "threadpoolctl": tpc,
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in BLAS_VARS},
        "loadavg": loadavg(),
    }


def print_machine(info: dict) -> None:
    print("## Machine")
    print(f"- CPU: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"{info['memory_gb']} GB RAM")
    print(f"- Python {info['python']} on {info['platform']}")
    print(f"- numpy {info['numpy']}, onnxruntime {info['onnxruntime']} "
          f"(providers: {', '.join(info['onnxruntime_providers'])})")
    if info["threadpoolctl"] is None:
        print("- BLAS: unknown (pip install threadpoolctl to see which library and kernel numpy uses)")
    for b in info["blas"]:
        print(f"- BLAS: {b.get('internal_api')} {b.get('version')} ({b.get('file')}), "
              f"kernel/architecture: {b.get('architecture')}, threads: {b.get('num_threads')}, "
              f"threading: {b.get('threading_layer')}")
    for k, v in info["env"].items():
        print(f"- {k}={'<unset>' if v is None else v}")
    load = info["loadavg"]
    if load is not None:
        busy = load[0] > 1.0
        print(f"- load average (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
              + (" -- other processes are running: timings will be noisy" if busy else ""))
    print()


# ------------------------------------------------------------------ models
def canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return key


def model_path(cache_dir: Path, name: str, size: int, classes: int, width: float, seed: int) -> Path:
    w = f"_w{width:g}" if width != 1.0 else ""
    return cache_dir / f"{name}_{size}_c{classes}{w}_seed{seed}.onnx"


def ensure_model(cache_dir: Path, name: str, size: int, classes: int, width: float, seed: int) -> tuple[Path, float]:
    """Path of the cached ONNX model, built with tools/zoo.py if missing; and the build time (0 if cached)."""
    path = model_path(cache_dir, name, size, classes, width, seed)
    if path.is_file():
        return path, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(TOOLS))
    import onnx
    import zoo

    t0 = time.perf_counter()
    model = zoo.build(MODELS[name][0], size=size, num_classes=classes, width=width, seed=seed)
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    del model
    return path, time.perf_counter() - t0


def weight_stats(path: Path) -> tuple[int, int, list[int]]:
    """(parameter count, bytes of all initializers, input shape without the batch) of an ONNX file."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    params = nbytes = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        nbytes += n * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) and not init.name.endswith(
                (".running_mean", ".running_var")):
            params += n
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return params, nbytes, [d.dim_value for d in dims[1:]]


def make_input(shape: str, batch: int, seed: int):
    """A deterministic "normalised image" batch [batch, C, H, W] (tools/zoo.py's calibration data)."""
    sys.path.insert(0, str(TOOLS))
    import zoo

    c, h, w = (int(d) for d in shape.split(","))
    return zoo.calibration_batch((h, w), n=batch, channels=c, seed=seed)


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------ child modes
def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_now_mb() -> float:
    value = _status_mb("VmRSS")
    return float("nan") if value is None else value


def peak_rss_mb() -> float:
    """This process's own peak RSS.

    VmHWM belongs to the process's address space, which exec replaces; Linux's ru_maxrss
    survives exec, so a child started by a parent that had just built VGG-16 would report
    the parent's memory as its own peak.
    """
    value = _status_mb("VmHWM")
    if value is not None:
        return value
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def child_run(args) -> dict:
    """One model and method: load with onnxrap, explain, then time explain against a plain ORT forward.

    Peak RSS is read after the model is loaded and explained twice (the first
    call fills onnxrap's caches), before this process creates the plain ONNX
    Runtime session used for timing, so it is the memory of loading and
    explaining alone.  Then a block of forward passes and a block of explains.
    """
    import numpy as np
    import onnxruntime as ort

    x = make_input(args.shape, args.batch, args.input_seed)
    rss_start = rss_now_mb()
    import onnxrap

    t0 = time.perf_counter()
    ex = onnxrap.Explainer(args.model, engine=args.engine)
    load = time.perf_counter() - t0
    rss_loaded = rss_now_mb()
    peak_loaded = peak_rss_mb()

    t0 = time.perf_counter()
    e = ex.explain(x, method=args.method)  # warm-up (also fills onnxrap's weight caches)
    first = time.perf_counter() - t0
    e = ex.explain(x, method=args.method)
    peak_explain = peak_rss_mb()
    rss_after = rss_now_mb()

    # Plain ONNX Runtime, default session options (CPU provider named, as GPU builds require).
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    ort_load = time.perf_counter() - t0
    feed = {sess.get_inputs()[0].name: x}
    load_before = loadavg()
    sess.run(None, feed)  # warm-up
    fwd = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        y = sess.run(None, feed)[0]
        fwd.append(time.perf_counter() - t0)
    times, cpu = [], []
    for _ in range(args.repeat):
        c0, t0 = cpu_s(), time.perf_counter()
        e = ex.explain(x, method=args.method)
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_s() - c0)
    load_after = loadavg()

    capture = []
    if hasattr(ex, "capture") and hasattr(ex.capture, "run"):
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ex.capture.run(x)
            capture.append(time.perf_counter() - t0)

    rel = np.asarray(e.relevance, dtype=np.float64).reshape(len(x), -1).sum(axis=1)
    logit = np.asarray(e.target_logit, dtype=np.float64)
    out = {
        "load_s": load,
        "ort_load_s": ort_load,
        "ort_fwd_s": statistics.median(fwd),
        "ort_fwd_min_s": min(fwd),
        "ort_fwd_all_s": fwd,
        "ort_top": [int(i) for i in np.asarray(y).reshape(len(x), -1).argmax(1)],
        "explain_first_s": first,
        "explain_s": statistics.median(times),
        "explain_min_s": min(times),
        "explain_all_s": times,
        "explain_cpu_all_s": cpu,
        "loadavg_during": [load_before, load_after],
        "capture_s": statistics.median(capture) if capture else None,
        "rss_start_mb": rss_start,
        "rss_loaded_mb": rss_loaded,
        "rss_after_explain_mb": rss_after,
        "peak_rss_loaded_mb": peak_loaded,
        "peak_rss_mb": peak_explain,
        "target": [int(t) for t in e.target],
        "relevance_sum": rel.tolist(),
        "target_logit": logit.tolist(),
        "conservation_rel_err": (np.abs(rel - logit) / np.maximum(np.abs(logit), 1e-12)).tolist(),
        "relevance_finite": bool(np.all(np.isfinite(e.relevance))),
        "blas": blas_info(),
    }
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        ex.explain(x, method=args.method)
        prof.disable()
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(args.profile)
        for key in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.profile_top)
            print(f"### cProfile of one explain(), sorted by {key} ({Path(args.model).name}, {args.method})",
                  file=sys.stderr)
            print(buf.getvalue(), file=sys.stderr)
        out["profile"] = args.profile
    return out


def run_child(mode: str, model: Path, method: str, shape: str, args, profile: str | None = None,
              engine: str = "eager", repeat: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--_child={mode}", "--_model", str(model),
           "--_method", method, "--_shape", shape, "--batch", str(args.batch),
           "--repeat", str(repeat or args.repeat), "--input-seed", str(args.input_seed),
           "--profile-top", str(args.profile_top), "--_engine", engine]
    if profile:
        cmd += ["--_profile", profile]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"{mode} child for {model.name} ({method}) failed with exit code {proc.returncode}:\n"
                       f"{proc.stdout[-2000:]}")


# ------------------------------------------------------------------- table
def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def markdown_table(rows: list[dict]) -> str:
    head = ["model", "input", "params (M)", "weights (MB)", "method", "engine", "ORT fwd (ms)", "explain (ms)",
            "RAP time in fwd passes", "same, min/min", "capture (ms)", "peak RSS (MB)", "RSS after load (MB)",
            "relevance sum", "target logit", "conservation err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["input"], fmt(r["params"] / 1e6, ".1f"), fmt(r["weight_bytes"] / 2**20, ".0f"),
            r["method"], r["engine"], fmt(r["ort_fwd_s"] * 1e3, ".1f") + f' (min {r["ort_fwd_min_s"] * 1e3:.1f})',
            fmt(r["explain_s"] * 1e3, ".0f") + f' (min {r["explain_min_s"] * 1e3:.0f})',
            fmt(r["fwd_passes"], ".1f"), fmt(r["fwd_passes_min"], ".1f"), fmt(None if r["capture_s"] is None else r["capture_s"] * 1e3, ".0f"),
            fmt(r["peak_rss_mb"], ".0f"), fmt(r["rss_loaded_mb"], ".0f"),
            " ".join(f"{v:.4g}" for v in r["relevance_sum"]),
            " ".join(f"{v:.4g}" for v in r["target_logit"]),
            " ".join(f"{v:.1e}" for v in r["conservation_rel_err"]),
        ]) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg16,resnet50",
                   help=f"comma-separated: {', '.join(MODELS)} (default vgg16,resnet50)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement, after one warm-up (default 3)")
    p.add_argument("--methods", default="rap", help="comma-separated onnxrap methods (default rap)")
    p.add_argument("--engines", default="eager,onnx",
                   help="comma-separated: eager (the rules on NumPy), onnx (compiled into the model's graph; "
                        "compiled once in a child of its own before the measured one) (default eager,onnx)")
    p.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    p.add_argument("--cache-dir", default=str(ROOT / "bench" / "models"),
                   help="where the built ONNX models are kept (default bench/models, git-ignored)")
    p.add_argument("--size", type=int, default=None,
                   help="input size for every model (default 224; 299 for inception_v3)")
    p.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (default 1, full size)")
    p.add_argument("--seed", type=int, default=0, help="weight seed of the zoo models (default 0)")
    p.add_argument("--input-seed", type=int, default=1, help="seed of the input batch (default 1)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="also cProfile one explain() per model/method; write DIR/<model>_<method>.prof "
                        "and print the top functions (by cumulative and by own time) to stderr")
    p.add_argument("--profile-top", type=int, default=30, help="rows of each printed profile (default 30)")
    p.add_argument("--_child", choices=("run",), help=argparse.SUPPRESS)
    p.add_argument("--_model", dest="model", help=argparse.SUPPRESS)
    p.add_argument("--_method", dest="method", help=argparse.SUPPRESS)
    p.add_argument("--_profile", dest="profile_out", help=argparse.SUPPRESS)
    p.add_argument("--_shape", dest="shape", help=argparse.SUPPRESS)
    p.add_argument("--_engine", dest="engine", default="eager", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeat < 1:
        p.error("--batch and --repeat must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("ONNXRAP_CACHE", str(Path(args.cache_dir) / "compiled"))
    if args._child:
        args.profile = args.profile_out
        sys.path.insert(0, str(ROOT))  # import onnxrap from this checkout
        result = child_run(args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0

    models = [canonical(m) for m in args.models.split(",") if m.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    info = machine_info()
    print_machine(info)
    cache = Path(args.cache_dir)
    rows = []
    for name in models:
        size = args.size or MODELS[name][1]
        path, built = ensure_model(cache, name, size, args.classes, args.width, args.seed)
        params, nbytes, in_shape = weight_stats(path)
        shape = ",".join(str(d) for d in in_shape)
        print(f"{name}: {path} ({'built in %.1f s' % built if built else 'cached'}), "
              f"{params / 1e6:.1f} M parameters, {nbytes / 2**20:.0f} MB of weights", flush=True)
        for method, engine in itertools.product(methods, engines):
            prof = None
            if args.profile:
                prof = str(Path(args.profile).resolve() / f"{name}_{method}_{engine}.prof")
            if engine == "onnx":  # compile into the cache first: the measured child only loads it
                t0 = time.perf_counter()
                run_child("run", path, method, shape, args, engine=engine, repeat=1)
                print(f"  compiled {method} (and explained once) in {time.perf_counter() - t0:.1f} s", flush=True)
            r = run_child("run", path, method, shape, args, prof, engine=engine)
            print(f"  [{engine}] ORT forward: median {r['ort_fwd_s'] * 1e3:.1f} ms of {args.repeat} "
                  f"({', '.join('%.1f' % (t * 1e3) for t in r['ort_fwd_all_s'])} ms)")
            print(f"  [{engine}] explain({method}): median {r['explain_s'] * 1e3:.0f} ms of {args.repeat} "
                  f"({', '.join('%.0f' % (t * 1e3) for t in r['explain_all_s'])} ms; first call "
                  f"{r['explain_first_s'] * 1e3:.0f} ms; load {r['load_s']:.1f} s) "
                  f"= {r['explain_s'] / r['ort_fwd_s']:.1f} forward passes (min/min "
                  f"{r['explain_min_s'] / r['ort_fwd_min_s']:.1f}); peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"load average {r['loadavg_during'][0]} -> {r['loadavg_during'][1]}", flush=True)
            rows.append({
                "model": name, "input": "x".join(str(d) for d in [args.batch] + in_shape),
                "size": size, "batch": args.batch, "engine": engine,
                "classes": args.classes, "width": args.width, "method": method, "path": str(path),
                "params": params, "weight_bytes": nbytes, **r,
                "fwd_passes": r["explain_s"] / r["ort_fwd_s"],
                "fwd_passes_min": r["explain_min_s"] / r["ort_fwd_min_s"],
            })
    print()
    print(markdown_table(rows))
    if args.json:
        out = {"date": datetime.date.today().isoformat(), "argv": sys.argv[1:], "machine": info,
               "repeat": args.repeat, "results": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
