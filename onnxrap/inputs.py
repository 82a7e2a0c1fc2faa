"""Reading inputs: images and arrays, turned into what the model expects.

Size, channel count and layout come from the model's input shape where it
fixes them; value scaling comes from a preset (``imagenet``, ``unit``,
``raw``, ``signed``, ``caffe``), from the model's ``onnxrap.preprocess``
metadata, or from ``--mean``/``--std``; the channel order (RGB, or BGR as
OpenCV, Caffe and PaddlePaddle models read images) from ``--channel-order``,
the ``onnxrap.channel_order`` metadata or the preset.  Pixels are read at
their true range on the 8-bit scale (16-bit 65535 and float 1.0 are 8-bit's
255), then go ``[0, 255] * scale``, then ``(v - mean) / std`` per channel.
Every step that changes what the model sees (EXIF rotation, colour to grey, a resize that
crops, pads or stretches) is reported, never silent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .graph import shown_shape

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
ARRAY_SUFFIXES = {".npy"}

PRESETS = {
    "imagenet": (1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": (1 / 255, (0.0,), (1.0,)),  # [0, 1]
    "raw": (1.0, (0.0,), (1.0,)),  # [0, 255]
    "signed": (1 / 255, (0.5,), (0.5,)),  # [-1, 1]
    "caffe": (1.0, (123.68, 116.779, 103.939), (1.0,)),  # Keras' "caffe" mode: BGR, [0, 255] less ImageNet's mean
}  # per colour, R, G, B: a BGR model gets them reversed (--mean and --std are the model's order)
CHANNEL_ORDERS = ("rgb", "bgr")
PRESET_CHANNEL_ORDER = {"caffe": "bgr"}  # the others leave the image's RGB

# How an image whose aspect ratio differs from the model's input is brought to its size.
# center-crop (the default) is the ImageNet convention: the shorter side is resized to fit and
# the centre is kept, so objects keep the proportions the model was trained with.
RESIZE_POLICIES = ("center-crop", "pad", "stretch")
DEFAULT_RESIZE = "center-crop"

# Pillow modes with more than 8 bits per channel (all grey): the value that is 8-bit's 255.
# "I" is how Pillow reads 16-bit PNGs in some versions; a float image's range is [0, 1].
HIGH_DEPTH_WHITE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


BGR = (2, 1, 0, 3)  # where a BGR(A) model's channels are in an RGB(A) image, and the other way round


def _bgr(values):
    """Per-colour values (R, G, B[, A]) in a BGR model's channel order, or the model's back in RGB order;
    one value stays one."""
    return tuple(values[k] for k in BGR[:len(values)]) if len(values) >= 3 else tuple(values)


def _fits(values, channels):
    return len(values) in (1, channels)


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
    resize: str = DEFAULT_RESIZE
    channel_order: str = "rgb"  # the model's; mean and std are given in it

    @classmethod
    def for_model(cls, input_shape, layout, metadata, size=None, preset=None, mean=None, std=None, resize=None,
                  channel_order=None):
        if input_shape is None or len(input_shape) != 4:
            raise InputError(f"the model's input has shape {shown_shape(input_shape)}; images need a 4-D image input "
                             "(pass a .npy array instead)")
        if layout == "nhwc":
            _, h, w, c = input_shape
        else:
            _, c, h, w = input_shape
        if c not in (1, 3, 4):
            raise InputError(f"the model's input {shown_shape(input_shape)} read as {layout} has {c} channels; images "
                             "give 1, 3 or 4 (check --layout, or pass a .npy array)")
        if size is None and h is not None and w is not None:
            size = (h, w)
        elif size is not None and h is not None and w is not None and tuple(size) != (h, w):
            raise InputError(f"--size {size[0]}x{size[1]} does not fit the model's fixed input size {h}x{w}")
        preset = preset or metadata.get("onnxrap.preprocess") or ("imagenet" if c == 3 else "unit")
        if preset not in PRESETS:
            raise InputError(f"unknown preprocessing preset {preset!r} (known: {', '.join(PRESETS)})")
        resize = resize or DEFAULT_RESIZE
        if resize not in RESIZE_POLICIES:
            raise InputError(f"unknown resize policy {resize!r} (known: {', '.join(RESIZE_POLICIES)})")
        channel_order = (channel_order or metadata.get("onnxrap.channel_order")
                         or PRESET_CHANNEL_ORDER.get(preset, "rgb")).lower()
        if channel_order not in CHANNEL_ORDERS:
            raise InputError(f"unknown channel order {channel_order!r} (known: {', '.join(CHANNEL_ORDERS)})")
        if channel_order == "bgr" and c == 1:
            raise InputError("the model takes 1 channel; channel order bgr needs colour (3 or 4 channels)")
        scale, p_mean, p_std = PRESETS[preset]
        if channel_order == "bgr":
            p_mean, p_std = _bgr(p_mean), _bgr(p_std)
        for flag, given, default in (("--mean", mean, p_mean), ("--std", std, p_std)):
            if given and not _fits(given, c):
                raise InputError(f"{flag} gives {len(given)} values; the model takes {c} channel(s)")
            # a zero, negative or non-finite std (or a non-finite mean) would turn every pixel into NaN
            # or flip its sign: refused here, where the value is given, not found later as a NaN input
            if given and not all(np.isfinite(v) and (flag == "--mean" or v > 0) for v in given):
                kind = "finite numbers" if flag == "--mean" else "positive numbers"
                raise InputError(f"{flag} takes {kind}, got {','.join(f'{v:g}' for v in given)}")
            if not given and not _fits(default, c):
                raise InputError(f"the preset {preset} has {len(default)} channels; the model takes {c} "
                                 f"(choose --preset unit, raw or signed, or give --mean and --std)")
        return cls(size=tuple(size) if size else None, channels=c, layout=layout, preset=preset,
                   mean=tuple(mean) if mean else p_mean, std=tuple(std) if std else p_std, scale=scale,
                   resize=resize, channel_order=channel_order)

    def describe(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "image size"
        order = ", BGR" if self.channel_order == "bgr" else ""
        return (f"{size}, {self.channels} channel(s){order}, {self.layout}, preset {self.preset} "
                f"(mean {list(self.mean)}, std {list(self.std)}), resize {self.resize}")

    def __call__(self, image):
        """A PIL image -> (model input of batch 1, display image in [0, 1] as H x W (x 3))."""
        x, display, _ = self.prepare(image)
        return x, display

    def prepare(self, image):
        """Like calling it, and also the list of what was done to the image, for the user."""
        from PIL import ImageOps

        notes = []
        frames = image.info.get("frames", 1)
        if frames > 1:
            notes.append(f"the first of its {frames} frames")
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation: 1 is upright
        if orientation not in (None, 1):
            image = ImageOps.exif_transpose(image)
            notes.append(f"rotated/flipped upright as its EXIF orientation ({orientation}) says")
        if image.mode in HIGH_DEPTH_WHITE:
            image, repeat = self._high_depth(image, notes), self.channels
        else:
            image, repeat = self._eight_bit(image, notes), 1
        original = (image.size[1], image.size[0])
        if self.size is not None and original != tuple(self.size):
            image = self._resize(image)
            notes.append(self._resize_note(original))
        pixels = np.asarray(image, dtype=np.float64).reshape(image.size[1], image.size[0], -1)
        pixels = np.repeat(pixels, repeat, axis=2)
        if self.channels == 4 and repeat > 1:
            pixels[..., 3] = 255.0  # a grey high-depth image is opaque
        model_pixels = pixels[..., list(BGR[:self.channels])] if self.channel_order == "bgr" else pixels
        values = (model_pixels * self.scale - np.asarray(self.mean)) / np.asarray(self.std)
        x = values if self.layout == "nhwc" else values.transpose(2, 0, 1)
        display = pixels[..., :3] / 255.0
        return x[None].astype(np.float32), (display[..., 0] if self.channels == 1 else display), notes

    def _high_depth(self, image, notes):
        """A grey image of more than 8 bits as a float image on the 8-bit scale; values outside its range fail."""
        from PIL import Image

        white = HIGH_DEPTH_WHITE[image.mode]
        values = np.asarray(image, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise InputError("the image contains NaN or Inf values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > white:
            kind = "float image's range is [0, 1]" if image.mode == "F" else "16-bit image's range is 0 to 65535"
            raise InputError(f"its values run from {low:.6g} to {high:.6g}, but a {kind} (rescale it, "
                             f"or pass the model input as a .npy array)")
        depth = "float [0, 1]" if image.mode == "F" else "16-bit"
        notes.append(f"{depth} grey ({image.mode}, values {low:.6g} to {high:.6g}) read at full range: "
                     f"{white:g} is 8-bit's 255")
        if self.channels != 1:
            notes.append(f"grey repeated into {self.channels} channels")
        return Image.fromarray((values * (255.0 / white)).astype(np.float32), mode="F")

    def _eight_bit(self, image, notes):
        from PIL import Image

        mode = {1: "L", 3: "RGB", 4: "RGBA"}[self.channels]
        if image.mode in ("RGBA", "LA", "PA", "P") and self.channels != 4:
            rgba = image.convert("RGBA")
            if rgba.getextrema()[3][0] < 255:
                notes.append("transparent pixels shown on white")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)  # transparency shows as white, not black
        if self.channels == 1 and image.mode not in ("L", "1"):
            rgb = np.asarray(image.convert("RGB"))
            if np.any(rgb != rgb[..., :1]):
                notes.append("colour dropped to grey (the model takes 1 channel)")
        elif self.channels != 1 and image.mode in ("L", "1", "LA"):
            notes.append(f"grey repeated into {self.channels} channels")
        return image.convert(mode)

    def _fill(self, mode):
        """Padding: the pixel value the mean maps to, i.e. a model input of 0."""
        values = [m / self.scale for m in self.mean]
        if mode == "F":
            return float(values[0])
        values = [int(round(min(max(v, 0), 255))) for v in values]
        values = (values * self.channels)[:self.channels]
        if self.channel_order == "bgr":  # the mean is in the model's order, the image is RGB
            values = _bgr(values)
        return values[0] if len(mode) == 1 else tuple(values)

    def _resize(self, image):
        from PIL import Image, ImageOps

        target = (self.size[1], self.size[0])  # Pillow: (width, height)
        if self.resize == "stretch":
            return image.resize(target, Image.BILINEAR)
        if self.resize == "center-crop":
            return ImageOps.fit(image, target, method=Image.BILINEAR)
        return ImageOps.pad(image, target, method=Image.BILINEAR, color=self._fill(image.mode))

    def _resize_note(self, original):
        (h, w), (H, W) = original, self.size
        what = f"{h}x{w} -> {H}x{W} (HxW)"
        if h * W == w * H:
            return f"resized {what}"
        if self.resize == "stretch":
            return f"resized {what} by stretching: the aspect ratio changes from {w / h:.3g} to {W / H:.3g}"
        if self.resize == "center-crop":
            k = max(H / h, W / w)
            return (f"resized {what}: shorter side to fit, then the centre kept (the central "
                    f"{min(h, round(H / k))}x{min(w, round(W / k))} of the original)")
        return f"resized {what}: fitted whole, the rest padded with the mean"


def preprocessing_options(args):
    """The command line's image options (cli.py, ``_image_options``) as keyword arguments of
    ``preprocess_factory``."""
    return dict(size=args.size, preset=args.preset, mean=args.mean, std=args.std, resize=args.resize,
                channel_order=args.channel_order)


def preprocess_factory(explainer, layout, note, size=None, preset=None, mean=None, std=None, resize=None,
                       channel_order=None):
    """A function that builds the model's Preprocess on first use (only images need one) and ``note``s it;
    ``.built`` holds it once built."""
    built = []

    def make():
        if not built:
            try:
                built.append(Preprocess.for_model(explainer.input_shape, layout, explainer.metadata, size=size,
                                                  preset=preset, mean=mean, std=std, resize=resize,
                                                  channel_order=channel_order))
            except InputError as exc:  # the model's input and the options do not fit: name the model
                raise InputError(f"{explainer.graph.label}: {exc}") from None
            note(f"preprocessing: {built[0].describe()}")
        return built[0]

    make.built = built
    return make


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # an animated GIF or WebP: its first frame
            first = im.copy()
            first.info["frames"] = getattr(im, "n_frames", 1)  # for the note; a copy keeps one frame
            return first
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard against images that would fill the memory
        raise InputError(f"{path}: too large to read ({exc}); shrink it first") from None
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
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise InputError(f"{path}: the array holds {x.dtype}, not real numbers")
    if not np.all(np.isfinite(x)):
        raise InputError(f"{path}: the array contains NaN or Inf values")
    if x.size and np.abs(x).max() > np.finfo(np.float32).max:
        raise InputError(f"{path}: the array holds values beyond float32's range (the model's input type)")
    if input_rank is not None and x.ndim == input_rank - 1:
        x = x[None]
    if input_rank is not None and x.ndim != input_rank:
        raise InputError(f"{path}: an array of shape {x.shape} cannot fit a rank-{input_rank} model input")
    if x.shape[0] != 1:
        raise InputError(f"{path}: holds a batch of {x.shape[0]}; give one sample per file")
    return x.astype(np.float32)


def image_files(folder: Path, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The images (files with one of ``suffixes``) in ``folder`` and its subfolders, sorted, skipping hidden
    files and folders."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def expand_folders(paths) -> list[Path]:
    """Input paths with each folder replaced by its images and arrays; a folder without any is an error."""
    expanded = []
    for path in map(Path, paths):
        if not path.is_dir():
            expanded.append(path)
            continue
        found = image_files(path, IMAGE_SUFFIXES | ARRAY_SUFFIXES)
        if not found:
            raise InputError(f"{path}: a folder without images or arrays "
                             f"({', '.join(sorted(IMAGE_SUFFIXES | ARRAY_SUFFIXES))})")
        expanded.extend(found)
    return expanded


def array_display(x, channel_axis):
    """A picture of an array input in [0, 1]: channels averaged; a volume as a grid of slices."""
    from .viz import as_image

    if channel_axis is None or x.ndim < 4:
        return None
    sample = x[0].mean(axis=channel_axis if channel_axis < 0 else channel_axis - 1)
    low, high = float(sample.min()), float(sample.max())
    scaled = (sample - low) / (high - low) if high > low else np.zeros_like(sample)
    return as_image(scaled)


def load_input(path, preprocess_factory, input_rank, channel_axis=1, note=None):
    """Read one input file: ``(model input with batch 1, display image or None)``; ``note(text)``
    hears what preprocessing did to an image."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        x = read_array(path, input_rank)
        return x, array_display(x, channel_axis)
    if suffix == ".npz" and path.exists():
        raise InputError(f"{path}: explain reads one sample per .npy file; an .npz of inputs (x, y) is DATA for "
                         "onnxrap evaluate or onnxrap audit")
    if suffix not in IMAGE_SUFFIXES and path.exists():
        raise InputError(f"{path}: unknown input type {suffix or '(no suffix)'} "
                         f"(images: {', '.join(sorted(IMAGE_SUFFIXES))}; arrays: .npy)")
    preprocess = preprocess_factory()
    image = read_image(path)
    try:
        x, display, notes = preprocess.prepare(image)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    for text in notes if note else ():
        note(f"{path}: {text}")
    return x, display


def class_names_of(explainer, path=None):
    """Class names from a labels file (``--labels``), else from the model's metadata (``Explainer.labels``),
    else None; either must name every class of a model whose class count is fixed."""
    classes = explainer.graph.classes
    if path:
        return read_labels(path, classes)
    names = explainer.labels
    if names is not None and classes is not None and len(names) != classes:
        raise InputError(f"{explainer.graph.label}: its {explainer.labels_key} metadata holds {len(names)} names, "
                         f"but the model has {classes} classes (give --labels)")
    return names


def read_labels(path, classes=None) -> list[str]:
    """Class names, one per non-empty line; with ``classes``, there must be exactly that many."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the labels file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: the labels file is not text (UTF-8)") from None
    labels = [line.strip() for line in lines if line.strip()]
    if classes is not None and len(labels) != classes:
        raise InputError(f"{path}: {len(labels)} labels, but the model has {classes} classes (one name per line)")
    return labels
