"""Reading inputs: images and arrays, turned into what the model expects.

Size, channel count and layout come from the model's input shape where it
fixes them; value scaling comes from a preset (``imagenet``, ``unit``,
``raw``, ``signed``), from the model's ``onnxrap.preprocess`` metadata, or
from ``--mean``/``--std``.  Pixels go ``[0, 255] * scale``, then
``(v - mean) / std`` per channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
ARRAY_SUFFIXES = {".npy"}

PRESETS = {
    "imagenet": (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": (1 / 255, (0.0,), (1.0,)),  # [0, 1]
    "raw": (1.0, (0.0,), (1.0,)),  # [0, 255]
    "signed": (1 / 255, (0.5,), (0.5,)),  # [-1, 1]
}


@dataclass
class Preprocess:
    """How an image becomes one model input."""

    size: tuple[int, int] | None  # (height, width); None keeps the image's own size
    channels: int
    layout: str  # "nchw" or "nhwc"
    preset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float

    @classmethod
    def for_model(cls, input_shape, layout, metadata, size=None, preset=None, mean=None, std=None):
        if input_shape is None or len(input_shape) != 4:
            shown = "unknown" if input_shape is None else tuple("?" if d is None else d for d in input_shape)
            raise InputError(f"the model's input has shape {shown}; images need a 4-D image input "
                             "(pass a .npy array instead)")
        if layout == "nhwc":
            _, h, w, c = input_shape
        else:
            _, c, h, w = input_shape
        if c not in (1, 3, 4):
            raise InputError(f"the model's input has {c} channels; images give 1, 3 or 4 (pass a .npy array instead)")
        if size is None and h is not None and w is not None:
            size = (h, w)
        elif size is not None and h is not None and w is not None and tuple(size) != (h, w):
            raise InputError(f"--size {size[0]}x{size[1]} does not fit the model's fixed input size {h}x{w}")
        preset = preset or metadata.get("onnxrap.preprocess") or ("imagenet" if c == 3 else "unit")
        if preset not in PRESETS:
            raise InputError(f"unknown preprocessing preset {preset!r} (known: {', '.join(PRESETS)})")
        scale, p_mean, p_std = PRESETS[preset]
        return cls(size=tuple(size) if size else None, channels=c, layout=layout, preset=preset,
                   mean=tuple(mean) if mean else p_mean, std=tuple(std) if std else p_std, scale=scale)

    def describe(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "image size"
        return (f"{size}, {self.channels} channel(s), {self.layout}, preset {self.preset} "
                f"(mean {list(self.mean)}, std {list(self.std)})")

    def __call__(self, image):
        """A PIL image -> (model input of batch 1, display image in [0, 1] as H x W (x 3))."""
        from PIL import Image

        mode = {1: "L", 3: "RGB", 4: "RGBA"}[self.channels]
        if image.mode in ("RGBA", "LA", "P") and self.channels != 4:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)  # transparency shows as white, not black
        image = image.convert(mode)
        if self.size is not None and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float64).reshape(image.size[1], image.size[0], self.channels)
        values = (pixels * self.scale - np.asarray(self.mean)) / np.asarray(self.std)
        x = values if self.layout == "nhwc" else values.transpose(2, 0, 1)
        display = pixels[..., :3] / 255.0
        return x[None].astype(np.float32), (display[..., 0] if self.channels == 1 else display)


def preprocess_factory(explainer, layout, note, size=None, preset=None, mean=None, std=None):
    """A function that builds the model's Preprocess on first use (only images need one) and ``note``s it;
    ``.built`` holds it once built."""
    built = []

    def make():
        if not built:
            built.append(Preprocess.for_model(explainer.input_shape, layout, explainer.metadata, size=size,
                                              preset=preset, mean=mean, std=std))
            note(f"preprocessing: {built[0].describe()}")
        return built[0]

    make.built = built
    return make


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the image ({exc})") from None


def read_array(path: Path, input_rank: int | None):
    """A ``.npy`` input: one sample, with or without its batch axis."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read the array ({exc})") from None
    if not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path}: the array holds {x.dtype}, not numbers")
    if input_rank is not None and x.ndim == input_rank - 1:
        x = x[None]
    if input_rank is not None and x.ndim != input_rank:
        raise InputError(f"{path}: an array of shape {x.shape} cannot fit a rank-{input_rank} model input")
    if x.shape[0] != 1:
        raise InputError(f"{path}: holds a batch of {x.shape[0]}; give one sample per file")
    return x.astype(np.float32)


def array_display(x, channel_axis):
    """A picture of an array input in [0, 1]: channels averaged; a volume as a grid of slices."""
    from .viz import as_image

    if channel_axis is None or x.ndim < 4:
        return None
    sample = x[0].mean(axis=channel_axis if channel_axis < 0 else channel_axis - 1)
    low, high = float(sample.min()), float(sample.max())
    scaled = (sample - low) / (high - low) if high > low else np.zeros_like(sample)
    return as_image(scaled)


def load_input(path, preprocess_factory, input_rank, channel_axis=1):
    """Read one input file: ``(model input with batch 1, display image or None)``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        x = read_array(path, input_rank)
        return x, array_display(x, channel_axis)
    if suffix not in IMAGE_SUFFIXES and path.exists():
        raise InputError(f"{path}: unknown input type {suffix or '(no suffix)'} "
                         f"(images: {', '.join(sorted(IMAGE_SUFFIXES))}; arrays: .npy)")
    return preprocess_factory()(read_image(path))


def read_labels(path) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the labels file ({exc.strerror})") from None
    return [line.strip() for line in lines if line.strip()]
