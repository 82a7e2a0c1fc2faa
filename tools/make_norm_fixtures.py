#!/usr/bin/env python3
"""Write small classifiers, exported by PyTorch, for ``tests/test_norms_models.py`` and
``tests/test_groupnorm_models.py``: LayerNormalization, GELU, GroupNorm and InstanceNorm as exporters write them.

The network follows torchvision's ConvNeXt (Liu et al. 2022) at a toy size (random weights, 3x32x32 input,
10 classes, widths 16 and 32, one block per stage): a 4x4 stride-4 stem convolution and LayerNorm2d; blocks of
a depthwise 7x7 convolution, a permute to channels-last, LayerNorm, Linear 4x, GELU, Linear, a permute back,
a layer scale and the residual Add; between stages LayerNorm2d and a 2x2 stride-2 convolution; a global
average pool, LayerNorm and a Linear head.  LayerNorm2d is torchvision's: permute, LayerNorm over channels,
permute back.  The LayerNorms' scales and biases and the layer scales are drawn at random (not 1, 0 and 1e-6)
so that every block changes the logits.

Files (in ``tests/fixtures/norms/``), each with ``<name>.npz`` beside it holding ``x`` (a float32 batch of
2), ``ort_logits`` (ONNX Runtime's output for it) and ``torch_logits`` (PyTorch's):

* ``convnext_opset17.onnx``  TorchScript exporter, opset 17: LayerNormalization ops, GELU as
  ``0.5 x (1 + Erf(x / sqrt 2))``
* ``convnext_opset20.onnx``  the same at opset 20, where GELU is one Gelu op
* ``convnext_opset16.onnx``  the same at opset 16, before LayerNormalization: ReduceMean, Sub, Pow, Sqrt, Div
* ``resnet_groupnorm_opset17.onnx``  a ResNet-like (as BiT's) with GroupNorm of 2 groups, which the TorchScript
  exporter writes at every opset as Reshape (N, G, -1), InstanceNormalization (scale 1, bias 0), Reshape back,
  Mul by gamma, Add beta (it never writes GroupNormalization)
* ``resnet_instancenorm_opset17.onnx``  the same with InstanceNorm2d(affine=True): one InstanceNormalization

The ResNet-like: a 3x3 stem convolution to 16 channels, norm, ReLU; two basic blocks (conv, norm, ReLU, conv,
norm, the residual Add, ReLU), the second at stride 2 to 32 channels with a 1x1 conv and norm on its shortcut;
a global average pool and a Linear head.  Norm scales and biases are drawn at random.

Requirements (only for this script): torch 2.13.0 (CPU), onnx, onnxruntime, numpy.

Usage:  python tools/make_norm_fixtures.py [--out tests/fixtures/norms] [--seed 0]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
OPSETS = (17, 20, 16)


def build_net(seed):
    import torch
    from torch import nn

    class ChannelsLast(nn.Module):
        """``module`` applied channels-last: permute, ``module``, permute back (torchvision's LayerNorm2d)."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class Block(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.mlp = ChannelsLast(nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                                  nn.Linear(4 * dim, dim)))
            self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) * 0.5 + 0.25)

        def forward(self, x):
            return x + self.layer_scale * self.mlp(self.dwconv(x))

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=4), ChannelsLast(nn.LayerNorm(16, eps=1e-6)), Block(16),
        ChannelsLast(nn.LayerNorm(16, eps=1e-6)), nn.Conv2d(16, 32, 2, stride=2), Block(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(32, eps=1e-6), nn.Linear(32, 10))
    return randomise_layernorms(net).eval()


def randomise_layernorms(net):
    """Every LayerNorm's scale drawn around 1 (std 0.3) and its bias around 0 (std 0.2), in module order: a
    trained network's norms are not the identity that PyTorch initialises."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return net


def build_resnet(seed, norm):
    """The ResNet-like above, with ``norm(channels)`` as its normalisation."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout))
            self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                             nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout)))

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), norm(16), nn.ReLU(), BasicBlock(16, 16, 1),
                        BasicBlock(16, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.GroupNorm, nn.InstanceNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.2 * torch.randn_like(m.bias))
    return net.eval()


def export(net, x, path, opset):
    import torch

    torch.onnx.export(net, torch.from_numpy(x), str(path), opset_version=opset, dynamo=False,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})


def main():
    import torch
    from torch import nn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "norms")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    net = build_net(args.seed)
    x = np.random.default_rng(args.seed).normal(size=(2, 3, 32, 32)).astype(np.float32)
    resnets = {"groupnorm": lambda c: nn.GroupNorm(2, c), "instancenorm": lambda c: nn.InstanceNorm2d(c, affine=True)}
    nets = [(f"convnext_opset{opset}", net, opset) for opset in OPSETS]
    nets += [(f"resnet_{name}_opset17", build_resnet(args.seed, norm), 17) for name, norm in resnets.items()]
    for name, net, opset in nets:
        with torch.no_grad():
            torch_logits = net(torch.from_numpy(x)).numpy()
        path = args.out / f"{name}.onnx"
        export(net, x, path, opset)
        model = onnx.load(path)
        onnx.checker.check_model(model)
        ort_logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.savez(path.with_suffix(".npz"), x=x, ort_logits=ort_logits, torch_logits=torch_logits)
        ops = Counter(n.op_type for n in model.graph.node)
        print(f"{path.name}: {path.stat().st_size} bytes, max |ort - torch| "
              f"{np.abs(ort_logits - torch_logits).max():.2e}, ops {dict(sorted(ops.items()))}")


if __name__ == "__main__":
    main()
