from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_CASES = ["mlp", "inception_mini", "vgg16_w8", "vgg16bn_w8", "resnet50_w4"]
DIGITS = ROOT / "models" / "digits_cnn.onnx"
DIGIT_IMAGES = sorted((ROOT / "models" / "images").glob("*.png"))


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


@pytest.fixture(scope="session")
def golden():
    """Explainers and cases, loaded once per session (the large ones take a second each)."""
    from onnxrap import Explainer

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = (Explainer(GOLDEN / name / "model.onnx"), dict(np.load(GOLDEN / name / "case.npz")))
        return cache[name]

    return get
