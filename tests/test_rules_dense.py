"""Dense networks (Gemm, MatMul + Add): the rules of docs/rules.md on tiny hand-built ONNX graphs,
against the NumPy transcription of its formulas in references.py (written independently of onnxrap's
code). The references compute the model's activations in float64 (checked against ONNX Runtime's
logits), as ``Explainer(dtype="float64")`` recomputes them, so float64 runs agree to rounding (rtol
1e-9).
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import (assert_close, assert_conserves, explain, gemm_layer, reference_forward, rnd,
                     targets_with_negative_logit)
from onnx_helpers import const, make_model, node, run
from references import DenseMap, ref_alpha_beta, ref_rap_first_onehot, ref_rap_hidden, relu

def mlp(depth, n_in=5, hidden=6, classes=4, trans_a=False):
    """Gemm (+Relu+Gemm)*: transB=1, alpha and beta != 1, biases; input (N, n_in) or (n_in, N)."""
    sizes = [n_in] + [hidden] * (depth - 1) + [classes]
    nodes, inits, layers = [], [], []
    inp = "x"
    for i in range(depth):
        out = "logits" if i == depth - 1 else f"h{i}"
        ns, its, W, b = gemm_layer(i, inp, out, (sizes[i + 1], sizes[i]), seed=10 * i + 1,
                                   alpha=[0.75, 1.5, 1.25][i % 3], beta=[1.25, 0.625, -1.5][i % 3],
                                   trans_a=int(trans_a and i == 0))
        nodes += ns
        inits += its
        layers.append((inp, W, b))
        if i < depth - 1:
            nodes.append(node("Relu", [out], [f"r{i}"]))
            inp = f"r{i}"
    shape = [n_in, None] if trans_a else [None, n_in]
    return make_model(nodes, [("x", shape)], [("logits", None)], inits), layers


def ref_mlp(model, layers, x, targets, method, x_rows=None):
    """rap / rap-reference / lrp-a*b* on an mlp, one sample at a time.

    ``x_rows`` is the model input as samples in rows (when the model takes it transposed).
    """
    x_rows = x if x_rows is None else x_rows

    def forward(_):
        vals = {"x": x_rows.astype(np.float64)}
        for k, (inp, W, b) in enumerate(layers):
            h = vals[inp] @ W + b
            if k == len(layers) - 1:
                vals["logits"] = h
            else:
                vals[f"r{k}"] = relu(h)
        return vals

    vals = reference_forward(model, x, forward)
    out = np.zeros(x_rows.shape)
    for n, t in enumerate(targets):
        R = None
        for k in reversed(range(len(layers))):
            inp, W, b = layers[k]
            a = vals[inp][n]
            if method.startswith("lrp"):
                if R is None:
                    R = np.zeros(W.shape[1])
                    R[t] = vals["logits"][n, t]
                R = ref_alpha_beta(a, DenseMap(W), R, alpha=int(method[5]))
            elif R is None:
                R = ref_rap_first_onehot(a, W[:, t], b[t], conserve=method == "rap")
            else:
                R = ref_rap_hidden(a, DenseMap(W), R, conv=False, per_sign=method == "rap-reference")
            # the Relu in front of this layer passes R unchanged
        out[n] = R
    return out


def single_gemm(w_rows, bias):
    """One Gemm (transB=1) as the whole model: it is both the head and the input op."""
    n = node("Gemm", ["x", "B", "C"], ["logits"], transB=1)
    k = len(w_rows[0])
    return make_model([n], [("x", [None, k])], [("logits", None)], [const("B", w_rows), const("C", bias)])


def test_rap_first_by_hand():
    """rap.head worked by hand: x = (2, -1, 0.5), W[t] = (1, 1, -1), b[t] = 0.5.

    Cpp = (2,0,0), Cpn = (0,0,-0.5), Cnp = (0,-1,0), Cnn = 0; Pos = 2, Neg = -1.5;
    bp = 0.5 * 2 / 0.5 = 2, bn = 0.5 * -1.5 / 0.5 = -1.5;
    C = (2 + 2, -1, -0.5 - 1.5) = (4, -1, -2), S(C) = 1 = the logit; out = |C| / 7.
    """
    model = single_gemm([[1, 1, -1], [3, -2, 1]], [0.5, 0.25])
    x = np.array([[2, -1, 0.5]], dtype=np.float32)
    for method in ("rap", "rap-reference"):
        e = explain(model, x, 0, method)
        np.testing.assert_allclose(e.relevance, [[4 / 7, 1 / 7, 2 / 7]], rtol=1e-12)
        np.testing.assert_allclose(e.target_logit, [1.0])


def test_rap_first_zero_denominator_bias_share():
    """rap.head edge: S(Cpn) = 0 but Neg != 0, so bn has no carrier of its own: x = (2, -1),
    W[t] = (1, 1), b[t] = 0.5 give C = (3, -1) with bp = 1 on x+ W+ and bn = -0.5 nowhere.
    rap-reference (as released) drops bn: out = |C| * 2 / 4 = (1.5, 0.5), summing to 2, not to
    the logit 1.5.  rap (conservation.head) rescales |C| to the logit: (1.125, 0.375)."""
    model = single_gemm([[1, 1], [1, -1]], [0.5, 0.0])
    x = np.array([[2, -1]], dtype=np.float32)
    e = explain(model, x, 0, "rap-reference")
    np.testing.assert_allclose(e.relevance, [[1.5, 0.5]], rtol=1e-12)
    np.testing.assert_allclose(e.target_logit, [1.5])
    np.testing.assert_allclose(explain(model, x, 0, "rap").relevance, [[1.125, 0.375]], rtol=1e-12)


@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0", "lrp-a2b1"])
@pytest.mark.parametrize("n_in", [5, 16])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_rules_match_the_references(depth, n_in, method):
    """Gemm(transB=1, alpha, beta, bias) [+Relu+Gemm]*: rap.head at the head, rap.hidden below; LRP
    alpha-beta.

    Signed inputs (x- terms), and a target with a negative logit (R- terms, C1n of dense ops).
    With 5 inputs some samples hit rap.head's zero denominators (S(Cpp) or S(Cpn) = 0).
    """
    model, layers = mlp(depth, n_in=n_in)
    x = rnd((4, n_in), 3)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    ref = ref_mlp(model, layers, x, targets, method)
    assert np.abs(ref).max() > 0
    assert_close(got, ref)


def test_rap_reference_differs_from_rap_on_signed_dense_input():
    """With signed x at a rap.hidden layer the two shifts differ (so the comparisons above can tell them apart)."""
    model, layers = mlp(2)
    x = rnd((4, 5), 3)
    t = targets_with_negative_logit(model, x)
    a = ref_mlp(model, layers, x, t, "rap")
    b = ref_mlp(model, layers, x, t, "rap-reference")
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
    assert np.abs(explain(model, x, t, "rap").relevance - explain(model, x, t, "rap-reference").relevance).max() > 0


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mlp_rap_conserves_logit(depth):
    model, _ = mlp(depth, n_in=32)
    x = rnd((4, 32), 3)
    assert_conserves(model, x, targets_with_negative_logit(model, x))


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a2b1"])
def test_gemm_trans_a(depth, method):
    """Gemm with transA=1 (input given as (features, N)) explains like transA=0 on x.T."""
    model_t, layers_t = mlp(depth, n_in=12, trans_a=True)
    model, _ = mlp(depth, n_in=12)
    x = rnd((3, 12), 4)
    targets = np.array([0, 2, 3])
    got = explain(model_t, np.ascontiguousarray(x.T), targets, method).relevance
    assert got.shape == (12, 3)
    plain = explain(model, x, targets, method).relevance
    np.testing.assert_allclose(got.T, plain, rtol=1e-6, atol=1e-7 * np.abs(plain).max())
    ref = ref_mlp(model_t, layers_t, np.ascontiguousarray(x.T), targets, method, x_rows=x)
    assert_close(got.T, ref)
    if method == "rap":
        e = explain(model_t, np.ascontiguousarray(x.T), targets, method)
        np.testing.assert_allclose(e.relevance.sum(axis=0), e.target_logit, rtol=1e-5)


def matmul_add_models(seed=20):
    """The same 2-layer network as MatMul + Add(constant) and as Gemm."""
    W1, b1 = rnd((5, 6), seed), rnd((6,), seed + 1)
    W2, b2 = rnd((6, 4), seed + 2), rnd((4,), seed + 3, scale=3.0)
    inits = [const("W1", W1), const("b1", b1), const("W2", W2), const("b2", b2)]
    io = ([("x", [None, 5])], [("logits", None)])
    mm = make_model([node("MatMul", ["x", "W1"], ["m1"]), node("Add", ["m1", "b1"], ["h1"]),
                     node("Relu", ["h1"], ["r1"]), node("MatMul", ["r1", "W2"], ["m2"]),
                     node("Add", ["b2", "m2"], ["logits"])], *io, inits)
    gemm = make_model([node("Gemm", ["x", "W1", "b1"], ["h1"]), node("Relu", ["h1"], ["r1"]),
                       node("Gemm", ["r1", "W2", "b2"], ["logits"])], *io, inits)
    return mm, gemm, (W1.astype(float), b1.astype(float), W2.astype(float), b2.astype(float))


def test_matmul_add_is_one_linear_op_with_bias():
    """MatMul + Add(constant vector) = Gemm with that bias: same relevance, bias read by rap.head."""
    mm, gemm, (W1, b1, W2, b2) = matmul_add_models()
    x = rnd((4, 5), 21)
    t = targets_with_negative_logit(gemm, x)
    got = explain(mm, x, t, "rap").relevance
    np.testing.assert_allclose(got, explain(gemm, x, t, "rap").relevance, rtol=1e-6,
                               atol=1e-7 * np.abs(got).max())
    r1 = reference_forward(mm, x, lambda x: {"r1": relu(x @ W1 + b1), "logits": relu(x @ W1 + b1) @ W2 + b2})["r1"]
    ref = np.stack([ref_rap_hidden(x[n].astype(float), DenseMap(W1),
                                   ref_rap_first_onehot(r1[n], W2[:, t[n]], b2[t[n]]),
                                   conv=False, per_sign=False) for n in range(len(x))])
    assert_close(got, ref)
    no_bias = np.stack([ref_rap_hidden(x[n].astype(float), DenseMap(W1),
                                       ref_rap_first_onehot(r1[n], W2[:, t[n]], 0.0),
                                       conv=False, per_sign=False) for n in range(len(x))])
    assert np.abs(no_bias - ref).max() > 1e-2 * np.abs(ref).max()  # the bias matters here
    assert_conserves(mm, x, t)
