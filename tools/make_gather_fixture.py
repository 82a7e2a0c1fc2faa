#!/usr/bin/env python3
"""Write the ``view`` PyTorch's dynamo exporter lowers into ``Reshape -> Gather(constant indices) -> Reshape``.

A strided view that is not a plain reshape (here the (channels, pixels) to
(pixels, channels) transpose of a pooled feature map, taken with
``as_strided`` before the classifier) is exported by dynamo as a node named
``node_as_strided``: a Gather of constant flat indices from the flattened
tensor.  onnxrap once refused such models; ``tests/test_gather.py`` explains
this one.  The output is committed under ``tests/fixtures/gather/`` so that CI
needs no PyTorch.

Files: ``dynamo_as_strided.onnx`` and ``dynamo_as_strided.npz`` with ``x`` (a
float32 input of batch 1, the exported batch) and ``torch_logits``.

Requirements (only for this script): torch 2.13.0 (CPU), onnxscript, onnx, numpy.

Usage:  python tools/make_gather_fixture.py [--out tests/fixtures/gather] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch


class StridedView(torch.nn.Module):
    """3x8x8 in, 5 classes out: conv, ReLU, max-pool, a transposing strided view, a linear classifier."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 5)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)  # (1, 4, 4, 4)
        pixels_by_channel = y.as_strided((1, 16, 4), (64, 1, 16))  # element [p, c] is y[c, p]
        return self.fc(pixels_by_channel.reshape(1, 64))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/gather")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = StridedView().eval()
    x = torch.randn(1, 3, 8, 8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x,), dynamo=True).save(str(out / "dynamo_as_strided.onnx"))
    with torch.no_grad():
        np.savez(out / "dynamo_as_strided.npz", x=x.numpy(), torch_logits=model(x).numpy())
    written = onnx.load(str(out / "dynamo_as_strided.onnx"))
    print(" -> ".join(f"{n.op_type}({n.name})" for n in written.graph.node))


if __name__ == "__main__":
    main()
