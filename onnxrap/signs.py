"""Which tensors are non-negative or bounded by construction: a static interval analysis of the DAG.

A linear op whose data input is provably ``>= 0`` has no ``x-`` part, and its
rules skip that half of the work.  Deciding it from the graph, not from the
captured values, keeps the backward walk free of Python branches on array
values: on a GPU each ``(x < 0).any()`` would stop the host until the device
caught up, and a walk traced into a graph cannot branch on values at all.

Every tensor gets bounds ``(low, high)`` that its op guarantees from its inputs'
(``BOUNDS`` by op kind); anything else, unknown kinds included, is unbounded.
A tensor is non-negative where ``low >= 0``.  Linear ops reading a possibly
negative tensor get ``signed_input = True`` and the position ``signed`` (so a
method may map ``conv.signed`` / ``dense.signed``), and before it ``floored``
where the tensor is negative only down to a finite floor and unbounded above
(a SiLU's or HardSwish's output: ``conv.floored`` / ``dense.floored``).  A
linear op whose output reaches such an input with no rectifier on the way (the
projection convolution of a linear bottleneck, writing into a residual stream)
gets the position ``projection``; where no floor is on the way either (an
MBConv block's projection after SiLU, not its depthwise convolution, which
writes into the SiLU), ``writes_signed_stream = True``.  A Mul of two data
tensors is a gate where exactly one factor is bounded in [0, 1], or, failing
that, in [0, c] with c finite (``Gated.pick_gate``); its output has its
signal's sign.  A MatMul of two data tensors is picked the same way (attention's
``P @ V``: a Softmax's output is in [0, 1]).  A norm (ReduceL2, a square root) is
non-negative, and a tensor computed from norms alone (``norms``) is a scale: where
no factor is bounded, a non-negative one of those gates (ConvNeXtV2's GRN); a Div
by a data tensor proven positive is a scale too.  A product with no gate is a
product of two signals (ops/products.py).  A Softmax, a norm, a Div by a divisor
not proven positive and a move of the batch axis are refused where relevance
reaches them, since no rule shares relevance over them: a gate's rule gives its
gate none.
"""
from __future__ import annotations

import numpy as np

from .backend import numpy_backend
from .ops.elementwise import Gate, Gated
from .ops.linear import Linear
from .ops.structure import Pad

UNBOUNDED = (-np.inf, np.inf)


def _times(a, b):
    """Bounds of a product of values in ``a`` and ``b`` (0 times an infinite bound is 0)."""
    ends = [0.0 if x == 0 or y == 0 else x * y for x in a for y in b]
    return min(ends), max(ends)


def _hull(*bounds):
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def _of(array):
    array = np.asarray(array, dtype=np.float64)
    return float(array.min()), float(array.max())


def _activation(op, inputs, constants):
    # Its range; a non-negative input keeps its output non-negative where the activation says so.
    low, high = op.bounds
    if inputs[0][0] >= 0 and op.keeps_nonnegative:
        low = max(low, 0.0)
    if op.monotone:  # the input's finite bounds map to the output's (an infinite one stays infinite)
        ends = [float(op.fn(np, np.float64(end), **op.params)) if np.isfinite(end) else end for end in inputs[0]]
        low, high = max(low, ends[0]), min(high, ends[1])
    return low, high


def _moves(op, inputs, constants):
    """Values moved, selected or copied: the input's bounds (Pad adds its value)."""
    return _hull(inputs[0], (op.value, op.value)) if isinstance(op, Pad) else inputs[0]


def _average(op, inputs, constants):
    low, high = _hull(inputs[0], (0.0, 0.0))  # padding counted as zeros
    if op.within_inputs:
        return low, high
    count = op.count or np.inf  # a sum of an unknown number of terms keeps only the sign
    return _times((low, high), (0.0, count))


def _add(op, inputs, constants):
    return sum(b[0] for b in inputs), sum(b[1] for b in inputs)


def _concat(op, inputs, constants):
    return _hull(*inputs, *(_of(constants[name]) for name, is_data in op.parts if not is_data))


