#!/usr/bin/env python3
"""Write tests/fixtures/products: models with products of two data tensors and norms (docs/rules.md, products).

Random trained-like models (``make_timm_trained_like`` of tools/make_timm_fixtures.py), TorchScript, opset 17, a
free batch axis, 64 px:

* ``convnextv2``: timm's ``convnextv2_atto`` at widths (8, 16, 24, 32), one block a stage: GRN's ReduceL2,
  ``x * ||x|| / mean ||x||`` (a norm that scales a signal);
* ``gmlp``: timm's gMLP (``MlpMixer`` with ``SpatialGatingBlock``, as ``gmlp_ti16_224``) at width 32, two
  blocks: the spatial gating unit ``u * proj(norm(v))``, a Mul of two signals;
* ``mobilevitv2``: timm's ``mobilevitv2_050`` config at a width multiplier of 0.125: separable attention,
  ``ReLU(value) * sum(key * Softmax(query))``, a Mul of two signals;
* ``grn_written``: a small network with GRN written out as ``Sqrt(ReduceSum(x * x))`` and as ``Pow(., 0.5)``,
  and ``x / ||x||`` (XCiT's normalisation, ReduceL2 then Clip then Div);
* ``xcit``, ``edgenext``: timm's XCiT (width 32, depth 2, one class-attention layer) and EdgeNeXt (widths 16-64,
  one block a stage): attention over L2-normalised q and k (``F.normalize``: ReduceL2, Clip, Div);

and, trained on scikit-learn's digits as tools/train_digits.py trains the bundled CNN (its data, split and
schedule; 1x32x32, 64 patches of 4x4), ``--digits``:

* ``gmlp_digits``: a gMLP of width 32, two blocks;
* ``linattn_digits``: EfficientViT's ReLU linear attention, ``ReLU(Q) (ReLU(K)^T V) / (ReLU(Q) sum ReLU(K) +
  eps)``, width 32, 2 heads, two blocks: MatMuls of two signals, and a Div by a positive data tensor.

``<name>.npz``: ``x``, ``target``, ``torch_logits`` and ``torch_grad64`` (torch's float64 autograd gradient of
each sample's target logit, before the export); the digits models' also ``y`` (the labels of their 20 held-out
digits).  ``manifest.json``: versions, sizes, op counts.

Requirements (only for this script): torch, timm, onnx, onnxruntime, numpy, Pillow, scikit-learn.
Usage, from the repository root:
    nice -n 19 /work/data/yolo-venv/bin/python tools/make_product_fixtures.py tests/fixtures/products [--digits]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_timm_fixtures import make_timm_trained_like  # noqa: E402
from torchvision_sweep import export, image, op_counts, opset_of, torch_logits_and_grad  # noqa: E402

SIZE = 64


def grn_written():
    """Conv, GELU, then three GRNs as older code writes them, a head: each a different written-out norm."""
    import torch
    from torch import nn

    class GRN(nn.Module):
        def __init__(self, channels, form):
            super().__init__()
            self.form = form
            self.gamma = nn.Parameter(torch.rand(1, channels, 1, 1) * 0.4 + 0.1)
            self.beta = nn.Parameter(torch.randn(1, channels, 1, 1) * 0.1)

        def forward(self, x):
            if self.form == "sqrt":
                g = torch.sqrt((x * x).sum(dim=(2, 3), keepdim=True))
            elif self.form == "pow":
                g = (x.pow(2).sum(dim=(2, 3), keepdim=True)) ** 0.5
            else:  # x / ||x|| over channels (XCiT's F.normalize), then GRN's ReduceL2
                x = nn.functional.normalize(x, dim=1) * 4
                g = x.norm(p=2, dim=(2, 3), keepdim=True)
            n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
            return x + self.gamma * (x * n) + self.beta

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 4, stride=4)
            self.blocks = nn.Sequential(*(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), GRN(8, form))
                                          for form in ("sqrt", "pow", "normalize")))
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return Net()


def fixture_models():
    """name -> (builder, the pattern it covers)."""
    import timm
    from timm.layers import GatedMlp
    from timm.models import byobnet, edgenext, mobilevit, xcit
    from timm.models.mlp_mixer import MlpMixer, SpatialGatingBlock

    def mobilevitv2():
        return byobnet.ByobNet(mobilevit._mobilevitv2_cfg(0.125), num_classes=10)

    def gmlp():  # timm starts the head at 0 and each spatial projection at 1 (weights 1e-6): draw both
        import torch
        model = MlpMixer(num_classes=10, img_size=SIZE, patch_size=16, num_blocks=2, embed_dim=32, mlp_ratio=6,
                         block_layer=SpatialGatingBlock, mlp_layer=GatedMlp)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("head.") or "gate.proj.weight" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        return model

    return {
        "convnextv2": (lambda: timm.create_model("convnextv2_atto", pretrained=False, num_classes=10,
                                                 dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)),
                       "GRN: ReduceL2, Div by its channel mean, Mul into x (a norm that scales a signal)"),
        "gmlp": (gmlp, "spatial gating unit: Mul of two signals"),
        "mobilevitv2": (mobilevitv2, "separable attention: Mul of two signals, Softmax gate, ReduceSum"),
        "grn_written": (grn_written, "norms written out: Sqrt(ReduceSum(x * x)), Pow 0.5, x / ||x||"),
        "xcit": (lambda: xcit.Xcit(img_size=SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                   cls_attn_layers=1, num_classes=10),
                 "cross-covariance attention: q, k normalised (ReduceL2, Clip, Div), a Softmax gate"),
        "edgenext": (lambda: edgenext.EdgeNeXt(num_classes=10, dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
                                               heads=(2, 2, 2, 2)),
                     "split depth-wise transposed attention: q, k normalised, a positional encoding"),
    }


def digits_models():
    """The two toys trained on the digits: name -> builder."""
    import torch
    from torch import nn

    width, tokens, heads = 32, 64, 2

    class Embed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 4, stride=4)
            self.pos = nn.Parameter(0.1 * torch.randn(1, tokens, width))

        def forward(self, x):
            return self.conv(x).flatten(2).transpose(1, 2) + self.pos

    class SpatialGating(nn.Module):
        """gMLP's unit: half of the channels gate the other half, mixed over the tokens (proj starts at 1)."""

        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(2 * width)
            self.proj = nn.Linear(tokens, tokens)
            nn.init.normal_(self.proj.weight, std=1e-3)
            nn.init.ones_(self.proj.bias)

        def forward(self, x):
            u, v = x.chunk(2, dim=-1)
            v = self.proj(self.norm(v).transpose(1, 2)).transpose(1, 2)
            return u * v

    class GMlpBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.act, self.sgu = nn.LayerNorm(width), nn.GELU(), SpatialGating()
            self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(2 * width, width)

        def forward(self, x):
            return x + self.fc2(self.sgu(self.act(self.fc1(self.norm(x)))))

    class LinearAttention(nn.Module):
        """EfficientViT's ReLU linear attention."""

        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
            self.out = nn.Linear(width, width)

        def forward(self, x):
            n, t, _ = x.shape
            q, k, v = (f(x).reshape(n, t, heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
            q, k = torch.relu(q), torch.relu(k)
            kv = k.transpose(-2, -1) @ v
            y = (q @ kv) / (q @ k.sum(dim=2, keepdim=True).transpose(-2, -1) + 1e-6)
            return self.out(y.transpose(1, 2).reshape(n, t, width))

    class AttnBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.attn = LinearAttention()
            self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class Net(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.embed = Embed()
            self.blocks = nn.Sequential(block(), block())
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, 10)

        def forward(self, x):
            return self.head(self.norm(self.blocks(self.embed(x))).mean(dim=1))

    return {"gmlp_digits": lambda: Net(GMlpBlock), "linattn_digits": lambda: Net(AttnBlock)}


def write(out, name, model, x, pattern, manifest, extra=None):
    proto = export(model, x, out / f"{name}.onnx", "torchscript", external_data=False)
    logits, _, target = torch_logits_and_grad(model, x)
    _, grad64, _ = torch_logits_and_grad(model.double(), x.astype(np.float64), target)
    model.float()
    np.savez_compressed(out / f"{name}.npz", x=x, target=target, torch_logits=logits, torch_grad64=grad64,
                        **(extra or {}))
    manifest["files"][name] = {"bytes": (out / f"{name}.onnx").stat().st_size, "nodes": len(proto.graph.node),
                               "opset": opset_of(proto), "ops": op_counts(proto), "pattern": pattern,
                               "params": sum(p.numel() for p in model.parameters())}
    print(name, manifest["files"][name]["bytes"], flush=True)


def write_fixtures(out, only=None):
    import torch
    first = image(SIZE, None)
    x = np.ascontiguousarray(np.concatenate([first, first[:, ::-1, ::-1, ::-1]]))
    manifest = _manifest(out)
    for name, (make, pattern) in fixture_models().items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        write(out, name, make_timm_trained_like(make(), SIZE), x, pattern, manifest)
    _save(out, manifest)


def write_digits(out, seed=0, only=None):
    import torch
    import train_digits
    torch.set_num_threads(2)
    x_train, y_train, x_hold, y_hold = train_digits.load_data(seed)
    manifest = _manifest(out)
    for name, make in digits_models().items():
        if only and name not in only:
            continue
        train_digits.seed_everything(seed)
        net = make()
        start = time.perf_counter()
        train_digits.train(net, x_train, y_train, seed)
        net.eval()
        accuracy = (train_digits.predict(net, x_hold) == y_hold).float().mean().item()
        print(f"{name}: training took {time.perf_counter() - start:.0f}s; held-out accuracy {accuracy:.4f}")
        torch.use_deterministic_algorithms(False)
        write(out, name, net, x_hold[:20].numpy(), f"trained on the digits, held-out accuracy {accuracy:.4f}",
              manifest, {"y": y_hold[:20].numpy()})
        manifest["files"][name]["accuracy"] = round(accuracy, 4)
    _save(out, manifest)


def _manifest(out):
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"files": {}}
    manifest.update({name: importlib.metadata.version(name) for name in ("torch", "timm", "onnx")})
    return manifest


def _save(out, manifest):
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", help="comma-separated fixture names")
    parser.add_argument("--digits", action="store_true", help="train the digits models instead")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    (write_digits if args.digits else write_fixtures)(args.out, only=only)


if __name__ == "__main__":
    main()
