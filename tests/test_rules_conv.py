"""Convolutional networks (Conv, pools, residual Add, Concat, Pad): the rules of docs/rules.md on tiny
hand-built ONNX graphs, against the NumPy transcription of its formulas in references.py (written
independently of onnxrap's code). The references compute the model's activations in float64 (checked
against ONNX Runtime's logits), as ``Explainer(dtype="float64")`` recomputes them, so float64 runs
agree to rounding (rtol 1e-9).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from helpers import (assert_close, assert_conserves, conv_hidden_model, conv_hidden_reference, conv_node, explain, gemm_layer, head_gemm,
                     reference_forward, rnd, targets_with_negative_logit)
from onnx_helpers import const, make_model, node, run
from references import (ConvMap, DenseMap, naive_avg_pool, naive_max_route, naive_window_share, np_conv,
                        ref_alpha_beta, ref_rap_first, ref_rap_first_onehot, ref_rap_hidden, ref_zbox, relu, sdiv)

def conv_maxpool_model():
    """x -> Conv(3x3, pads 1) -> Relu -> MaxPool(3x3, stride 2, pads 1) -> Flatten -> Gemm."""
    cnode, cinit, Wc, bc = conv_node("conv", "x", "c", (3, 2, 3, 3), 30, pads=[1, 1, 1, 1],
                                     kernel_shape=[3, 3])
    nodes = [cnode, node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["m"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 27, 4, 31)
    model = make_model(nodes + hn, [("x", [None, 2, 6, 6])], [("logits", None)], cinit + hi)

    def forward(x):
        v = {"r": relu(np_conv(x, Wc, (1, 1), (1, 1), (1, 1), (1, 1), 1) + bc[:, None, None])}
        v["m"], _ = naive_max_route(v["r"], np.zeros((len(x), 3, 3, 3)), (3, 3), (3, 3), (2, 2), (1, 1), (1, 1))
        v["f"] = v["m"].reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wc=Wc, Wh=Wh, bh=bh, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference", "lrp-a1b0"])
def test_conv_relu_maxpool_gemm(method):
    """z^B (rap.input) at the input Conv, the z-rule at the overlapping MaxPool, rap.head (or alpha-beta)
    at the head."""
    model, p = conv_maxpool_model()
    x = rnd((2, 2, 6, 6), 32)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    conv = ConvMap(p["Wc"], (6, 6), pads=(1, 1, 1, 1))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        if method.startswith("lrp"):
            Rl = np.zeros(4)
            Rl[t] = v["logits"][n, t]
            Rf = ref_alpha_beta(v["f"][n], DenseMap(p["Wh"]), Rl, alpha=1)
        else:
            Rf = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t])
        Rm = Rf.reshape(3, 3, 3)
        # MaxPool z-rule: x * route(sdiv(R, y))
        y, routed = naive_max_route(v["r"][n][None], sdiv(Rm, v["m"][n])[None], (3, 3), (3, 3), (2, 2),
                                    (1, 1), (1, 1))
        np.testing.assert_array_equal(y[0], v["m"][n])
        Rr = v["r"][n] * routed[0]
        ref[n] = ref_zbox(x[n].astype(float), conv, Rr, stabilizer=1e-9 if method.startswith("lrp") else None)
    assert_close(got, ref)
    if method == "rap":
        assert_conserves(model, x, targets)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_maxpool_z_rule_on_all_zero_windows(method):
    """MaxPool z-rule ``x * route(sdiv(R, y))``: a window whose max is 0 passes nothing on
    (rap-reference); rap routes that window's R to its arg-max all the same (conservation.pool).

    x -> Relu -> MaxPool(2x2, s2) -> Add(constant) -> Flatten -> Gemm; the constant lets R
    reach windows where y = 0, where plain gradient routing of R would give relevance.
    """
    k = np.linspace(0.5, 1.0, 18).reshape(2, 3, 3).astype(np.float32)
    hn, hi, Wh, bh = head_gemm("f", 18, 3, 90)
    nodes = [node("Relu", ["x"], ["r"]),
             node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Add", ["m", "k"], ["s"]), node("Flatten", ["s"], ["f"])] + hn
    model = make_model(nodes, [("x", [None, 2, 6, 6])], [("logits", None)], [const("k", k)] + hi)
    x = rnd((2, 2, 6, 6), 91) - 0.7
    targets = np.array([0, 2])

    def forward(x):
        m, _ = naive_max_route(relu(x), np.zeros((len(x), 2, 3, 3)), (3, 3), (2, 2), (2, 2), (1, 1), (0, 0))
        f = (m + k).reshape(len(x), -1)
        return {"r": relu(x), "m": m, "f": f, "logits": f @ Wh + bh}

    v = reference_forward(model, x, forward)
    assert (v["m"] == 0).any()
    got = explain(model, x, targets, method).relevance
    ref, dropped = np.zeros(x.shape), np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rm = ref_rap_first_onehot(v["f"][n], Wh[:, t], bh[t], conserve=method == "rap").reshape(1, 2, 3, 3)
        _, routed = naive_max_route(v["r"][n][None], sdiv(Rm, v["m"][n][None]), (3, 3), (2, 2), (2, 2),
                                    (1, 1), (0, 0))
        _, zero_windows = naive_max_route(v["r"][n][None], Rm * (v["m"][n][None] == 0), (3, 3), (2, 2), (2, 2),
                                          (1, 1), (0, 0))
        dropped[n] = zero_windows[0]
        ref[n] = v["r"][n] * routed[0] + (dropped[n] if method == "rap" else 0)
    assert_close(got, ref)
    assert np.abs(dropped).max() > 1e-3 * np.abs(ref).max()
    if method == "rap":
        assert_conserves(model, x, targets)


def residual_model():
    """x -> ConvA(3x3) = a, x -> ConvB(1x1) = b, Add(a, b) -> AveragePool(3, s2, p1) -> Flatten -> Gemm."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 40, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "x", "b", (3, 2, 1, 1), 42)
    nodes = [na, nb, node("Add", ["a", "b"], ["s"]),
             node("AveragePool", ["s"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Flatten", ["p"], ["f"])]
    hn, hi, Wh, bh = head_gemm("f", 27, 4, 44)
    model = make_model(nodes + hn, [("x", [None, 2, 5, 5])], [("logits", None)], ia + ib + hi)

    def forward(x):
        v = {"a": np_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None],
             "b": np_conv(x, Wb, (1, 1), (1, 1), (0, 0), (0, 0), 1) + bb[:, None, None]}
        v["s"] = v["a"] + v["b"]
        v["f"] = naive_avg_pool(v["s"], (3, 3), (3, 3), (2, 2), (1, 1)).reshape(len(x), -1)
        v["logits"] = v["f"] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_residual_add_and_average_pool(method):
    """Signed residual Add: rap shares by |a|, |b| (reference: a, b); AveragePool by |x| (reference: x)."""
    model, p = residual_model()
    x = rnd((2, 2, 5, 5), 45)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["a"] < 0).any() and (v["b"] < 0).any()
    absolute = method == "rap"
    convA = ConvMap(p["Wa"], (5, 5), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (5, 5))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rp = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(1, 3, 3, 3)
        s = v["s"][n][None]
        Rs = naive_window_share(np.abs(s) if absolute else s, Rp, (3, 3), (2, 2), (1, 1))[0]
        a, b = v["a"][n], v["b"][n]
        if absolute:
            Ra, Rb = np.abs(a) * sdiv(Rs, np.abs(a) + np.abs(b)), np.abs(b) * sdiv(Rs, np.abs(a) + np.abs(b))
        else:
            Ra, Rb = a * sdiv(Rs, a + b), b * sdiv(Rs, a + b)
        xn = x[n].astype(float)
        ref[n] = ref_zbox(xn, convA, Ra) + ref_zbox(xn, convB, Rb)
    assert_close(got, ref, rtol=1e-8)
    if absolute:
        assert_conserves(model, x, targets)


def concat_model(shift):
    """x -> GemmA -> Relu, x -> GemmB -> Relu, Concat(axis 1) [-> Add(constant)] -> Gemm head."""
    na, ia, Wa, ba = gemm_layer(0, "x", "ha", (4, 6), 50, alpha=0.75, beta=1.25)
    nb, ib, Wb, bb = gemm_layer(1, "x", "hb", (3, 6), 52, alpha=1.5, beta=0.5)
    nodes = na + nb + [node("Relu", ["ha"], ["ra"]), node("Relu", ["hb"], ["rb"]),
                       node("Concat", ["ra", "rb"], ["cat"], axis=1)]
    inits = ia + ib
    feed = "cat"
    if shift:
        nodes.append(node("Add", ["cat", "k"], ["shifted"]))
        inits.append(const("k", np.linspace(0.5, 1.5, 7)))
        feed = "shifted"
    hn, hi, Wh, bh = head_gemm(feed, 7, 4, 54)
    model = make_model(nodes + hn, [("x", [None, 6])], [("logits", None)], inits + hi)
    k = np.linspace(0.5, 1.5, 7).astype(np.float32).astype(float)

    def forward(x):
        v = {"ra": relu(x @ Wa + ba), "rb": relu(x @ Wb + bb)}
        v["cat"] = np.concatenate([v["ra"], v["rb"]], axis=1)
        v["shifted"] = v["cat"] + k
        v["logits"] = v[feed] @ Wh + bh
        return v

    return model, dict(Wa=Wa, Wb=Wb, Wh=Wh, bh=bh, feed=feed, forward=forward)


@pytest.mark.parametrize("shift", [False, True], ids=["concat", "concat-then-add-constant"])
def test_concat_slices(shift):
    """Concat: each input gets its slice of R (the spec: times [x != 0]; rap keeps R on zero entries,
    conservation.joins); a tensor read twice sums its relevances.

    With a constant added after the Concat, R reaches zero entries of the Concat's
    inputs, so the mask would change the result (checked against the masked reference).
    """
    model, p = concat_model(shift)
    x = rnd((4, 6), 55)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, "rap").relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["ra"] == 0).any() and (v["rb"] == 0).any()

    def reference(mask):
        out = np.zeros(x.shape)
        for n, t in enumerate(targets):
            Rc = ref_rap_first_onehot(v[p["feed"]][n], p["Wh"][:, t], p["bh"][t], conserve=True)
            Ra, Rb = Rc[:4], Rc[4:]
            if mask:
                Ra, Rb = Ra * (v["ra"][n] != 0), Rb * (v["rb"][n] != 0)
            xn = x[n].astype(float)
            out[n] = (ref_rap_hidden(xn, DenseMap(p["Wa"]), Ra, conv=False, per_sign=False)
                      + ref_rap_hidden(xn, DenseMap(p["Wb"]), Rb, conv=False, per_sign=False))
        return out

    ref = reference(mask=False)
    assert_close(got, ref)
    if shift:
        assert np.abs(reference(mask=True) - ref).max() > 1e-3 * np.abs(ref).max()
    assert_conserves(model, x, targets)


