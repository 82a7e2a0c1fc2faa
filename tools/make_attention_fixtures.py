#!/usr/bin/env python3
"""Write small ViT-like classifiers, exported by PyTorch, for ``tests/test_attention_models.py``: self-attention
(a MatMul of two data tensors and the Softmax between) as each exporter writes it.

The network follows ViT/DeiT (Dosovitskiy et al. 2021; Touvron et al. 2021) at a toy size (random weights,
3x16x16 input, 10 classes, width 16, 2 heads, 2 blocks): a 4x4 stride-4 patch-embedding convolution (16
tokens), flatten and transpose to tokens, a class token joined by Concat, a position embedding added;
pre-LayerNorm blocks ``x + attention(LN(x))`` and ``x + MLP(LN(x))`` (Linear 2x, GELU, Linear); a final
LayerNorm and a Linear head on the class token (``x[:, 0]``: Gather or Slice) or, in the ``meanpool``
variant (no class token), on the mean of the tokens (ReduceMean).  The LayerNorms' scales and biases are
drawn at random (not 1 and 0) so that every block changes the logits.

The attention comes three ways, since exporters write them differently:

* ``mha``: ``torch.nn.MultiheadAttention`` (one in-projection of 3 x width, split into q, k, v)
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` on separate q, k, v projections
* ``manual``: written out, ``softmax(q @ k^T * d^-0.5) @ v``
* ``timm``: as timm's ``Attention`` (ViT, DeiT): one ``qkv`` Linear, ``reshape(N, T, 3, heads, d).permute(2,
  0, 3, 1, 4).unbind(0)``, then as ``manual``

Files (in ``tests/fixtures/attention/``), each with ``<name>.npz`` beside it holding ``x`` (a float32 batch
of 2), ``ort_logits`` (ONNX Runtime's output for it), ``torch_logits`` (PyTorch's) and ``torch_gradient``
(PyTorch's autograd gradient of each sample's logit of class ``GRADIENT_CLASS`` with respect to x, in float64):

* ``vit_{mha,sdpa,manual}_opset{14,17}.onnx``  TorchScript exporter (``dynamo=False``)
* ``vit_timm_opset17.onnx``  TorchScript exporter
* ``vit_{mha,sdpa,timm}_dynamo.onnx``  the dynamo exporter (``dynamo=True``, its default opset)
* ``vit_meanpool_manual_opset17.onnx``  the mean-pooled variant, TorchScript exporter
* ``vit_sdpa_batch1_{opset17,dynamo}.onnx``  the ``sdpa`` model exported for a batch of one, as an export
  with no dynamic axes is (dynamo's Reshape of the keys to ``(heads, T, d)`` then changes the batch axis)

With ``--digits``, instead: ``vit_digits.onnx``, the ``manual`` ViT at 1x32x32 (64 patches of 4x4, width 32,
2 heads, 2 blocks) trained as tools/train_digits.py trains the bundled CNN (its data, split and schedule:
scikit-learn's digits, 15 epochs, about two minutes on two cores), TorchScript opset 17, with
``vit_digits.npz`` holding the first 20 held-out digits ``x`` and their labels ``y``.

Requirements (only for this script): torch 2.13.0 (CPU), onnx, onnxscript (the dynamo exporter),
onnxruntime, numpy; with ``--digits`` also scikit-learn and Pillow (tools/train_digits.py).

Usage:  python tools/make_attention_fixtures.py [--out tests/fixtures/attention] [--seed 0] [--digits]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from make_norm_fixtures import randomise_layernorms  # tools/ is this script's folder

ROOT = Path(__file__).resolve().parent.parent
WIDTH, HEADS, DEPTH, PATCH, SIZE, CLASSES = 16, 2, 2, 4, 16, 10
GRADIENT_CLASS = 3


def build_vit(seed, attention="manual", pool="token", width=WIDTH, heads=HEADS, depth=DEPTH, patch=PATCH,
              size=SIZE, channels=3, classes=CLASSES):
    """The ViT-like above; ``attention`` is ``mha``, ``sdpa``, ``manual`` or ``timm``, ``pool`` ``token`` or
    ``mean``."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            if attention == "mha":
                self.mha = nn.MultiheadAttention(width, heads, batch_first=True)
            elif attention == "timm":
                self.qkv = nn.Linear(width, 3 * width)
                self.out = nn.Linear(width, width)
            else:
                self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
                self.out = nn.Linear(width, width)

        def forward(self, x):
            if attention == "mha":
                return self.mha(x, x, x, need_weights=False)[0]
            n, t, _ = x.shape
            if attention == "timm":
                q, k, v = self.qkv(x).reshape(n, t, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            else:
                q, k, v = (f(x).reshape(n, t, heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
            if attention == "sdpa":
                y = F.scaled_dot_product_attention(q, k, v)
            else:
                p = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
                y = p @ v
            return self.out(y.transpose(1, 2).reshape(n, t, width))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
            self.attn = SelfAttention()
            self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            tokens = (size // patch) ** 2 + (pool == "token")
            self.embed = nn.Conv2d(channels, width, patch, stride=patch)
            self.cls = nn.Parameter(0.5 * torch.randn(1, 1, width)) if pool == "token" else None
            self.pos = nn.Parameter(0.5 * torch.randn(1, tokens, width))
            self.blocks = nn.Sequential(*(Block() for _ in range(depth)))
            self.norm = nn.LayerNorm(width, eps=1e-6)
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            if self.cls is not None:
                x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.norm(self.blocks(x + self.pos))
            return self.head(x[:, 0] if self.cls is not None else x.mean(dim=1))

    torch.manual_seed(seed)
    return randomise_layernorms(ViT()).eval()


def export(net, x, path, opset, free_batch=True):
    """TorchScript at ``opset``, or the dynamo exporter where ``opset`` is None; the batch axis free, or
    fixed at ``x``'s."""
    import torch

    if opset is None:
        torch.onnx.export(net, (torch.from_numpy(x),), str(path), dynamo=True, input_names=["input"],
                          output_names=["logits"], external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},) if free_batch else None)
    else:
        torch.onnx.export(net, torch.from_numpy(x), str(path), opset_version=opset, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}} if free_batch else None)


