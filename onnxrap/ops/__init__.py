"""What each ONNX op computes, as far as relevance rules need to know.

Every supported ONNX op type is registered here by the module of its family
(``linear``, ``pooling``, ``elementwise``, ``normalization``, ``attention``, ``products``, ``structure``,
``routing``, ``fused``, ``quantize``).  A parser turns an
ONNX node into an ``Op``: its canonical *kind* (what methods map to rules),
its data inputs, and the forward and adjoint pieces the rules use.  A new op
type is one ``@register`` entry in one family module.
"""
from __future__ import annotations

from typing import Callable

from ..errors import ModelError


class Unsupported(Exception):
    """Raised by a parser for a node it cannot explain; the reason is listed to the user."""


class Op:
    """One data-carrying op of the canonical graph.

    ``inputs`` are the data tensors it reads (relevance flows back to them);
    ``output`` is the one data tensor it writes.  ``kind`` selects the rule.
    """

    kind = "op"
    family = None  # linear ops: "dense" or "conv"

    def __init__(self, name: str, op_type: str, inputs: list[str], output: str):
        self.name = name
        self.op_type = op_type
        self.inputs = list(inputs)
        self.output = output
        self.positions: tuple[str, ...] = ()  # set by the graph: "head", "input"
        self.synthetic = False  # its output is not in the ONNX graph: onnxrap's forward computes it
        # why no rule may share relevance over it, where relevance reaches it (signs.py refuses it there); it
        # may still compute a gate, whose rule gives it none (attention's scores and Softmax)
        self.refused_where_reached: str | None = None

    def forward(self, bk, ctx):
        """The op's output from its inputs in ``ctx`` (onnxrap's own forward, for float64 checking)."""
        raise NotImplementedError(f"{self.op_type} has no forward")

    def vjp(self, bk, ctx, grad):
        """Vector-Jacobian product: the gradient at each data input."""
        raise NotImplementedError(f"{self.op_type} has no adjoint")

    def __repr__(self):
        return f"<{self.op_type} {self.name}: {self.inputs} -> {self.output}>"


class NodeView:
    """What a parser sees of an ONNX node: attributes, constant inputs, data inputs."""

    def __init__(self, node, graph, name=None):
        self.node = node  # the caller's node: read, never changed
        self.graph = graph
        self.name = name or node.name  # unnamed nodes get a name for messages from the graph
        self.op_type = node.op_type
        self.attrs = {a.name: _attr_value(a) for a in node.attribute}

    def attr(self, key, default=None):
        return self.attrs.get(key, default)

    def is_data(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] in self.graph.data_tensors

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def data_inputs(self) -> list[str]:
        return [t for t in self.node.input if t in self.graph.data_tensors]

    def const(self, i: int):
        """Value of constant input ``i`` (a NumPy array)."""
        name = self.node.input[i]
        if name not in self.graph.constants:
            raise Unsupported(f"input {i} ({name}) must be a constant but depends on the input's shape or values")
        return self.graph.constants[name]

    def input_shape(self, i: int):
        return self.graph.static_shape(self.node.input[i])


def _attr_value(attr):
    import onnx

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


PARSERS: dict[tuple[str, str], Callable[[NodeView], Op]] = {}  # (domain, op type) -> parser; "" is ai.onnx


def register(*op_types: str, domain: str = ""):
    """Register a parser ``f(view) -> Op`` for ONNX op types of ``domain`` (default: the standard ops)."""

    def wrap(fn):
        for t in op_types:
            if (domain, t) in PARSERS:
                raise ModelError(f"op type {t} registered twice")
            PARSERS[domain, t] = fn
        return fn

    return wrap


def parse(view: NodeView) -> list[Op]:
    """The ops of one ONNX node (a fused node gives several).  The domain counts: a custom op named like a
    standard one computes what its authors wrote, not what ONNX says."""
    domain = "" if view.node.domain in ("", "ai.onnx") else view.node.domain
    parser = PARSERS.get((domain, view.op_type))
    if parser is None:
        raise Unsupported(f"an op of the custom domain {domain}" if domain else "")
    ops = parser(view)
    return ops if isinstance(ops, list) else [ops]


# Import the families so that their ops register.
from . import (attention, elementwise, fused, linear, normalization, pooling, products, quantize,  # noqa: E402,F401
               routing, structure)