def pad_models():
    """x -> Pad(zero, explicit node) -> Conv -> Relu -> Flatten -> Gemm, and the same with Conv pads."""
    W = rnd((3, 2, 3, 3), 60)
    bias = rnd((3,), 61)
    hn, hi, Wh, bh = head_gemm("f", 3 * 6 * 6, 4, 62)
    tail = [node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["f"])] + hn
    inits = [const("W", W), const("bias", bias)] + hi
    io = ([("x", [None, 2, 5, 5])], [("logits", None)])
    explicit = make_model(
        [node("Pad", ["x", "pads"], ["xp"], mode="constant"), node("Conv", ["xp", "W", "bias"], ["c"])] + tail,
        *io, inits + [const("pads", [0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64)])
    attribute = make_model([node("Conv", ["x", "W", "bias"], ["c"], pads=[1, 2, 2, 1])] + tail, *io, inits)

    def forward(x):
        c = np_conv(x, W.astype(float), (1, 1), (1, 1), (1, 2), (2, 1), 1) + bias.astype(float)[:, None, None]
        f = relu(c).reshape(len(x), -1)
        return {"f": f, "logits": f @ Wh + bh}

    return explicit, attribute, dict(W=W.astype(float), Wh=Wh, bh=bh, forward=forward)


def test_explicit_zero_pad_is_part_of_the_conv():
    """A zero Pad node before the input Conv == the Conv's pads attribute (docs/rules.md, engine), z^B bounds
    from x itself."""
    explicit, attribute, p = pad_models()
    x = (np.random.default_rng(63).uniform(0.5, 1.5, (2, 2, 5, 5))).astype(np.float32)  # min(x) > 0
    targets = np.array([1, 3])
    got = explain(explicit, x, targets, "rap").relevance
    other = explain(attribute, x, targets, "rap").relevance
    np.testing.assert_allclose(got, other, rtol=1e-6, atol=1e-7 * np.abs(other).max())
    v = reference_forward(explicit, x, p["forward"])
    conv = ConvMap(p["W"], (5, 5), pads=(1, 2, 2, 1))
    unfolded = ConvMap(p["W"], (8, 8))
    ref, wrong = np.zeros(x.shape), np.zeros(x.shape)
    for n, t in enumerate(targets):
        Rc = ref_rap_first_onehot(v["f"][n], p["Wh"][:, t], p["bh"][t]).reshape(3, 6, 6)
        xn = x[n].astype(float)
        ref[n] = ref_zbox(xn, conv, Rc)
        padded = np.pad(xn, ((0, 0), (1, 2), (2, 1)))
        wrong[n] = ref_zbox(padded, unfolded, Rc)[:, 1:6, 2:7]  # z^B on the padded tensor, then crop
    assert_close(got, ref)
    assert np.abs(wrong - ref).max() > 1e-3 * np.abs(ref).max()  # the two readings differ here
    assert_conserves(explicit, x, targets)


def conv_head_gap_model():
    """x -> ConvA(3x3) -> ConvB(1x1, bias: the head) -> GlobalAveragePool -> Flatten: rap.head with R not one-hot."""
    na, ia, Wa, ba = conv_node("convA", "x", "a", (3, 2, 3, 3), 70, pads=[1, 1, 1, 1])
    nb, ib, Wb, bb = conv_node("convB", "a", "y", (4, 3, 1, 1), 72)
    nodes = [na, nb, node("GlobalAveragePool", ["y"], ["g"]), node("Flatten", ["g"], ["logits"])]
    model = make_model(nodes, [("x", [None, 2, 5, 5])], [("logits", None)], ia + ib)

    def forward(x):
        v = {"a": np_conv(x, Wa, (1, 1), (1, 1), (1, 1), (1, 1), 1) + ba[:, None, None]}
        v["y"] = np_conv(v["a"], Wb, (1, 1), (1, 1), (0, 0), (0, 0), 1) + bb[:, None, None]
        v["logits"] = v["y"].mean(axis=(2, 3))
        return v

    return model, dict(Wa=Wa, Wb=Wb, bb=bb, forward=forward)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_conv_head_behind_global_pool(method):
    """rap.head per output unit weighted by the arriving R (its last paragraph), signed head input.

    rap-reference shares the seed through the pool by y (the released behaviour): rap.head then sums
    to sum_j R_j y_j, which is not the logit. rap sends the seed through the ops after the head
    as the logit's gradient (R_j = 1/(w h)), so rap.head sums to the logit, its bias shares without
    contributions of their own included (conservation.head; frequent with 3 input channels).
    """
    model, p = conv_head_gap_model()
    x = rnd((2, 2, 5, 5), 73)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    v = reference_forward(model, x, p["forward"])
    assert (v["a"] < 0).any()
    convA = ConvMap(p["Wa"], (5, 5), pads=(1, 1, 1, 1))
    convB = ConvMap(p["Wb"], (5, 5))
    ref = np.zeros(x.shape)
    for n, t in enumerate(targets):
        y = v["y"][n]
        Rg = np.zeros((4, 1, 1))
        Rg[t] = 1.0
        if method == "rap":
            Ry = np.broadcast_to(Rg / y[0].size, y.shape)
        else:
            Ry = y * sdiv(Rg, y.sum(axis=(1, 2), keepdims=True))
        Ra = ref_rap_first(v["a"][n], convB, p["bb"][:, None, None], Ry, conserve=method == "rap")
        ref[n] = ref_zbox(x[n].astype(float), convA, Ra)
    assert_close(got, ref)
    if method == "rap":
        assert_conserves(model, x, targets)


def test_conv_plus_constant_add_is_its_bias():
    """Conv without bias + Add of a per-channel constant (1, C, 1, 1) == Conv with that bias (rap.head reads it)."""
    model, p = conv_head_gap_model()
    b = np.array(p["bb"], dtype=np.float32)
    unbiased = onnx.ModelProto()
    unbiased.CopyFrom(model)
    g = unbiased.graph
    conv = next(n for n in g.node if n.name == "convB")
    del conv.input[2]
    conv.output[0] = "y0"
    g.node.insert(list(g.node).index(conv) + 1, node("Add", ["y0", "bias4"], ["y"]))
    g.initializer.append(const("bias4", b.reshape(1, 4, 1, 1)))
    x = rnd((2, 2, 5, 5), 74)
    np.testing.assert_allclose(run(unbiased, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-6)
    targets = np.array([1, 3])
    got = explain(unbiased, x, targets, "rap").relevance
    np.testing.assert_allclose(got, explain(model, x, targets, "rap").relevance, rtol=1e-9,
                               atol=1e-12 * np.abs(got).max())


@pytest.mark.parametrize("method", ["rap-unbounded", "rap-reference"])
def test_conv_hidden_layer(method):
    """rap.hidden on a convolution (C1n through W- for conv ops), signed input, R of both signs of logit.
    (rap itself shares by |x w| at signed inputs, docs/rules.md signed: rap-unbounded keeps rap.hidden there.)"""
    model, p = conv_hidden_model()
    x = rnd((2, 2, 6, 6), 85)
    targets = targets_with_negative_logit(model, x)
    got = explain(model, x, targets, method).relevance
    ref = conv_hidden_reference(model, p, x, targets, lambda a, conv, R: ref_rap_hidden(
        a, conv, R, conv=True, per_sign=method == "rap-reference"))
    assert_close(got, ref)
    if method == "rap-unbounded":
        assert_conserves(model, x, targets)
