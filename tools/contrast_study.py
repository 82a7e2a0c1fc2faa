"""Issue 11's last study: how much of a target unit's relevance rap.hidden gives its inhibitors.

rap.hidden (docs/rules.md) sends a unit's positive relevance R+ to its promoters, and a share
``R+ Zb / (Za + Zb)`` to its inhibitors, with the same sign: for one logit both are "relevant".  For a
contrast's seed the sign means "for the target" or "for the dual", and an inhibitor of a unit that
speaks for the target speaks against it.  This study registers ``rap-inhibitors-LAM``: rap whose
rap.hidden gives the inhibitors ``LAM`` times that share for a contrast's samples (1: rap; 0: none,
as LRP-alpha1-beta0; -1: the opposite sign, as the z-rule's signs), everything else unchanged, then

    python tools/contrast_study.py sweep [--lambdas 1,0.5,0,-0.5,-1] [--digits 8,360] [-o DIR]

prints class sensitivity (tools/class_sensitivity.py, ``contrast="others"``) and Table I for the true
class (``onnxrap evaluate ... --contrast others``) per LAM.  EVALUATION.md, C.2 gives the run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from class_sensitivity import class_sensitivity  # noqa: E402

from onnxrap import Explainer, methods  # noqa: E402
from onnxrap.cli import main as cli  # noqa: E402
from onnxrap.rules.linear import RapHidden  # noqa: E402


class InhibitorShare(RapHidden):
    """rap.hidden with the inhibitors' share of R+ scaled by ``lam`` for a contrast's samples (all
    samples of a study batch are)."""

    def __init__(self, lam: float):
        super().__init__(per_sign=False, conserve=True)
        self.lam = lam

    def __call__(self, op, ctx, R):
        if ctx.contrast is not None and not bool(ctx.contrast.all()):
            raise ValueError("the study explains contrasts only")
        self.contrasting = ctx.contrast is not None
        return super().__call__(op, ctx, R)

    def _part(self, bk, R, x1, wa, sa, wb, sb, conv, fwd, adj, linear=None):
        if not self.contrasting:
            return RapHidden._part(bk, R, x1, wa, sa, wb, sb, conv, fwd, adj, linear)
        if linear is None:
            za, zb = (z if s > 0 else -z for z, s in zip(fwd(x1, wa, wb), (sa, sb)))
        else:
            za = fwd(x1, wa)
            zb = bk.pos(za - linear)
        # R- as rap sends it; R+ to the promoters in full and to the inhibitors lam times rap's share.
        ta, tb = bk.rap_shares(bk.neg(R), za, zb, conv)
        ta = ta + bk.sdiv(bk.pos(R), za)
        tb = tb + self.lam * bk.sdiv(bk.pos(R), za + zb)
        return x1 * adj((ta if sa > 0 else -ta, wa), (tb if sb > 0 else -tb, wb))


def _register(lam):
    name = f"rap-inhibitors-{lam:g}"

    def factory():
        m = methods.get("rap")
        m.rules["linear"] = InhibitorShare(lam)
        m.name = name
        return m

    methods.register(name)(factory)
    return name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["sweep"])
    p.add_argument("--lambdas", default="1,0.5,0,-0.5,-1")
    p.add_argument("--digits", default="8,360", help="class sensitivity over the first N held-out digits")
    p.add_argument("-o", "--out", default="evaluation/contrast_inhibitors")
    args = p.parse_args(argv)
    model, data = (os.path.relpath(ROOT / "models" / name) for name in ("digits_cnn.onnx", "digits_holdout.npz"))
    x = np.load(data)["x"]
    explainer = Explainer(model)
    counts = [int(n) for n in args.digits.split(",")]
    print("| inhibitors' share | " + " | ".join(f"class sensitivity ({n} digits)" for n in counts) + " |")
    print("|---|" + "---|" * len(counts))
    names = []
    for lam in (float(v) for v in args.lambdas.split(",")):
        name = _register(lam)
        names.append(name)
        cells = [f"{class_sensitivity(explainer, x[:n], name, 'others')[0]:.3f}" for n in counts]
        print(f"| {lam:g} | " + " | ".join(cells) + " |", flush=True)
    return cli(["evaluate", model, data, "--methods", ",".join(names), "--contrast", "others",
                "-o", args.out])


if __name__ == "__main__":
    sys.exit(main())
