"""A labelled set of photographs for ``onnxrap evaluate`` on an ImageNet classifier.

Sources (bundled with three PyPI packages, nothing is downloaded):
scikit-image's ``skimage.data`` (astronaut, coffee, chelsea, rocket,
stereo_motorcycle, camera, clock), scikit-learn's ``load_sample_images``
(china, flower) and matplotlib's sample data (grace_hopper).  The model
classifies each original photograph; its top-1 class is the label of every
variant.  The original and random crops (side 60-100% of the shorter side,
anywhere in the image, some flipped horizontally) are kept while the model
gives them that class, with a top-1 probability of at least
``--min-probability``, until each photograph has ``--per-photo`` variants.
The images are written as PNGs with a ``labels.csv`` (filename,label), so
every image in the set is "correctly classified" in the sense of the paper's
test set (100%).  Images are chosen by the model's prediction only, never by
how an explanation method scores on them.

    python tools/make_eval_photos.py bench/models/efficientnet_lite1.onnx bench/models/photos --per-photo 4
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

SKIMAGE = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "camera", "clock")
MATPLOTLIB = ("grace_hopper",)
# Those whose top-1 class under EfficientNet-Lite1 names the object in them (see EVALUATION.md): astronaut
# (bobsleigh), rocket (drilling rig) and clock (bubble) are left out by default.
DEFAULT_PHOTOS = "coffee,chelsea,camera,stereo_motorcycle,china,flower"


def source_photos():
    """[(name, H x W x 3 uint8)]"""
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in SKIMAGE:
        image = getattr(skimage.data, name)()
        if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity)
            image = image[0]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append((name, np.ascontiguousarray(image[..., :3])))
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images):
        photos.append((Path(path).stem, image))
    for name in MATPLOTLIB:
        photos.append((name, plt.imread(cbook.get_sample_data(f"{name}.jpg"))))
    return photos


def main(argv=None):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from PIL import Image

    from onnxrap.api import Explainer, softmax
    from onnxrap.evaluate import Scorer
    from onnxrap.inputs import Preprocess

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("out", type=Path)
    p.add_argument("--per-photo", type=int, default=4, help="variants kept per photograph, the original included")
    p.add_argument("--tries", type=int, default=60, help="random crops tried per photograph at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", default=DEFAULT_PHOTOS,
                   help="source photographs, comma-separated (default: %(default)s; "
                        f"all: {','.join(SKIMAGE)},china,flower,{','.join(MATPLOTLIB)})")
    p.add_argument("--min-probability", type=float, default=0.0,
                   help="keep an image (the original or a crop) only if the model's probability for the "
                        "original's class is at least this")
    args = p.parse_args(argv)

    explainer = Explainer(args.model)
    scorer = Scorer(explainer)
    prep = Preprocess.for_model(explainer.input_shape, explainer.layout, explainer.metadata)
    names = explainer.labels
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, summary = [], []
    wanted = [n.strip() for n in args.photos.split(",") if n.strip()]
    photos = dict(source_photos())
    unknown = [n for n in wanted if n not in photos]
    if unknown:
        raise SystemExit(f"unknown photograph {unknown[0]!r} (known: {', '.join(photos)})")

    def confident(pil, label):
        logits = scorer.logits(prep(pil)[0])[0]
        return int(logits.argmax()) == label and float(softmax(logits)[label]) >= args.min_probability

    for name in wanted:
        image = photos[name]
        pil = Image.fromarray(image)
        logits = scorer.logits(prep(pil)[0])[0]
        label = int(logits.argmax())
        prob = float(softmax(logits)[label])
        title = names[label] if names else str(label)
        kept = [("orig", pil)] if prob >= args.min_probability else []
        tried = 0
        h, w = image.shape[:2]
        while len(kept) < args.per_photo and tried < args.tries:
            tried += 1
            side = int(min(h, w) * rng.uniform(0.6, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = pil.crop((int(left), int(top), int(left) + side, int(top) + side))
            flip = bool(rng.integers(0, 2))
            if flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            if confident(crop, label):
                kept.append((f"crop{tried}{'f' if flip else ''}", crop))
        for tag, im in kept:
            filename = f"{name}_{tag}.png"
            im.save(args.out / filename)
            rows.append((filename, label))
        crops = len(kept) - (prob >= args.min_probability)
        summary.append(f"{name}: top-1 {label} ({title}) p={prob:.3f}; kept {len(kept)} "
                       f"({'the original and ' if prob >= args.min_probability else 'not the original; '}"
                       f"{crops} of {tried} random crops/flips)")
        print(summary[-1])
    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows(rows)
    print(f"{len(rows)} images from {len({r[0].rsplit('_', 1)[0] for r in rows})} photographs -> {args.out}")


if __name__ == "__main__":
    main()
