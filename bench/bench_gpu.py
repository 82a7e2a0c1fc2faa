#!/usr/bin/env python3
"""GPU benchmark: ONNX Runtime CUDA forward vs onnxrap's explain on the GPU, in one run.

For each model (full size, random weights, built by tools/zoo.py and cached
like bench_cpu.py does) and each batch size:

* ``fwd``: a plain ``onnxruntime.InferenceSession`` on the CUDA provider, input
  bound to the device with IOBinding, median of ``--repeat`` runs after a warm-up;
* ``explain``: ``Explainer(path, device="cuda").explain(x, method=...)`` on the
  same batch (its capture, the logit check and the backward walk), median;
* ``RAP/fwd``: explain / fwd; images per second of explain;
* peak GPU memory: CuPy's pool high-water mark during explain, and the device's
  used memory (``cudaMemGetInfo``) after it, which includes ONNX Runtime's arena.

Usage: ``python bench/bench_gpu.py [--models vgg16,resnet50,inception_v3] [--batches 1,32]``.
Target (issue): RAP at most 5 forward passes at batch 32 on an H100.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_cpu import MODELS, canonical, ensure_model  # noqa: E402


def median_time(fn, repeat):
    fn()  # warm-up: kernels, arenas, cuBLAS handles
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ort_forward(path, x):
    import cupy
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CUDAExecutionProvider"])
    name = session.get_inputs()[0].name
    x_gpu = cupy.asarray(x)

    def run():
        binding = session.io_binding()
        binding.bind_input(name, "cuda", 0, np.float32, list(x.shape), x_gpu.data.ptr)
        binding.bind_output(session.get_outputs()[0].name, "cuda", 0)
        session.run_with_iobinding(binding)
        cupy.cuda.runtime.deviceSynchronize()

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg16,resnet50,inception_v3")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--methods", default="rap")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--cache-dir", default=str(ROOT / "bench" / "models"))
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()

    import cupy

    from onnxrap import Explainer

    props = cupy.cuda.runtime.getDeviceProperties(0)
    card = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {card}; CuPy {cupy.__version__}")
    rows = []
    for model in args.models.split(","):
        name = canonical(model)
        builder, size = MODELS[name]
        path, _ = ensure_model(Path(args.cache_dir), name, size, 1000, 1.0, 0)
        explainer = Explainer(path, device="cuda")
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            fwd = median_time(ort_forward(path, x), args.repeat)
            for method in args.methods.split(","):
                pool = cupy.get_default_memory_pool()
                pool.free_all_blocks()
                explain = median_time(lambda: explainer.explain(x, method=method), args.repeat)
                free, total = cupy.cuda.runtime.memGetInfo()
                rows.append(dict(model=name, batch=batch, method=method, fwd_s=fwd, explain_s=explain,
                                 ratio=explain / fwd, images_per_s=batch / explain,
                                 cupy_pool_gib=pool.total_bytes() / 2**30, device_used_gib=(total - free) / 2**30))
                r = rows[-1]
                print(f"| {name} | {batch} | {method} | {fwd * 1e3:.1f} ms | {explain * 1e3:.1f} ms | "
                      f"{r['ratio']:.2f} | {r['images_per_s']:.1f} | {r['cupy_pool_gib']:.2f} GiB | "
                      f"{r['device_used_gib']:.2f} GiB |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": card, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
