"""The backward walk: relevance flows from the logits to the input, one rule per op."""
from __future__ import annotations

import numpy as np


class Context(dict):
    """Captured tensors by name, on the backend, plus what rules need besides.

    ``contrast``: None, or per sample 1 where the seed is a contrast's (docs/rules.md, contrast), else 0.
    """

    def __init__(self, bk, values, constants, contrast=None):
        super().__init__(values)
        self.bk = bk
        self.constants = constants
        self.contrast = contrast
        self.shapes = {name: tuple(v.shape) for name, v in values.items()}


def recompute(graph, ctx):
    """Overwrite every op's output in ``ctx`` with onnxrap's own forward pass, in ``ctx``'s dtype.

    Returns the largest deviation of the recomputed logits from the captured
    ones, relative to the largest captured logit.
    """
    captured = ctx[graph.logits_name]
    for op in graph.ops:
        ctx[op.output] = op.forward(ctx.bk, ctx)
    xp = ctx.bk.xp
    worst = xp.stack([xp.abs(ctx[graph.logits_name] - captured).max(), xp.abs(captured).max()])
    deviation, scale = ctx.bk.to_host(worst)  # one trip to the host
    return float(deviation) / max(float(scale), 1e-30)


def propagate(graph, method, ctx, seed, trace=None):
    """Walk ``graph.ops`` backwards from ``seed`` at the logits; return relevance at the input.

    A tensor read by several ops gets the sum of their relevances.  ``trace``,
    if given, is called as ``trace(op, R, R_inputs)`` at every op.
    """
    relevance = {graph.logits_name: seed}
    for op in reversed(graph.ops):
        R = relevance.pop(op.output, None)
        if R is None:
            continue
        R_inputs = method.rule_for(op)(op, ctx, R)
        if trace is not None:
            trace(op, R, R_inputs)
        for name, r in zip(op.inputs, R_inputs):
            if r is not None:
                relevance[name] = relevance[name] + r if name in relevance else r
    R = relevance.get(graph.input_name)
    return ctx.bk.xp.zeros_like(ctx[graph.input_name]) if R is None else R


def one_hot(bk, shape, targets, dtype):
    """``shape``-sized zeros with 1 at each sample's target (logits may carry trailing 1-axes)."""
    n = shape[0]
    flat = np.zeros((n, int(np.prod(shape[1:]))), dtype=dtype)
    flat[np.arange(n), np.asarray(targets)] = 1
    return bk.to_device(flat.reshape(shape))
