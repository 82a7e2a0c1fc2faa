"""The explanation figure: every word of its caption stays on the page."""
import numpy as np
import pytest

from onnxrap.viz import explanation_figure

CAPTION = ("a_photo_with_a_long_name.png: predicted 285 (Egyptian Mau), logit 8.624, p=0.563; "
           "explained 281 (tabby, tabby cat, a long class name from the labels file)")


@pytest.mark.parametrize("methods", [1, 2, 3, 7])
def test_the_caption_fits_the_figure(methods):
    rng = np.random.default_rng(0)
    heatmaps = [(f"method {i}  (sum 1.0)", rng.standard_normal((24, 24))) for i in range(methods)]
    fig = explanation_figure(rng.random((24, 24, 3)), heatmaps, CAPTION)
    renderer = fig.canvas.get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    for ax in fig.axes:  # and no panel's title runs into it
        title = ax.title.get_window_extent(renderer)
        assert not ax.title.get_text() or title.y1 <= box.y0 + 1
