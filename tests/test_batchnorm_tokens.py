"""LeViT's BatchNorm1d over tokens, ``bn(x.flatten(0, 1)).reshape_as(x)`` (passes.batchnorms_over_tokens): the
Flatten that merges the batch with the tokens, the BatchNormalization and the Reshape back are one BatchNorm over
the last axis, which keeps the batch axis; explained as the same network with the normalisation written as a
per-channel Mul and Add.  Where anything else reads the merged rows, the Flatten stays refused by name."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rnd, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

T, C, K = 5, 4, 3
SCALE, BIAS, MEAN, VAR = rnd(C, 1), rnd(C, 2), rnd(C, 3), np.abs(rnd(C, 4)) + 0.5
GAIN = SCALE / np.sqrt(VAR + 1e-5)


def _model(middle, inits=(), extra_output=None):
    """x (N, T, C) -> MatMul -> ``middle`` (reads h, writes n) -> Relu -> ReduceMean over tokens -> Gemm (K)."""
    nodes = [node("MatMul", ["x", "w"], "h"), *middle, node("Relu", ["n"], "r"),
             node("ReduceMean", ["r"], "m", axes=[1], keepdims=0), node("Gemm", ["m", "hw", "hb"], "y", transB=1)]
    inits = [const("w", rnd((C, C), 5)), const("hw", rnd((K, C), 6)), const("hb", rnd(K, 7, 0.1)), *inits]
    outputs = [("y", ["N", K])] + ([(extra_output, None)] if extra_output else [])
    return make_model(nodes, [("x", ["N", T, C])], outputs, inits)


STATS = [const("s", SCALE), const("b", BIAS), const("mu", MEAN), const("var", VAR)]
MERGED = _model([node("Flatten", ["h"], "f", axis=2), node("BatchNormalization", ["f", "s", "b", "mu", "var"], "bn"),
                 node("Shape", ["h"], "hs"), node("Reshape", ["bn", "hs"], "n")], STATS)
WRITTEN = _model([node("Mul", ["h", "g"], "hg"), node("Add", ["hg", "c"], "n")],
                 [const("g", GAIN), const("c", BIAS - GAIN * MEAN)])


def test_the_chain_is_one_batchnorm_over_the_last_axis():
    ops = Explainer(MERGED).graph.ops
    norms = [op for op in ops if op.kind == "batchnorm"]
    assert len(norms) == 1 and norms[0].channel_last and not any(op.op_type in ("Flatten", "Reshape") for op in ops)


@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-eps", "lrp-a2b1", "gradient"])
def test_explained_as_the_normalisation_written_out(method):
    x = rnd((3, T, C), 8)
    np.testing.assert_allclose(run(MERGED, x)[0], run(WRITTEN, x)[0], rtol=1e-5, atol=1e-6)
    got = Explainer(MERGED, dtype="float64").explain(x, method=method, target=[0, 1, 2])
    want = Explainer(WRITTEN, dtype="float64").explain(x, method=method, target=[0, 1, 2])
    # the written-out gain and shift are float32 roundings of what BatchNormalization computes in float64
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-8)
    if method == "rap":
        np.testing.assert_allclose(got.relevance.reshape(3, -1).sum(1), got.logits[np.arange(3), [0, 1, 2]],
                                   rtol=1e-6)  # the logits are ONNX Runtime's float32 ones


def test_compiled_with_a_free_batch():
    ex = Explainer(MERGED)
    x = rnd((2, T, C), 9)
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(x)
        np.testing.assert_allclose(relevance, ex.explain(x, method=method).relevance, rtol=1e-4, atol=1e-7)


def test_merged_rows_read_elsewhere_stay_refused(tmp_path, capsys):
    """The merged rows also feed a second output: the Flatten is no longer only the normalisation's."""
    model = _model([node("Flatten", ["h"], "f", axis=2, name="merge"),
                    node("BatchNormalization", ["f", "s", "b", "mu", "var"], "bn"),
                    node("Shape", ["h"], "hs"), node("Reshape", ["bn", "hs"], "n"), node("Relu", ["f"], "rows")],
                   STATS, extra_output="rows")
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rnd((2, T, C), 10))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "merge (Flatten", "merges the batch axis")
