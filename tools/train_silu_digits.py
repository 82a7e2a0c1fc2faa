#!/usr/bin/env python3
"""Train small SiLU and hard-swish networks with squeeze-excitation on the digits, for the study of
rap's rule at inputs with a floor (docs/rules.md, signed.floored; EVALUATION.md, section D).

Random weights say nothing about a relevance rule; these networks are trained exactly as
``tools/train_digits.py`` trains the bundled model (its data, split, augmentation, optimiser and
epochs; the split is always ``random_state=0``, so the held-out images are
``models/digits_holdout.npz``'s).  ``--seed`` changes only the initialisation and the batches.

    --arch effnet   EfficientNet-B0-style: stem Conv+BN+SiLU, MBConv blocks (1x1 expand + BN + SiLU,
                    depthwise 3x3 + BN + SiLU, squeeze-excitation with SiLU and Sigmoid, 1x1 project
                    + BN, residual Add), 1x1 head Conv+BN+SiLU, global pool, Gemm.  SiLU exports as
                    Mul(x, Sigmoid(x)).
    --arch mnv3     MobileNetV3-style: the same blocks with ReLU in the first two, HardSwish after,
                    squeeze-excitation with ReLU and HardSigmoid, and MobileNetV3's last dense layer
                    with HardSwish before the classifier.

Writes ``OUT/digits_<arch>_s<seed>.onnx``.  Run with the tools venv (torch, scikit-learn):

    nice -n 19 /work/data/tools-venv/bin/python tools/train_silu_digits.py --arch effnet --seed 0 --out /work/data/h21
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_digits  # noqa: E402  (the bundled model's data, training loop and export)

SPLIT_SEED = 0  # models/digits_holdout.npz's split


class SqueezeExcite(nn.Module):
    def __init__(self, channels, squeezed, act, gate):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class MBConv(nn.Module):
    """Inverted residual: expand, depthwise, squeeze-excitation, linear projection."""

    def __init__(self, cin, cout, expand, stride, act, se_act, se_gate):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), act(),
                   SqueezeExcite(hidden, max(1, cin // 4), se_act, se_gate),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


# (expand, out channels, stride, activation) per block; 32x32 -> 4x4.
BLOCKS = {"effnet": [(1, 16, 1, "silu"), (4, 24, 2, "silu"), (4, 24, 1, "silu"), (4, 40, 2, "silu"),
                     (4, 40, 1, "silu"), (4, 64, 2, "silu")],
          "mnv3": [(1, 16, 1, "relu"), (4, 24, 2, "relu"), (4, 24, 1, "hardswish"), (4, 40, 2, "hardswish"),
                   (4, 40, 1, "hardswish"), (4, 64, 2, "hardswish")]}
ACTS = {"silu": nn.SiLU, "relu": nn.ReLU, "hardswish": nn.Hardswish}


class Net(nn.Module):
    def __init__(self, arch, num_classes=10):
        super().__init__()
        v3 = arch == "mnv3"
        stem_act = ACTS["hardswish" if v3 else "silu"]
        se_act, se_gate = (nn.ReLU, nn.Hardsigmoid) if v3 else (nn.SiLU, nn.Sigmoid)
        layers, cin = [nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), stem_act()], 16
        for expand, cout, stride, act in BLOCKS[arch]:
            layers.append(MBConv(cin, cout, expand, stride, ACTS[act], se_act, se_gate))
            cin = cout
        layers += [nn.Conv2d(cin, 128, 1, bias=False), nn.BatchNorm2d(128), stem_act(),
                   nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if v3:  # MobileNetV3's last dense layer, HardSwish, before the classifier
            layers += [nn.Linear(128, 128), nn.Hardswish()]
        layers.append(nn.Linear(128, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(BLOCKS), required=True)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batches (the split is fixed)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    train_digits.seed_everything(args.seed)
    x_train, y_train, x_hold, y_hold = train_digits.load_data(SPLIT_SEED)
    bundled = np.load(train_digits.REPO_ROOT / "models" / "digits_holdout.npz")
    if not np.array_equal(bundled["y"], y_hold.numpy()) or not np.allclose(bundled["x"], x_hold.numpy()):
        raise SystemExit("held-out split differs from models/digits_holdout.npz")
    model = Net(args.arch)
    print(f"{args.arch} seed {args.seed}: {sum(p.numel() for p in model.parameters())} parameters")
    start = time.perf_counter()
    train_digits.train(model, x_train, y_train, args.seed)
    accuracy = (train_digits.predict(model, x_hold) == y_hold).float().mean().item()
    print(f"training took {time.perf_counter() - start:.0f}s; held-out accuracy {accuracy:.4f}")
    path = args.out / f"digits_{args.arch}_s{args.seed}.onnx"
    proto = train_digits.export_onnx(model, path, x_hold)
    described = {p.key: p.value for p in proto.metadata_props}
    described["onnxrap.description"] = (f"{args.arch} (SiLU/hard-swish, squeeze-excitation) on sklearn digits, "
                                        f"seed {args.seed}, held-out accuracy {accuracy:.4f}; tools/train_silu_digits.py")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, described)
    onnx.save(proto, str(path))
    print(f"wrote {path} ({path.stat().st_size} bytes); ops:",
          ", ".join(sorted({n.op_type for n in proto.graph.node})))


if __name__ == "__main__":
    main()
