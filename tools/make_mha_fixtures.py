#!/usr/bin/env python3
"""Write small classifiers built on ``nn.MultiheadAttention`` for ``tests/test_mha.py``: the exports whose batch
axis PyTorch moves (sequence-first attention), which onnxrap rewrites batch-first (onnxrap/batch_first.py).

Models (random weights, every LayerNorm's scale and bias randomised as tools/make_norm_fixtures.py does; 3x32x32
input, 10 classes, width 16, 2 heads, 2 layers, an MLP of 32; an 8x8 stride-8 patch-embedding convolution, 16
tokens):

* ``seqfirst``: ``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer(batch_first=False, norm_first=True,
  activation="gelu")``, PyTorch's default layout: the tokens transposed to ``(T, N, D)`` before the encoder,
  so that its LayerNorms, MLPs and residual joins run sequence-first too; a class token, a final LayerNorm and
  the head on ``x[0]`` (a Gather along the tokens, axis 0).
* ``batchfirst``: ``nn.TransformerEncoderLayer(batch_first=True)``, post-norm (``norm_first=False``), ReLU; the
  head on the mean of the tokens.
* ``weights``: pre-norm blocks calling ``nn.MultiheadAttention(x, x, x)`` itself, sequence-first, with
  ``need_weights=True`` (its default): PyTorch computes attention with ``bmm`` on ``(N * heads, T, d)``, the
  batch merged with the heads, and the averaged weights (unused) besides.
* ``seqcat``: as ``seqfirst``, the class token joined and the position embedding added sequence-first
  (``torch.cat([cls.expand(1, N, D), x], dim=0)``, a position embedding of shape ``(T, 1, D)``), post-norm.
* ``cross``: one ``nn.MultiheadAttention(kdim=8, vdim=8)`` sequence-first, its keys and values a Linear of the
  tokens to 8 (separate q, k and v projections), in a residual; no encoder.
* ``torchvision``: torchvision's ``VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
  hidden_dim=16, mlp_dim=32, num_classes=10)``, built by its constructor as ``vit_b_16`` is; its head, which
  torchvision starts at zero, drawn from N(0, 1 / width).

Each is exported by TorchScript (``dynamo=False``) at opsets 17 and 14 and by dynamo, with a free batch axis
(``<model>_{opset17,opset14,dynamo}``; ``cross``: opset 17 and dynamo), ``seqfirst`` and
``torchvision`` also for a fixed batch of one (``<model>_batch1_{opset17,dynamo}``) and ``seqcat`` for a fixed
batch of two (``seqcat_batch2_opset17``: its class token folded to a constant of the batch's size).  ``<name>.npz`` holds ``x`` (a float32 batch of 2, of 1 for ``batch1``),
``ort_logits``, ``torch_logits`` and ``torch_gradient`` (PyTorch's float64 autograd gradient of each sample's
logit of class 3 with respect to x), as tools/make_attention_fixtures.py writes them; ``manifest.json`` lists
the files and the versions that wrote them.

Requirements (only for this script): torch (2.13.0 CPU in /work/data/tools-venv, or 2.14.1), torchvision
(imported as tools/torchvision_sweep.py does), onnx, onnxscript, onnxruntime, numpy.

Usage:  python tools/make_mha_fixtures.py [--out tests/fixtures/mha] [--seed 0] [--only seqfirst,...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from make_attention_fixtures import write  # tools/ is this script's folder
from make_norm_fixtures import randomise_layernorms
from torchvision_sweep import import_torchvision

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEADS, DEPTH, MLP, PATCH, SIZE, CLASSES = 16, 2, 2, 32, 8, 32, 10
MODELS = ("seqfirst", "batchfirst", "weights", "seqcat", "cross", "torchvision")
BATCH1 = ("seqfirst", "torchvision")
ONLY_OPSET17 = ("cross",)  # and dynamo


def build(kind, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "torchvision":
        from torchvision.models.vision_transformer import VisionTransformer

        net = VisionTransformer(image_size=SIZE, patch_size=PATCH, num_layers=DEPTH, num_heads=HEADS,
                                hidden_dim=WIDTH, mlp_dim=MLP, num_classes=CLASSES)
        with torch.no_grad():  # torchvision starts the head at zero: every logit would be 0
            nn.init.normal_(net.heads.head.weight, std=WIDTH ** -0.5)
            nn.init.normal_(net.heads.head.bias, std=0.1)
        return randomise_layernorms(net).eval()

    class Block(nn.Module):  # ``weights``: attention called as a user calls it, need_weights left at True
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.attn = nn.MultiheadAttention(WIDTH, HEADS)
            self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP), nn.GELU(), nn.Linear(MLP, WIDTH))

        def forward(self, x):
            y = self.norm1(x)
            x = x + self.attn(y, y, y)[0]
            return x + self.mlp(self.norm2(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            tokens = (SIZE // PATCH) ** 2 + (kind != "batchfirst")
            self.embed = nn.Conv2d(3, WIDTH, PATCH, stride=PATCH)
            self.cls = nn.Parameter(0.5 * torch.randn(1, 1, WIDTH))
            self.pos = nn.Parameter(0.5 * torch.randn(*((tokens, 1) if kind == "seqcat" else (1, tokens)), WIDTH))
            if kind == "weights":
                self.encoder = nn.Sequential(*(Block() for _ in range(DEPTH)))
            elif kind == "cross":
                self.kv = nn.Linear(WIDTH, 8)
                self.attn = nn.MultiheadAttention(WIDTH, HEADS, kdim=8, vdim=8)
            else:
                post = kind in ("batchfirst", "seqcat")
                layer = nn.TransformerEncoderLayer(WIDTH, HEADS, MLP, dropout=0.0, batch_first=kind == "batchfirst",
                                                   norm_first=not post, activation="relu" if post else "gelu")
                self.encoder = nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, CLASSES)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            if kind == "batchfirst":
                return self.head(self.norm(self.encoder(x + self.pos)).mean(dim=1))
            if kind == "seqcat":  # joined sequence-first
                x = x.transpose(0, 1)
                x = torch.cat([self.cls.expand(1, x.shape[1], -1), x], dim=0) + self.pos
                return self.head(self.norm(self.encoder(x)[0]))
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            x = x.transpose(0, 1)  # (T, N, D): PyTorch's default layout
            if kind == "cross":
                kv = self.kv(x)
                x = x + self.attn(x, kv, kv, need_weights=False)[0]
            else:
                x = self.encoder(x)
            return self.head(self.norm(x[0]))

    return randomise_layernorms(Net()).eval()


def main():
    import onnx
    import onnxruntime
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "mha")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(MODELS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import_torchvision()  # before build's import of VisionTransformer
    x = np.random.default_rng(args.seed).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    files = []
    for kind in args.only.split(","):
        net = build(kind, args.seed)
        for suffix, opset in (("opset17", 17), ("opset14", 14), ("dynamo", None)):
            if kind not in ONLY_OPSET17 or opset != 14:
                files.append(f"{kind}_{suffix}")
                write(net, x, args.out / f"{files[-1]}.onnx", opset)
        for suffix, opset in (("opset17", 17), ("dynamo", None)) if kind in BATCH1 else ():
            files.append(f"{kind}_batch1_{suffix}")
            write(net, x[:1], args.out / f"{files[-1]}.onnx", opset, free_batch=False)
        if kind == "seqcat":
            files.append(f"{kind}_batch2_opset17")
            write(net, x, args.out / f"{files[-1]}.onnx", 17, free_batch=False)
    manifest = args.out / "manifest.json"
    listed = json.loads(manifest.read_text())["files"] if manifest.is_file() else []
    import torchvision as package

    versions = {"torch": torch.__version__, "torchvision": package.__version__, "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__}
    manifest.write_text(json.dumps({"tool": "tools/make_mha_fixtures.py", "seed": args.seed, "versions": versions,
                                    "files": sorted(set(listed) | set(files))}, indent=1) + "\n")


if __name__ == "__main__":
    main()
