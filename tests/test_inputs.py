"""Reading images: true range at every bit depth, EXIF orientation, resize policies, what is reported."""
import warnings

import numpy as np
import pytest
from PIL import Image

from onnxrap.errors import InputError
from onnxrap.inputs import Preprocess, load_input, read_array, read_image, read_labels


def grey_model(size=(8, 8), resize=None, preset="unit"):
    return Preprocess.for_model((1, 1, *size), "nchw", {}, preset=preset, resize=resize)


def prepared(path, preprocess):
    """The model input (as 8-bit-scale pixels, since the preset is unit) and the notes."""
    x, _, notes = preprocess.prepare(read_image(path))
    return x[0, 0] * 255, notes


RAMP8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4 + 1  # 1 .. 253


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
def test_16_bit_grey_reads_at_its_true_range(tmp_path, suffix):
    # The same picture at 8 and 16 bits (v16 = 257 v8, so 65535 is 255): the same model input.
    path8, path16 = tmp_path / f"a8{suffix}", tmp_path / f"a16{suffix}"
    Image.fromarray(RAMP8).save(path8)
    Image.fromarray(RAMP8.astype(np.uint16) * 257).save(path16)
    assert read_image(path16).mode.startswith("I;16")
    x8, _ = prepared(path8, grey_model())
    x16, notes = prepared(path16, grey_model())
    np.testing.assert_allclose(x16, x8, atol=1e-3)
    assert any("16-bit" in n and "65535 is 8-bit's 255" in n for n in notes)


def test_16_bit_full_range_is_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "full.png")
    x, _ = prepared(tmp_path / "full.png", grey_model())
    np.testing.assert_allclose(x, values / 257.0, atol=1e-3)  # was: everything above 255 clipped to white
    assert (x >= 254.99).mean() < 0.05


def test_32_bit_integer_mode_i_reads_as_16_bit():
    image = Image.fromarray((RAMP8.astype(np.int32) * 257)).convert("I")
    assert image.mode == "I"
    x, _, _ = grey_model().prepare(image)
    np.testing.assert_allclose(x[0, 0] * 255, RAMP8, atol=1e-3)
    with pytest.raises(InputError, match="from -5 to"):
        grey_model().prepare(Image.fromarray(np.full((8, 8), -5, np.int32)).convert("I"))


def test_float_tiff_is_read_on_0_to_1(tmp_path):
    values = RAMP8 / 255.0
    Image.fromarray(values.astype(np.float32), mode="F").save(tmp_path / "f.tiff")
    x, notes = prepared(tmp_path / "f.tiff", grey_model())
    np.testing.assert_allclose(x, RAMP8, atol=1e-3)  # 1.0 is 8-bit's 255
    assert any("float [0, 1]" in n for n in notes)


@pytest.mark.parametrize("bad, message", [(2.0, r"from 0 to 2, but a float image's range is \[0, 1\]"),
                                          (np.nan, "NaN or Inf")])
def test_float_tiff_outside_its_range_is_an_error_naming_the_file(tmp_path, bad, message):
    values = np.zeros((8, 8), np.float32)
    values[2, 3] = bad
    path = tmp_path / "odd.tiff"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(InputError, match=f"odd.tiff: .*{message}"):
        load_input(path, grey_model, 4)


def test_16_bit_into_a_colour_model_repeats_grey(tmp_path):
    Image.fromarray(RAMP8.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    rgb = Preprocess.for_model((1, 3, 8, 8), "nchw", {}, preset="unit")
    x, display, notes = rgb.prepare(read_image(tmp_path / "a16.png"))
    for c in range(3):
        np.testing.assert_allclose(x[0, c] * 255, RAMP8, atol=1e-3)
    assert display.shape == (8, 8, 3) and "grey repeated into 3 channels" in notes


def test_exif_orientation_is_honoured(tmp_path):
    pixels = np.zeros((4, 8), np.uint8)  # 4 high, 8 wide; bright top-left corner
    pixels[0, 0] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show upright"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    pre = Preprocess.for_model((1, 1, None, None), "nchw", {}, preset="unit")
    x, _, notes = pre.prepare(read_image(tmp_path / "rotated.jpg"))
    assert x.shape == (1, 1, 8, 4)  # upright: 8 high, 4 wide
    assert x[0, 0, 0, -1] > 0.5 and x[0, 0, 0, 0] < 0.2  # the corner moved to the top right
    assert any("EXIF orientation (6)" in n for n in notes)


def wide_image():
    """20 high, 40 wide: a white centre (a little wider than square, for the resampling filter's reach)
    between black side bands."""
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 8:32] = 255
    return Image.fromarray(pixels)


