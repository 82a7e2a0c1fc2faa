"""Expand of a data tensor (a broadcast: BoTNet's position logits, ``expand_as`` in PyTorch code) routes
each output to the element it copies.  Checked against the same function where Add broadcasts by itself,
with a constant target shape and with ``Shape(x)`` of a tensor whose batch is free (also through arithmetic)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rnd, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer

C, H, W = 3, 4, 4


def _model(middle, inits=(), batch="N"):
    """Conv -> Relu (r) -> per-channel mean (m, keepdims) -> ``middle`` (reads r and m, writes s) -> Conv ->
    GlobalAveragePool -> Flatten -> Gemm (4 classes)."""
    nodes = [node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "r"),
             node("ReduceMean", ["r"], "m", axes=[2, 3], keepdims=1), *middle,
             node("Conv", ["s", "w2", "b2"], "h2", pads=[1, 1, 1, 1]), node("GlobalAveragePool", ["h2"], "g"),
             node("Flatten", ["g"], "f"), node("Gemm", ["f", "hw", "hb"], "y", transB=1)]
    inits = [const("w1", rnd((C, C, 3, 3), 1)), const("b1", rnd(C, 2, 0.1)), const("w2", rnd((C, C, 3, 3), 3)),
             const("b2", rnd(C, 4, 0.1)), const("hw", rnd((4, C), 5)), const("hb", rnd(4, 6, 0.1)), *inits]
    return make_model(nodes, [("x", [batch, C, H, W])], [("y", [batch, 4])], inits)


BROADCAST = _model([node("Add", ["r", "m"], "s")])
EXPANDS = {
    "constant shape": _model([node("Expand", ["m", "shape"], "e"), node("Add", ["r", "e"], "s")],
                             [const("shape", [2, C, H, W], np.int64)], batch=2),
    "Shape(x), free batch": _model([node("Shape", ["r"], "rs"), node("Expand", ["m", "rs"], "e"),
                                    node("Add", ["r", "e"], "s")]),
    # arithmetic on the shape: at batch sizes 1, 2 and 3 still the batch size where it is 1 at batch 1
    "Shape(x) * 1, free batch": _model([node("Shape", ["r"], "rs"), node("Mul", ["rs", "one"], "rs1"),
                                        node("Expand", ["m", "rs1"], "e"), node("Add", ["r", "e"], "s")],
                                       [const("one", [1, 1, 1, 1], np.int64)]),
}


@pytest.mark.parametrize("form", EXPANDS)
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a2b1", "gradient"])
def test_expand_explains_as_a_broadcast(form, method):
    x = rnd((2, C, H, W), 7)
    np.testing.assert_allclose(run(EXPANDS[form], x)[0], run(BROADCAST, x)[0], rtol=1e-6)
    got = Explainer(EXPANDS[form], dtype="float64").explain(x, method=method, target=[0, 3])
    want = Explainer(BROADCAST, dtype="float64").explain(x, method=method, target=[0, 3])
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-10, atol=1e-13)


def test_expand_to_a_computed_shape_is_refused_by_name(tmp_path, capsys):
    """A target shape computed from the values (here 1 wherever r is not all zero) cannot be a routing."""
    model = _model([node("Shape", ["r"], "rs"), node("ReduceMax", ["r"], "top", keepdims=0),
                    node("Sign", ["top"], "one_f"), node("Cast", ["one_f"], "one", to=onnx.TensorProto.INT64),
                    node("Mul", ["rs", "one"], "rs1"), node("Expand", ["m", "rs1"], "e", name="broadcast"),
                    node("Add", ["r", "e"], "s")])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rnd((2, C, H, W), 9))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "broadcast (Expand", "must be a constant")


def test_expand_with_a_free_batch_compiles():
    from onnxrap import methods
    from onnxrap.compile import CompiledModel, compile_graph

    ex = Explainer(EXPANDS["Shape(x), free batch"])
    x = rnd((3, C, H, W), 8)
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=x.shape[1:])).run(x)
        np.testing.assert_allclose(relevance, ex.explain(x, method=method).relevance, rtol=1e-4, atol=1e-7)


def _merged(middle, inits=()):
    """``_model`` with r reshaped to (2 N, C, H / 2, W) (windows in the batch, as Swin V2 has them), ``middle``
    (reads r2 and m2 = its per-window mean, writes s2), and reshaped back."""
    return _model([node("Reshape", ["r", "windows"], "r2"),
                   node("ReduceMean", ["r2"], "m2", axes=[2, 3], keepdims=1), *middle,
                   node("Reshape", ["s2", "image"], "s")],
                  [const("windows", [-1, C, H // 2, W], np.int64), const("image", [-1, C, H, W], np.int64), *inits])


@pytest.mark.parametrize("method", ["rap", "lrp-a2b1", "gradient"])
def test_expand_to_a_shape_whose_batch_is_merged(method):
    """``expand_as(t)`` where t's first axis is twice the batch (F.normalize in Swin V2's window attention):
    the target shape is ``(2 N, ...)``, a multiple of the batch size, evaluated at each batch size."""
    expanded = _merged([node("Shape", ["r2"], "rs"), node("Expand", ["m2", "rs"], "e"), node("Add", ["r2", "e"], "s2")])
    broadcast = _merged([node("Add", ["r2", "m2"], "s2")])
    for batch in (1, 3):
        x = rnd((batch, C, H, W), 11)
        np.testing.assert_allclose(run(expanded, x)[0], run(broadcast, x)[0], rtol=1e-6)
        got = Explainer(expanded, dtype="float64").explain(x, method=method, target=[1] * batch)
        want = Explainer(broadcast, dtype="float64").explain(x, method=method, target=[1] * batch)
        np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", ["rap", "lrp-a2b1", "gradient"])
def test_tile_explains_as_a_broadcast(method):
    """Tile of a data tensor (SwiftFormer's global query over the tokens) copies, as Expand does."""
    tiled = _model([node("Tile", ["m", "repeats"], "t"), node("Add", ["r", "t"], "s")],
                   [const("repeats", [1, 1, H, W], np.int64)])
    x = rnd((2, C, H, W), 12)
    np.testing.assert_allclose(run(tiled, x)[0], run(BROADCAST, x)[0], rtol=1e-6)
    got = Explainer(tiled, dtype="float64").explain(x, method=method, target=[0, 3])
    want = Explainer(BROADCAST, dtype="float64").explain(x, method=method, target=[0, 3])
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-10, atol=1e-13)
