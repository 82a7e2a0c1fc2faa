"""Index routing with constant indices: Gather, GatherElements, GatherND, Slice with steps.

Relevance goes back to the gathered positions, summed where an index repeats:
the op's adjoint.  Checked three ways: the gradient method against finite
differences of ONNX Runtime's output (exact for these linear models up to
float32 rounding), a hand-computed case, and the dynamo exporter's
``Reshape -> Gather(constant indices) -> Reshape`` before the classifier.
"""
from pathlib import Path

import numpy as np
import pytest
from onnx_helpers import const, make_model, node, run

from onnxrap import Explainer
from onnxrap.errors import ModelError

RNG = np.random.default_rng(0)
CLASSES = 5


def routed_linear_model(x_shape, route_nodes, routed_size, initializers=(), opset=13):
    """``x -> route -> Flatten -> MatMul``: a linear classifier behind the routing nodes (output ``r``)."""
    weight = RNG.standard_normal((routed_size, CLASSES)).astype(np.float32)
    nodes = [*route_nodes, node("Flatten", ["r"], "flat", axis=1), node("MatMul", ["flat", "W"], "logits")]
    return make_model(nodes, [("x", list(x_shape))], [("logits", [x_shape[0], CLASSES])],
                      [*initializers, const("W", weight)], opset=opset)


def assert_gradient_matches_finite_differences(model, x_shape):
    x = RNG.standard_normal(x_shape).astype(np.float32)
    exp = Explainer(model).explain(x, target=2, method="gradient")
    base = run(model, x)[0][:, 2].astype(np.float64)
    for _ in range(3):  # the model is linear: f(x + d) - f(x) = <grad, d> exactly, per sample
        d = RNG.standard_normal(x_shape).astype(np.float32)
        moved = run(model, x + d)[0][:, 2].astype(np.float64)
        predicted = (exp.relevance.astype(np.float64) * d).reshape(len(x), -1).sum(axis=1)
        np.testing.assert_allclose(predicted, moved - base, rtol=1e-4, atol=1e-4)
    return exp


def int64(name, values):
    return const(name, values, dtype=np.int64)


@pytest.mark.parametrize("axis", [1, 2, 3, -1])
def test_gather_any_axis_with_repeats_is_the_adjoint(axis):
    shape = (2, 3, 4, 5)
    n = shape[axis]
    indices = np.array([[0, n - 1], [n - 1, -1]])  # repeats, and a negative index for the last position
    routed = list(shape)
    routed[axis % 4:axis % 4 + 1] = indices.shape
    model = routed_linear_model(shape, [node("Gather", ["x", "idx"], "r", axis=axis)], int(np.prod(routed[1:])),
                                [int64("idx", indices)])
    assert_gradient_matches_finite_differences(model, shape)


def test_gather_sums_relevance_where_an_index_repeats():
    # logits = [x0 + x0 + x2, 0...]: the gradient at x0 is 2, at x1 0, at x2 1.
    weight = np.zeros((3, CLASSES), dtype=np.float32)
    weight[:, 0] = 1
    model = make_model([node("Gather", ["x", "idx"], "r", axis=1), node("MatMul", ["r", "W"], "logits")],
                       [("x", [1, 3])], [("logits", [1, CLASSES])], [int64("idx", [0, 0, 2]), const("W", weight)])
    exp = Explainer(model).explain(np.array([[1.0, 5.0, 3.0]], dtype=np.float32), target=0, method="gradient")
    np.testing.assert_array_equal(exp.relevance, [[2.0, 0.0, 1.0]])
    rap = Explainer(model).explain(np.array([[1.0, 5.0, 3.0]], dtype=np.float32), target=0, method="rap")
    np.testing.assert_allclose(rap.relevance.sum(), rap.target_logit[0], rtol=1e-6)


def test_gather_elements_is_the_adjoint():
    shape = (2, 3, 4, 4)
    indices = RNG.integers(-4, 4, size=(2, 3, 3, 4))  # repeats and negative indices along axis 2
    model = routed_linear_model(shape, [node("GatherElements", ["x", "idx"], "r", axis=2)], 3 * 3 * 4,
                                [int64("idx", indices)])
    assert_gradient_matches_finite_differences(model, shape)


