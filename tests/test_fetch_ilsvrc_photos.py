"""tools/fetch_ilsvrc_photos.py: the ILSVRC images come out of a foolbox wheel unchanged, labelled by their names."""
import csv
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import fetch_ilsvrc_photos  # noqa: E402


def _wheel(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_images_and_labels_from_the_wheel(tmp_path):
    wheel = _wheel(tmp_path / "foolbox-3.3.4-py3-none-any.whl", {
        "foolbox/__init__.py": b"",
        "foolbox/data/imagenet_10_541.jpg": b"drum",
        "foolbox/data/imagenet_02_438.jpg": b"beaker",
        "foolbox/data/cifar10_00_3.png": b"not ImageNet",
        "foolbox/data/imagenet_00_243.jpg": b"bull mastiff",
    })
    out = tmp_path / "out"
    out.mkdir()
    rows = fetch_ilsvrc_photos.extract(wheel, out)
    # ordered by the image number, not the archive's order; the label is the class index in the name
    assert rows == [("imagenet_00_243.jpg", 243), ("imagenet_02_438.jpg", 438), ("imagenet_10_541.jpg", 541)]
    assert (out / "imagenet_10_541.jpg").read_bytes() == b"drum"  # copied unchanged
    assert sorted(p.name for p in out.iterdir()) == [r[0] for r in rows]  # nothing else


def test_main_writes_labels_csv(tmp_path):
    wheel = _wheel(tmp_path / "foolbox.whl", {"foolbox/data/imagenet_01_559.jpg": b"x",
                                              "foolbox/data/imagenet_00_243.jpg": b"y"})
    fetch_ilsvrc_photos.main([str(tmp_path / "set"), "--wheel", str(wheel)])
    with open(tmp_path / "set" / "labels.csv", newline="") as f:
        assert list(csv.reader(f)) == [["filename", "label"], ["imagenet_00_243.jpg", "243"],
                                       ["imagenet_01_559.jpg", "559"]]


def test_a_wheel_without_images_is_an_error(tmp_path):
    wheel = _wheel(tmp_path / "foolbox.whl", {"foolbox/__init__.py": b""})
    with pytest.raises(SystemExit, match="no foolbox/data/imagenet_"):
        fetch_ilsvrc_photos.extract(wheel, tmp_path)
