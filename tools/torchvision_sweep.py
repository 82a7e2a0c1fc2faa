#!/usr/bin/env python3
"""Run torchvision's classification zoo through onnxrap as users export it, and write small fixtures.

Every builder in ``torchvision.models.list_models(module=torchvision.models)`` is built with
``weights=None`` (no download is possible here), made trained-like (below), exported by PyTorch's
TorchScript exporter (``dynamo=False``, opset 17, a free batch axis, as most users call it) and by its
dynamo exporter (its defaults: optimised, its own opset), and checked with onnxrap's Python API:

* ``logits``: onnxrap's captured logits against a plain ONNX Runtime session (max abs difference
  over the largest logit);
* ``conserve``: rap's relevance summed over the input against the explained logit (relative);
* ``grad``: onnxrap's ``gradient`` against torch autograd's gradient of the same logit wrt the input
  (relative L2), a strong check of every op's backward path; where it is over 1e-4, also both in float64
  (``grad64``: onnxrap's own forward, ``model.double()``): a ReLU input within float32 rounding of 0 takes
  the other side in ONNX Runtime than in torch, and the gradient jumps there (RegNets: 2-5 %); where that
  is still over 1e-5, ``--recheck-gradients`` exports the model with BatchNorm kept (``grad64_bn``): the
  exporters fold it into the convolutions' float32 weights, which torch's float64 model does not round;
* ``compiled``: rap compiled into the graph (``compile_graph``, ``--engine onnx``) against eager rap
  (relative L2), or why it could not be compiled;
* ``rap/fwd``: the time of one rap explanation (eager, second call) over one ONNX Runtime forward of
  the same input, and the same for the compiled graph. Ratios on a shared 2-core machine: rough.

Trained-like: torchvision initialises BatchNorm/LayerNorm/GroupNorm to scale 1, bias 0 and ConvNeXt's
layer scale to 1e-6, which a trained model never has. Each norm's scale is drawn from U(0.5, 1.5) and
its bias from N(0, 0.1), each layer scale from U(0.1, 0.5), then BatchNorm's running statistics are
recomputed as the cumulative average (``momentum=None``) of 4 train-mode forward passes of 8 images of
N(0, 1) noise (ImageNet-normalised pixels) at the export size, then the model is put in eval mode.

Input: a photo (``--image``, default the chelsea photo under /work/data/photos if present, else
smooth noise), resized to the model's size and ImageNet-normalised, batch 1, its top class explained.

Sizes: 64 px, except inception_v3 (80: it needs >= 75), alexnet and the VGGs (224: their
AdaptiveAvgPool to 6x6 / 7x7 cannot be exported from a smaller map, where it would upsample), the ViTs
(built with image_size=64) and maxvit_t (224: its partitions need it).  Skipped by default (over
``--max-params``, 150 M): convnext_large, vit_l_16, vit_l_32, vit_h_14, regnet_y_128gf (convnext_base,
vit_b_*, regnet_y_32gf run the same code); and (``--skip``) vgg11, vgg13, vgg13_bn, vgg19, vgg19_bn
(vgg11_bn, vgg16, vgg16_bn run the same code).  On two shared cores the dynamo exporter runs only for
models up to 30 M parameters (``--dynamo-max-params``) and rap is compiled for models up to 100 M
(``--compile-max-params``).

``--zoo timm --only NAME,...`` runs timm's models the same way (``pretrained=False``; 64 px where the
model takes ``img_size``, else its own fixed size; timm 1.0.31: ``pip install --no-deps timm safetensors``
beside torch and torchvision).

``--fixtures DIR`` instead writes the reduced-width models of ``FIXTURES`` (TorchScript, opset 17, and
dynamo for a few) with ``<name>.npz``: ``x`` (a batch of 2: the photo and smooth noise), ``target``,
``ort_logits``, ``torch_logits`` and ``torch_grad`` (autograd's gradient of each sample's target logit
wrt its input), for ``tests/test_torchvision.py``, which needs no torch.

Requirements (only for this script): torch 2.13.0 (CPU), torchvision 0.28.0, onnxscript, onnx,
onnxruntime, numpy, Pillow.  torchvision's PyPI wheel is built for CUDA: its C ops (nms, roi_align)
cannot load against the CPU torch, which classification does not need; ``import_torchvision``
declares the two ops its import registers fakes for.

Usage (from the repository root, with the tools venv):
    nice -n 19 python tools/torchvision_sweep.py --out /work/data/h27/sweep   # results.jsonl, table.md
    python tools/torchvision_sweep.py --only resnet18,squeezenet1_1 --out /tmp/sweep
    python tools/torchvision_sweep.py --fixtures tests/fixtures/torchvision
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxrap import Explainer, methods  # noqa: E402
from onnxrap.compile import CompiledModel, compile_graph  # noqa: E402
from onnxrap.errors import OnnxrapError, first_line  # noqa: E402

PHOTO = Path("/work/data/photos/chelsea_orig.png")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# The same code as a kept model at a larger width or depth, at 224 px (2 shared cores): vgg11_bn, vgg16 and
# vgg16_bn stand for the VGGs.
SKIPPED = ("vgg11", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn")
SIZES = {"inception_v3": 80, "alexnet": 224, "maxvit_t": 224}
# inception_v3's auxiliary classifier (run in train mode only, so not in the export) needs 299 px there
BUILD_KWARGS = {"inception_v3": {"aux_logits": False}, "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64},
                "vit_l_16": {"image_size": 64},
                "vit_l_32": {"image_size": 64}, "vit_h_14": {"image_size": 70}}


def import_torchvision():
    """``torchvision.models``, imported against a CPU torch whatever build the wheel is (see the docstring)."""
    import torch
    try:
        import torchvision.models
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [m for m in list(sys.modules) if m.startswith("torchvision")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision.models
    return torchvision.models


def image(size, path=PHOTO):
    """(1, 3, size, size) float32, ImageNet-normalised: the photo, else smooth noise."""
    from PIL import Image, ImageOps
    if path and Path(path).is_file():
        img = ImageOps.fit(Image.open(path).convert("RGB"), (size, size), Image.BILINEAR)
        pixels = np.asarray(img, dtype=np.float64) / 255
    else:  # bilinear, not blocks: flat regions give MaxPool exact ties, where frameworks' rounding picks apart
        coarse = np.random.default_rng(1).uniform(0, 255, size=(size // 8 + 1, size // 8 + 1, 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float64) / 255
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def make_trained_like(model, size, seed=0):
    """Random norm affines and layer scales, BatchNorm statistics of 4 batches of N(0, 1) images; eval mode."""
    import torch
    from torch import nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) \
                    and getattr(module, "weight", None) is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                if module.bias is not None:  # timm's MetaFormer norms have none
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # the cumulative average of all batches
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
        model.train()
        for _ in range(4):
            model(torch.randn(8, 3, size, size, generator=g))
    model.eval()
    return model


class TorchvisionZoo:
    """torchvision's classification builders, ``weights=None``."""

    name = "torchvision"

    def __init__(self):
        self.tvm = import_torchvision()

    def names(self):
        return self.tvm.list_models(module=self.tvm)

    def params(self, name):
        return self.tvm.get_model_weights(name).DEFAULT.meta["num_params"]

    def size(self, name):
        return SIZES.get(name, 224 if name.startswith("vgg") else 64)

    def build(self, name, seed=0):
        """The model made trained-like, and its input size."""
        import torch
        torch.manual_seed(seed)
        size = self.size(name)
        model = self.tvm.get_model(name, weights=None, **BUILD_KWARGS.get(name, {}))
        return make_trained_like(model, size, seed), size


