"""Render text lines for PaddleOCR's text-orientation classifier (ch_ppocr_mobile_v2.0_cls_infer.onnx).

Each line is drawn dark on a light background with a font found by fc-list (Pillow's default font where
there is none), cropped to the ink with a margin, and brought to the model's input as RapidOCR's
ch_ppocr_cls does: resized to height 48 keeping the aspect ratio (width at most 192), then padded on the
right to 192 with the value 0 of the normalised input ((p / 255 - 0.5) / 0.5: grey 127.5).  Each line is
written upright (class "0") and rotated by 180 degrees (class "180"), as a 192x48 PNG (grey padding 128,
which onnxrap's `--preset signed` maps to 0.004) and as the exact model input in `.npy` (1, 3, 48, 192).
The text is grey-level, so RapidOCR's BGR channel order and a PNG's RGB give the same input.

    python tools/make_paddle_text_lines.py OUT_DIR [--count N]
"""
from __future__ import annotations

import argparse
import math
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

LINES = ["Invoice No. 2023-1130", "Total amount: 1,234.56", "The quick brown fox", "Shipping address",
         "Date of birth 12/05/1987", "Patient ID 00482913", "Batch 7A lot 55", "Keep refrigerated",
         "Hello world", "Page 3 of 12", "Serial SN4471-X", "Made in Germany", "Exit", "No. 42",
         "Room 7", "Open"]
HEIGHT, WIDTH = 48, 192
INK = [(0, 0, 0), (40, 40, 40), (20, 20, 60)]
PAPER = [(255, 255, 255), (235, 235, 230), (250, 248, 240)]


def fonts():
    """The TrueType files fc-list knows, sorted; [] where fc-list is missing."""
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted({line.split(":")[0].strip() for line in listed.splitlines() if ".ttf" in line})


def render(text, font, ink, paper):
    """The text on paper, cropped to its ink with a margin of a fifth of the line height."""
    left, top, right, bottom = font.getbbox(text)
    margin = max(2, (bottom - top) // 5)
    image = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), paper)
    ImageDraw.Draw(image).text((margin - left, margin - top), text, font=font, fill=ink)
    return image


def model_input(image):
    """RapidOCR's ch_ppocr_cls resize_norm_img: (3, 48, 192) float32 in [-1, 1], padded with 0 on the right,
    and the same as a 192x48 picture (padding grey 128)."""
    w = min(WIDTH, math.ceil(HEIGHT * image.width / image.height))
    resized = image.resize((w, HEIGHT), Image.BILINEAR)
    x = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)
    x[:, :, :w] = (np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)[::-1] / 255 - 0.5) / 0.5  # BGR
    picture = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    picture.paste(resized, (0, 0))
    return x, picture


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=len(LINES), help="text lines (each upright and rotated)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    faces = fonts()
    for k, text in enumerate((LINES * (args.count // len(LINES) + 1))[:args.count]):
        size = 30 + 6 * (k % 3)
        font = ImageFont.truetype(faces[k % len(faces)], size) if faces else ImageFont.load_default(size=size)
        line = render(text, font, INK[k % len(INK)], PAPER[k % len(PAPER)])
        for angle, upright in ((0, line), (180, ImageOps.flip(ImageOps.mirror(line)))):
            x, picture = model_input(upright)
            stem = f"line{k:02d}_{angle}"
            picture.save(args.out / f"{stem}.png")
            np.save(args.out / f"{stem}.npy", x[None])
            print(f"{stem}: {text!r} {Path(font.path).name if faces else 'default'} {size}px")


if __name__ == "__main__":
    main()
