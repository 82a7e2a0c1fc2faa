"""Small helpers for tests that build ONNX graphs by hand and run them in ONNX Runtime.

Only onnx, onnxruntime and numpy: no exporter, no framework.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def const(name, array, dtype=np.float32):
    """An initializer from a NumPy array (float32 unless told otherwise)."""
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def node(op_type, inputs, outputs, name=None, **attrs):
    """``helper.make_node`` with a default name (the op type and first output)."""
    if isinstance(outputs, str):
        outputs = [outputs]
    return helper.make_node(op_type, list(inputs), list(outputs),
                            name=name or f"{op_type}_{outputs[0]}", **attrs)


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, check=True):
    """A float32 model. ``inputs``/``outputs``: ``(name, shape)`` pairs; an output's shape may be
    None (shape inference fills it in)."""
    graph = helper.make_graph(
        list(nodes), "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    if any(s is None for _, s in outputs):  # the checker wants output shapes: infer them
        model = onnx.shape_inference.infer_shapes(model)
    if check:
        onnx.checker.check_model(model)
    return model


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model, feeds):
    """Every graph output of ``model`` for ``feeds`` (a dict, or one array for the single input)."""
    if not isinstance(feeds, dict):
        feeds = {model.graph.input[0].name: feeds}
    return session(model).run(None, feeds)


def run_values(model, feeds, names):
    """Values of the named tensors (intermediate ones too) for ``feeds``, as a dict."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    if not isinstance(feeds, dict):
        feeds = {model.graph.input[0].name: feeds}
    values = session(copy).run(list(names), feeds)
    return dict(zip(names, values))


def run_one_node(op_type, x, initializers=(), extra_inputs=(), opset=OPSET, **attrs):
    """Run a single ``op_type`` node on ``x`` (named ``x``); return its output."""
    inputs = ["x"] + list(extra_inputs)
    n = node(op_type, inputs, ["y"], **attrs)
    model = make_model([n], [("x", list(x.shape))], [("y", None)], initializers, opset=opset)
    return run(model, np.ascontiguousarray(x, dtype=np.float32))[0]
