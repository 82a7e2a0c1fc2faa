#!/usr/bin/env python3
"""A small Ultralytics YOLOv8 classifier, exported by Ultralytics' own ONNX exporter (tests/fixtures/yolo/).

YOLOv8-cls (Ultralytics' C2f blocks: ``torch.chunk`` written as ONNX Split, SiLU as Sigmoid and Mul, a
Classify head ending in Softmax) is a common choice for inspection tasks, and its exports carry the class
names as metadata (``names``, a Python dict literal).  Built from the packaged ``yolov8n-cls.yaml`` at a
sixteenth of the width with 10 classes: random weights (nothing is downloaded), BatchNorm statistics from a
few train-mode passes over noise (the activations' own, so that the signal keeps its scale with depth).

Needs ``pip install ultralytics`` (it brings torch); PyTorch stays out of onnxrap's dependencies.

    python tools/make_yolo_fixture.py tests/fixtures/yolo
"""
import argparse
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks, no downloads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=32, help="input side in pixels")
    args = parser.parse_args()

    import numpy as np
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    torch.manual_seed(0)
    cfg = yaml_model_load("yolov8n-cls.yaml")
    cfg.pop("yaml_file", None)
    cfg["scales"] = {"t": [0.33, 0.0625, 1024]}  # depth, width, max channels: a sixteenth of the width
    cfg["nc"] = 10
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "yolov8t-cls.yaml"  # Ultralytics reads the scale from the file name
        spec.write_text(yaml.safe_dump(cfg))
        yolo = YOLO(str(spec), task="classify")
        net = yolo.model
        net.names = {i: f"part-{i}" for i in range(cfg["nc"])}
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running statistics = the mean over the passes below
        net.train()
        with torch.no_grad():
            for _ in range(4):
                net(torch.randn(16, 3, args.size, args.size))
        net.eval()
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            exported = Path(yolo.export(format="onnx", imgsz=args.size, opset=17, simplify=False))
        finally:
            os.chdir(cwd)
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / "yolov8t_cls.onnx"
        shutil.copyfile(exported if exported.is_absolute() else Path(tmp) / exported, target)
    # The check: the probabilities, and torch's gradient of each sample's top logit (the Linear before the
    # head's Softmax) with respect to the input
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, args.size, args.size)).astype(np.float32))
    x.requires_grad_(True)
    logits = []
    hook = net.model[-1].linear.register_forward_hook(lambda module, inputs, out: logits.append(out))
    probs = net(x)
    hook.remove()
    probs = probs[0] if isinstance(probs, (tuple, list)) else probs
    top = logits[0].argmax(1)
    logits[0].gather(1, top[:, None]).sum().backward()
    np.savez(args.out / "yolov8t_cls_check.npz", x=x.detach().numpy(), probs=probs.detach().numpy(),
             logits=logits[0].detach().numpy(), gradient=x.grad.numpy())
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
