"""Resize/Upsample with mode nearest (HRNet's and FPN's upsampling) and ReduceSum (split attention's sum
over its branches: ResNeSt, SKNet), each checked against the same function written with ops whose rules
are tested elsewhere: nearest x2 as Concat of a tensor with itself along new axes; a sum as a mean times
its count.  The relevance of every method and the gradient must be the same."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import assert_one_line_error, rnd, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph
from onnxrap.graph import Graph
from onnxrap.ops.elementwise import Gate

METHODS = ["rap", "rap-reference", "lrp-a2b1", "lrp-eps", "gradient"]
N, C, H, W = 2, 3, 4, 5


def _around(middle, inits, opset=13):
    """Conv (3 -> 3 channels) -> Relu -> ``middle`` (reads r, writes u) -> Conv -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm (4 classes)."""
    nodes = [node("Conv", ["x", "w1", "b1"], "h", pads=[1, 1, 1, 1]), node("Relu", ["h"], "r"), *middle,
             node("Conv", ["u", "w2", "b2"], "h2", pads=[1, 1, 1, 1]), node("Relu", ["h2"], "r2"),
             node("GlobalAveragePool", ["r2"], "p"), node("Flatten", ["p"], "f"),
             node("Gemm", ["f", "hw", "hb"], "y", transB=1)]
    inits = [const("w1", rnd((C, C, 3, 3), 1)), const("b1", rnd(C, 2, 0.1)), const("w2", rnd((C, C, 3, 3), 3)),
             const("b2", rnd(C, 4, 0.1)), const("hw", rnd((4, C), 5)), const("hb", rnd(4, 6, 0.1)), *inits]
    return make_model(nodes, [("x", [N, C, H, W])], [("y", [N, 4])], inits, opset=opset)


def _nearest_by_concat():
    """Nearest x2 written with moves only: (N, C, H, 1, W, 1) -> doubled along both new axes."""
    middle = [node("Reshape", ["r", "six"], "r6"), node("Concat", ["r6", "r6"], "c3", axis=3),
              node("Concat", ["c3", "c3"], "c5", axis=5), node("Reshape", ["c5", "four"], "u")]
    return _around(middle, [const("six", [N, C, H, 1, W, 1], np.int64),
                            const("four", [N, C, 2 * H, 2 * W], np.int64)])


RESIZES = {
    "scales": lambda: _around([node("Resize", ["r", "", "scales"], "u", mode="nearest")],
                              [const("scales", [1, 1, 2, 2])]),
    "sizes": lambda: _around([node("Resize", ["r", "", "", "sizes"], "u", mode="nearest")],
                             [const("sizes", [N, C, 2 * H, 2 * W], np.int64)]),
    "upsample-opset9": lambda: _around([node("Upsample", ["r", "scales"], "u", mode="nearest")],
                                       [const("scales", [1, 1, 2, 2])], opset=9),
}


def _same_explanations(model, reference, methods_=METHODS):
    x = rnd((N, C, H, W), 7)
    np.testing.assert_allclose(run(model, x)[0], run(reference, x)[0], rtol=1e-6)
    got, want = Explainer(model, dtype="float64"), Explainer(reference, dtype="float64")
    for method in methods_:
        a, b = got.explain(x, method=method, target=[0, 3]), want.explain(x, method=method, target=[0, 3])
        np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-10, atol=1e-13, err_msg=method)


@pytest.mark.parametrize("form", RESIZES)
def test_nearest_resize_explains_as_its_copies(form):
    _same_explanations(RESIZES[form](), _nearest_by_concat())


def test_nearest_resize_compiles():
    model = RESIZES["scales"]()
    ex = Explainer(model)
    x = rnd((N, C, H, W), 8)
    for method in ("rap", "gradient"):
        _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=x.shape[1:])).run(x)
        np.testing.assert_allclose(relevance, ex.explain(x, method=method).relevance, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_interpolating_resize_is_refused_by_name(tmp_path, capsys, mode):
    model = _around([node("Resize", ["r", "", "scales"], "u", mode=mode, name="upsample")],
                    [const("scales", [1, 1, 2, 2])])
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", rnd((N, C, H, W), 9))
    code, _, err = run_cli(["explain", tmp_path / "m.onnx", tmp_path / "x.npy", "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, "upsample (Resize", f"mode {mode}")


def _sum_model(reduce_sum):
    """The Conv's 3 channels summed (keepdims) then broadcast back by a Mul: a ReduceSum, or the mean
    times 3 as the reference."""
    if reduce_sum:
        middle = [node("ReduceSum", ["r", "axis1"], "s", keepdims=1)]
    else:
        middle = [node("ReduceMean", ["r"], "m", axes=[1], keepdims=1), node("Mul", ["m", "three"], "s")]
    middle.append(node("Mul", ["s", "ones"], "u"))  # back to 3 channels (a constant scale)
    return _around(middle, [const("axis1", [1], np.int64), const("three", 3.0), const("ones", np.ones((1, C, 1, 1)))],
                   )


def test_reduce_sum_explains_as_a_mean_times_its_count():
    _same_explanations(_sum_model(True), _sum_model(False))


def test_a_sum_of_gates_gates_with_its_count():
    """Sigmoid's [0, 1] summed over 2 channels is in [0, 2]: still a gate (in [0, c]), and not in [0, 1]."""
    nodes = [node("Sigmoid", ["x"], "g"), node("ReduceSum", ["g", "axis1"], "s", keepdims=1),
             node("Mul", ["x", "s"], "y", name="gated")]
    graph = Graph(make_model(nodes, [("x", [1, 2, 3])], [("y", [1, 2, 3])], [const("axis1", [1], np.int64)]))
    gate = next(op for op in graph.ops if isinstance(op, Gate))
    assert gate.inputs[gate.gate] == "s" and gate.signal == "x"
    from onnxrap.signs import BOUNDS
    (op,) = [op for op in graph.ops if op.op_type == "ReduceSum"]
    assert BOUNDS[op.kind](op, [(0.0, 1.0)], {}) == (0.0, 2.0)
