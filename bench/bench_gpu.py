#!/usr/bin/env python3
"""GPU benchmark: onnxrap's explain on the GPU in units of ONNX Runtime's own CUDA forward pass.

For each model (full size, random weights, built by tools/zoo.py and cached
as bench_cpu.py does) and each batch size:

* ``fwd``: a plain ``onnxruntime.InferenceSession`` on the CUDA provider with
  the same provider options as onnxrap's (exact float32 unless ``--tf32``),
  input and output bound to the device with IOBinding, median of
  ``--repeat`` runs after a warm-up;
* ``explain``: ``Explainer(path, device="cuda").explain(x, method=...)`` on
  the same batch (capture, logit check once per shape, backward walk,
  relevance back on the host), median after a warm-up;
* ``passes``: explain / fwd, the issue's figure of merit (targets: ``rap`` in
  at most 5 forward passes at batch 32 and 10 at batch 1);
* images per second of explain (batches above 32 should not lose any);
* peak GPU memory: CuPy's pool after the runs (the pool keeps every block it
  grew to, so this is its high-water mark) and the device's used memory
  (``cudaMemGetInfo``), which adds ONNX Runtime's arena and the CUDA context.

Usage: ``python bench/bench_gpu.py [--models vgg16,resnet50] [--batches 1,32] [--tf32] [--json out.json]``.
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


def median_time(fn, repeat, sync):
    fn()  # warm-up: kernels, arenas, cuBLAS handles, the logit check, constants on the device
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ort_forward(path, x, providers):
    import cupy
    import onnxruntime as ort

    from onnxrap.capture import session_options

    session = ort.InferenceSession(str(path), session_options(), providers=providers)
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name
    x_gpu = cupy.asarray(x)

    def run():
        binding = session.io_binding()
        binding.bind_input(name, "cuda", cupy.cuda.Device().id, np.float32, list(x.shape), x_gpu.data.ptr)
        binding.bind_output(out, "cuda", cupy.cuda.Device().id)
        session.run_with_iobinding(binding)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg16,resnet50,inception_v3,mobilenet_v2")
    p.add_argument("--batches", default="1,32,64,128")
    p.add_argument("--methods", default="rap")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=32,
                   help="samples per ONNX Runtime run inside explain (Explainer.max_batch; default %(default)s)")
    p.add_argument("--tf32", action="store_true", help="TF32 in both the forward pass and explain")
    p.add_argument("--cache-dir", default=str(ROOT / "bench" / "models"))
    p.add_argument("--json", help="write the numbers here, one row at a time")
    args = p.parse_args()

    import cupy

    from onnxrap import Explainer
    from onnxrap.errors import ModelError

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    card = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    sync = cupy.cuda.runtime.deviceSynchronize
    print(f"device: {card}; CuPy {cupy.__version__}; {'TF32' if args.tf32 else 'exact float32'}; "
          f"max_batch {args.max_batch}")
    print("| model | batch | method | ORT CUDA forward | explain | forward passes | images/s | CuPy pool "
          "| device used |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for model in args.models.split(","):
        name = canonical(model)
        size = MODELS[name][1]
        path, _ = ensure_model(Path(args.cache_dir), name, size, 1000, 1.0, 0)
        explainer = Explainer(path, device="cuda", tf32=args.tf32)
        explainer.max_batch = args.max_batch
        for batch in (int(b) for b in args.batches.split(",")):
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
            fwd = median_time(ort_forward(path, x, explainer.device.providers), args.repeat, sync)
            for method in args.methods.split(","):
                pool = cupy.get_default_memory_pool()
                pool.free_all_blocks()
                try:
                    explain = median_time(lambda: explainer.explain(x, method=method), args.repeat, sync)
                except ModelError as refusal:  # the capture's check against a plain run: a row, not the end
                    rows.append(dict(model=name, batch=batch, method=method, tf32=args.tf32, refused=str(refusal)))
                    print(f"| {name} | {batch} | {method} | {fwd * 1e3:.1f} ms | refused: {refusal} |", flush=True)
                    continue
                free, total = cupy.cuda.runtime.memGetInfo()
                rows.append(dict(model=name, batch=batch, method=method, tf32=args.tf32, fwd_s=fwd,
                                 explain_s=explain, forward_passes=explain / fwd, images_per_s=batch / explain,
                                 cupy_pool_gib=pool.total_bytes() / 2**30, device_used_gib=(total - free) / 2**30))
                r = rows[-1]
                print(f"| {name} | {batch} | {method} | {fwd * 1e3:.1f} ms | {explain * 1e3:.1f} ms | "
                      f"{r['forward_passes']:.1f} | {r['images_per_s']:.0f} | {r['cupy_pool_gib']:.2f} GiB | "
                      f"{r['device_used_gib']:.2f} GiB |", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps({"device": card, "rows": rows}, indent=1))
        explainer = None  # its sessions and constants go before the next model's
        cupy.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
