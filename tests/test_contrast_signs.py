"""rap.hidden under a contrast's seed: each sign keeps its own sum (docs/rules.md, contrast).

A contrast's relevance is signed: positive for the target, negative for the dual.  rap.hidden's
uniform shift would add one amount to every entry, mixing the two; for a contrast's samples C's
positive entries are rescaled to S(R+) and its negative ones to S(R-) instead.  Plain seeds
keep the shift (their goldens: tests/test_golden.py).
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import DIGITS
from onnxrap import Explainer, methods
from onnxrap.rules.linear import RapHidden


def mlp(w1, w2):
    """logits = relu(x @ w1.T) @ w2.T: two Gemms without bias; the first is rap.hidden (dense.input)."""
    w1, w2 = np.asarray(w1, np.float32), np.asarray(w2, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"], name="hidden", transB=1),
         helper.make_node("Relu", ["h"], ["a"], name="relu"),
         helper.make_node("Gemm", ["a", "w2"], ["logits"], name="head", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w1.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, w2.shape[0]])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


X = np.array([[1.0, 2.0]], np.float32)
W2 = [[2, 0], [0, 1]]  # logits (2, 3) on a = (1, 3)


@pytest.mark.parametrize("method", ["rap", "rap-reference"])
def test_each_sign_keeps_its_sum_by_hand(method):
    """w1 rows (1, 0), (1, 1): a = (1, 3).  Target 0 rather than 1 explains z_0 - z_1 = -1; the head
    keeps C = a * (w2_0 - w2_1) = (2, -3).  rap.hidden shares unit 1's 2 to x_1; unit 2's -3 to x_1
    and x_2 by x w / a: (-1, -2).  C = (1, -2) sums to -1 already, so the shift leaves it (the
    rule before); kept per sign, x_1 carries the target's 2 and x_2 the dual's -3."""
    ex = Explainer(mlp([[1, 0], [1, 1]], W2), dtype="float64")
    np.testing.assert_allclose(ex.explain(X, target=0, contrast=1, method=method).relevance, [[2, -3]])
    np.testing.assert_allclose(ex.explain(X, target=0, method=method).relevance, [[2, 0]])  # plain: as before


def test_shift_stays_where_c_lacks_a_sign():
    """w1 rows (1, 1), (1, 1): a = (3, 3), head C = (6, -3) for z_0 - z_1 = 3.  Each unit shares its R
    over x by x / 3: C = (1, 2), no negative entry to carry the dual's -3, so the shift stays:
    C already sums to 3, the map is (1, 2)."""
    ex = Explainer(mlp([[1, 1], [1, 1]], W2), dtype="float64")
    got = ex.explain(X, target=0, contrast=1).relevance
    np.testing.assert_allclose(got, [[1, 2]])


class Recording(RapHidden):
    """rap.hidden that keeps, per op, what it received, its C before the shift, and what it gave."""

    def __init__(self, seen):
        super().__init__(per_sign=False, conserve=True)
        self.seen = seen

    def __call__(self, op, ctx, R):
        self.C = None
        out = super().__call__(op, ctx, R)
        self.seen.append((op.name, np.asarray(R), self.C, np.asarray(out[0])))
        return out

    def _keep_signs(self, bk, C, R, shifted, contrast):
        self.C = np.asarray(C)
        return super()._keep_signs(bk, C, R, shifted, contrast)


def masses(a):
    flat = a.reshape(len(a), -1)
    return np.maximum(flat, 0).sum(axis=1), np.minimum(flat, 0).sum(axis=1)


def test_every_hidden_op_keeps_both_masses_on_the_digits():
    """At each of the digits model's rap.hidden convolutions, for every target rather than the others,
    the positive and the negative relevance each keep their sum, except where C has no entry of a sign
    that R has (R- only on units without inhibitors): there the shift keeps the total.  A plain seed
    never reaches the rule (C is not taken apart)."""
    seen = []
    rap = methods.get("rap")
    recording = methods.Method("rap", {**rap.rules, "linear": Recording(seen)}, conserves=True)
    ex = Explainer(DIGITS, dtype="float64")
    x = np.repeat(np.load(DIGITS.parent / "digits_holdout.npz")["x"][:2], 10, axis=0)
    targets = np.tile(np.arange(10), 2)
    ex.explain(x, target=targets, method=recording, contrast="others")
    assert len(seen) == 5  # conv1, conv2, the two branches, the last conv
    kept = 0
    for name, R, C, out in seen:
        (rp, rn), (cp, cn), (op_, on) = masses(R), masses(C), masses(out)
        assert (rn < 0).all() and (rp > 0).all(), name  # a contrast's relevance carries both signs
        carried = ((cp != 0) | (rp == 0)) & ((cn != 0) | (rn == 0))
        np.testing.assert_allclose(op_[carried], rp[carried], rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(on[carried], rn[carried], rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(op_ + on, rp + rn, rtol=1e-9, err_msg=name)
        kept += carried.sum()
    assert kept >= 0.95 * 5 * len(x)  # the shift is the exception
    seen.clear()
    ex.explain(x, target=targets, method=recording)
    assert all(C is None for _, _, C, _ in seen) and len(seen) == 5
