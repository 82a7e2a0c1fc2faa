"""Fixtures.  Importable helpers live in helpers.py (``from helpers import ...``)."""
import numpy as np
import pytest

# Re-exported for tests written as ``from conftest import ...``.
from helpers import DIGIT_IMAGES, DIGITS, GOLDEN, GOLDEN_CASES, ROOT, rel_l2  # noqa: F401


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
