"""Review of passes.PadAfterTranspose: a Pad that stays beside its moved copies, and the pads' permutation."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer
from onnxrap.graph import Graph

RNG = np.random.default_rng(0)
K1, K2 = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=(4, 3, 3, 3))
PADS = np.array([0, 1, 2, 0, 0, 2, 1, 0], np.int64)  # NHWC: top 1, left 2, bottom 2, right 1


def padded_nhwc(second, value):
    """x (1, 5, 6, 3) NHWC -> Pad -> Transpose to NCHW -> Conv, and the same Pad read by ``second``:
    another Transpose -> Conv, or a Relu."""
    nodes = [node("Pad", ["x", "pads", "value"], "p", name="pad"),
             node("Transpose", ["p"], "t", name="tr", perm=[0, 3, 1, 2]), node("Conv", ["t", "K1"], "c1")]
    if second == "transpose":
        nodes += [node("Transpose", ["p"], "t2", name="tr2", perm=[0, 3, 1, 2]), node("Conv", ["t2", "K2"], "c2")]
    else:
        nodes += [node("Relu", ["p"], "c2")]
    nodes += [node("Flatten", ["c1"], "f1"), node("Flatten", ["c2"], "f2"), node("Concat", ["f1", "f2"], "f", axis=1),
              node("MatMul", ["f", "W"], "y")]
    width = 4 * 6 * 7 + (4 * 6 * 7 if second == "transpose" else 8 * 9 * 3)
    return make_model(nodes, [("x", [1, 5, 6, 3])], [("y", [1, 3])],
                      [const("pads", PADS, np.int64), const("value", np.float32(value)), const("K1", K1),
                       const("K2", K2), const("W", RNG.normal(size=(width, 3)) / 10)])


@pytest.mark.parametrize("second, value", [("relu", 0.0), ("relu", 0.5), ("transpose", 0.5)])
def test_a_pad_that_stays_keeps_its_name_to_itself(second, value):
    """A Pad also read by an op other than the moved Transpose stays, and so does a non-zero Pad moved behind
    two Transposes (FoldPad folds only zeros): each copy took the Pad's name, and the DAG, keyed by op name,
    merged them into one node.  Every op has its own name and node; the gradient is ONNX Runtime's."""
    model = padded_nhwc(second, value)
    graph = Graph(model)
    names = [op.name for op in graph.ops]
    assert len(set(names)) == len(names) == graph.dag.number_of_nodes()
    x = RNG.normal(size=(1, 5, 6, 3))
    e = Explainer(model, dtype="float64").explain(x.astype(np.float32), method="gradient", target=0)
    step, numeric = 1e-3, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[i] = step
        up, down = (run(model, (x + s * d).astype(np.float32))[0][0, 0] for s in (1, -1))
        numeric[i] = (up - down) / (2 * step)
    np.testing.assert_allclose(e.relevance, numeric, atol=2e-2)
