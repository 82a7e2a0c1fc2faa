#!/usr/bin/env python3
"""Run Hugging Face transformers' image classifiers through onnxrap as users export them, and write small fixtures.

Each family of ``AutoModelForImageClassification`` (transformers 5) is built from its config class with a small
random config (``FAMILIES``: 10 classes, a few layers of a few channels; no weights can be downloaded here), made
trained-like (``hf_trained_like``), then exported two ways:

* ``torchscript``: ``torch.onnx.export(dynamo=False, opset_version=17)`` with a free batch axis, as
  ``tools/torchvision_sweep.py`` exports (``export`` there);
* ``optimum``: ``optimum-cli export onnx --task image-classification --opset 17`` on the model saved with
  ``save_pretrained``.  optimum-onnx 0.1 pins transformers 4.57, so it runs from its own venv (``--optimum-venv``)
  on the directory transformers 5 wrote; optimum's exports keep height and width free, so onnxrap is given
  ``--size``.

and each file goes through ``python -m onnxrap explain FILE x.npy --method rap,gradient-x-input --save-npy``,
run from the repository root (this checkout's onnxrap) with ``--onnxrap-python``, in float32:

* ``ort``: ONNX Runtime's logits against torch's (max abs difference over the largest logit);
* ``conserve``: |rap's relevance sum - the logit| / |logit|, from ``summary.json``;
* ``gxi``: onnxrap's gradient x input against torch autograd's gradient times the input (relative L2); where it
  is over 1e-4, again with both in float64 (``gxi64``: ``--dtype float64``, ``model.double()``);
* a refusal: onnxrap's one-line error (exit 2); anything else (a traceback, another exit code) is an onnxrap bug.

Trained-like: ``make_trained_like`` of tools/torchvision_sweep.py (norm scales U(0.5, 1.5), biases N(0, 0.1),
BatchNorm statistics of 4 train-mode batches of N(0, 1) images), transformers' layer scales (ConvNeXt's
``layer_scale_parameter``, BEiT's ``lambda_1``, DINOv2's ``lambda1``, PoolFormer's and SwiftFormer's
``layer_scale*``, FocalNet's ``gamma_*``) from U(0.1, 0.5), relative position bias tables from N(0, 0.5), and
``initializer_range`` 0.1 where a config has one (0.02 at width 32 leaves attention uniform).

Input: smooth noise, ImageNet-normalised (``image(size, None)`` of torchvision_sweep), batch 1, its top class.

``--fixtures DIR`` writes ``FIXTURES`` (TorchScript exports) with ``<name>.npz``: ``x`` (2 smooth-noise images: one
and the same reversed along every axis), ``target``, ``torch_logits``, ``torch_grad64`` (autograd's float64
gradient of each target logit, computed before the export) and ``manifest.json``, for tests/test_hf.py.

Requirements (only for this script): torch 2.13.0, transformers 5, onnx, onnxruntime, Pillow in one venv (and onnxrap's
own dependencies, as torchvision_sweep imports onnxrap); optimum-onnx in another.  Usage, from the repository root:
    nice -n 19 /work/data/hf-venv/bin/python tools/hf_sweep.py --out /work/data/h30/sweep   # results.jsonl, table.md
    /work/data/hf-venv/bin/python tools/hf_sweep.py --only vit,swin --exporters torchscript --out /tmp/hf
    /work/data/hf-venv/bin/python tools/hf_sweep.py --fixtures tests/fixtures/hf
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchvision_sweep import (export, image, make_trained_like, op_counts, opset_of, ort_forward,  # noqa: E402
                               rel_l2, summary, torch_logits_and_grad)

ONNXRAP_PYTHON = "/work/main/.venv/bin/python"
OPTIMUM_VENV = "/work/data/hf-optimum-venv"
VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
           intermediate_size=64)
# family -> (transformers model_type, config arguments, input size[, class name where the model type has several])
FAMILIES = {
    "vit": ("vit", VIT, 32),
    "deit": ("deit", VIT, 32, "DeiTForImageClassification"),
    "deit_distilled": ("deit", VIT, 32, "DeiTForImageClassificationWithTeacher"),
    "vit_msn": ("vit_msn", VIT, 32),
    "ijepa": ("ijepa", VIT, 32),
    "beit": ("beit", VIT | dict(use_relative_position_bias=True), 32),
    "data2vec_vision": ("data2vec-vision", VIT | dict(use_relative_position_bias=True), 32),
    "dinov2": ("dinov2", {k: v for k, v in VIT.items() if k != "intermediate_size"} | dict(mlp_ratio=2), 32),
    "dinov2_with_registers": ("dinov2_with_registers", {k: v for k, v in VIT.items() if k != "intermediate_size"}
                              | dict(mlp_ratio=2, num_register_tokens=2), 32),
    "clip": ("clip", dict(vision_config=VIT, text_config=dict(hidden_size=32, intermediate_size=64,
                                                             num_hidden_layers=1, num_attention_heads=2)), 32),
    "siglip": ("siglip", dict(vision_config=VIT, text_config=dict(hidden_size=32, intermediate_size=64,
                                                                 num_hidden_layers=1, num_attention_heads=2)), 32),
    "swin": ("swin", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
             32),
    "donut_swin": ("donut-swin", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                      window_size=4), 32),
    "swinv2": ("swinv2", dict(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                              window_size=4), 32),
    "focalnet": ("focalnet", dict(image_size=32, embed_dim=8, hidden_sizes=[16, 32], depths=[1, 1],
                                  focal_levels=[2, 2], focal_windows=[3, 3], use_layerscale=True), 32),
    "convnext": ("convnext", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), 32),
    "convnextv2": ("convnextv2", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), 32),
    "resnet": ("resnet", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck"), 32),
    "regnet": ("regnet", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8), 32),
    "bit": ("bit", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_groups=4), 32),
    "efficientnet": ("efficientnet", dict(image_size=32, width_coefficient=0.25, depth_coefficient=0.3,
                                          hidden_dim=320), 32),
    "mobilenet_v1": ("mobilenet_v1", dict(image_size=32, depth_multiplier=0.25), 32),
    "mobilenet_v2": ("mobilenet_v2", dict(image_size=32, depth_multiplier=0.25), 32),
    "mobilevit": ("mobilevit", dict(image_size=64, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                                    num_attention_heads=2), 64),
    "mobilevitv2": ("mobilevitv2", dict(image_size=64, width_multiplier=0.25, n_attn_blocks=[1, 1, 1]), 64),
    "levit": ("levit", dict(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                            key_dim=[8, 8, 8], down_ops=[["Subsample", 8, 1, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]]),
              64, "LevitForImageClassificationWithTeacher"),
    "poolformer": ("poolformer", dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]), 32),
    "pvt": ("pvt", dict(image_size=32, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                        num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]), 32),
    "pvt_v2": ("pvt_v2", dict(image_size=32, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]), 32),
    "segformer": ("segformer", dict(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                    num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2]), 32),
    "cvt": ("cvt", dict(embed_dim=[8, 16, 24], num_heads=[1, 1, 2], depth=[1, 2, 3]), 32),  # stage k needs k + 1 layers:
    # CvtStage indexes its drop path rates by the stage
    "hiera": ("hiera", dict(image_size=[64, 64], embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]), 64),
    "swiftformer": ("swiftformer", dict(depths=[1, 1, 1, 1], embed_dims=[8, 16, 24, 32]), 32),
    "hgnet_v2": ("hgnet_v2", dict(embedding_size=8, stem_channels=[3, 8, 8], stage_in_channels=[8, 16, 32, 48],
                                  stage_mid_channels=[8, 8, 16, 16], stage_out_channels=[16, 32, 48, 64],
                                  stage_numb_of_layers=[2, 2, 2, 2], hidden_sizes=[16, 32, 48, 64]), 32),
    "pp_lcnet": ("pp_lcnet", dict(scale=0.25, class_expand=64), 32),
    "textnet": ("textnet", dict(stem_out_channels=8, hidden_sizes=[8, 8, 16, 24, 32], image_size=[32, 32]), 32),
}
# Families whose TorchScript export needs a later opset (MobileViTV2's unfold back, aten::col2im: opset 18).
OPSETS = {"mobilevitv2": 18}
# The fixtures: name -> (family, exporter, what onnxrap says where it refuses).  Each is small and covers a pattern
# of transformers' code: the class token (ViT, CLIP's of rank 1), the distillation head (DeiT), relative position
# bias and layer scale (BEiT, DINOv2), windows (Swin), free height and width (optimum's Swin), and a clean refusal.
FIXTURES = {"vit": ("vit", "torchscript", None), "clip": ("clip", "torchscript", None),
            "deit_distilled": ("deit_distilled", "torchscript", None), "beit": ("beit", "torchscript", None),
            "dinov2": ("dinov2", "torchscript", None), "swin": ("swin", "torchscript", None),
            "swin_optimum": ("swin", "optimum", None), "hiera": ("hiera", "torchscript", "(ReduceMax)")}
LAYER_SCALE = re.compile(r"(layer_scale|lambda_?\d|gamma_\d)")


def hf_trained_like(model, size, seed=0):
    """``make_trained_like`` and transformers' own layer scales and position bias tables."""
    import torch
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if LAYER_SCALE.fullmatch(leaf) or LAYER_SCALE.fullmatch(leaf.removesuffix("_parameter")):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
            elif leaf == "relative_position_bias_table":
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return make_trained_like(model, size, seed)


