"""Review of the final-op detection (passes.logits_behind_squashers): what ``inspect`` names, and an int8
rounding of the probabilities behind an Identity."""
from __future__ import annotations

import numpy as np

from helpers import run_cli
from onnx_helpers import const, make_model, node
from onnxrap import Explainer
from onnxrap.graph import Graph

W1 = np.random.default_rng(1).normal(size=(4, 5))
W2 = np.random.default_rng(2).normal(size=(5, 3))
X = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)


def rounded(q, dq, name):
    return [node("QuantizeLinear", [q, "s", "zp"], f"{name}_q"), node("DequantizeLinear", [f"{name}_q", "s", "zp"], dq)]


def int8_head(*tail):
    """x -> MatMul -> Relu -> MatMul -> z, z rounded to uint8 and back, Softmax, the probabilities rounded
    (tf2onnx's fully int8 TFLite head), then ``tail`` (nodes reading "p8")."""
    nodes = [node("MatMul", ["x", "W1"], "h"), node("Relu", ["h"], "r"), node("MatMul", ["r", "W2"], "z"),
             *rounded("z", "z8", "logits"), node("Softmax", ["z8"], "p"), *rounded("p", "p8", "probabilities"),
             *tail]
    out = tail[-1].output[0] if tail else "p8"
    return make_model(nodes, [("x", [2, 4])], [(out, [2, 3])],
                      [const("W1", W1), const("W2", W2), const("s", np.float32(1 / 64)), const("zp", 128, np.uint8)])


def test_inspect_names_the_softmax_behind_an_int8_rounding(tmp_path, capsys):
    """inspect looked for a squasher reading the logits themselves; behind tf2onnx's rounding of the logits
    none does, and it printed "explained through its : z"."""
    path = tmp_path / "int8_head.onnx"
    path.write_bytes(int8_head().SerializeToString())
    code, out, _ = run_cli(["inspect", str(path)], capsys)
    line = next(line for line in out.splitlines() if line.startswith("output:"))
    assert code == 0 and "explained through its QuantizeLinear -> DequantizeLinear, Softmax" in line, line
    assert line.endswith(": z)"), line


def test_a_rounding_of_the_probabilities_behind_an_identity_is_looked_through():
    """The pair was looked through only right at the output: an Identity after it (tf2onnx and paddle2onnx
    end graphs with one) left the Softmax on the data path, refused as an unsupported op."""
    with_identity, without = int8_head(node("Identity", ["p8"], "out")), int8_head()
    assert Graph(with_identity).logits_name == Graph(without).logits_name == "z"
    a, b = (Explainer(m).explain(X, method="rap", target=0).relevance for m in (with_identity, without))
    np.testing.assert_array_equal(a, b)
