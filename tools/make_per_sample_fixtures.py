#!/usr/bin/env python3
"""Write small classifiers whose graphs compute a value per sample from the input's free batch size, for
``tests/test_per_sample.py``: a class token broadcast with ``expand(B, -1, -1)`` and added to data (CaiT's
class-attention blocks), a positional encoding computed from the input's shape and ``repeat``-ed over the
batch, then added (XCiT, EdgeNeXt), and tokens sliced at a length read off a broadcast class token's shape
(PiT).  Exporters write these as Expand, Tile and Slice nodes fed by ``Shape(x)``; with a free batch no
constant folding computes them.

* ``class_token_add``: a 4x4 stride-4 patch convolution (3x16x16 -> 16 tokens of width 8), plus a sine-cosine
  positional encoding made from the token grid's shape and repeated over the batch; the class token
  ``cls.expand(B, -1, -1)`` joins the tokens by Concat, and ``cls + mean(Linear(tokens))`` (an Add of the
  broadcast class token and data) feeds a Linear head (10 classes).
* ``token_slice``: the same tokens, a class token joined by Concat, a Linear and ReLU over all tokens, then
  ``u[:, :cls.shape[1]]`` and ``u[:, cls.shape[1]:]`` (PiT's split of class and image tokens), the head on the
  class token plus the image tokens' mean.
* ``resize_to_size``: GhostNetV2's DFC attention, ``t * interpolate(sigmoid(conv(pool(t))), size=t.shape[-2:])``,
  then ``interpolate(t, size=(2 h, 2 w))`` on the data path, both nearest; the exporter writes Resize's sizes as
  ``Concat(Shape(t)[:2], size)``, a shape that holds the batch size.
* ``batch_index`` (refused): the input plus ``0.1 * arange(B)``, a value that differs from sample to sample.

Each ``<name>.npz`` holds ``x`` (a float32 batch of 2), ``ort_logits``, ``torch_logits`` and
``torch_gradient`` (PyTorch's float64 autograd gradient of each sample's class ``GRADIENT_CLASS`` logit).
TorchScript exporter (``dynamo=False``), opset 17, batch axis free.

Requirements (only for this script): torch (CPU), onnx, onnxruntime, numpy.
Usage:  python tools/make_per_sample_fixtures.py [--out tests/fixtures/per_sample] [--seed 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
WIDTH, PATCH, SIZE, CLASSES = 8, 4, 16, 10
GRADIENT_CLASS = 3


def build(name, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def positional_encoding(batch, h, w):
        """Sine-cosine features of the token grid (as XCiT's PositionalEncodingFourier), repeated per sample."""
        ys = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w).reshape(1, h * w, 1)
        xs = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w).reshape(1, h * w, 1)
        freq = torch.arange(1, WIDTH // 4 + 1, dtype=torch.float32).view(1, 1, -1)
        pos = torch.cat([torch.sin(ys * freq), torch.cos(ys * freq), torch.sin(xs * freq), torch.cos(xs * freq)], 2)
        return pos.repeat(batch, 1, 1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
            self.cls = nn.Parameter(torch.randn(1, 1, WIDTH))
            self.mix = nn.Linear(WIDTH, WIDTH)
            self.head = nn.Linear(WIDTH, CLASSES)
            self.gate = nn.Conv2d(WIDTH, WIDTH, 1)

        def tokens(self, x):
            t = self.patch(x)
            b, _, h, w = t.shape
            return t.flatten(2).transpose(1, 2) + positional_encoding(b, h, w)

        def forward(self, x):
            if name == "resize_to_size":
                t = self.patch(x)
                gate = torch.sigmoid(self.gate(nn.functional.avg_pool2d(t, 2)))
                t = t * nn.functional.interpolate(gate, size=t.shape[-2:], mode="nearest")
                t = nn.functional.interpolate(t, size=(t.shape[2] * 2, t.shape[3] * 2), mode="nearest")
                return self.head(torch.relu(t).mean((2, 3)))
            if name == "batch_index":
                b = x.shape[0]
                x = x + 0.1 * torch.arange(b, dtype=x.dtype).view(b, 1, 1, 1)
                return self.head(self.tokens(x).mean(1))
            t = self.tokens(x)
            cls = self.cls.expand(t.shape[0], -1, -1)
            u = torch.cat([cls, t], 1)
            if name == "class_token_add":
                out = cls + self.mix(u).mean(1, keepdim=True)
                return self.head(out[:, 0])
            u = torch.relu(self.mix(u))
            n = cls.shape[1]
            return self.head(u[:, :n][:, 0] + u[:, n:].mean(1))

    return Model().eval()


def write(name, out, seed):
    import torch

    model = build(name, seed)
    path = out / f"{name}.onnx"
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1))
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_logits = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch_logits = model(x).numpy()
    x64 = x.double().requires_grad_(True)
    model.double()(x64)[:, GRADIENT_CLASS].sum().backward()
    np.savez(path.with_suffix(".npz"), x=x.numpy(), ort_logits=ort_logits, torch_logits=torch_logits,
             torch_gradient=x64.grad.numpy())
    print(f"{path}: ORT - torch {np.abs(ort_logits - torch_logits).max():.1e}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "per_sample")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("class_token_add", "token_slice", "resize_to_size", "batch_index"):
        write(name, args.out, args.seed)


if __name__ == "__main__":
    main()