def build(family, seed=0):
    """The ``AutoModelForImageClassification`` of ``family``'s small config, trained-like; and its input size."""
    import torch
    import transformers
    model_type, kwargs, size, *architecture = FAMILIES[family]
    config = transformers.AutoConfig.for_model(model_type, num_labels=10, architectures=architecture or None, **kwargs)
    for sub in (config, getattr(config, "vision_config", None)):
        if sub is not None and hasattr(sub, "initializer_range"):
            sub.initializer_range = 0.1
    torch.manual_seed(seed)
    model = transformers.AutoModelForImageClassification.from_config(config)
    model.config.id2label = {k: f"hf-class-{k}" for k in range(10)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return hf_trained_like(Logits(model), size, seed), size


def Logits(model):
    """``model`` as a module from pixels to logits (transformers' return an output object)."""
    from torch import nn

    class HFLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = model

        def forward(self, pixel_values):
            out = self.hf(pixel_values=pixel_values)
            # PPLCNetForImageClassification returns its logits as last_hidden_state
            return out.logits if "logits" in out else out.last_hidden_state

    return HFLogits()


def export_optimum(model, folder, venv):
    """``optimum-cli export onnx`` of the model saved in ``folder``; the path of model.onnx."""
    model.hf.save_pretrained(folder / "hf")
    cmd = [f"{venv}/bin/optimum-cli", "export", "onnx", "--model", str(folder / "hf"), "--task", "image-classification",
           "--opset", "17", str(folder / "optimum")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    path = folder / "optimum" / "model.onnx"
    if not path.is_file():
        lines = [line for line in (done.stderr + done.stdout).splitlines() if re.match(r"^\w*(Error|Exception)", line)]
        raise RuntimeError((lines or (done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1][:300])
    return path, done


def explain_cli(path, x_path, out, methods, dtype, size=None, python=ONNXRAP_PYTHON):
    """``onnxrap explain`` from the repository root: (exit code, last stderr line, summary.json or None)."""
    cmd = [python, "-m", "onnxrap", "explain", str(path), str(x_path), "--method", methods, "--save-npy",
           "--dtype", dtype, "-o", str(out), "--quiet"] + (["--size", str(size)] if size else [])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    lines = done.stderr.strip().splitlines()
    summary = out / "summary.json"
    return done.returncode, done.stderr.strip() if done.returncode not in (0, 2) else (lines[-1] if lines else ""), \
        json.loads(summary.read_text()) if done.returncode == 0 else None


def check(path, x, torch_logits, torch_grad, torch_grad64, work, size=None, python=ONNXRAP_PYTHON):
    """One exported file through ONNX Runtime and ``onnxrap explain``: a dict of measures, or the refusal."""
    row = {}
    ort_logits, _ = ort_forward(path, x)
    row["ort"] = float(np.abs(ort_logits - torch_logits).max() / np.abs(torch_logits).max())
    x_path = work / "x.npy"
    np.save(x_path, x)
    code, err, summary = explain_cli(path, x_path, work / "f32", "rap,gradient-x-input", "float32", size, python)
    if code == 2:
        return row | {"refused": err.removeprefix("onnxrap: error: ")}
    if code != 0:
        return row | {"error": f"exit {code}: {err.splitlines()[-1] if err else ''}", "traceback": err}
    entry = summary["inputs"][0]
    rap = entry["methods"]["rap"]
    row["target"] = entry["target"]
    row["logit"] = float(abs(entry["target_logit"] - torch_logits[0, entry["target"]]) / np.abs(torch_logits).max())
    row["conserve"] = abs(rap["relevance_sum"] - entry["target_logit"]) / abs(entry["target_logit"])
    row["redone"] = rap["recomputed_in_float64"]
    gxi = np.load(entry["methods"]["gradient-x-input"]["npy"])
    row["gxi"] = rel_l2(gxi, torch_grad(entry["target"]) * x[0])
    if row["gxi"] > 1e-4:  # a kink within float32 rounding? both in float64
        code, err, summary = explain_cli(path, x_path, work / "f64", "gradient-x-input", "float64", size, python)
        if code == 0:
            gxi = np.load(summary["inputs"][0]["methods"]["gradient-x-input"]["npy"])
            row["gxi64"] = rel_l2(gxi, torch_grad64(entry["target"]) * x[0].astype(np.float64))
    return row


def sweep_one(family, exporter, args):
    import torch
    row = {"family": family, "exporter": exporter}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hf-{family}-") as tmp:
        work = Path(tmp)
        try:
            model, size = build(family)
            row["size"] = size
            row["params"] = sum(p.numel() for p in model.parameters())
            x = image(size, None)
            logits, grad, target = torch_logits_and_grad(model, x)

            def torch_grad(t):
                return grad if t == target[0] else torch_logits_and_grad(model, x, [t])[1]

            def torch_grad64(t):
                g64 = torch_logits_and_grad(model.double(), x.astype(np.float64), [t])[1]
                model.float()
                return g64
        except Exception as exc:
            return row | {"build_failed": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        try:
            if exporter == "torchscript":
                path = work / "model.onnx"
                try:
                    export(model, x, path, "torchscript", external_data=False, opset=OPSETS.get(family, 17))
                except RuntimeError as exc:  # LeViT's cached attention biases: export under no_grad, as users do
                    if "requires grad as a constant" not in str(exc):
                        raise
                    model.train().eval()  # LeViT's train() empties its cache, filled under grad by now
                    with torch.no_grad():
                        export(model, x, path, "torchscript", external_data=False, opset=OPSETS.get(family, 17))
                    row["no_grad"] = True
            else:
                path, log = export_optimum(model, work, args.optimum_venv)
                # optimum-onnx pins transformers 4.57, which does not read every checkpoint key that 5 writes
                missing = re.search(r"newly initialized: \[([^\]]*)\]", log.stdout + log.stderr)
                if missing:
                    row["reinitialised"] = re.findall(r"'([^']*)'", missing.group(1))
        except Exception as exc:  # the exporter's own failure
            return row | {"export_failed": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        proto = onnx.load(str(path), load_external_data=False)
        row["nodes"] = len(proto.graph.node)
        row["ops"] = op_counts(proto)
        row["opset"] = opset_of(proto)
        row["labels"] = {p.key: p.value[:80] for p in proto.metadata_props}
        free_hw = any(d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[2:])
        try:
            with torch.enable_grad():
                row.update(check(path, x, logits, torch_grad, torch_grad64, work, size if free_hw else None,
                                 args.onnxrap_python))
        except Exception as exc:  # the sweep's own failure
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            row["traceback"] = traceback.format_exc()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def fmt(v):
    return "" if v is None else f"{v:.1e}"


def table(rows):
    lines = ["| family | exporter | px | params | nodes | ORT vs torch | explains? | conservation | grad x input vs "
             "torch | refusal / note |", "|" + " --- |" * 10]
    for r in sorted(rows, key=lambda r: (list(FAMILIES).index(r["family"]) if r["family"] in FAMILIES else 99,
                                         r["exporter"])):
        note = ""
        if "build_failed" in r:
            explains, note = "not built", r["build_failed"]
        elif "export_failed" in r:  # optimum's own error, up to its first full stop
            explains, note = "not exported", re.sub(r"^(RuntimeError: )?(\w+Error: )", r"\2",
                                                    r["export_failed"]).split(". ")[0]
        elif "refused" in r:
            explains, note = "refused", summary(re.sub(r"/tmp/\S+/", "", r["refused"]))
        elif "error" in r:
            explains, note = "**error**", r["error"]
        else:
            explains = "yes" + (" (float64 redo)" if r.get("redone") else "")
        if r.get("no_grad"):
            note = "exported under torch.no_grad(): LeViT caches its attention biases, which torch.onnx cannot write " \
                   "as constants while they require grad. " + note
        if "reinitialised" in r:  # torch's numbers are transformers 5's model, the file is 4.57's
            names = r["reinitialised"]
            note = (f"optimum's transformers 4.57 newly initialised {len(names)} weights of the checkpoint "
                    f"transformers 5 saved ({', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                    + (": the file is not torch's model" if r.get("ort", 0) > 1e-3 else "") + ". " + note).strip()
        grad = fmt(r.get("gxi")) + (f" (f64 {fmt(r['gxi64'])})" if "gxi64" in r else "")
        lines.append(" | ".join(["", r["family"], r["exporter"], str(r.get("size", "")), str(r.get("params", "")),
                                 str(r.get("nodes", "")), fmt(r.get("ort")), explains, fmt(r.get("conserve")), grad,
                                 note.replace("|", "\\|")[:400], ""]).strip())
    return "\n".join(lines) + "\n"


def sweep(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["family"], r["exporter"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.is_file() else set()
    for family in args.only.split(",") if args.only else FAMILIES:
        for exporter in args.exporters.split(","):
            if (family, exporter) in done:
                continue
            row = sweep_one(family, exporter, args)
            print(json.dumps({k: v for k, v in row.items() if k not in ("ops", "traceback")}), flush=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    (out / "table.md").write_text(table(rows))
    print(f"wrote {out / 'table.md'}")


def write_fixtures(out, only=None, optimum_venv=OPTIMUM_VENV):
    import torch
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest.update({name: importlib.metadata.version(name) for name in ("torch", "transformers", "onnx")})
    for name, (family, exporter, refusal) in FIXTURES.items():
        if only and name not in only:
            continue
        model, size = build(family)
        first = image(size, None)
        x = np.ascontiguousarray(np.concatenate([first, first[:, ::-1, ::-1, ::-1]]))
        logits, _, target = torch_logits_and_grad(model, x)
        _, grad64, _ = torch_logits_and_grad(model.double(), x.astype(np.float64), target)
        model.float()
        path = out / f"{name}.onnx"
        if exporter == "torchscript":
            export(model, x, path, "torchscript", external_data=False)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(export_optimum(model, Path(tmp), optimum_venv)[0], path)
        proto = onnx.load(str(path))
        np.savez_compressed(out / f"{name}.npz", x=x, target=target, torch_logits=logits, torch_grad64=grad64)
        model_type, kwargs, *_ = FAMILIES[family]
        manifest["files"][name] = {"bytes": path.stat().st_size, "nodes": len(proto.graph.node), "exporter": exporter,
                                   "opset": opset_of(proto), "ops": op_counts(proto), "model_type": model_type,
                                   "config": kwargs, "params": sum(p.numel() for p in model.parameters()),
                                   "refusal": refusal}
        print(name, manifest["files"][name]["bytes"], flush=True)
        torch.manual_seed(0)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="sweep-hf", help="folder for results.jsonl and table.md")
    p.add_argument("--only", help="comma-separated families (default: all of FAMILIES)")
    p.add_argument("--exporters", default="torchscript,optimum")
    p.add_argument("--optimum-venv", default=OPTIMUM_VENV, help="a venv with optimum-onnx (optimum-cli)")
    p.add_argument("--onnxrap-python", default=ONNXRAP_PYTHON, help="a Python with onnxrap's dependencies")
    p.add_argument("--fixtures", type=Path, help="write the fixtures to this folder instead of sweeping")
    args = p.parse_args(argv)
    print("torch {}, transformers {}, onnx {}".format(*(importlib.metadata.version(n)
                                                       for n in ("torch", "transformers", "onnx"))), flush=True)
    if args.fixtures:
        write_fixtures(args.fixtures, args.only.split(",") if args.only else None, args.optimum_venv)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
