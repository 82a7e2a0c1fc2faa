#!/usr/bin/env python3
"""Train the small digits CNN bundled with onnxrap and write its artifacts.

Data: scikit-learn's bundled ``load_digits()`` (1797 8x8 grayscale digits),
bilinearly upsampled to 32x32 and scaled to [0, 1]. A stratified 20% of it is
held out and never trained on.

The network is tiny but deliberately exercises every layer kind the RAP
explainer has to handle: Conv + BatchNorm + ReLU, a residual Add, a Concat of
two conv branches, MaxPool, global average pooling, Flatten and Gemm.

Writes into ``--out`` (default: the repository's ``models/`` folder):

    digits_cnn.onnx          the model, opset 17, input ``input`` (N,1,32,32),
                             output ``logits`` (N,10), BatchNormalization kept
    digits_labels.txt        one label per line, "0".."9"
    digits_holdout.npz       the whole held-out split: x (N,1,32,32) float32, y int64
    images/digit_<label>_<k>.png
                             a few correctly classified held-out digits as
                             128x128 8-bit grayscale PNGs (k = index into the npz)
    README.md                what each file is and how it was made

PyTorch is only needed to run this script, never by onnxrap itself.

Usage:  python tools/train_digits.py [--out models] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = [str(d) for d in range(10)]
SIZE = 32  # model input side
PNG_SIZE = 128  # side of the sample PNGs; the tool resizes them back to SIZE
HOLDOUT_FRACTION = 0.2
EPOCHS = 15
BATCH_SIZE = 64
MAX_SHIFT = 2.0  # augmentation: random translation of up to this many pixels
MIN_ACCURACY = 0.97
# Digits written out as sample PNGs: distinct classes, mixed shapes.
SAMPLE_DIGITS = [0, 2, 3, 5, 7, 8]


def conv_bn(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Conv2d (no bias: BN supplies it) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    """Two conv+BN layers with an identity shortcut joined by Add."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels, 3)
        self.conv2 = conv_bn(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(x + y)


class BranchBlock(nn.Module):
    """A branch point: 1x1 and 3x3 conv branches joined by channel Concat."""

    def __init__(self, cin: int, cout_each: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, cout_each, 1)
        self.branch3 = conv_bn(cin, cout_each, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.branch1(x)), F.relu(self.branch3(x))], dim=1)


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16, 3),  # 32x32
            nn.ReLU(),
            nn.MaxPool2d(2, 2),  # -> 16x16
            ResidualBlock(16),
            nn.MaxPool2d(2, 2),  # -> 8x8
            BranchBlock(16, 24),  # -> 48 channels
            conv_bn(48, 48, 3),
            nn.ReLU(),
            # AdaptiveAvgPool2d(1) exports as GlobalAveragePool.
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N,1,32,32) float32 in [0,1], split stratified into train/holdout."""
    digits = load_digits()
    x8 = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    # Bilinear interpolation is a convex combination, so values stay in [0, 1].
    x = F.interpolate(x8, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_hold = train_test_split(
        np.arange(len(y)), test_size=HOLDOUT_FRACTION, stratify=digits.target, random_state=seed
    )
    return x[idx_train], y[idx_train], x[idx_hold], y[idx_hold]


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels, filling with background (0)."""
    n = x.shape[0]
    # affine_grid works in normalized coords where the image spans [-1, 1].
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * MAX_SHIFT * 2 / SIZE
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).argmax(1)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(y) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3e-3, total_steps=EPOCHS * steps_per_epoch
    )
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        total_loss = 0.0
        for start in range(0, len(y), BATCH_SIZE):
            batch = perm[start : start + BATCH_SIZE]
            xb = random_shift(x[batch], gen)
            loss = F.cross_entropy(model(xb), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(batch)
        train_acc = (predict(model, x) == y).float().mean().item()
        mean_loss = total_loss / len(y)
        print(f"epoch {epoch + 1:2d}/{EPOCHS}  loss {mean_loss:.4f}  train acc {train_acc:.4f}")


def export_onnx(model: nn.Module, path: Path, x_check: torch.Tensor) -> onnx.ModelProto:
    model.eval()
    # The TorchScript exporter is chosen on purpose; silence its deprecation notice.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        torch.onnx.export(
            model,
            (x_check[:1],),
            str(path),
            dynamo=False,  # TorchScript exporter: plain, stable node names and op set
            opset_version=17,
            # Keep BatchNormalization as its own node: the explainer propagates
            # relevance through it rather than through BN folded into the conv.
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(
        proto,
        {
            "onnxrap.preprocess": "unit",
            "onnxrap.labels": ",".join(LABELS),
            "onnxrap.description": (
                "Small CNN (conv/BN/residual/concat) classifying sklearn load_digits "
                "handwritten digits 0-9, 32x32 grayscale, white ink on black"
            ),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

    # The ONNX graph must reproduce PyTorch's logits on the whole check set.
    with torch.no_grad():
        expected = model(x_check).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x_check.numpy()})[0]
    max_diff = float(np.abs(got - expected).max())
    print(f"ONNX Runtime vs PyTorch: max |logit diff| = {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit(f"ONNX export mismatch: {max_diff:.2e} > 1e-4")
    return proto


def to_png(img: torch.Tensor) -> Image.Image:
    """(1,32,32) in [0,1] -> 128x128 8-bit grayscale image."""
    big = F.interpolate(img[None], size=(PNG_SIZE, PNG_SIZE), mode="bilinear", align_corners=False)
    # A 2-D uint8 array becomes a mode "L" (8-bit grayscale) image.
    return Image.fromarray(np.round(big[0, 0].numpy() * 255).astype(np.uint8))


def png_to_input(im: Image.Image) -> np.ndarray:
    """What a user of the model does with a PNG: resize to 32x32, pixel/255."""
    small = im.resize((SIZE, SIZE), Image.BILINEAR)
    return (np.asarray(small, dtype=np.float32) / 255.0)[None, None]


def write_samples(
    session: ort.InferenceSession, x: torch.Tensor, y: torch.Tensor, pred: torch.Tensor, out: Path
) -> list[str]:
    """Save the first held-out image of each SAMPLE_DIGITS class that the model
    gets right both as a tensor and after the PNG round trip."""
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for digit in SAMPLE_DIGITS:
        for k in np.flatnonzero((y == digit).numpy() & (pred == y).numpy()):
            im = to_png(x[k])
            logits = session.run(["logits"], {"input": png_to_input(im)})[0]
            if int(logits.argmax()) == digit:
                name = f"digit_{digit}_{k}.png"
                im.save(img_dir / name)
                names.append(name)
                break
        else:
            raise SystemExit(f"no held-out {digit} survives the PNG round trip")
    return names


def write_readme(
    out: Path, seed: int, accuracy: float, n_hold: int, n_train: int, n_params: int,
    op_counts: dict[str, int], samples: list[str],
) -> None:
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(op_counts.items()))
    sample_list = "\n".join(f"  - `images/{s}`" for s in samples)
    text = f"""# Bundled model and sample images

Everything in this folder is generated by `tools/train_digits.py`; do not edit
it by hand. Regenerate with (from the repository root):

    pip install torch==2.13.0 scikit-learn onnx onnxruntime pillow
    python tools/train_digits.py --out models --seed {seed}

PyTorch and scikit-learn are needed only to regenerate these files, not by onnxrap.

## Data

scikit-learn's bundled `load_digits()` (1797 handwritten 8x8 digits, values
0..16), scaled to [0, 1] and bilinearly upsampled to 32x32. A stratified 20%
({n_hold} images, split with `random_state={seed}`) is held out and was never
trained on; the model was trained on the other {n_train} with small random
shifts (up to {MAX_SHIFT:g} px) for {EPOCHS} epochs. Digits are white ink on black.

**Held-out accuracy: {accuracy:.2%}** ({round(accuracy * n_hold)}/{n_hold}).

## Files

- `digits_cnn.onnx` - the classifier ({n_params:,} parameters), ONNX opset 17,
  exported by PyTorch's TorchScript exporter in eval mode without constant
  folding, so BatchNormalization nodes are kept.
  - input `input`: float32 (N, 1, 32, 32), pixel values in [0, 1]
  - output `logits`: float32 (N, 10), raw scores (no softmax)
  - metadata: `onnxrap.preprocess` = `unit` (pixel/255),
    `onnxrap.labels` = `0,...,9`, `onnxrap.description`
  - ops: {ops}
  - layers: Conv+BN+ReLU, MaxPool 2x2, residual block (two Conv+BN, identity
    shortcut, Add), MaxPool 2x2, branch block (1x1 and 3x3 Conv+BN+ReLU joined
    by Concat), Conv+BN+ReLU, GlobalAveragePool, Flatten, Gemm.
- `digits_labels.txt` - class labels, one per line, in output order (`0`..`9`).
- `digits_holdout.npz` - the whole held-out split: `x` float32 (N, 1, 32, 32)
  in [0, 1], exactly as fed to the model, and `y` int64 labels.
- `images/digit_<label>_<k>.png` - held-out digits as 128x128 8-bit grayscale
  PNGs (the 32x32 input upsampled bilinearly); `k` is the image's index in
  `digits_holdout.npz`. Each is classified correctly both from the npz tensor
  and after resizing the PNG back to 32x32 (PIL bilinear) and dividing by 255.
{sample_list}
"""
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and augmentation")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(args.seed)
    x_train, y_train, x_hold, y_hold = load_data(args.seed)
    model = DigitsCNN(len(LABELS))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {len(y_train)}  held-out {len(y_hold)}  params {n_params}")

    start = time.perf_counter()
    train(model, x_train, y_train, args.seed)
    print(f"training took {time.perf_counter() - start:.1f}s")

    pred = predict(model, x_hold)
    accuracy = (pred == y_hold).float().mean().item()
    print(f"held-out accuracy: {accuracy:.4f} ({int((pred == y_hold).sum())}/{len(y_hold)})")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"held-out accuracy {accuracy:.4f} below {MIN_ACCURACY}")

    model_path = out / "digits_cnn.onnx"
    proto = export_onnx(model, model_path, x_hold)
    op_counts: dict[str, int] = {}
    for node in proto.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    print("ONNX ops:", ", ".join(f"{op} x{n}" for op, n in sorted(op_counts.items())))

    (out / "digits_labels.txt").write_text("\n".join(LABELS) + "\n")
    np.savez_compressed(
        out / "digits_holdout.npz", x=x_hold.numpy().astype(np.float32), y=y_hold.numpy()
    )
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    samples = write_samples(session, x_hold, y_hold, pred, out)
    write_readme(
        out, args.seed, accuracy, len(y_hold), len(y_train), n_params, op_counts, samples
    )
    print(f"wrote {model_path}, labels, holdout npz, {len(samples)} images, README to {out}")


if __name__ == "__main__":
    main()
