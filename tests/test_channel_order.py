"""BGR models (OpenCV, Caffe, PaddlePaddle): the image's channels are reversed before scaling; mean and std
are the model's order; the display image stays RGB."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, run_cli
from onnxrap.errors import InputError
from onnxrap.inputs import Preprocess

PIXEL = (200, 100, 50)  # R, G, B


def _image():
    return Image.new("RGB", (4, 4), PIXEL)


def test_bgr_reverses_the_channels_and_keeps_the_display_rgb():
    rgb = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="raw")
    bgr = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="raw", channel_order="bgr")
    x_rgb, display_rgb = rgb(_image())
    x_bgr, display_bgr = bgr(_image())
    assert x_rgb[0, :, 0, 0].tolist() == [200, 100, 50] and x_bgr[0, :, 0, 0].tolist() == [50, 100, 200]
    np.testing.assert_array_equal(display_rgb, display_bgr)
    nhwc = Preprocess.for_model((1, 4, 4, 3), "nhwc", {}, preset="raw", channel_order="bgr")
    assert nhwc(_image())[0][0, 0, 0].tolist() == [50, 100, 200]


def test_caffe_is_bgr_minus_the_bgr_mean_and_metadata_can_say_bgr():
    caffe = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="caffe")
    assert caffe.channel_order == "bgr"
    np.testing.assert_allclose(caffe(_image())[0][0, :, 0, 0], [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-6)
    told = Preprocess.for_model((1, 3, 4, 4), "nchw", {"onnxrap.channel_order": "BGR"}, preset="signed")
    assert told.channel_order == "bgr" and "BGR" in told.describe()


def test_a_preset_is_per_colour_and_follows_the_channel_order():
    # ImageNet's statistics belong to colours: a BGR model's first channel is blue, so it gets blue's mean
    bgr = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="imagenet", channel_order="bgr")
    assert bgr.mean == (0.406, 0.456, 0.485) and bgr.std == (0.225, 0.224, 0.229)
    np.testing.assert_allclose(bgr(_image())[0][0, :, 0, 0],
                               [(50 / 255 - 0.406) / 0.225, (100 / 255 - 0.456) / 0.224, (200 / 255 - 0.485) / 0.229],
                               rtol=1e-6)
    rgb_caffe = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="caffe", channel_order="rgb")
    np.testing.assert_allclose(rgb_caffe(_image())[0][0, :, 0, 0], [200 - 123.68, 100 - 116.779, 50 - 103.939],
                               rtol=1e-6)
    # given values are the model's order, as written
    given = Preprocess.for_model((1, 3, 4, 4), "nchw", {}, preset="raw", channel_order="bgr", mean=[1, 2, 3])
    assert given.mean == (1, 2, 3)


def test_padding_is_the_mean_in_the_image_order():
    # caffe's mean is B, G, R = 103.9, 116.8, 123.7: the pad must come out as a model input of 0 in every channel
    caffe = Preprocess.for_model((1, 3, 4, 8), "nchw", {}, preset="caffe", resize="pad")
    x, _ = caffe(_image())
    assert np.abs(x[0, :, :, 0]).max() <= 0.7  # a padded column: the mean, rounded to whole pixel values


def test_bad_channel_orders_are_refused():
    with pytest.raises(InputError, match="unknown channel order 'rbg'"):
        Preprocess.for_model((1, 3, 4, 4), "nchw", {"onnxrap.channel_order": "rbg"})
    with pytest.raises(InputError, match="needs colour"):
        Preprocess.for_model((1, 1, 4, 4), "nchw", {}, channel_order="bgr")


def test_the_cli_takes_it_and_records_it(tmp_path, capsys):
    from helpers import DIGITS, DIGIT_IMAGES
    code, _, err = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "--channel-order", "bgr", "-o", tmp_path], capsys)
    assert_one_line_error(code, err, "channel order bgr needs colour")
    code, _, _ = run_cli(["explain", DIGITS, DIGIT_IMAGES[0], "-o", tmp_path, "--quiet"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "summary.json").read_text())["preprocessing"]["channel_order"] == "rgb"
