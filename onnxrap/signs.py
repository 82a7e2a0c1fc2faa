"""Which tensors are non-negative by construction: a static sign analysis of the DAG.

A linear op whose data input is provably ``>= 0`` has no ``x-`` part, and its
rules skip that half of the work.  Deciding it from the graph, not from the
captured values, keeps the backward walk free of Python branches on array
values: on a GPU each ``(x < 0).any()`` would stop the host until the device
caught up, and a walk traced into a graph cannot branch on values at all.

A tensor is non-negative when its op guarantees it from the signs of its
inputs (``NONNEGATIVE`` by op kind); anything else, unknown kinds included,
may be negative.  Linear ops reading a possibly negative tensor get
``signed_input = True`` and the position ``signed`` (so a method may map
``conv.signed`` / ``dense.signed``).  A linear op whose output reaches such an
input with no rectifier on the way (the projection convolution of a linear
bottleneck, writing into a residual stream) gets the position ``projection``.
"""
from __future__ import annotations

import numpy as np

from .ops.linear import Linear
from .ops.structure import Pad


def _activation(op, inputs, constants):
    # Non-decreasing with f(0) = 0 clipped into ``bounds``: >= 0 from a floor of 0, or from a
    # non-negative input whose image of 0 is not clipped below 0.
    low, high = op.bounds
    return low >= 0 or (all(inputs) and high >= 0)


def _moves(op, inputs, constants):
    """Values moved, selected, pooled or added up: non-negative from non-negative inputs (Pad adds its value)."""
    return all(inputs) and (not isinstance(op, Pad) or op.value >= 0)


def _concat(op, inputs, constants):
    return all(inputs) and all(bool(np.all(constants[name] >= 0)) for name, is_data in op.parts if not is_data)


def _scale(op, inputs, constants):
    c = np.asarray(op.constant)
    if op.op_type == "Mul":
        keeps = np.all(c >= 0)
    elif op.op_type == "Div":
        keeps = np.all(c > 0)
    elif op.op_type == "Sub":
        keeps = not op.reversed_operands and np.all(c <= 0)
    else:  # Add, Sum
        keeps = np.all(c >= 0)
    return all(inputs) and bool(keeps)


NONNEGATIVE = {"activation": _activation, "identity": _moves, "shape": _moves, "maxpool": _moves,
               "avgpool": _moves, "add": _moves, "concat": _concat, "scale": _scale}


def mark_signed_inputs(graph) -> set[str]:
    """Set ``signed_input`` on every linear op of ``graph`` and mark the positions ``signed`` and
    ``projection``; return the provably non-negative tensors."""
    nonnegative = set()
    writers = {}  # tensor -> the linear ops whose output reaches it with no rectifier on the way
    for op in graph.ops:  # topological order: an op's inputs are decided before it
        decide = NONNEGATIVE.get(op.kind)
        if decide is not None and decide(op, [name in nonnegative for name in op.inputs], graph.constants):
            nonnegative.add(op.output)
        elif isinstance(op, Linear):
            writers[op.output] = (op,)
        else:
            writers[op.output] = tuple({w.name: w for t in op.inputs for w in writers.get(t, ())}.values())
        if isinstance(op, Linear):
            op.signed_input = op.inputs[0] not in nonnegative
            if op.signed_input:
                op.positions = op.positions + ("signed",)
                for writer in writers.get(op.inputs[0], ()):
                    if "projection" not in writer.positions:
                        writer.positions = writer.positions + ("projection",)
    return nonnegative