def test_gather_nd_is_the_adjoint():
    shape = (2, 3, 4, 5)
    indices = np.array([[[0, 1], [2, 3], [0, 1]], [[1, 0], [1, 0], [2, -1]]])  # (batch, 3 picks, 2 coordinates)
    model = routed_linear_model(shape, [node("GatherND", ["x", "idx"], "r", batch_dims=1)], 3 * 5,
                                [int64("idx", indices)])
    assert_gradient_matches_finite_differences(model, shape)


@pytest.mark.parametrize("starts, ends, axes, steps, size", [
    ([1, 0], [4, 5], [2, 3], [2, 2], 3 * 2 * 3),  # steps of 2 on two axes
    ([-1], [-100], [3], [-1], 3 * 4 * 5),  # reversed: a negative step, clamped end
    ([0], [2], [1], [1], 2 * 4 * 5),  # plain crop along the channels
])
def test_slice_with_steps_is_the_adjoint(starts, ends, axes, steps, size):
    shape = (2, 3, 4, 5)
    model = routed_linear_model(shape, [node("Slice", ["x", "s", "e", "a", "st"], "r")], size,
                                [int64("s", starts), int64("e", ends), int64("a", axes), int64("st", steps)])
    exp = assert_gradient_matches_finite_differences(model, shape)
    if steps == [2, 2]:  # positions the slice skips get nothing
        assert not exp.relevance[:, :, 0].any() and not exp.relevance[:, :, :, 1].any()


def test_slice_before_opset_10_reads_attributes():
    shape = (1, 3, 4, 5)
    model = routed_linear_model(shape, [node("Slice", ["x"], "r", starts=[1], ends=[3], axes=[2])], 3 * 2 * 5,
                                opset=9)
    assert_gradient_matches_finite_differences(model, shape)


def test_gather_along_the_batch_axis_is_refused():
    model = routed_linear_model((2, 3), [node("Gather", ["x", "idx"], "r", axis=0)], 3, [int64("idx", [1, 0])])
    with pytest.raises(ModelError, match=r"Gather.*moves values between the samples"):
        Explainer(model).explain(np.ones((2, 3), dtype=np.float32), method="gradient")


def test_data_dependent_indices_are_listed_as_unsupported():
    from onnxrap.errors import UnsupportedOpsError

    nodes = [node("ArgMax", ["x"], "where", axis=1, keepdims=0), node("Gather", ["x", "where"], "r", axis=1),
             node("MatMul", ["r", "W"], "logits")]
    model = make_model(nodes, [("x", [1, 3])], [("logits", None)], [const("W", np.ones((1, 3)))], check=False)
    with pytest.raises(UnsupportedOpsError, match=r"Gather_r \(Gather: input 1 \(where\) must be a constant"):
        Explainer(model)


# -- the dynamo exporter's pattern -----------------------------------------------------------------

def dynamo_view_model(order=None):
    """A small CNN as PyTorch's dynamo exporter writes a ``view`` before the classifier:
    ``Reshape(-1) -> Gather(constant flat indices, named node_as_strided) -> Reshape(1, 64)``.
    ``order=None`` leaves the view out (a plain Flatten), the model it is equivalent to when
    the indices are ``arange``; the classifier's columns follow ``order`` so that any
    permutation computes the same logits."""
    rng = np.random.default_rng(1)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32) * 0.1
    fc = rng.standard_normal((CLASSES, 64)).astype(np.float32)
    nodes = [node("Conv", ["x", "cw", "cb"], "c", pads=[1, 1, 1, 1]), node("Relu", ["c"], "a"),
             node("MaxPool", ["a"], "p", kernel_shape=[2, 2], strides=[2, 2])]
    inits = [const("cw", conv_w), const("cb", conv_b), int64("shape_flat", [-1]), int64("shape_2d", [1, 64])]
    if order is None:
        nodes.append(node("Reshape", ["p", "shape_2d"], "v"))
        weight = fc
    else:
        nodes += [node("Reshape", ["p", "shape_flat"], "flat"),
                  node("Gather", ["flat", "view_idx"], "gathered", name="node_as_strided", axis=0),
                  node("Reshape", ["gathered", "shape_2d"], "v")]
        inits.append(int64("view_idx", order))
        weight = fc[:, order] if len(set(order)) == 64 else fc  # v[j] = flat[order[j]]
    nodes.append(node("Gemm", ["v", "fw", "fb"], "logits", transB=1))
    inits += [const("fw", weight), const("fb", rng.standard_normal(CLASSES) * 0.1)]
    return make_model(nodes, [("x", [1, 3, 8, 8])], [("logits", [1, CLASSES])], inits, opset=18)


