"""Self-attention (ViT, DeiT): a Softmax inside the graph and MatMuls of two data tensors.

Attention computes ``P = Softmax(Q K^T / sqrt(d))`` and ``out = P V``.  ``P V`` is a MatMul whose left
factor is provably in [0, 1]: a gate, as a Sigmoid's output gates a Mul (``Gated``), so signs.py picks it
and the op is the linear map ``V -> P V`` with the data-dependent, non-negative weights P (Ali et al.,
ICML 2022, hold P constant in the same way: docs/rules.md, attention).  Every linear rule then applies
with P as its weight.  ``Q K^T`` has no gate: it only computes the gate, and relevance never reaches it
(where it would, it is a product of two signals: ops/products.py); signs.py refuses a Softmax where
relevance reaches it (``refused_where_reached``).
"""
from __future__ import annotations

from . import Op, Unsupported, register
from .elementwise import Gated
from .linear import Dense, Weights


def _opset(v):
    return next((o.version for o in v.graph.model.opset_import if o.domain in ("", "ai.onnx")), 1)


def swap_last(a):
    """``a`` with its last two axes swapped: the transpose of each matrix of a batch of matrices."""
    perm = list(range(a.ndim))
    perm[-2:] = perm[-1], perm[-2]
    return a.transpose(perm)


class Softmax(Op):
    """``exp(x - max) / sum exp(x - max)`` over ``axes`` (opset 13 on: one axis; before: every axis from
    ``axis`` on, as ONNX flattened them).  Its output lies in [0, 1] (signs.py)."""

    kind = "softmax"

    def __init__(self, name, op_type, inputs, output, axes):
        super().__init__(name, op_type, inputs, output)
        self.axes = tuple(axes)
        self.refused_where_reached = ("a Softmax inside the graph is explained only as attention's weights: its "
                                      "output must reach the logits only as a MatMul's gate")

    def forward(self, bk, ctx):
        x = ctx[self.inputs[0]]
        e = bk.xp.exp(x - x.max(axis=self.axes, keepdims=True))
        return e / e.sum(axis=self.axes, keepdims=True)

    def vjp(self, bk, ctx, grad):
        s = ctx[self.output]
        return [s * (grad - (grad * s).sum(axis=self.axes, keepdims=True))]


@register("Softmax")
def _softmax(v):
    shape = v.input_shape(0)
    if shape is None:
        raise Unsupported("Softmax on an input of unknown rank")
    rank = len(shape)
    axis = int(v.attr("axis", -1 if _opset(v) >= 13 else 1)) % rank
    if axis == 0:
        raise Unsupported("Softmax over the batch axis")
    axes = (axis,) if _opset(v) >= 13 else tuple(range(axis, rank))
    return Softmax(v.name, v.op_type, [v.node.input[0]], v.node.output[0], axes)


class DataMatMul(Gated, Dense):
    """``a @ b`` of two data tensors (batches of matrices; the batch axis and any heads lead).

    With a gate (signs.py, ``pick_gate``: attention's P in ``P @ V``) it is a dense linear op on the
    signal whose weight is the gate's value: ``inputs`` become ``[signal, gate]`` so that the linear rules,
    which share relevance over ``inputs[0]``, give the gate none.  Without one (``Q @ K^T``) it is a
    product of two signals (ops/products.py); ``forward`` and ``vjp`` (the gradient through both factors)
    serve it all the same.
    """

    master = None  # the weights are data, not the model's (compile.py shares no initializer for them)
    trans_input = False

    def __init__(self, name, op_type, inputs, output):
        Op.__init__(self, name, op_type, inputs, output)  # no constant weight to split into W+ and W-
        self.bias_values = None  # an Add of a constant after it may become one (passes.AbsorbBias)
        self.operands = list(inputs)  # a, b of a @ b, as the ONNX node has them
        self.gate_on_left = None

    def pick_gate(self, bounds, scales=(False, False)):
        by_name = dict(zip(self.inputs, zip(bounds, scales)))
        self.inputs = list(self.operands)  # bounds in the ONNX order, however often it is asked
        super().pick_gate(*zip(*(by_name[name] for name in self.operands)))
        if self.gate is not None:
            self.gate_on_left = self.gate == 0
            self.inputs = [self.signal, self.inputs[self.gate]]
            self.gate = 1

    def factor_view(self, k):
        """With no gate: operand ``k`` as a dense op's input, the other operand its weight (ops/products.py)."""
        from .products import factor_view

        return factor_view(self, k)

    def weights_in(self, ctx, dtype):
        p = ctx[self.inputs[1]].astype(dtype)
        return Weights(p, p * 0)  # P >= 0: no negative part

    def apply(self, bk, x, w):
        product = (lambda p: p @ x) if self.gate_on_left else (lambda p: x @ p)
        return [product(p) for p in w] if isinstance(w, list) else product(w)

    def adjoint(self, bk, pairs, x_shape):
        if self.gate_on_left:
            total = sum(swap_last(p) @ s for s, p in pairs)
        else:
            total = sum(s @ swap_last(p) for s, p in pairs)
        return bk.unbroadcast(total, x_shape)

    def forward(self, bk, ctx):
        a, b = (ctx[name] for name in self.operands)
        y = a @ b
        bias = self.bias(bk, y.dtype, y.shape)
        return y if bias is None else y + bias

    def vjp(self, bk, ctx, grad):
        a, b = (ctx[name] for name in self.operands)
        grads = [bk.unbroadcast(grad @ swap_last(b), a.shape), bk.unbroadcast(swap_last(a) @ grad, b.shape)]
        return grads if self.inputs == self.operands else grads[::-1]


def data_matmul(v):
    """A MatMul of two data tensors; both of rank 3 or more, so that axis 0 stays the batch of both."""
    ranks = [None if v.input_shape(i) is None else len(v.input_shape(i)) for i in (0, 1)]
    if None in ranks or min(ranks) < 3:
        raise Unsupported(f"MatMul of two data tensors of ranks {ranks}: only batches of matrices (rank 3 or "
                          "more) keep the batch axis apart")
    return DataMatMul(v.name, v.op_type, [v.node.input[0], v.node.input[1]], v.node.output[0])