def write(net, x, path, opset, free_batch=True):
    import torch

    with torch.no_grad():
        torch_logits = net(torch.from_numpy(x)).numpy()
    wide = torch.from_numpy(x).double().requires_grad_()
    net.double()(wide)[:, GRADIENT_CLASS].sum().backward()
    net.float()
    export(net, x, path, opset, free_batch)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    ort_logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.savez(path.with_suffix(".npz"), x=x, ort_logits=ort_logits, torch_logits=torch_logits,
             torch_gradient=wide.grad.numpy())
    ops = Counter(n.op_type for n in model.graph.node)
    print(f"{path.name}: {path.stat().st_size} bytes, max |ort - torch| "
          f"{np.abs(ort_logits - torch_logits).max():.2e}, ops {dict(sorted(ops.items()))}")


def train_digits_vit(out, seed):
    import sys
    import time

    import torch

    sys.path.insert(0, str(ROOT / "tools"))
    import train_digits

    torch.set_num_threads(2)
    train_digits.seed_everything(seed)
    x_train, y_train, x_hold, y_hold = train_digits.load_data(seed)
    net = build_vit(seed, "manual", width=32, size=32, channels=1)
    start = time.perf_counter()
    train_digits.train(net, x_train, y_train, seed)
    accuracy = (train_digits.predict(net, x_hold) == y_hold).float().mean().item()
    print(f"training took {time.perf_counter() - start:.0f}s; held-out accuracy {accuracy:.4f}")
    path = out / "vit_digits.onnx"
    export(net.eval(), x_hold[:1].numpy(), path, 17)
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"onnxrap.description": f"a ViT-like on sklearn digits, seed {seed}, held-out "
                                        f"accuracy {accuracy:.4f}; tools/make_attention_fixtures.py --digits"})
    onnx.save(model, path)
    np.savez(path.with_suffix(".npz"), x=x_hold[:20].numpy(), y=y_hold[:20].numpy())
    print(f"{path.name}: {path.stat().st_size} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "attention")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", action="store_true", help="train the digits ViT instead")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.digits:
        return train_digits_vit(args.out, args.seed)
    x = np.random.default_rng(args.seed).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    for attention in ("mha", "sdpa", "manual", "timm"):
        net = build_vit(args.seed, attention)
        for opset in (14, 17) if attention != "timm" else (17,):
            write(net, x, args.out / f"vit_{attention}_opset{opset}.onnx", opset)
        if attention != "manual":
            write(net, x, args.out / f"vit_{attention}_dynamo.onnx", None)
    write(build_vit(args.seed, "manual", pool="mean"), x, args.out / "vit_meanpool_manual_opset17.onnx", 17)
    for opset, suffix in ((17, "opset17"), (None, "dynamo")):
        write(build_vit(args.seed, "sdpa"), x[:1], args.out / f"vit_sdpa_batch1_{suffix}.onnx", opset, free_batch=False)


if __name__ == "__main__":
    main()