class TimmZoo:
    """timm's models (``--zoo timm``; name them with ``--only``: timm has over 1,300), ``pretrained=False``,
    at 64 px where the model takes an ``img_size``, else at its own fixed input size."""

    name = "timm"

    def __init__(self):
        import_torchvision()  # timm imports torchvision: the same care with its C ops
        import timm
        self.timm = timm

    def names(self):
        raise SystemExit("--zoo timm needs --only NAME,NAME,...")

    def params(self, name):
        return None  # known once built

    def size(self, name):
        return None

    def build(self, name, seed=0):
        """At 64 px; a model that cannot run there (fixed attention biases, HaloNet's blocks) at its own size."""
        import torch
        torch.manual_seed(seed)
        try:
            model = self.timm.create_model(name, pretrained=False, img_size=64)
        except TypeError:  # no img_size argument
            model = self.timm.create_model(name, pretrained=False)
        own = model.pretrained_cfg["input_size"][-1]
        try:
            return make_trained_like(model, 64, seed), 64
        except (RuntimeError, AssertionError):
            torch.manual_seed(seed)
            return make_trained_like(self.timm.create_model(name, pretrained=False), own, seed), own


ZOOS = {"torchvision": TorchvisionZoo, "timm": TimmZoo}


def export(model, x, path, exporter, external_data=True, opset=17):
    """Write ``model`` to ``path`` as a user would: TorchScript at ``opset`` with a free batch, or dynamo (its
    defaults, with its weights in ``<path>.data`` unless ``external_data`` is false)."""
    import torch
    xt = torch.from_numpy(x)
    # Not under no_grad: nn.MultiheadAttention (ViT) then takes its fused fast path, which no exporter writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (xt,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        else:
            torch.onnx.export(model, (xt,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                              verbose=False, external_data=external_data)
    return onnx.load(str(path), load_external_data=False)


def torch_logits_and_grad(model, x, target=None):
    """Logits and autograd's gradient of each sample's target (default: top) logit wrt its input."""
    import torch
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = model(xt)
    target = logits.argmax(dim=1) if target is None else torch.as_tensor(target)
    logits.gather(1, target.reshape(-1, 1)).sum().backward()
    return logits.detach().numpy(), xt.grad.numpy(), target.numpy()


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def ort_forward(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: x})[0]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def check(path, x, torch_grad, torch_grad64, compile_=True):
    """One exported file through onnxrap: a dict of the measures, or ``refused`` with the one-line reason."""
    row = {}
    try:
        ex = Explainer(path)
    except OnnxrapError as exc:
        return {"refused": first_line(exc)}
    ort_logits, t_fwd = ort_forward(path, x)
    row["fwd_ms"] = t_fwd * 1e3
    try:
        e = ex.explain(x, method="rap")
    except OnnxrapError as exc:  # what the model does with this input (a forward the capture cannot reproduce)
        return row | {"refused": first_line(exc)}
    scale = np.abs(ort_logits).max()
    row["logits"] = float(np.abs(e.logits - ort_logits).max() / scale)
    row["conserve"] = float(abs(e.relevance.sum(dtype=np.float64) - e.target_logit[0]) / abs(e.target_logit[0]))
    row["redone"] = bool(e.recomputed or e.unconserved or e.nonfinite)
    t = time.perf_counter()
    e = ex.explain(x, method="rap")
    row["rap_fwd"] = (time.perf_counter() - t) / t_fwd
    g = ex.explain(x, target=e.target, method="gradient")
    row["grad"] = rel_l2(g.relevance, torch_grad)
    if row["grad"] > 1e-4:  # a ReLU or MaxPool input within float32 rounding of its kink? float64 on both sides
        g = Explainer(path, dtype="float64").explain(x, target=e.target, method="gradient")
        row["grad64"] = rel_l2(g.relevance, torch_grad64(e.target))
    if not compile_:
        row["compiled_refused"] = "(not tried: over --compile-max-params)"
        return row | {"heatmap": e.heatmap[0]}
    try:
        compiled = CompiledModel(compile_graph(ex.graph, methods.get("rap")))
        compiled.run(x)
        t = time.perf_counter()
        _, relevance = compiled.run(x)
        row["compiled_fwd"] = (time.perf_counter() - t) / t_fwd
        row["compiled"] = rel_l2(relevance, e.relevance)
    except OnnxrapError as exc:
        row["compiled_refused"] = first_line(exc)
    row["heatmap"] = e.heatmap[0]
    return row


