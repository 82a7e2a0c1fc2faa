"""Values computed per sample from a free batch size (tests/fixtures/per_sample, tools/make_per_sample_fixtures.py):
a class token broadcast by ``expand(B, -1, -1)`` and added to data (CaiT), a positional encoding made from the
input's shape and repeated over the batch (XCiT, EdgeNeXt), tokens sliced at a length read off a broadcast
class token (PiT).  They fold to one sample's value, which every reader broadcasts back; Resize's sizes from
``interpolate(t, size=...)`` hold the batch size and are evaluated at each (GhostNetV2); a value that differs
from sample to sample stays refused in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from helpers import DIGIT_IMAGES, assert_one_line_error, fixture_case, rel_l2, run_cli
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "per_sample"
GRADIENT_CLASS = 3  # the class of the npz files' torch_gradient
EXPLAINED = ["class_token_add", "token_slice", "resize_to_size"]


@pytest.fixture(params=EXPLAINED)
def model(request):
    return fixture_case(FIXTURES, request.param)


@pytest.mark.parametrize("name", ["class_token_add", "token_slice"])
def test_the_values_fold_to_one_sample(name):
    """The class token and the positional encoding (a Tile over Shape(x)'s batch) fold to a leading axis of 1."""
    graph = Explainer(FIXTURES / f"{name}.onnx").graph
    assert graph.per_sample and all(graph.constants[t].shape[0] == 1 for t in graph.per_sample)
    assert any(graph.producer_node(t).op_type == "Tile" for t in graph.per_sample)  # the positional encoding


def test_resize_sizes_hold_the_batch_size():
    """``interpolate(t, size=...)``: Resize's sizes are ``Concat(Shape(t)[:2], size)``, at batch 1 ``(1, C, h,
    w)``, with the batch size in place of the 1 at any other."""
    graph = Explainer(FIXTURES / "resize_to_size.onnx").graph
    resizes = [graph.producer_node(op.output) for op in graph.ops if op.op_type == "Resize"]
    assert len(resizes) == 2
    for node in resizes:
        one, step = graph.batch_sized[node.input[3]]
        assert step.tolist() == [1, 0, 0, 0] and one[0] == 1 and one[1] == 8


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_any_batch_size_computes_what_onnx_runtime_does(model, batch):
    name, path, case = model
    x = np.concatenate([case["x"], case["x"][::-1] * 0.5])[:batch]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    e = Explainer(path).explain(x, method="rap")
    np.testing.assert_allclose(e.logits, expected, rtol=1e-5, atol=1e-6)
    sums = e.relevance.reshape(batch, -1).sum(axis=1, dtype=np.float64)
    np.testing.assert_allclose(sums, expected[np.arange(batch), e.target], rtol=1e-5, atol=1e-6)  # rap conserves


def test_the_gradient_is_torchs(model):
    _, path, case = model
    np.testing.assert_allclose(case["ort_logits"], case["torch_logits"], atol=1e-5)
    g = Explainer(path).explain(case["x"], target=[GRADIENT_CLASS] * 2, method="gradient").relevance
    assert rel_l2(g, case["torch_gradient"]) < 1e-5


@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-eps"])
def test_compiled_agrees_with_eager(model, method):
    _, path, case = model
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"])
    assert rel_l2(relevance, ex.explain(case["x"], method=method).relevance) < 1e-4


def test_a_value_that_differs_per_sample_is_refused(capsys):
    """``x + 0.1 * arange(B)``: at batch 2 the added value is not the batch-1 value repeated."""
    code, _, err = run_cli(["explain", FIXTURES / "batch_index.onnx", DIGIT_IMAGES[0]], capsys)
    assert_one_line_error(code, err, "/Add (Add: input 1", "must be a constant but depends on the input's shape")
