"""The README's figure: one digit explained by rap for two targets, plain and contrastive.

    python tools/contrast_figure.py [--image models/images/digit_3_2.png] [--out docs/contrast_digits.png]

The two targets are the digit's top class and its runner-up.  Row 1: plain rap
("why this class?"); row 2: ``contrast=`` the other target ("why this class
rather than that one?"); row 3: ``contrast="others"``.  Each map has its own
symmetric colour scale (red positive, blue negative); a contrastive map sums to its
score, the target's logit minus the other target's (or the others' mean).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxrap import Explainer, methods  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "digits_cnn.onnx"))
    p.add_argument("--image", default=str(ROOT / "models" / "images" / "digit_3_2.png"))
    p.add_argument("--out", default=str(ROOT / "docs" / "contrast_digits.png"))
    args = p.parse_args(argv)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ex = Explainer(args.model)
    x = np.asarray(Image.open(args.image).convert("L").resize((32, 32), Image.BILINEAR), np.float32)[None, None] / 255
    logits = ex.explain(x, method="gradient").logits[0]
    first, second = (int(k) for k in np.argsort(-logits)[:2])
    fig = Figure(figsize=(9, 9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    axes[0, 0].imshow(x[0, 0], cmap="gray")
    axes[0, 0].set_title(f"input (top class {first}, then {second})", fontsize=9)
    for ax in axes[1:, 0]:
        ax.axis("off")
    rows = ((lambda t, u: None, "why {t}?"), (lambda t, u: u, "why {t} rather than {u}?"),
            (lambda t, u: "others", "why {t} rather than the others?"))
    for r, (contrast, question) in enumerate(rows):
        for c, (t, u) in enumerate(((first, second), (second, first)), start=1):
            against = contrast(t, u)
            heat = ex.explain(x, target=t, contrast=against).heatmap[0]
            score = logits[t] if against is None else methods.contrast_seed([t], len(logits), against)[0] @ logits
            scale = float(np.abs(heat).max()) or 1.0
            axes[r, c].imshow(heat, cmap="bwr", vmin=-scale, vmax=scale)
            axes[r, c].set_title(f"{question.format(t=t, u=u)}\n({'logit' if against is None else 'score'} "
                                 f"{score:.2f}, sum {heat.sum():.2f})", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("rap on the bundled digits model: plain, contrast=CLASS and contrast=\"others\"", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, format="png")
    print(f"wrote {args.out}: targets {first} and {second}")


if __name__ == "__main__":
    main()
