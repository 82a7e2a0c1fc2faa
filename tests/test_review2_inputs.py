"""Review of the graph's input choice: a model with several data inputs cannot be fed by onnxrap, whichever
--input is named, and the first refusal says so instead of sending the user to --input."""
from __future__ import annotations

import pytest

from onnx_helpers import make_model, node
from onnxrap.errors import ModelError
from onnxrap.graph import Graph


def test_several_data_inputs_are_refused_without_a_dead_end():
    """It said "pick one with --input NAME", and every NAME then met "the model also needs input(s) ...":
    ONNX Runtime runs a model only with every input fed, even one no node reads."""
    model = make_model([node("Relu", ["x"], "y")], [("x", [1, 3]), ("unused", [1, 3])], [("y", [1, 3])])
    with pytest.raises(ModelError) as first:
        Graph(model)
    assert "2 data inputs (x, unused)" in str(first.value) and "pick one" not in str(first.value)
    assert "no --input NAME helps" in str(first.value)
    with pytest.raises(ModelError, match="also needs input"):
        Graph(model, input_name="x")
