#!/usr/bin/env python3
"""Write small MobileNetV3-like and EfficientNet-B0-like classifiers, exported by PyTorch, for
``tests/test_gates_models.py``: squeeze-excitation gates and smooth activations as exporters write them.

The blocks follow the papers (random weights, 3x32x32 input, 10 classes, a few channels):

* MobileNetV3 (Howard et al. 2019): a Hardswish stem, inverted residual blocks with ReLU or
  Hardswish, squeeze-excitation ``x * Hardsigmoid(FC(ReLU(FC(GAP(x)))))``, a Hardswish head.
* EfficientNet-B0 (Tan & Le 2019): MBConv blocks with SiLU and squeeze-excitation
  ``x * Sigmoid(FC(SiLU(FC(GAP(x)))))``, a SiLU head.  RegNetY's SE is the same gate.

Files (in ``tests/fixtures/gates/``), each with ``<name>.npz`` beside it holding ``x`` (a float32
batch of 2) and ``ort_logits`` (ONNX Runtime's output for it):

* ``mobilenetv3_opset17.onnx``   TorchScript exporter, opset 17: HardSwish and HardSigmoid ops
* ``mobilenetv3_opset13.onnx``   the same at opset 13, where Hardswish is ``Mul(x, HardSigmoid(x))``
* ``efficientnet_b0_opset17.onnx`` TorchScript exporter: SiLU as ``Mul(x, Sigmoid(x))``
* ``efficientnet_b0_dynamo.onnx``  ``torch.onnx.export(..., dynamo=True)``, as it optimises by default

Requirements (only for this script): torch 2.13.0 (CPU), onnxscript, onnx, onnxruntime, numpy.

Usage:  python tools/make_gate_fixtures.py [--out tests/fixtures/gates] [--seed 0]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


def build_nets(seed):
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c, squeeze, inner, gate):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(c, squeeze, 1)
            self.inner = inner
            self.expand = nn.Conv2d(squeeze, c, 1)
            self.gate = gate

        def forward(self, x):
            return x * self.gate(self.expand(self.inner(self.reduce(self.pool(x)))))

    def conv_bn(cin, cout, k, stride=1, groups=1, act=None):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([act] if act is not None else []))

    class InvertedResidual(nn.Module):
        """Expand 1x1, depthwise kxk, optional SE, project 1x1 (linear); residual where shapes match."""

        def __init__(self, cin, expand, cout, k, stride, act, se):
            super().__init__()
            self.expand = conv_bn(cin, expand, 1, act=act()) if expand != cin else nn.Identity()
            self.depthwise = conv_bn(expand, expand, k, stride, groups=expand, act=act())
            self.se = se(expand) if se else nn.Identity()
            self.project = conv_bn(expand, cout, 1)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.project(self.se(self.depthwise(self.expand(x))))
            return x + y if self.residual else y

    class MobileNetV3Mini(nn.Module):
        def __init__(self):
            super().__init__()
            se = lambda c: SqueezeExcite(c, max(4, c // 4), nn.ReLU(), nn.Hardsigmoid())  # noqa: E731
            self.features = nn.Sequential(
                conv_bn(3, 8, 3, 2, act=nn.Hardswish()),
                InvertedResidual(8, 8, 8, 3, 1, nn.ReLU, se),
                InvertedResidual(8, 24, 12, 3, 2, nn.ReLU, None),
                InvertedResidual(12, 36, 12, 3, 1, nn.ReLU, None),
                InvertedResidual(12, 48, 16, 5, 2, nn.Hardswish, se),
                InvertedResidual(16, 64, 16, 5, 1, nn.Hardswish, se),
                conv_bn(16, 64, 1, act=nn.Hardswish()))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(64, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    class EfficientNetB0Mini(nn.Module):
        def __init__(self):
            super().__init__()
            se = lambda c: SqueezeExcite(c, max(2, c // 8), nn.SiLU(), nn.Sigmoid())  # noqa: E731
            self.features = nn.Sequential(
                conv_bn(3, 8, 3, 2, act=nn.SiLU()),
                InvertedResidual(8, 8, 8, 3, 1, nn.SiLU, se),
                InvertedResidual(8, 32, 12, 3, 2, nn.SiLU, se),
                InvertedResidual(12, 48, 12, 3, 1, nn.SiLU, se),
                InvertedResidual(12, 48, 16, 5, 2, nn.SiLU, se),
                InvertedResidual(16, 64, 16, 5, 1, nn.SiLU, se),
                conv_bn(16, 64, 1, act=nn.SiLU()))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    nets = {}
    for name, cls in (("mobilenetv3", MobileNetV3Mini), ("efficientnet_b0", EfficientNetB0Mini)):
        torch.manual_seed(seed)
        net = cls()
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            # BN statistics from a calibration batch, as a trained net's come from its data: every BN
            # then normalises its input, activations stay O(1) and the logits depend on the image.
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # a plain average over the calibration batch
            net.train()
            net(torch.randn(64, 3, 32, 32, generator=g))
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.2 * torch.randn(c, generator=g))
        nets[name] = net.eval()
    return nets


def export(net, path, opset=None, dynamo=False):
    import torch

    x = torch.zeros(1, 3, 32, 32)
    kwargs = dict(input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    if dynamo:
        torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    else:
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, do_constant_folding=False,
                          **kwargs)
    model = onnx.load(str(path))
    onnx.save(model, str(path))  # the dynamo exporter's external data back into the one file
    Path(f"{path}.data").unlink(missing_ok=True)
    return model


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "gates"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nets = build_nets(args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    jobs = [("mobilenetv3_opset17", "mobilenetv3", 17, False), ("mobilenetv3_opset13", "mobilenetv3", 13, False),
            ("efficientnet_b0_opset17", "efficientnet_b0", 17, False),
            ("efficientnet_b0_dynamo", "efficientnet_b0", None, True)]
    for file, net_name, opset, dynamo in jobs:
        path = out / f"{file}.onnx"
        model = export(nets[net_name], path, opset, dynamo)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ort_logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            torch_logits = nets[net_name](torch.from_numpy(x)).numpy()
        np.savez(out / f"{file}.npz", x=x, ort_logits=ort_logits, torch_logits=torch_logits)
        ops = Counter(n.op_type for n in model.graph.node)
        print(f"{file}: {path.stat().st_size} bytes, max |ort - torch| {np.abs(ort_logits - torch_logits).max():.2g}, "
              f"ops {dict(sorted(ops.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
