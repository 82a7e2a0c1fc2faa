"""The audit's off-the-object score on hand-made heatmaps whose answer is known by construction."""
import numpy as np
import pytest

from onnxrap.audit.scores import BAND, border_mask, off_object


def test_border_band_is_an_eighth_of_each_side():
    mask = border_mask((16, 8))
    assert mask[:2].all() and mask[-2:].all() and mask[:, :1].all() and mask[:, -1:].all()
    assert not mask[2:-2, 1:-1].any()


def test_off_object_on_hand_made_heatmaps():
    centre = np.zeros((8, 8))
    centre[3:5, 3:5] = 1.0
    assert off_object(centre) == 0.0
    border = np.zeros((8, 8))
    border[0, :] = 2.0
    assert off_object(border) == 1.0
    assert off_object(np.ones((8, 8))) == pytest.approx(1 - 36 / 64)  # the band's share of the pixels
    half = centre + border / 8  # centre holds 4, border 8 * 2 / 8 = 2
    assert off_object(half) == pytest.approx(2 / 6)
    negative_border = centre - border  # relevance against the class does not count
    assert off_object(negative_border) == 0.0
    assert off_object(-np.ones((8, 8))) is None
    assert off_object(np.zeros((8, 8))) is None
    assert off_object(np.ones(8)) is None
    assert BAND == 0.125
