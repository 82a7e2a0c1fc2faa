"""Quantised activations: ``QuantizeLinear`` and ``DequantizeLinear`` on the data path, with constant
per-tensor scales (the QDQ form tf2onnx writes for a fully int8 TFLite model, and ONNX Runtime's static
quantiser; tf2onnx moves Transposes and Reshapes between the two), and ``DynamicQuantizeLinear`` read by a
``DequantizeLinear`` (TFLite's dynamic-range quantisation of a Dense layer's input).

Each is an elementwise, non-decreasing activation: QuantizeLinear ``clip(rint(v / s) + z, qmin, qmax)``, the
integer grid of the zero point's type; DequantizeLinear ``(v - z) * s``.  Relevance passes them as any
activation's; the gradient of the rounding is taken as 1 / s within the grid's range and 0 beyond (the
straight-through estimator: rounding's own derivative is 0 almost everywhere), so that a Quantize ->
Dequantize pair has the slope of a clip.  Being monotone, each maps its input's bounds to its output's
(signs.py): a quantised ReLU output stays non-negative, and a quantised sigmoid stays a gate.  Quantised
*weights* (a DequantizeLinear of constants) are folded to constants by the graph.
"""
from __future__ import annotations

import numpy as np
import onnx

from . import Unsupported, register
from .elementwise import Activation


def _grid(graph, node):
    """``(scale, zero point, lowest q, highest q)`` of a Quantize/DequantizeLinear node's constant,
    per-tensor quantisation."""
    def constant(i):
        if node.input[i] not in graph.constants:
            raise Unsupported(f"input {i} ({node.input[i]}) must be a constant (a scale computed from the data "
                              "is explained only as DynamicQuantizeLinear writes it)")
        return np.asarray(graph.constants[node.input[i]])

    scale = constant(1).astype(np.float64)
    # no zero point: the grid of opset 21's output_dtype, else uint8
    grid = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), onnx.TensorProto.UINT8)
    zero = constant(2) if len(node.input) > 2 and node.input[2] else \
        np.zeros((), onnx.helper.tensor_dtype_to_np_dtype(grid))
    if scale.size != 1 or zero.size != 1:
        raise Unsupported("a scale per channel on the data path (only per-tensor quantisation is explained)")
    if not np.issubdtype(zero.dtype, np.integer):
        raise Unsupported(f"quantisation to {zero.dtype} (only integer grids are explained)")
    info = np.iinfo(zero.dtype)
    return float(scale), float(zero), float(info.min), float(info.max)


def _quantize_values(xp, v, scale, zero, low, high):
    return xp.clip(xp.rint(v / scale) + zero, low, high)


def _quantize_slope(xp, v, scale, zero, low, high):
    q = v / scale + zero
    return xp.where((q >= low - 0.5) & (q <= high + 0.5), 1 / scale, 0.0).astype(v.dtype)


def _dequantize_values(xp, v, scale, zero, low, high):
    return (v - zero) * scale


def _dequantize_slope(xp, v, scale, zero, low, high):
    return scale  # v holds integers where ONNX Runtime computed it: the slope is a float of its own


def _dynamic_round(xp, v):
    """DynamicQuantizeLinear then DequantizeLinear: uint8 grid fitted to the whole tensor's range and 0 (as
    ONNX Runtime computes it, over every sample of the batch at once)."""
    top, bottom = xp.maximum(v.max(), 0), xp.minimum(v.min(), 0)
    scale = xp.maximum((top - bottom) / 255, np.finfo(v.dtype).tiny)  # an all-zero tensor stays 0
    zero = xp.clip(xp.rint(-bottom / scale), 0, 255)
    return (xp.clip(xp.rint(v / scale) + zero, 0, 255) - zero) * scale


@register("DynamicQuantizeLinear")
def _dynamic_quantize(v):
    readers = [n for n in v.graph.model.graph.node if set(v.node.output) & set(n.input)]
    if any(r.op_type != "DequantizeLinear" or list(r.input) != list(v.node.output) for r in readers):
        raise Unsupported("its outputs are read by other than a DequantizeLinear of all three")
    return []  # each DequantizeLinear reading it is the pair, a rounding of this node's input


@register("QuantizeLinear", "DequantizeLinear")
def _quantization(v):
    producer = v.graph.producer_node(v.node.input[0])
    if v.op_type == "DequantizeLinear" and producer is not None and producer.op_type == "DynamicQuantizeLinear":
        # TFLite's dynamic-range quantisation of a Dense layer's input: the grid spans the tensor's range,
        # so nothing saturates and the straight-through slope is 1 everywhere; the sign is kept (0 is on it)
        return Activation(v.name, "DynamicQuantizeLinear+DequantizeLinear", [producer.input[0]], v.node.output[0],
                          _dynamic_round, lambda xp, x: 1.0)
    scale, zero, low, high = _grid(v.graph, v.node)
    params = {"scale": scale, "zero": zero, "low": low, "high": high}
    values, slope = (_quantize_values, _quantize_slope) if v.op_type == "QuantizeLinear" else \
        (_dequantize_values, _dequantize_slope)
    # No range of its own: the grid's saturation is no bound the network was built with (signs.py maps the
    # input's finite bounds through it, so a quantised sigmoid is still a gate and a quantised ReLU no gate)
    return Activation(v.name, v.op_type, [v.node.input[0]], v.node.output[0], values, slope,
                      keeps_nonnegative=False, params=params, monotone=True)