def test_center_crop_keeps_the_centre():
    x, _, notes = grey_model((10, 10), "center-crop").prepare(wide_image())
    np.testing.assert_array_equal(x, np.ones((1, 1, 10, 10)))
    assert any("centre kept" in n and "20x40 -> 10x10" in n for n in notes)


def test_pad_keeps_everything_and_pads_with_the_mean():
    x, _, notes = grey_model((10, 10), "pad").prepare(wide_image())
    rows = x[0, 0]
    assert not rows[0].any() and not rows[-1].any()  # padding: the unit preset's mean, 0
    assert rows[4, 0] == 0 and rows[4, 5] == 1  # the whole width: black bands and white centre
    assert any("padded" in n for n in notes)
    signed = Preprocess.for_model((1, 1, 10, 10), "nchw", {}, preset="signed", resize="pad")
    np.testing.assert_allclose(signed.prepare(wide_image())[0][0, 0, 0], 0, atol=1.01 / 255)  # 0, to 8-bit rounding


def test_stretch_squashes_and_says_so():
    x, _, notes = grey_model((10, 10), "stretch").prepare(wide_image())
    assert x[0, 0, 5, 0] == 0 and x[0, 0, 5, 5] == 1
    assert any("aspect ratio changes from 2 to 1" in n for n in notes)


def test_same_aspect_ratio_is_the_same_under_every_policy():
    square = Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20))
    results = [grey_model((10, 10), policy).prepare(square)[0] for policy in ("center-crop", "pad", "stretch")]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_colour_dropped_to_grey_is_reported_only_when_there_was_colour():
    colour = Image.fromarray(np.stack([np.full((8, 8), v, np.uint8) for v in (200, 10, 10)], axis=2))
    grey_rgb = Image.fromarray(np.stack([RAMP8] * 3, axis=2))
    assert "colour dropped to grey (the model takes 1 channel)" in grey_model().prepare(colour)[2]
    assert not any("colour" in n for n in grey_model().prepare(grey_rgb)[2])


def test_a_preset_that_does_not_fit_the_channels():
    with pytest.raises(InputError, match="the preset imagenet has 3 channels; the model takes 1"):
        Preprocess.for_model((1, 1, 8, 8), "nchw", {}, preset="imagenet")
    with pytest.raises(InputError, match=r"--mean gives 3 values; the model takes 1 channel"):
        Preprocess.for_model((1, 1, 8, 8), "nchw", {}, mean=[0.1, 0.2, 0.3])
    with pytest.raises(InputError, match=r"the preset imagenet has 3 channels; the model takes 1"):
        Preprocess.for_model((1, 1, 8, 8), "nchw", {"onnxrap.preprocess": "imagenet"})
    assert Preprocess.for_model((1, 3, 8, 8), "nchw", {}, preset="unit").mean == (0.0,)  # one value: every channel


@pytest.mark.parametrize("flag, values, message", [
    ("std", [0.0], r"--std takes positive numbers, got 0$"),
    ("std", [0.5, -0.5, 0.5], r"--std takes positive numbers, got 0.5,-0.5,0.5$"),
    ("std", [float("inf")], r"--std takes positive numbers, got inf$"),
    ("mean", [float("nan")], r"--mean takes finite numbers, got nan$")])
def test_mean_and_std_that_would_make_nan_or_flip_signs(flag, values, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before any division
        with pytest.raises(InputError, match=message):
            Preprocess.for_model((1, 3, 8, 8), "nchw", {}, **{flag: values})


def test_labels_file_must_match_the_classes(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n\n")
    assert read_labels(path, 2) == ["cat", "dog"]
    with pytest.raises(InputError, match="labels.txt: 2 labels, but the model has 3 classes"):
        read_labels(path, 3)


def test_nan_array_names_the_file_without_a_numpy_warning(tmp_path):
    for name, value in (("nan.npy", np.nan), ("huge.npy", 1e300)):
        x = np.zeros((1, 3, 4, 4))
        x[0, 1, 2, 2] = value
        np.save(tmp_path / name, x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(InputError, match=name):
                read_array(tmp_path / name, 4)
