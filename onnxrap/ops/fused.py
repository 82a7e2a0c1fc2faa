"""ONNX Runtime's fused contrib ops (com.microsoft), as written by its offline optimiser.

``FusedConv`` and ``FusedGemm`` are a linear op, an optional residual Add
(FusedConv's fourth input) and an activation in one node.  They parse into a
``Fused`` op holding those parts, which canonicalisation puts in its place
(``passes.SplitFusedOps``); the tensors between them do not exist in the
ONNX graph, so they are marked *synthetic* and computed by onnxrap's own
forward pass from the captured input.
"""
from __future__ import annotations

from . import Op, Unsupported, register
from .elementwise import clip, leaky_relu, relu, smooth
from .linear import parse_conv, parse_gemm
from .structure import Sum


# The activation's parameters: FusedConv lists them in order (activation_params); FusedGemm names them
# activation_alpha, activation_beta, ... (ONNX Runtime's schemas).  Missing ones are refused, never defaulted.
_PARAMETERS = {"Relu": (), "Sigmoid": (), "Tanh": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
               "Clip": ("min", "max")}


def _activation_parameters(v, kind):
    names = _PARAMETERS[kind]
    if v.op_type == "FusedConv":
        values = list(v.attr("activation_params") or [])
        if len(values) < len(names):
            raise Unsupported(f"activation {kind} needs activation_params {', '.join(names)}")
        return dict(zip(names, values))
    named = {"alpha": v.attr("activation_alpha"), "beta": v.attr("activation_beta")}
    missing = [n for n in names if named.get(n) is None]
    if missing:
        raise Unsupported(f"activation {kind} without activation_{missing[0]}")
    return {n: named[n] for n in names}


def _activation(v, x, y):
    kind = v.attr("activation")
    if kind not in _PARAMETERS:
        raise Unsupported(f"fused activation {kind}")
    name, params = v.name + ":activation", _activation_parameters(v, kind)
    if kind == "Relu":
        return relu(name, kind, x, y)
    if kind == "LeakyRelu":
        return leaky_relu(name, kind, x, y, float(params["alpha"]))
    if kind == "Clip":
        return clip(name, kind, x, y, float(params["min"]), float(params["max"]))
    return smooth(name, kind, x, y, params)


class Fused(Op):
    """A fused node's parts, in order; never explained as it is (canonicalisation splits it)."""

    kind = "fused"

    def __init__(self, name, op_type, parts):
        produced = {p.output for p in parts}
        inputs = [t for p in parts for t in p.inputs if t not in produced]
        super().__init__(name, op_type, inputs, parts[-1].output)
        self.parts = parts


def _split(v, linear):
    """``linear`` (+ the residual input) + activation, joined by synthetic tensors."""
    out = v.node.output[0]
    linear.output = out + ":linear"
    ops = [linear]
    if v.op_type == "FusedConv" and v.has_input(3):
        if not v.is_data(3):
            raise Unsupported("a constant residual input")
        ops.append(Sum(v.name + ":add", "Add", [linear.output, v.node.input[3]], out + ":sum"))
    ops.append(_activation(v, ops[-1].output, out))
    for op in ops[:-1]:
        op.synthetic = True
    return Fused(v.name, v.op_type, ops)


@register("FusedConv", domain="com.microsoft")
def _fused_conv(v):
    return _split(v, parse_conv(v))


@register("FusedGemm", domain="com.microsoft")
def _fused_gemm(v):
    return _split(v, parse_gemm(v))
