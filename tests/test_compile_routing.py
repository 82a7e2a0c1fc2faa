"""``onnxrap compile`` of index routing (Gather, GatherElements, GatherND, Slice with steps): the traced
graph gathers and scatter-adds with the same per-sample index map as the eager engine, and agrees with it."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_helpers import const, make_model, node
from test_gather import dynamo_view_model, int64, routed_linear_model

from helpers import rel_l2
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gather" / "dynamo_as_strided"
METHODS = [("rap", {}), ("lrp-eps", {"epsilon": 0.1}), ("gradient", {})]
RNG = np.random.default_rng(7)


def assert_compiled_agrees(model, x, target=None):
    ex = Explainer(model)
    for name, options in METHODS:
        compiled = compile_graph(ex.graph, methods.get(name, **options))
        onnx.checker.check_model(compiled, full_check=True)
        logits, relevance = CompiledModel(compiled).run(x, None if target is None else [target] * len(x))
        eager = ex.explain(x, method=name, target=target, **options)
        np.testing.assert_allclose(logits.reshape(eager.logits.shape), eager.logits, rtol=1e-5, atol=1e-6)
        assert relevance.shape == x.shape
        assert rel_l2(relevance, eager.relevance) <= 1e-5, (name, rel_l2(relevance, eager.relevance))
        assert np.abs(eager.relevance).sum() > 0  # the routing really carries relevance


def ops_of(model, name="rap", **options):
    return [n.op_type for n in compile_graph(Explainer(model).graph, methods.get(name, **options)).graph.node]


def test_dynamo_as_strided_fixture():
    assert_compiled_agrees(onnx.load(f"{FIXTURE}.onnx"), np.load(f"{FIXTURE}.npz")["x"])


@pytest.mark.parametrize("order", ["permutation", "repeats"])
def test_reshape_gather_reshape(order):
    indices = RNG.permutation(64) if order == "permutation" else np.concatenate([np.arange(48), np.arange(16)])
    model = dynamo_view_model(indices)
    assert_compiled_agrees(model, RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    assert "ScatterElements" in ops_of(model)  # opset 18: one scatter with reduction="add"


def gather_model(opset, batch="N"):
    """``x (batch, 3, 4, 5) -> Gather(axis 2, repeats and a negative index) -> linear`` for a free batch."""
    return routed_linear_model((batch, 3, 4, 5), [node("Gather", ["x", "idx"], "r", axis=2)], 3 * 4 * 5,
                               [int64("idx", [[0, 3], [3, -1]])], opset=opset)


@pytest.mark.parametrize("opset", [13, 16])
def test_free_batch_gather_runs_at_any_batch_size(opset):
    """One sample's map serves any batch; before opset 16 each repetition of an index is its own scatter."""
    model = gather_model(opset)
    for n in (1, 3):
        assert_compiled_agrees(model, RNG.standard_normal((n, 3, 4, 5)).astype(np.float32), target=2)
    scatters = [n for n in compile_graph(Explainer(model).graph, methods.get("gradient")).graph.node
                if n.op_type == "ScatterElements"]
    # indices [0, 3, 3, -1] on an axis of 4: position 3 is read three times, so three scatters without
    # reduction, or one adding
    assert [a.s for n in scatters for a in n.attribute if a.name == "reduction"] == ([] if opset < 16 else [b"add"])
    assert len(scatters) == (3 if opset < 16 else 1)


def test_gather_elements_per_sample_indices_on_a_fixed_batch():
    """Indices that differ between samples (a fixed batch of 2) are gathered as one row over the batch."""
    shape = (2, 3, 4, 4)
    model = routed_linear_model(shape, [node("GatherElements", ["x", "idx"], "r", axis=2)], 3 * 3 * 4,
                                [int64("idx", RNG.integers(-4, 4, size=(2, 3, 3, 4)))], opset=17)
    assert_compiled_agrees(model, RNG.standard_normal(shape).astype(np.float32))


def stepped_slice():
    """``x[:, :, 0:4:2, ::-1]``: steps and a reversed axis."""
    return [node("Slice", ["x", "st", "en", "ax", "sp"], "s")], [
        int64("st", [5, 0]), int64("en", [-100, 4]), int64("ax", [3, 2]), int64("sp", [-1, 2])]


def test_stepped_slice_with_a_free_batch():
    nodes, inits = stepped_slice()
    model = routed_linear_model(("N", 3, 4, 6), [*nodes, node("Identity", ["s"], "r")], 3 * 2 * 6, inits, opset=17)
    assert_compiled_agrees(model, RNG.standard_normal((2, 3, 4, 6)).astype(np.float32))


def test_gather_nd_after_a_stepped_slice_on_a_fixed_batch():
    nodes, inits = stepped_slice()
    picks = RNG.integers(0, [3, 2], size=(2, 3, 2))  # per sample: three (channel, row) pairs, one repeated
    picks[:, 2] = picks[:, 0]
    model = routed_linear_model((2, 3, 4, 6), [*nodes, node("GatherND", ["s", "nd"], "r", batch_dims=1)], 3 * 6,
                                [*inits, int64("nd", picks)], opset=17)
    assert_compiled_agrees(model, RNG.standard_normal((2, 3, 4, 6)).astype(np.float32))


def test_routing_along_the_batch_axis_is_listed_and_explained_eagerly(tmp_path, monkeypatch, capsys):
    from onnxrap.cli import main

    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path / "cache"))
    model = make_model([node("Gather", ["x", "first"], "g", name="pick", axis=0),
                        node("Gemm", ["g", "w"], "logits", name="dense")],
                       [("x", ["N", 6])], [("logits", [1, 3])],
                       [int64("first", [0]), const("w", RNG.standard_normal((6, 3)))], opset=17)
    path = tmp_path / "first_sample.onnx"
    onnx.save(model, str(path))
    assert main(["compile", str(path), "-o", str(tmp_path / "out.onnx")]) == 2
    assert "pick (Gather: routes along the batch axis" in capsys.readouterr().err
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    ex = Explainer(path, engine="onnx")
    e = ex.explain(x, method="gradient")
    assert ex.engine_note.startswith("eager: ") and "pick" in ex.engine_note
    np.testing.assert_allclose(e.relevance, Explainer(path).explain(x, method="gradient").relevance)
