"""torch's TorchScript exporter with a free batch (``dynamic_axes``) writes ShuffleNetV2's ``x.chunk(2, dim=1)`` as
two ``Slice`` nodes whose bounds are computed from the tensor's shape (``Shape -> Gather(1) -> arithmetic``),
after a channel shuffle ``Reshape`` to sizes taken from ``Shape`` too.  The batch is free but the channels are
not: the bounds are constants, and the model explains as one with constant Slices.  Built here by hand (the
real export is in tests/test_torchvision.py; the dynamo exporter's ``Split`` is in tests/test_split.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import conv_node, head_gemm, rel_l2, rnd
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

C, HALF, HW = 6, 2, 3  # the conv writes C channels; the halves are [0, HALF) and [HALF, C)


def _model(split_nodes, initializers=(), opset=13):
    """x -> Conv (4 -> C) -> Relu -> ``split_nodes`` (r -> lo, hi) -> Relu(hi) -> Concat(hi', lo) -> Gemm."""
    conv, conv_inits, _, _ = conv_node("conv", "x", "c", (C, 4, 3, 3), 5, pads=[1, 1, 1, 1])
    nodes = [conv, node("Relu", ["c"], ["r"]), *split_nodes, node("Conv", ["hi", "W2"], ["hic"], name="conv2"),
             node("Relu", ["hic"], ["hir"]), node("Concat", ["hir", "lo"], ["cat"], axis=1),
             node("Flatten", ["cat"], ["flat"])]
    head, head_inits, _, _ = head_gemm("flat", C * HW * HW, 5, 7)
    inits = conv_inits + head_inits + [const("W2", rnd((C - HALF, C - HALF, 1, 1), 9))] + list(initializers)
    return make_model(nodes + head, [("x", ["N", 4, HW, HW])], [("logits", None)], inits, opset=opset)  # torch's name


INTS = {"i0": 0, "i1": 1, "i2": 2, "i3": 3, "axis0": [0], "two": [2], "four": 4, "zero": [0], "one": [1],
        "big": [2 ** 62], "half": [HALF], "end": [C], "order": np.arange(C).reshape(2, C // 2).T.reshape(-1)}


def torch_halves(src, k):
    """torch's free-batch channel shuffle of ``src`` (view(N, 2, C/2, H, W), transpose, view(N, C, H, W), every
    size from Shape), then its halves ``lo{k}``, ``hi{k}`` at bounds from ``Shape -> Gather(1)`` and arithmetic."""
    def dim(i, out):  # src.size(i) as a 1-element tensor
        return [node("Shape", [src], [f"s{out}"]), node("Gather", [f"s{out}", f"i{i}"], [f"g{out}"], axis=0),
                node("Unsqueeze", [f"g{out}", "axis0"], [out])]

    n, ch, h, w = (f"{d}{k}" for d in ("n", "ch", "h", "w"))
    return dim(0, n) + dim(1, ch) + dim(2, h) + dim(3, w) + [
        node("Div", [ch, "two"], [f"c2{k}"]),  # channels per group: onnx's shape inference does not follow Div
        node("Concat", [n, "two", f"c2{k}", h, w], [f"shape5{k}"], axis=0),
        node("Reshape", [src, f"shape5{k}"], [f"v5{k}"]),
        node("Transpose", [f"v5{k}"], [f"t5{k}"], perm=[0, 2, 1, 3, 4]),
        node("Concat", [n, ch, h, w], [f"shape4{k}"], axis=0),
        node("Reshape", [f"t5{k}", f"shape4{k}"], [f"shuffled{k}"]),
        node("Shape", [f"shuffled{k}"], [f"shape{k}"]), node("Gather", [f"shape{k}", "i1"], [f"channels{k}"], axis=0),
        node("Sub", [f"channels{k}", "four"], [f"lo_end{k}_"]),  # C - 4 = HALF: arithmetic on it
        node("Unsqueeze", [f"lo_end{k}_", "axis0"], [f"lo_end{k}"]),
        node("Slice", [f"shuffled{k}", "zero", f"lo_end{k}", "one"], [f"lo{k}"]),
        node("Slice", [f"shuffled{k}", f"lo_end{k}", "big", "one"], [f"hi{k}"])]


def constant_halves(src, k):
    """The same channel shuffle as a constant channel permutation (Gather), then constant Slices."""
    return [node("Gather", [src, "order"], [f"shuffled{k}"], axis=1),
            node("Slice", [f"shuffled{k}", "zero", "half", "one"], [f"lo{k}"]),
            node("Slice", [f"shuffled{k}", "half", "end", "one"], [f"hi{k}"])]


def two_blocks(halves):
    """Two ShuffleNet units: ``halves(r)``, a conv and Relu on the high half, Concat, ``halves`` of that again.
    The second unit's bounds come from the shape of a Concat of the first unit's Slice: known only once those
    bounds are folded."""
    ints = [node("Constant", [], [k], value=const(k, v, np.int64)) for k, v in INTS.items()]  # as torch writes them
    nodes = ints + halves("r", 1) + [node("Conv", ["hi1", "W3"], ["hi1c"], name="conv3"),
                                     node("Relu", ["hi1c"], ["hi1r"]),
                                     node("Concat", ["lo1", "hi1r"], ["unit1"], axis=1)]
    nodes += halves("unit1", 2) + [node("Identity", ["lo2"], ["lo"]), node("Identity", ["hi2"], ["hi"])]
    model = _model(nodes, [const("W3", rnd((C - HALF, C - HALF, 1, 1), 11))], opset=17)
    del model.graph.value_info[:]  # torch writes no intermediate shapes (make_model inferred some, without values)
    return model


X = rnd((2, 4, HW, HW), 3)


def assert_explains_as(model, reference, methods_=("rap", "gradient", "lrp-eps")):
    np.testing.assert_allclose(run(model, X)[0], run(reference, X)[0], rtol=1e-6)
    for method in methods_:
        got = Explainer(model, dtype="float64").explain(X, method=method)
        want = Explainer(reference, dtype="float64").explain(X, method=method)
        np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-9, atol=1e-12, err_msg=method)
        if method == "rap":
            np.testing.assert_allclose(got.relevance.sum(axis=(1, 2, 3)), got.target_logit, rtol=1e-5,
                                       atol=1e-5 * np.abs(got.target_logit).max())


def test_slices_bounded_by_a_free_batch_shape_fold_to_constants():
    """Before the fold the Slices were refused: 'input 2 must be a constant but depends on the input's shape or
    values'; before the second round of shape inference, the second unit's were."""
    model = two_blocks(torch_halves)
    assert Explainer(model).graph.unsupported == []
    assert_explains_as(model, two_blocks(constant_halves))


def test_a_free_dimension_is_still_refused_as_a_bound():
    """Slicing at a bound read from the free batch axis is refused, not folded to some value."""
    model = two_blocks(torch_halves)
    gather = next(n for n in model.graph.node if n.output[0] == "channels2")
    gather.input[1] = "i0"  # the batch size, known only per run
    with pytest.raises(Exception, match="lo_end2.*must be a constant but depends on the input's shape"):
        Explainer(model)


def test_the_folded_bounds_compile():
    ex = Explainer(two_blocks(torch_halves))
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap"))).run(X)
    assert rel_l2(relevance, ex.explain(X, method="rap").relevance) < 1e-5
