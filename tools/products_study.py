#!/usr/bin/env python3
"""The products study (docs/rules.md, products): how a product of two signals shares relevance, side by side.

Registers, beside each of ``rap`` and ``lrp-eps`` (the uniform rule: half of R to each factor), the readings
where one factor is held constant as a weight and the other takes all of R: ``<method>-first`` (the first
operand of the ONNX node: gMLP's ``u`` of ``u * v``, a linear attention's ``K^T`` of ``K^T V`` and ``Q`` of
``Q (K^T V)``) and ``<method>-second`` (``v``; ``V`` and ``K^T V``: attention's CP-LRP, Q and K constant).  Then:

    python tools/products_study.py conservation MODEL DATA.npz [--methods a,b] [--limit N]
    python tools/products_study.py cli evaluate MODEL DATA.npz --methods rap,rap-first,... -o OUT

``conservation``: per method, the relevance's sum over the target logit and its mass (sum |R|) over |logit|,
median and range over the inputs.  ``cli``: the onnxrap CLI, with the candidates known.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxrap import Explainer, methods  # noqa: E402
from onnxrap.rules.products import BilinearShare, FactorShare  # noqa: E402

READINGS = {"first": 1.0, "second": 0.0}


def _register():
    for base in ("rap", "lrp-eps"):
        for reading, share in READINGS.items():
            name = f"{base}-{reading}"

            def make(base=base, share=share, name=name):
                inner = methods.get(base).rules["dense.product"].rule
                return methods.Composite({"product": FactorShare(share), "dense.product": BilinearShare(inner, share)},
                                         base=base, name=name, conserves=base == "rap")

            methods.register(name)(make)


def conservation(model, data, names, limit):
    d = np.load(data)
    x = d["x"][:limit]
    ex = Explainer(model)
    print("| method | sum / logit: median (min .. max) | mass / abs(logit): median (min .. max) |")
    print("| --- | --- | --- |")
    for name in names:
        e = ex.explain(x, method=name)
        flat = e.relevance.reshape(len(x), -1).astype(np.float64)
        ratio = flat.sum(axis=1) / e.target_logit
        mass = np.abs(flat).sum(axis=1) / np.abs(e.target_logit)
        print(f"| {name} | {np.median(ratio):.4g} ({ratio.min():.4g} .. {ratio.max():.4g}) | "
              f"{np.median(mass):.4g} ({mass.min():.4g} .. {mass.max():.4g}) |")


def main(argv=None):
    _register()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "cli":
        from onnxrap.cli import main as cli

        sys.exit(cli(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["conservation"])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--methods", default="rap,rap-first,rap-second,lrp-eps,lrp-eps-first,lrp-eps-second")
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)
    conservation(args.model, args.data, args.methods.split(","), args.limit)


if __name__ == "__main__":
    main()
