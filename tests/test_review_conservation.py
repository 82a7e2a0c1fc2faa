"""rap promises relevance summing to the logit at every op (docs/rules.md, conservation).  A Pad with a
nonzero value and a Concat with constant parts put part of the next op's relevance on values that are
no input's: the crop and the slices dropped it without a word."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_conserves, explain, rnd
from onnx_helpers import const, make_model, node


def _head(inp, features, seed):
    return ([node("Flatten", [inp], ["f"]), node("Gemm", ["f", "hw", "hb"], ["logits"])],
            [const("hw", rnd((features, 3), seed)), const("hb", rnd((3,), seed + 1))])


def _padded(value, follower):
    """x -> Pad(value) -> ``follower`` (Conv or AveragePool) -> Relu -> Gemm head."""
    pads = const("pp", np.array([0, 0, 1, 2, 0, 0, 2, 1]), np.int64)
    inits = [pads, const("pv", np.array(value)), const("cw", rnd((3, 2, 3, 3), 3))]
    if follower == "Conv":
        body = [node("Conv", ["p", "cw"], ["c"])]
        features = 3 * 6 * 7
    else:
        body = [node("AveragePool", ["p"], ["c"], kernel_shape=[3, 3])]
        features = 2 * 6 * 7
    head, head_inits = _head("r", features, 7)
    nodes = [node("Pad", ["x", "pp", "pv"], ["p"])] + body + [node("Relu", ["c"], ["r"])] + head
    return make_model(nodes, [("x", [2, 2, 5, 6])], [("logits", [2, 3])], inits + head_inits, opset=13)


def _concat_with_constant():
    inits = [const("cc", rnd((1, 1, 5, 6), 4, 2.0)), const("cw", rnd((3, 3, 3, 3), 5))]
    head, head_inits = _head("r", 3 * 3 * 4, 8)
    nodes = [node("Concat", ["x", "cc"], ["k"], axis=1), node("Conv", ["k", "cw"], ["c"]),
             node("Relu", ["c"], ["r"])] + head
    return make_model(nodes, [("x", [1, 2, 5, 6])], [("logits", [1, 3])], inits + head_inits)  # the constant's batch



@pytest.mark.parametrize("value, follower", [(0.7, "Conv"), (-1.5, "Conv"), (0.7, "AveragePool")])
def test_rap_conserves_through_a_pad_with_a_value(value, follower):
    model = _padded(value, follower)
    assert_conserves(model, rnd((2, 2, 5, 6), 1), [0, 2])


def test_rap_conserves_through_a_concat_with_a_constant():
    assert_conserves(_concat_with_constant(), rnd((1, 2, 5, 6), 2), [1])

@pytest.mark.parametrize("model, batch", [(_padded(0.7, "Conv"), 2), (_concat_with_constant(), 1)], ids=["pad", "concat"])
def test_compiled_rap_is_the_eager_one(model, batch, tmp_path, monkeypatch):
    """The carried relevance is traced into the compiled graph as the eager rules compute it."""
    from onnxrap import Explainer

    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    x = rnd((batch, 2, 5, 6), 1)
    eager = Explainer(model).explain(x, target=2, method="rap").relevance
    compiled = Explainer(model, engine="onnx").explain(x, target=2, method="rap").relevance
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5 * np.abs(eager).max())
