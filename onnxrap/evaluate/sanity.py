"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018), for every method.

- Cascading model-parameter randomisation: the weights and biases of the
  linear ops (Conv, Gemm, MatMul) are re-drawn from the top (the logits) down,
  one more op per step; after each step every input is explained again for the
  same class and compared with its original explanation.  A method whose maps
  stay the same while the model is destroyed does not explain the model.
- Class sensitivity: the explanation of the top class against the second
  class's, and across the top ``classes`` classes (all classes of a small model).
  A method whose maps do not change with the class cannot say why one class.

Similarities, per input, then averaged: Spearman rank correlation of the
heatmaps' absolute values and (its absolute value) of the signed heatmaps, and SSIM of the
absolute heatmaps each scaled to [0, 1] by its maximum (as in the paper); across
classes also the mean absolute Pearson correlation of the signed heatmaps.
Spearman and SSIM are small NumPy implementations (SciPy is not a dependency):
average ranks for ties, and SSIM with a uniform 7-pixel window, the sample
covariance and K1 = 0.01, K2 = 0.03 (scikit-image's defaults).

A step whose randomised model onnxrap declines to explain (its checks refuse
it: random weights can make the forward pass numerically wild) is recorded as
refused, with the reason, and the others go on.

A randomised model is the original ``ModelProto`` with re-drawn initializers
(normal, with each tensor's own standard deviation, seeded), loaded through
``Graph`` like any model, so the checker and the parser see it.  A bias added
by a separate Add node (folded into the op by the graph layer) is kept.
"""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from .evaluation import check_finite
from .scoring import Scorer

WINDOW = 7
SIMILARITIES = ("spearman_abs", "spearman_signed", "ssim")


# -- similarity -------------------------------------------------------------------------------------------------

def ranks(a):
    """Ranks 1..n of the flattened ``a``, ties given their average rank."""
    flat = np.ravel(a)
    order = np.argsort(flat, kind="mergesort")
    sorted_values = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(flat)]
    average = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    out = np.empty(len(flat))
    out[order] = np.repeat(average, ends - starts)
    return out


def pearson(a, b):
    """Pearson correlation of the flattened arrays; 0 where either is constant."""
    a = np.ravel(a).astype(np.float64) - np.mean(a)
    b = np.ravel(b).astype(np.float64) - np.mean(b)
    norm = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / norm if norm > 0 else 0.0


def spearman(a, b):
    return pearson(ranks(a), ranks(b))


def _box_mean(a, size):
    """Mean over every ``size``-wide window (each axis), valid positions only."""
    for axis, width in enumerate(size):
        c = np.cumsum(a, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = a.shape[axis]
        a = (np.take(c, range(width, n + 1), axis=axis) - np.take(c, range(0, n + 1 - width), axis=axis)) / width
    return a


def ssim(a, b, data_range=1.0):
    """Mean structural similarity of two arrays of any rank, windows of 7 (fewer on a shorter axis)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    size = tuple(min(WINDOW, n) for n in a.shape)
    count = math.prod(size)
    covariance = count / (count - 1) if count > 1 else 1.0  # sample (co)variances
    ma, mb = _box_mean(a, size), _box_mean(b, size)
    va = (_box_mean(a * a, size) - ma * ma) * covariance
    vb = (_box_mean(b * b, size) - mb * mb) * covariance
    cab = (_box_mean(a * b, size) - ma * mb) * covariance
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s.mean())


def _unit_abs(h):
    peak = np.abs(h).max()
    return np.abs(h) / peak if peak > 0 else np.abs(h)


def similarity(h0, h1):
    """The three similarities of two heatmaps (one input each).  The signed Spearman correlation is taken
    in absolute value: a map whose sign flips (rap's flips with its logit's) is the same map."""
    return {"spearman_abs": spearman(np.abs(h0), np.abs(h1)), "spearman_signed": abs(spearman(h0, h1)),
            "ssim": ssim(_unit_abs(h0), _unit_abs(h1))}


def _mean(rows, keys):
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


# -- randomised models --------------------------------------------------------------------------------------------

def linear_ops_top_down(graph):
    """The graph's linear ops from the logits down (reverse topological order)."""
    return [op for op in reversed(graph.ops) if op.kind == "linear"]


def randomised(graph, ops, seed):
    """A copy of ``graph.model`` whose initializers feeding the nodes of ``ops`` are re-drawn.

    Normal values with each tensor's own standard deviation (a tensor with a
    single value keeps its scale), seeded by ``seed`` and the tensor's name.
    """
    nodes = {node.name: node for node in graph.model.graph.node}
    wanted = set()
    for op in ops:
        node = nodes.get(op.name)
        if node is None:
            raise ModelError(f"{graph.label}: cannot randomise {op.name}: it is not a node of the model")
        wanted.update(node.input[1:])
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    found = set()
    for init in model.graph.initializer:
        if init.name not in wanted:
            continue
        value = numpy_helper.to_array(init)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        rng = np.random.default_rng([seed] + list(init.name.encode()))
        scale = float(value.std()) if value.size > 1 else float(abs(value).max())
        fresh = rng.standard_normal(value.shape) * (scale or 1.0)
        init.CopyFrom(numpy_helper.from_array(fresh.astype(value.dtype), init.name))
        found.add(init.name)
    weights = {op.name: nodes[op.name].input[1] for op in ops if len(nodes[op.name].input) > 1}
    missing = [name for name, w in weights.items() if w not in found]
    if missing:
        raise ModelError(f"{graph.label}: cannot randomise {', '.join(missing)}: the weight is not an initializer")
    return model


def cascade_depths(n_linear, steps):
    """How many top linear ops each cascade step randomises: all of them if ``steps`` allows, else
    ``steps`` depths spaced geometrically from 1 to all."""
    if n_linear <= steps:
        return list(range(1, n_linear + 1))
    return sorted({int(round(d)) for d in np.geomspace(1, n_linear, steps)} | {n_linear})


# -- the checks ---------------------------------------------------------------------------------------------------

class Sanity:
    """Both checks for one set of inputs; a randomised model is built again for each method that needs it."""

    def __init__(self, explainer, x, targets, steps=8, classes=10, seed=0, batch_size=16):
        self.explainer = explainer
        self.x = np.asarray(x, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.batch_size = int(batch_size)
        graph = explainer.graph
        self.top_down = linear_ops_top_down(graph)
        self.depths = cascade_depths(len(self.top_down), steps)
        self.seed = int(seed)
        self._models = {}
        self.logits = Scorer(explainer).logits(self.x)
        self.classes = min(int(classes), self.logits.shape[1])

    def _cascade_explainer(self, depth):
        if depth not in self._models:
            from ..api import Explainer

            # One randomised model at a time: each holds its weights and ONNX Runtime sessions, and six
            # of EfficientNet-Lite1's together used 24 GB.
            self._models.clear()

            base = self.explainer
            model = randomised(base.graph, self.top_down[:depth], self.seed)
            ex = Explainer(model, input_name=base.graph.input_name, output_name=base.graph.output_name,
                           dtype=base.dtype, device=base.device.name)
            ex.layout = base.layout
            self._models[depth] = ex
        return self._models[depth]

    def _heat(self, explainer, method, options, targets, x=None):
        x = self.x if x is None else x
        out = []
        for s in range(0, len(x), self.batch_size):
            e = explainer.explain(x[s:s + self.batch_size], target=targets[s:s + self.batch_size], method=method,
                                  **options)
            out.append(e.heatmap.astype(np.float64))
        return check_finite(np.concatenate(out), method)

    def run_method(self, method, options=None):
        """Both checks for one method, as a JSON-ready dict.  NonFiniteRelevance where the method's maps
        of the model as it is are NaN or Inf; a randomised model's are a refused step."""
        options = dict(options or {})
        original = self._heat(self.explainer, method, options, self.targets)
        cascade = [{"depth": 0, "layer": "", **{k: 1.0 for k in SIMILARITIES}}]
        for depth in self.depths:
            step = {"depth": depth, "layer": self.top_down[depth - 1].name}
            try:
                heat = self._heat(self._cascade_explainer(depth), method, options, self.targets)
            except ModelError as refused:  # a randomised model can be numerically wild: say so, go on
                cascade.append({**step, **{k: None for k in SIMILARITIES}, "refused": str(refused)})
                continue
            rows = [similarity(h0, h1) for h0, h1 in zip(original, heat)]
            cascade.append({**step, **_mean(rows, SIMILARITIES)})
        return {"cascade": cascade, "classes": self._class_sensitivity(method, options)}

    def _class_sensitivity(self, method, options):
        top = np.argsort(-self.logits, axis=1)[:, :self.classes]
        top_second, across = [], []
        for i in range(len(self.x)):
            batch = np.repeat(self.x[i:i + 1], self.classes, axis=0)
            heat = self._heat(self.explainer, method, options, top[i], x=batch)
            top_second.append(similarity(heat[0], heat[1]))
            pairs = [{**similarity(heat[a], heat[b]), "abs_pearson": abs(pearson(heat[a], heat[b]))}
                     for a, b in combinations(range(self.classes), 2)]
            across.append(_mean(pairs, SIMILARITIES + ("abs_pearson",)))
        return {"classes": self.classes, "top_vs_second": _mean(top_second, SIMILARITIES),
                "across": _mean(across, SIMILARITIES + ("abs_pearson",))}


# -- reports ------------------------------------------------------------------------------------------------------

def sanity_rows(sanity):
    """Every number as flat rows: method, check, step (depth or pair), layer, similarity, value."""
    rows = []
    for label, r in sanity["methods"].items():
        for point in r["cascade"]:
            for k in SIMILARITIES:
                rows.append([label, "cascade", point["depth"], point["layer"], k, point[k]])
        for which in ("top_vs_second", "across"):
            for k, v in r["classes"][which].items():
                rows.append([label, "classes", which, "", k, v])
    return rows


def sanity_markdown(sanity):
    """The two checks as Markdown tables."""
    depths = [0] + list(sanity["depths"])
    layers = sanity["layers"]
    lines = ["## Sanity checks (Adebayo et al. 2018)", "",
             f"On the first {sanity['inputs']} inputs.  Cascading randomisation: the weights of the top k linear ops "
             "are re-drawn (k = 0: the model as it is); each cell is the mean similarity of the explanation to the "
             "original one for the same class.  A method passes when the similarity falls as the model is "
             "destroyed; values near 1 at the last step mean the map does not depend on the weights.", ""]
    for k, title in (("spearman_abs", "Spearman rank correlation of |relevance|"),
                     ("spearman_signed", "|Spearman rank correlation| of the signed relevance"),
                     ("ssim", "SSIM of |relevance| scaled to [0, 1]")):
        lines += [f"### {title}", "", "| method | " + " | ".join(f"k={d}" for d in depths) + " |",
                  "| --- | " + " | ".join("---:" for _ in depths) + " |"]
        for label, r in sanity["methods"].items():
            lines.append(f"| {label} | " + " | ".join("refused" if p[k] is None else f"{p[k]:.3f}"
                                                     for p in r["cascade"]) + " |")
        lines.append("")
    refused = sorted({(p["depth"], p["refused"]) for r in sanity["methods"].values() for p in r["cascade"]
                      if "refused" in p})
    if refused:
        lines += ["\"refused\": onnxrap declined to explain that randomised model: "
                  + "; ".join(f"k={d}: {why}" for d, why in refused), ""]
    lines += [f"**Not checked:** {label}: {why}." for label, why in sanity.get("failed", {}).items()]
    lines += ["Layers, top first: " + ", ".join(f"{i + 1}. `{name}`" for i, name in enumerate(layers)), ""]
    lines += ["### Class sensitivity", "",
              f"The top class's explanation against the second class's, and across the top {sanity['classes']} "
              "classes (mean over pairs).  Lower is better: a map that does not change with the class cannot say "
              "why this class.", "",
              "| method | top vs 2nd: Spearman abs | Spearman signed | SSIM | across: Spearman abs | Spearman signed "
              "| SSIM | mean abs. Pearson |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in sanity["methods"].items():
        a, b = r["classes"]["top_vs_second"], r["classes"]["across"]
        lines.append(f"| {label} | " + " | ".join(f"{a[k]:.3f}" for k in SIMILARITIES) + " | "
                     + " | ".join(f"{b[k]:.3f}" for k in SIMILARITIES + ("abs_pearson",)) + " |")
    lines.append("")
    return "\n".join(lines)


def save_sanity_plot(path, sanity):
    """The cascade's three similarities against the step, and the class sensitivity as bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..viz import atomic_write

    labels = list(sanity["methods"])
    depths = [0] + list(sanity["depths"])
    rows = max(4.8, 0.22 * len(labels) + 2.2)
    fig = Figure(figsize=(19, rows), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
    styles = [(f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]) for i in range(len(labels))]
    for ax, k, title in zip(axes, SIMILARITIES, ("Spearman |relevance|", "|Spearman| signed", "SSIM |relevance|")):
        for label, (colour, style) in zip(labels, styles):
            ys = [np.nan if p[k] is None else p[k] for p in sanity["methods"][label]["cascade"]]
            ax.plot(range(len(depths)), ys, color=colour, linestyle=style, marker="o", markersize=3, label=label)
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels([str(d) for d in depths], fontsize=8)
        ax.set_xlabel("linear ops randomised, top first", fontsize=8)
        ax.set_title(f"cascading randomisation: {title}", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    ys = np.arange(len(labels))[::-1]
    height = 0.4
    axes[3].barh(ys + height / 2, [sanity["methods"][m]["classes"]["top_vs_second"]["spearman_abs"] for m in labels],
                 height, label="top vs 2nd class: Spearman |relevance|")
    axes[3].barh(ys - height / 2, [sanity["methods"][m]["classes"]["across"]["abs_pearson"] for m in labels],
                 height, label=f"across top {sanity['classes']}: mean abs. Pearson")
    axes[3].set_yticks(ys)
    axes[3].set_yticklabels(labels, fontsize=7)
    axes[3].set_xlim(0, 1.02)
    axes[3].set_title("class sensitivity (lower: the map depends on the class)", fontsize=9)
    axes[3].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))  # below: never over a bar
    axes[3].grid(alpha=0.3, axis="x")
    fig.suptitle(f"sanity checks on {sanity['inputs']} inputs", fontsize=10)
    legend_rows = -(-len(labels) // min(6, len(labels)))
    fig.tight_layout(rect=(0, 0.04 + 0.035 * legend_rows * 4.8 / rows, 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