@pytest.mark.parametrize("method", ["rap", "lrp-eps", "gradient"])
@pytest.mark.parametrize("order", ["identity", "permuted"])
def test_dynamo_view_pattern_explains_as_the_model_without_it(method, order):
    indices = np.arange(64) if order == "identity" else np.random.default_rng(2).permutation(64)
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with_view, plain = Explainer(dynamo_view_model(indices)), Explainer(dynamo_view_model(None))
    np.testing.assert_allclose(run(with_view.graph.model, x)[0], run(plain.graph.model, x)[0], rtol=1e-5, atol=1e-5)
    got, want = with_view.explain(x, method=method), plain.explain(x, method=method)
    assert "node_as_strided" in {op.name for op in with_view.graph.ops}
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-6)
    if method == "rap":
        np.testing.assert_allclose(got.relevance.sum(), got.target_logit[0], rtol=1e-4)


def test_dynamo_view_with_repeated_indices_conserves(tmp_path):
    import onnx

    from onnxrap.cli import main

    indices = np.concatenate([np.arange(48), np.arange(16)])  # the view reads 16 positions twice
    path = tmp_path / "dynamo_view.onnx"
    onnx.save(dynamo_view_model(indices), path)
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype(np.float32)
    exp = Explainer(path).explain(x, method="rap")
    np.testing.assert_allclose(exp.relevance.sum(), exp.target_logit[0], rtol=1e-4)
    np.save(tmp_path / "x.npy", x)
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), "--quiet"]) == 0


# -- the same pattern as PyTorch's dynamo exporter wrote it (tools/make_gather_fixture.py) ----------------

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gather" / "dynamo_as_strided"


def without_the_gather(model):
    """The exported model with ``Reshape(-1) -> Gather(node_as_strided)`` replaced by the same move written
    as ``Reshape(1, 4, 16) -> Transpose``: a model equivalent to it, with no index routing."""
    import onnx

    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    nodes = list(plain.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.name == "node_Reshape_1")
    source, routed = nodes[at].input[0], nodes[at + 1].output[0]
    assert nodes[at + 1].name == "node_as_strided" and nodes[at + 1].op_type == "Gather"
    nodes[at:at + 2] = [node("Reshape", [source, "channels_by_pixel"], "cp"),
                        node("Transpose", ["cp"], routed, perm=[0, 2, 1])]
    del plain.graph.node[:]
    plain.graph.node.extend(nodes)
    plain.graph.initializer.append(int64("channels_by_pixel", [1, 4, 16]))
    onnx.checker.check_model(plain)
    return plain


@pytest.mark.parametrize("method", ["rap", "lrp-a2b1", "gradient"])
def test_dynamo_as_strided_export_explains_as_its_equivalent(method):
    import onnx

    model = onnx.load(f"{FIXTURE}.onnx")
    data = np.load(f"{FIXTURE}.npz")
    assert [n.op_type for n in model.graph.node][3:6] == ["Reshape", "Gather", "Reshape"]
    exported, plain = Explainer(model), Explainer(without_the_gather(model))
    got, want = exported.explain(data["x"], method=method), plain.explain(data["x"], method=method)
    np.testing.assert_allclose(got.logits, data["torch_logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.relevance, want.relevance, rtol=1e-5, atol=1e-7)
    if method == "rap":
        np.testing.assert_allclose(got.relevance.sum(), got.target_logit[0], rtol=1e-4)