def _scale(op, inputs, constants):
    (low, high), (c_low, c_high) = inputs[0], _of(op.constant)
    if op.op_type == "Mul":
        return _times(inputs[0], (c_low, c_high))
    if op.op_type == "Div":
        return _times(inputs[0], (1 / c_high, 1 / c_low)) if c_low > 0 else UNBOUNDED
    if op.op_type == "Sub":
        return (c_low - high, c_high - low) if op.reversed_operands else (low - c_high, high - c_low)
    return low + c_low, high + c_high  # Add, Sum


def _gate(op, inputs, constants):
    return _times(*inputs)


def _probabilities(op, inputs, constants):
    return 0.0, 1.0


def _norm(op, inputs, constants):
    return 0.0, np.inf


def _linear(op, inputs, constants):
    """A MatMul of two data tensors: sums of an unknown number of products, of their sign where they have one
    (a linear attention's ``ReLU(Q) ReLU(K)^T 1`` is non-negative), plus any bias absorbed (its epsilon); a linear
    op with a constant weight: unbounded."""
    if len(inputs) != 2:
        return UNBOUNDED
    low, high = _times(_times(*inputs), (0.0, np.inf))
    bias = (0.0, 0.0) if op.bias_values is None else _of(op.bias_values)
    return low + bias[0], high + bias[1]


def _quotient(op, inputs, constants):
    (low, high) = inputs[1]
    return _times(inputs[0], (1 / high, 1 / low)) if low > 0 else UNBOUNDED


BOUNDS = {"activation": _activation, "identity": _moves, "shape": _moves, "pad": _moves, "maxpool": _moves,
          "avgpool": _average, "add": _add, "concat": _concat, "scale": _scale, "gate": _gate,
          "softmax": _probabilities, "norm": _norm, "quotient": _quotient, "linear": _linear}


_SELF_GATE_GRID = -np.logspace(-4, 4, 8001)  # the negative signal values where x * g(x) is evaluated
_SELF_GATE_MARGIN = 1e-2  # the floor below the grid's minimum, relative: neighbours are 0.23% apart


def _self_gated(op, bounds, producers):
    """Bounds of ``x * g(x)``, a gate computed elementwise from its own signal (SiLU as ``x * Sigmoid(x)``,
    hard-swish as ``x * HardSigmoid(x)`` or ``x * Clip(x + 3, 0, 6) / 6``), or None for any other gate.

    The interval product of the two factors' bounds is unbounded below: it forgets that ``g`` is small
    where ``x`` is very negative.  The product's minimum over the negative signal values is read off a
    grid from -1e-4 to -1e4 (or the signal's own lower bound) instead; where the product has not come
    back to 0 at the grid's end there is no floor.  The floor chooses rules (``floored``), which still
    compute the ``x-`` part exactly; it is also a bound like any other, so a constant added after it may
    prove a tensor non-negative, for every method (rap included)."""
    gate, chain = op.inputs[op.gate], []
    while gate != op.signal:
        step = producers.get(gate)
        scalars = [getattr(step, "constant", 0), *getattr(step, "params", {}).values()]
        if step is None or step.kind not in ("activation", "scale", "identity") or len(step.inputs) != 1 \
                or any(np.size(c) != 1 for c in scalars):  # one function of x, the same at every element
            return None
        chain.append(step)
        gate = step.inputs[0]
    low = bounds.get(op.signal, UNBOUNDED)[0]
    x = _SELF_GATE_GRID[_SELF_GATE_GRID >= low]
    if not chain or not x.size:
        return None
    values = {op.signal: x}
    with np.errstate(all="ignore"):
        for step in reversed(chain):
            values[step.output] = step.forward(numpy_backend(), values)
        # one value per grid point: a constant of shape (1, 1, 1, 1) broadcasts the grid to rank 4
        product = (x * values[op.inputs[op.gate]]).reshape(-1)
    if not np.isfinite(product).all() or (low < _SELF_GATE_GRID[-1] and abs(product[-1]) > 1e-6 * abs(product.min())):
        return None
    # the grid's least sample lies above the least value between samples (by 3e-7 of it for SiLU): widened,
    # the floor stays a lower bound that later ops may add to (a SiLU plus 0.3 is non-negative)
    return float(min(product.min(), 0.0)) * (1 + _SELF_GATE_MARGIN), bounds[op.output][1]


