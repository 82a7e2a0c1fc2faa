#!/usr/bin/env python3
"""Write tests/fixtures/timm: small timm models, exported by torch.onnx as users export them, for tests/test_timm.py.

Each model is timm's own code (``timm.create_model(name, pretrained=False, num_classes=10, ...)`` at reduced
widths and depths through its keyword arguments, or its model class with a reduced config where the
keywords cannot shrink it), made trained-like by ``make_trained_like`` of tools/torchvision_sweep.py (norm
scales U(0.5, 1.5), biases N(0, 0.1), BatchNorm statistics of 4 train-mode batches of N(0, 1)) plus timm's
own scale parameters (MetaFormer's Scale modules and StarReLU, layer scales ``gamma``), then exported by the
TorchScript exporter (``dynamo=False``, opset 17, a free batch axis).

Torch's logits and its float64 autograd gradient of each sample's top logit are computed before the export:
the TorchScript export traces the model, and a gradient computed after it differed from the true one on one
sample in the lead's zoo sweep.

``<name>.npz`` holds ``x`` (2 smooth-noise images, ImageNet-normalised: ``image(size, None)`` of the sweep
and the same reversed along every axis), ``target``, ``torch_logits`` and ``torch_grad64``;
``manifest.json`` the versions, sizes and op counts.

Requirements (only for this script): torch, timm, onnx, onnxruntime, numpy, Pillow.
Usage, from the repository root:
    /work/data/yolo-venv/bin/python tools/make_timm_fixtures.py tests/fixtures/timm
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchvision_sweep import export, image, make_trained_like, op_counts, opset_of, torch_logits_and_grad  # noqa: E402

SIZE = 64


def fixture_models():
    """name -> (builder, the fixed onnxrap pattern it covers)."""
    import timm
    from dataclasses import replace
    from timm.models import byoanet, byobnet, metaformer

    def botnet():  # botnet26t_256's blocks at 1/16 of its widths: create_model cannot narrow a ByobNet
        cfg = byoanet.model_cfgs["botnet26t"]
        narrow = tuple(tuple(replace(b, c=b.c // 16) for b in s) if isinstance(s, tuple) else replace(s, c=s.c // 16)
                       for s in cfg.blocks)
        return byobnet.ByobNet(replace(cfg, blocks=narrow, stem_chs=8), num_classes=10, img_size=SIZE)

    def poolformerv2():  # poolformerv2_s12's arguments at depth 1 and 1/8 of its widths: it fixes both
        return metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 40, 64), norm_layers=metaformer.GroupNorm1NoBias,
                                     use_mlp_head=False, num_classes=10)

    create = timm.create_model
    return {
        "poolformerv2": (poolformerv2,
                         "Sub of two data tensors (pool(x) - x), Pow with a constant exponent (StarReLU)"),
        "resnest": (lambda: create("resnest14d", pretrained=False, num_classes=10, stem_width=8,
                                   channels=(8, 16, 32, 64)),
                    "ReduceSum + Softmax gate (split attention, radix 2)"),
        "skresnet": (lambda: create("skresnet18", pretrained=False, num_classes=10, channels=(8, 16, 32, 64)),
                     "ReduceSum + Softmax gate (selective kernel)"),
        "botnet": (botnet, "Expand of a data tensor (relative position logits), attention"),
        "efficientnetv2": (lambda: create("tf_efficientnetv2_b0", pretrained=False, num_classes=10,
                                          channel_multiplier=0.125, depth_multiplier=0.5),
                           "'same' padding: Pad computed from Shape, folded with a free batch"),
        "vit": (lambda: create("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=SIZE, patch_size=16,
                               embed_dim=32, depth=2, num_heads=2),
                "attention (class token, MatMul/Softmax)"),
        "swin": (lambda: create("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=SIZE,
                                embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4),
                 "windowed attention: window partition slices folded with a free batch"),
        "tiny_vit": (lambda: create("tiny_vit_5m_224", pretrained=False, num_classes=10, embed_dims=(16, 24, 32, 48),
                                    depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_sizes=(4, 4, 4, 4)),
                     "windowed attention with a gathered attention bias, padded windows"),
    }


def make_timm_trained_like(model, size, seed=0):
    """``make_trained_like`` and timm's own scales, which torchvision's models do not have."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("scale", "gamma") or name.endswith("act.bias"):  # Scale modules, StarReLU, layer scales
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1 if leaf == "gamma"
                        else torch.rand(p.shape, generator=g) + 0.5 if leaf == "scale"
                        else torch.randn(p.shape, generator=g) * 0.1)
    return make_trained_like(model, size, seed)


def write_fixtures(out, only=None):
    import timm
    import torch
    out.mkdir(parents=True, exist_ok=True)
    first = image(SIZE, None)
    x = np.ascontiguousarray(np.concatenate([first, first[:, ::-1, ::-1, ::-1]]))
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest.update({name: importlib.metadata.version(name) for name in ("torch", "timm", "onnx")})
    for name, (make, pattern) in fixture_models().items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        model = make_timm_trained_like(make(), SIZE)
        logits, _, target = torch_logits_and_grad(model, x)
        _, grad64, _ = torch_logits_and_grad(model.double(), x.astype(np.float64), target)
        model.float()
        proto = export(model, x, out / f"{name}.onnx", "torchscript", external_data=False)
        np.savez_compressed(out / f"{name}.npz", x=x, target=target, torch_logits=logits, torch_grad64=grad64)
        manifest["files"][name] = {"bytes": (out / f"{name}.onnx").stat().st_size, "nodes": len(proto.graph.node),
                                   "opset": opset_of(proto), "ops": op_counts(proto), "pattern": pattern,
                                   "params": sum(p.numel() for p in model.parameters())}
        print(name, manifest["files"][name]["bytes"], flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", help="comma-separated fixture names")
    args = parser.parse_args(argv)
    write_fixtures(args.out, args.only.split(",") if args.only else None)


if __name__ == "__main__":
    main()
