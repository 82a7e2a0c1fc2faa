#!/usr/bin/env python3
"""Throughput of ``onnxrap audit``: inputs explained per second with 1 and 2 local workers (and Ray).

Each configuration runs the whole audit command in a child process of its own
(into a fresh report folder, without the faithfulness sample) twice: on the
first ``--small`` and on the first ``--inputs`` digits of the bundled held-out
set.  Throughput is the difference in inputs over the difference in wall time,
so what does not grow with the data (starting processes, Ray or the workers,
loading the model, writing the page) cancels out.  Figures are ratios to one
worker; the absolute numbers depend on the machine and on what else runs on it.

    python bench/bench_audit.py                  # 1 and 2 workers
    python bench/bench_audit.py --ray            # and Ray Data on a local 2-CPU instance (needs onnxrap[ray])
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(extra, inputs, batch, env=None):
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "onnxrap", "audit", str(ROOT / "models" / "digits_cnn.onnx"),
                   str(ROOT / "models" / "digits_holdout.npz"), "-o", str(Path(tmp) / "report"), "--limit",
                   str(inputs), "--faithfulness", "0", "--quiet", "--device", "cpu", "--batch-size", str(batch),
                   *extra]
        start = time.monotonic()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
        return time.monotonic() - start


def run(label, extra, small, inputs, batch, repeat, env=None):
    """Medians of ``repeat`` runs at each size, the two sizes alternating so that a busy spell hits both."""
    walls = [(wall(extra, small, batch, env), wall(extra, inputs, batch, env)) for _ in range(repeat)]
    t_small, t_big = statistics.median(w[0] for w in walls), statistics.median(w[1] for w in walls)
    return {"label": label, "inputs_per_s": (inputs - small) / (t_big - t_small), "wall_small_s": t_small,
            "wall_s": t_big}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=360)
    p.add_argument("--small", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3, help="runs at each size; the medians are used")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ray", action="store_true", help="also Ray Data on a local instance with 2 CPUs")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args()
    # The plain run keeps the libraries' default threads; "1 thread" is the share each of 2 workers or Ray
    # actors gets on 2 cores (OMP_NUM_THREADS), to tell the gain of the threads from that of the processes.
    configs = [("1 worker", [], None), ("1 worker, 1 thread", [], {"OMP_NUM_THREADS": "1"}),
               ("2 workers", ["--workers", "2"], None)]
    if args.ray:
        configs.append(("Ray local, 2 actors", ["--ray", "local", "--workers", "2"], None))
    rows = [run(label, extra, args.small, args.inputs, args.batch_size, args.repeat, env)
            for label, extra, env in configs]
    base = rows[0]["inputs_per_s"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.small} and {args.inputs} digits, batch {args.batch_size}, medians of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'configuration':<22} {'inputs/s':>9} {'vs 1 worker':>12} {'wall s, small':>14} {'wall s, all':>12}")
    for r in rows:
        r["ratio"] = r["inputs_per_s"] / base
        print(f"{r['label']:<22} {r['inputs_per_s']:>9.1f} {r['ratio']:>11.2f}x {r['wall_small_s']:>14.1f} "
              f"{r['wall_s']:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