def _floored(low, high):
    """An input with a floor: negative only down to a finite bound and unbounded above (a SiLU's,
    HardSwish's, Mish's or Elu's output, gated or pooled), so that its ``x-`` is small beside its ``x+``."""
    return -np.inf < low < 0 and high == np.inf


def _reaching(writers, sources):
    return tuple({w.name: w for t in sources for w in writers.get(t, ())}.values())


def mark_signed_inputs(graph) -> list[tuple[str, str, str]]:
    """Set ``signed_input`` and ``writes_signed_stream`` on every linear op of ``graph``, mark the
    positions ``floored``, ``signed`` and ``projection`` and pick every Mul's and data MatMul's gate; return
    what ``_refused_where_reached`` finds (norms and Divs that are no scale among them), as unsupported ops ``(name, op
    type, why)``."""
    bounds, producers = {}, {}
    norms = set()  # tensors computed from norms alone: non-negative ones scale a signal (GRN)
    writers = {}  # tensor -> the linear ops whose output reaches it with no rectifier on the way
    streams = {}  # the same, where a floor also counts as a rectifier
    for op in graph.ops:  # topological order: an op's inputs are decided before it
        given = [bounds.get(name, UNBOUNDED) for name in op.inputs]
        sources = op.inputs
        if getattr(op, "computes_norm", False) or (  # or arithmetic, pools and moves of norms only
                not isinstance(op, Linear) and op.inputs and all(name in norms for name in op.inputs)):
            norms.add(op.output)
        if isinstance(op, Gated):
            op.pick_gate(given, [name in norms for name in op.inputs])
            if op.gate is not None:
                sources = [op.signal]  # the gate scales the signal; relevance never reaches it
        decide = BOUNDS.get(op.kind)
        bounds[op.output] = decide(op, given, graph.constants) if decide is not None else UNBOUNDED
        if isinstance(op, Gate) and op.gate is not None:
            bounds[op.output] = _self_gated(op, bounds, producers) or bounds[op.output]
        producers[op.output] = op
        if isinstance(op, Linear):
            writers[op.output] = streams[op.output] = (op,)
        elif bounds[op.output][0] < 0:  # not rectified: the writers of its inputs reach through it
            writers[op.output] = _reaching(writers, sources)
            if not _floored(*bounds[op.output]):
                streams[op.output] = _reaching(streams, sources)
        if isinstance(op, Linear):
            low, high = bounds.get(op.inputs[0], UNBOUNDED)
            op.signed_input = low < 0
            if op.signed_input:
                op.positions = op.positions + (("floored",) if _floored(low, high) else ()) + ("signed",)
                for writer in writers.get(op.inputs[0], ()):
                    if "projection" not in writer.positions:
                        writer.positions = writer.positions + ("projection",)
                for writer in streams.get(op.inputs[0], ()):
                    writer.writes_signed_stream = True
    return _refused_where_reached(graph)


def _refused_where_reached(graph):
    """The ops with a reason in ``refused_where_reached`` (a Softmax, a norm, a Div by a divisor not proven
    positive, a move of the batch axis) that relevance reaches from the logits past no gate's gate input, as
    unsupported ops.  The walk goes through the ONNX nodes refused before too, so that all are listed at once."""
    producers = {op.output: op for op in graph.ops}
    seen, todo, found = set(), [graph.logits_name], []
    while todo:
        tensor = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        op = producers.get(tensor)
        if op is None:  # the graph input, or a node refused before
            node = graph.producer_node(tensor)
            todo.extend(t for t in (node.input if node is not None else ()) if t in graph.data_tensors)
            continue
        todo.extend([op.signal] if isinstance(op, Gated) and op.gate is not None else op.inputs)
        if op.refused_where_reached:
            found.append((op.name, op.op_type, op.refused_where_reached))
    order = {op.name: k for k, op in enumerate(graph.ops)}
    return sorted(found, key=lambda item: order[item[0]])