def op_counts(proto):
    return dict(Counter(n.op_type for n in proto.graph.node))


def opset_of(proto):
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def sweep_one(zoo, name, exporter, out, image_path, compile_max_params):
    import torch
    row = {"model": name, "exporter": exporter, "size": zoo.size(name)}
    t0 = time.perf_counter()
    try:
        try:
            model, size = zoo.build(name)
        except Exception as exc:  # the model's own code at this size: recorded, not onnxrap's
            return row | {"build_failed": f"{type(exc).__name__}: {first_line(exc)[:300]}"}
        row["size"] = size
        row["params"] = sum(p.numel() for p in model.parameters())
        compile_ = row["params"] <= compile_max_params * 1e6
        x = image(size, image_path)
        with torch.enable_grad():
            _, grad, _ = torch_logits_and_grad(model, x)
        path = Path(tempfile.mkdtemp(dir=out)) / f"{name}_{exporter}.onnx"
        try:
            proto = export(model, x, path, exporter)
        except Exception as exc:  # the exporter's own failure: recorded, not onnxrap's
            row["export_failed"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            return row
        row["nodes"] = len(proto.graph.node)
        row["ops"] = op_counts(proto)
        row["opset"] = opset_of(proto)
        del proto
        gc.collect()

        def torch_grad64(target):
            with torch.enable_grad():
                return torch_logits_and_grad(model.double(), x.astype(np.float64), target)[1]

        result = check(path, x, grad, torch_grad64, compile_)
        heatmap = result.pop("heatmap", None)
        if heatmap is not None:
            np.save(out / f"{name}_{exporter}_heatmap.npy", heatmap)
        row.update(result)
        for f in path.parent.iterdir():
            f.unlink()
        path.parent.rmdir()
    except Exception as exc:  # onnxrap's traceback: the point of the sweep is to find these
        row["error"] = f"{type(exc).__name__}: {first_line(exc)[:300]}"
        row["traceback"] = traceback.format_exc()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def fmt(v, digits=1):
    return "" if v is None else f"{v:.{digits}e}" if isinstance(v, float) and v < 1 else f"{v:.{digits}f}"


def summary(refusal):
    """An unsupported-ops refusal as counts per op type and reason, with the first node named."""
    listed = refusal.removeprefix("unsupported ops in the data path: ")
    nodes = re.findall(r"(\S+) \((\w+)(?:: ([^;]*?))?\)(?:;|$)", listed)
    if not nodes:
        return refusal
    def reason(why):  # "Reshape from (shape) to (shape) changes the batch axis": the shapes differ per node
        return re.sub(r"\S+ from \(.*?\) to \(.*?\) ", "", why)

    counts = Counter((op, reason(why)) for _, op, why in nodes)
    first = {}
    for name, op, why in nodes:
        first.setdefault((op, reason(why)), name)
    return "; ".join(f"{n} {op}{': ' + why if why else ''} (first {first[op, why]})"
                     for (op, why), n in counts.items())


def table(rows):
    lines = ["| model | exporter | px | params (M) | nodes | logits | conserve | grad | compiled | fwd (ms) | rap/fwd "
             "| compiled/fwd | result |", "|" + " --- |" * 13]
    def order(r):  # the sweep's order: the cheapest first
        return r.get("params", 0) * (r["size"] or 64) ** 2, r["model"], r["exporter"] != "torchscript"

    for r in sorted(rows, key=order):
        if "build_failed" in r:
            result = f"not built: {r['build_failed']}"
        elif "export_failed" in r:
            result = f"export failed: {r['export_failed']}"
        elif "error" in r and r["error"].split(":")[0] in ("ModelError", "InputError", "SampleError"):
            result = "refused while explaining: " + re.sub(r"/\S*/", "", r["error"].split(": ", 1)[1])  # no tmp dir
        elif "error" in r:
            result = f"**onnxrap error**: {r['error']}"
        elif "refused" in r:
            result = f"refused: {summary(r['refused'])}"
        else:
            result = "explained" + (" (float64 redo)" if r.get("redone") else "")
            if "compiled_refused" in r:
                result += f"; not compiled: {r['compiled_refused']}"
        lines.append(" | ".join(["", r["model"], r["exporter"], str(r["size"]), f"{r.get('params', 0) / 1e6:.1f}",
                                 str(r.get("nodes", "")), fmt(r.get("logits")), fmt(r.get("conserve")),
                                 fmt(r.get("grad")) + (f" (f64 {fmt(r['grad64'])})" if "grad64" in r else "")
                                 + (f" (f64, BN kept {fmt(r['grad64_bn'])})" if "grad64_bn" in r else ""),
                                 fmt(r.get("compiled")), fmt(r.get("fwd_ms")), fmt(r.get("rap_fwd")),
                                 fmt(r.get("compiled_fwd")), result.replace("|", "\\|"), ""]).strip())
    return "\n".join(lines) + "\n"


def sweep(args):
    zoo = ZOOS[args.zoo]()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["model"], r["exporter"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.is_file() else set()
    names = args.only.split(",") if args.only else zoo.names()
    params = {n: zoo.params(n) for n in names}  # None: not known before building (timm)
    too_big = {n for n in names if params[n] is not None and params[n] > args.max_params * 1e6}
    skipped = [n for n in names if n in too_big or n in args.skip.split(",")]
    if skipped:
        print(f"skipped (--skip, or over {args.max_params} M parameters): {', '.join(skipped)}", flush=True)
    def cost(n):  # the cheapest first, where known
        return (params[n] or 0) * (zoo.size(n) or 64) ** 2

    for name in sorted((n for n in names if n not in skipped), key=cost):
        for exporter in args.exporters.split(","):
            big = params[name] is not None and params[name] > args.dynamo_max_params * 1e6
            if (name, exporter) in done or (exporter == "dynamo" and big):
                continue
            row = sweep_one(zoo, name, exporter, out, args.image, args.compile_max_params)
            summary = {k: v for k, v in row.items() if k not in ("ops", "traceback")}
            print(json.dumps(summary), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            gc.collect()
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    (out / "table.md").write_text(table(rows))
    print(f"wrote {out / 'table.md'}")


# --------------------------------------------------------------------------------------
# Fixtures: torchvision's own classes at reduced widths (10 classes, 32x32 inputs)
# --------------------------------------------------------------------------------------
FIXTURE_SIZE = 32


def fixture_models(tvm):
    """``{name: (builder, exporters)}``: torchvision's classes and blocks at widths that keep each file small."""
    from functools import partial
    from importlib import import_module

    from torch import nn
    # the modules (torchvision.models.googlenet and .squeezenet are also the names of builder functions)
    convnext, densenet, efficientnet, googlenet, mobilenetv3, regnet, resnet, shufflenetv2, squeezenet = (
        import_module(f"torchvision.models.{m}") for m in ("convnext", "densenet", "efficientnet", "googlenet",
                                                            "mobilenetv3", "regnet", "resnet", "shufflenetv2",
                                                            "squeezenet"))

    def blocks(stem, *body, width):
        """A stem conv, torchvision blocks, global pooling and a Linear to 10 classes."""
        return nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
                             *body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def resnext():
        down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        return blocks(16, resnet.Bottleneck(16, 8, 2, down, groups=4, base_width=8),  # 32 out, grouped 3x3
                      resnet.Bottleneck(32, 8, groups=4, base_width=8), width=32)

    def wide_basic():
        down = nn.Sequential(nn.Conv2d(16, 24, 1, 2, bias=False), nn.BatchNorm2d(24))
        return blocks(16, resnet.BasicBlock(16, 24, 2, down), resnet.BasicBlock(24, 24), width=24)

    def efficientnet_small():
        setting, last = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.4)
        return efficientnet.EfficientNet(setting, 0.2, last_channel=64, num_classes=10)

    def mobilenet_v3_small():
        setting, _ = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
        return mobilenetv3.MobileNetV3(setting, last_channel=64, num_classes=10)

    def regnet_y():
        params = regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8, w_m=2, group_width=8, se_ratio=0.25)
        return regnet.RegNet(params, num_classes=10, stem_width=8)

    def googlenet_inception():
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        return blocks(16, pool, googlenet.Inception(16, 8, 8, 12, 4, 4, 4), width=28)

    def squeezenet_fires():
        pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(inplace=True), pool, squeezenet.Fire(16, 4, 8, 8),
                             squeezenet.Fire(16, 4, 8, 8), nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(inplace=True),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

    both = ("torchscript", "dynamo")
    return {
        "mobilenet_v2": (partial(tvm.MobileNetV2, num_classes=10, width_mult=0.25), both),
        "mobilenet_v3_small": (mobilenet_v3_small, ("torchscript",)),
        "efficientnet_b0": (efficientnet_small, both),
        "shufflenet_v2": (partial(shufflenetv2.ShuffleNetV2, [3, 3, 3], [8, 16, 32, 64, 128], num_classes=10), both),
        "densenet": (partial(densenet.DenseNet, growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2,
                             num_classes=10), both),
        "regnet_y": (regnet_y, ("torchscript",)),
        "resnext_blocks": (resnext, ("torchscript",)),
        "resnet_basic_blocks": (wide_basic, ("torchscript",)),
        "googlenet_inception": (googlenet_inception, ("torchscript",)),
        "squeezenet_fires": (squeezenet_fires, ("torchscript",)),
        "convnext": (partial(convnext.ConvNeXt, [convnext.CNBlockConfig(16, 32, 1),
                                                 convnext.CNBlockConfig(32, None, 1)], num_classes=10),
                     ("torchscript",)),
    }


def write_fixtures(out, image_path):
    """Each fixture model's exports and ``<name>_<exporter>.npz``; ``manifest.json`` with sizes and op types."""
    import torch
    tvm = import_torchvision()
    out.mkdir(parents=True, exist_ok=True)
    x = np.concatenate([image(FIXTURE_SIZE, image_path), image(FIXTURE_SIZE, None)])  # the photo, smooth noise
    manifest = {"torch": importlib.metadata.version("torch"), "torchvision": importlib.metadata.version("torchvision"),
                "files": {}}
    for name, (make, exporters) in fixture_models(tvm).items():
        torch.manual_seed(0)
        model = make_trained_like(make(), FIXTURE_SIZE)
        logits, _, target = torch_logits_and_grad(model, x)
        _, grad64, _ = torch_logits_and_grad(model.double(), x.astype(np.float64), target)
        model.float()
        for exporter in exporters:
            stem = f"{name}_{exporter}"
            proto = export(model, x, out / f"{stem}.onnx", exporter, external_data=False)
            ort_logits, _ = ort_forward(out / f"{stem}.onnx", x)
            np.savez_compressed(out / f"{stem}.npz", x=x, target=target, torch_logits=logits, ort_logits=ort_logits,
                                torch_grad64=grad64)
            manifest["files"][stem] = {"bytes": (out / f"{stem}.onnx").stat().st_size, "nodes": len(proto.graph.node),
                                       "opset": opset_of(proto), "ops": op_counts(proto)}
            print(stem, manifest["files"][stem]["bytes"], np.abs(ort_logits - logits).max(), flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def recheck_gradients(zoo, out, threshold=1e-5):
    """Rows whose float64 gradient misses torch's by over ``threshold``: the same model exported with BatchNorm
    kept (``do_constant_folding=False``), so that onnxrap and torch compute with the same weights; records
    ``grad64_bn``.  Folding rounds the folded weights to float32, which moves a ReLU input near 0 across it."""
    import torch
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for row in rows:
        if row.get("grad64", 0) <= threshold or "grad64_bn" in row:
            continue
        model, size = zoo.build(row["model"])
        x = image(size)
        with torch.enable_grad():
            _, _, target = torch_logits_and_grad(model, x)
            _, grad64, _ = torch_logits_and_grad(model.double(), x.astype(np.float64), target)
        model.float()
        with tempfile.TemporaryDirectory(dir=out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "unfolded.onnx"
            torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                              do_constant_folding=False, input_names=["input"], output_names=["logits"])
            g = Explainer(path, dtype="float64").explain(x, target=target, method="gradient")
            row["grad64_bn"] = rel_l2(g.relevance, grad64)
        print(row["model"], row["exporter"], row["grad64"], "->", row["grad64_bn"], flush=True)
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
        del model
        gc.collect()
    (out / "table.md").write_text(table(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="sweep-torchvision", help="folder for results.jsonl, table.md, heatmaps")
    p.add_argument("--zoo", choices=sorted(ZOOS), default="torchvision",
                   help="whose models: torchvision's builders, or timm's (name them with --only)")
    p.add_argument("--only", help="comma-separated builder names (default: all classification builders)")
    p.add_argument("--exporters", default="torchscript,dynamo")
    p.add_argument("--max-params", type=float, default=150, help="skip models over this many million parameters")
    p.add_argument("--skip", default=",".join(SKIPPED), help="comma-separated builders not to run")
    p.add_argument("--dynamo-max-params", type=float, default=30,
                   help="the dynamo exporter only for models up to this many million parameters (it is slow)")
    p.add_argument("--compile-max-params", type=float, default=100,
                   help="compile only models up to this many million parameters")
    p.add_argument("--image", default=str(PHOTO), help="photo to explain (smooth noise if missing)")
    p.add_argument("--fixtures", help="write the reduced-width fixtures to this folder instead of sweeping")
    p.add_argument("--recheck-gradients", action="store_true",
                   help="for --out's rows whose float64 gradient misses torch's, export with BatchNorm kept and "
                        "compare again (grad64_bn)")
    args = p.parse_args(argv)
    print(f"torch {importlib.metadata.version('torch')}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
          flush=True)
    if args.fixtures:
        write_fixtures(Path(args.fixtures), args.image)
    elif args.recheck_gradients:
        recheck_gradients(ZOOS[args.zoo](), Path(args.out))
    else:
        sweep(args)


if __name__ == "__main__":
    main()
