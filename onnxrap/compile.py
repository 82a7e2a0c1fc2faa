"""``onnxrap compile``: a method traced into one ONNX graph with the model's own nodes.

The backward walk (``engine.propagate`` with the method's rules and the ops'
apply/adjoint/vjp) runs once through ``trace.TraceBackend``; what it records
is appended to the model's graph, so one ONNX Runtime session computes the
forward pass and the relevance.  Inputs: the model's input (batch axis free
where the model's is) and ``target``, int64, one class per sample or one for
all; a negative target, and the default ``[-1]``, explain the top class.
Outputs: ``logits`` and ``relevance`` (shaped like the input).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnxruntime as ort
from onnx import TensorProto, helper

from . import __version__
from .capture import EXTERNAL_WEIGHTS_BYTES, Capture, session_options
from .device import resolve as resolve_device
from .engine import Context, propagate
from .errors import InputError, ModelError, UnsupportedOpsError, first_line
from .methods import Method
from .ops.linear import Linear
from .ops.routing import IndexRouting
from .provenance import code_hash
from .trace import FREE_BATCH, TraceBackend, TraceError, Tracer

TARGET = "target"
OUTPUTS = ("logits", "relevance")
_MIN_OPSET = 11  # the tracer writes Pad with its pads as an input and Equal on floats
_PROTOBUF_LIMIT = 2**31 - 2**20  # above this a model must keep its weights in external data
# Fusions that fold constants into weights round differently from the eager engine's capture, whose
# every tensor is a graph output and so never fused; a ReLU mask flipped by that rounding would move
# a gradient by far more than float32 rounding.
_ROUNDING_FUSIONS = ["ConvBNFusion", "ConvAddFusion", "ConvMulFusion", "MatMulAddFusion", "QDQSelectorActionTransformer"]


def traced_attribute(method):
    """What the graph computes: the method's own ``attribute``, or for methods that run an inner
    method's backward walk on batches of changed inputs (integrated gradients, SmoothGrad) that
    walk, which the runner then calls on those batches."""
    if not method.batched:
        return method.attribute
    if type(method.inner).attribute is not Method.attribute:
        raise ModelError(f"{method.name} over {method.inner.name} cannot be compiled: only over a composite of rules")
    return lambda backprop, x, targets: backprop(method.inner, x, targets)


def sample_shape(graph, shape=None):
    """The non-batch dims of the input the graph is compiled for (static: the model's, or ``shape``)."""
    declared = graph.input_shape
    if shape is not None:
        return tuple(int(d) for d in shape)
    if declared is None or any(d is None for d in declared[1:]):
        raise InputError(f"{graph.label}: input {graph.input_name} has free dimensions "
                         f"{tuple('?' if d is None else d for d in (declared or ()))}; compile for a size (--size)")
    return tuple(declared[1:])


def compile_graph(graph, method, dtype="float32", shape=None, recompute=None, capture=None) -> onnx.ModelProto:
    """The model of ``graph`` with ``method``'s relevance appended, for inputs ``(N,) + shape``.

    ``dtype`` is the arithmetic of the rules; ``recompute`` (default: on for float64) runs onnxrap's
    own forward pass in it from the input, as the eager engine does.  ``capture``: the graph's
    Capture where one exists (it may hold the model's weights in a file of its own)."""
    dtype = np.dtype(dtype)
    recompute = dtype == np.float64 if recompute is None else recompute
    problems = graph.problems()  # what the Explainer refuses, refused with the same line
    if problems:
        raise ModelError(f"{graph.label}: {problems[0]}")
    method.check(graph)
    opset = next((o.version for o in graph.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _MIN_OPSET:
        raise ModelError(f"{graph.label}: opset {opset}: compile needs opset {_MIN_OPSET} or newer")
    dims = sample_shape(graph, shape)
    fixed = graph.fixed_batch
    batch = fixed or FREE_BATCH
    # One capture run on zeros gives every tensor's shape and type (shape inference may not).
    capture = capture or Capture(graph, resolve_device("cpu"))
    probe = capture.run(np.zeros((fixed or 1,) + dims, dtype=_input_dtype(graph)))
    if fixed is None:  # a graph for any batch size holds one sample's index map
        why = "routes along the batch axis, which a graph for any batch size cannot hold (the eager engine explains it)"
        routed = [(op.name, op.op_type, why) for op in graph.ops
                  if isinstance(op, IndexRouting) and op.each_sample(probe[op.inputs[0]].shape[1:]) is None]
        if routed:
            raise NotCompilable(routed)
    # Ops that read or write a batch of one with a longer first axis, where the batch was merged with another
    # (dynamo's transpose of attention's keys through (N * heads, T, d)): a graph for any batch size cannot say
    # how, so one whose forward or rule the method runs is NotCompilable; off the walk (a gate's branch) they
    # are only the model's own nodes.
    merged = {op.name for op in graph.ops if fixed is None and any(
        t in probe and probe[t].ndim >= 2 and probe[t].shape[0] != 1 for t in [*op.inputs, op.output])}
    bk = TraceBackend(free_batch=fixed is None)
    with Tracer(batch, fixed is None, opset) as tr:
        x = tr.input(graph.input_name, (batch,) + dims, probe[graph.input_name].dtype)
        tr.take_batch_size_from(x)
        # The probe ran at a fixed batch as it is; a free batch is the first axis (a tensor that moves
        # it, as Reshape(-1), cannot be traced for any batch size, and tracing its reshape says so).
        raw = {name: x if name == graph.input_name else
               tr.input(name, v.shape if fixed else (batch,) + v.shape[1:], v.dtype) for name, v in probe.items()}
        values = {name: s.astype(dtype) if np.issubdtype(s.dtype, np.floating) else s for name, s in raw.items()}
        ctx = Context(bk, values, graph.constants)
        try:
            for op in graph.ops:  # tensors inside fused nodes, and float64's own forward pass
                if op.synthetic or recompute:
                    _check_batch_kept(op, merged)
                    ctx[op.output] = _traced(op, "its forward pass", lambda op=op: op.forward(bk, ctx))
            logits = ctx[graph.logits_name]
            top = logits.reshape(batch, -1).argmax(axis=1)
            target = tr.input(TARGET, (batch,), np.int64)
            chosen = bk.xp.where(target < 0, top, target)
            classes = tr.const(np.arange(logits.size // batch, dtype=np.int64).reshape(1, -1))
            hot = (chosen.reshape(batch, 1) == classes).astype(dtype).reshape(logits.shape)  # engine.one_hot

            def backprop(method_, xs, ts):  # xs, ts: always the graph's input and targets here
                seed = hot * logits if method_.seed_kind == "logit" else hot  # as Method.seed
                return propagate(graph, _OpNamingRules(method_, merged), ctx, seed)

            relevance = traced_attribute(method)(backprop, x, chosen)
        except TraceError as exc:
            raise ModelError(f"{graph.label}: method {method.name} cannot be compiled: {exc}") from None
        model_logits = raw[graph.logits_name]  # the model's own, as the eager engine reports them
        if graph.logits_name != "logits":
            model_logits = tr.node("Identity", [model_logits], model_logits.shape, model_logits.dtype)
        outputs = [model_logits,
                   tr.node("Identity", [relevance], relevance.shape, relevance.dtype)]
    model = _assemble(graph, tr, outputs, fixed, method, dtype, dims, capture.weights_dir)
    model.metadata_props.add(key=SHARED_KEY, value=json.dumps(_shared_weights(graph, tr)))
    return model


def _check_batch_kept(op, merged):
    if op.name in merged:
        raise NotCompilable([(op.name, op.op_type, "merges the batch axis with another, which a graph for any "
                                                   "batch size cannot hold (the eager engine explains it)")])


def _traced(op, what, run):
    """``run()``; a part the tracer cannot express makes ``op`` NotCompilable (the eager engine explains it)."""
    try:
        return run()
    except TraceError as exc:
        raise NotCompilable([(op.name, op.op_type, f"{what} cannot be traced ({exc})")]) from None


class _OpNamingRules:
    """A method whose rules, where the tracer cannot express one, name the op (``_traced``); as do the ops of
    ``merged`` (names) that the walk reaches."""

    def __init__(self, method, merged):
        self.method = method
        self.merged = merged

    def rule_for(self, op):
        _check_batch_kept(op, self.merged)
        rule = self.method.rule_for(op)
        return lambda op_, ctx, R: _traced(op, f"its rule {rule!r}", lambda: rule(op_, ctx, R))


SHARED_KEY = "onnxrap.shared_weights"


def _shared_weights(graph, tr):
    """Initializers that are an op's W+ or W- as the eager engine holds them (or its transpose):
    ``{name: [op, part, transposed]}``.
    An Explainer hands its own arrays to ONNX Runtime for them instead of a second copy."""
    shared = {}
    for op in graph.ops:
        if isinstance(op, Linear) and op.master is not None:  # attention's weights are data
            for part in ("pos", "neg"):
                array = getattr(op.master, part)
                for transposed, view in ((False, array), (True, array.T)):
                    name = tr.named(view) if view.flags.c_contiguous else None
                    if name is not None:
                        shared[name] = [op.name, part, transposed]
    return shared


def shared_initializers(graph, path, dtype):
    """``{initializer name: array}`` for a compiled file: the ops' weight parts it shares, where the
    compiled arithmetic is the weights' own dtype (no copy then)."""
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    ops = {op.name: op for op in graph.ops}
    out = {}
    for name, (op_name, part, transposed) in json.loads(meta.get(SHARED_KEY, "{}")).items():
        array = getattr(ops[op_name].master, part) if op_name in ops else None
        if array is not None and array.dtype == dtype:
            out[name] = array.T if transposed else array
    return out


def _input_dtype(graph):
    return onnx.helper.tensor_dtype_to_np_dtype(graph.input_type)


def _assemble(graph, tr, outputs, fixed, method, dtype, dims, weights_dir):
    src = graph.model.graph
    taken = {t for n in src.node for t in n.output} | {i.name for i in src.input}
    clash = sorted(n for n in OUTPUTS if n in taken and n != graph.logits_name)
    if clash:
        raise ModelError(f"{graph.label}: the model has a tensor named {clash[0]!r}, a name the compiled graph "
                         "outputs; rename it")
    nodes = list(src.node) + tr.nodes
    renamed = {}
    for sym, name in zip(outputs, OUTPUTS):
        renamed[sym.name] = name
    for node in tr.nodes:
        node.output[:] = [renamed.get(o, o) for o in node.output]
    # Keep only what the outputs need (the model's softmax and other heads go).
    producer = {o: n for n in nodes for o in n.output}
    needed, todo, keep = set(), list(OUTPUTS), set()
    while todo:
        t = todo.pop()
        if t in needed:
            continue
        needed.add(t)
        n = producer.get(t)
        if n is not None and id(n) not in keep:
            keep.add(id(n))
            todo.extend(i for i in n.input if i)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    todo.extend(i.name for i in a.g.input)
    nodes = [n for n in nodes if id(n) in keep]
    inits = [i for i in src.initializer if i.name in needed] + [i for i in tr.initializers if i.name in needed]

    x_info = onnx.ValueInfoProto()
    x_info.CopyFrom(next(i for i in src.input if i.name == graph.input_name))
    shape = x_info.type.tensor_type.shape
    del shape.dim[:]
    for d in ((fixed or "N"),) + dims:
        if isinstance(d, str):
            shape.dim.add().dim_param = d
        else:
            shape.dim.add().dim_value = d
    target_info = helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["T"])
    default_target = onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), TARGET)
    logits_info = helper.make_tensor_value_info("logits", helper.np_dtype_to_tensor_dtype(outputs[0].dtype),
                                                [fixed or "N", *outputs[0].shape[1:]])
    rel_info = helper.make_tensor_value_info("relevance", helper.np_dtype_to_tensor_dtype(outputs[1].dtype),
                                             [fixed or "N", *dims])
    g = helper.make_graph(nodes, f"{src.name or 'model'}+{method.name}", [x_info, target_info],
                          [logits_info, rel_info], inits + [default_target])
    model = helper.make_model(g, opset_imports=list(graph.model.opset_import), ir_version=max(graph.model.ir_version, 4))
    if weights_dir is not None:  # the copies take their values back from the capture's weights file
        onnx.external_data_helper.load_external_data_for_model(model, weights_dir)
    for key, value in {"onnxrap.version": __version__, "onnxrap.method": method.label,
                       "onnxrap.dtype": str(dtype), "onnxrap.input": graph.input_name}.items():
        model.metadata_props.add(key=key, value=value)
    return model


def weight_bytes(model):
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save(model, path, external_above=_PROTOBUF_LIMIT):
    """Write ``model``; one whose weights pass ``external_above`` bytes (default: the protobuf limit)
    keeps them in ``PATH.data`` beside it, which ONNX Runtime also loads without a second copy."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if weight_bytes(model) > external_above:
        onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
    return path


class NotCompilable(UnsupportedOpsError):
    """Ops the eager engine explains but the tracer cannot express (all listed at once)."""


class MissingKernels(ModelError):
    """ONNX Runtime lacks a kernel the graph needs on this provider (CPU Conv in float64)."""


class CompiledModel:
    """An ONNX Runtime session of a compiled graph: ``run(x, targets) -> (logits, relevance)``."""

    def __init__(self, source, providers=("CPUExecutionProvider",), label="compiled model", shared=None):
        """``shared``: ``{initializer name: array}`` ONNX Runtime reads in place of the file's copy."""
        self.label = label
        try:
            if isinstance(source, onnx.ModelProto):
                if weight_bytes(source) > _PROTOBUF_LIMIT:
                    raise ModelError(f"{label}: save a compiled model over 2 GB before loading it")
                source = source.SerializeToString()
            else:
                source = str(source)
            options = session_options(spin=True)
            # Pre-packing copies each weight once per node reading it (W+ feeds a MatMul and its adjoint
            # Gemm): VGG-16 would need 3.2 GB instead of 2.3, for no measurable speed.
            options.add_session_config_entry("session.disable_prepacking", "1")
            # The memory plan reserves one block for the thousands of temporaries at once; without it the
            # arena reuses freed ones: VGG-16 peaks at 2.86 GB instead of 3.05, and runs no slower.
            options.enable_mem_pattern = False
            # ORT's buffer-reuse planner costs seconds per thousand nodes at session creation (Inception-V3,
            # 5,685 nodes: 9.6 s of 10.6); without it the arena still hands freed blocks to later ops, and
            # peak memory and run time stay the same (bench/README.md).
            options.enable_mem_reuse = False
            self._shared = [(name, ort.OrtValue.ortvalue_from_numpy(a)) for name, a in (shared or {}).items()]
            for name, value in self._shared:  # the arrays outlive the session: the ops hold them
                options.add_initializer(name, value)
            self.session = ort.InferenceSession(source, options, providers=list(providers),
                                                disabled_optimizers=_ROUNDING_FUSIONS)
        except ModelError:
            raise
        except Exception as exc:
            if "Could not find an implementation" in str(exc):
                raise MissingKernels(f"{label}: ONNX Runtime has no kernel for it: {first_line(exc)}") from None
            raise ModelError(f"{label}: ONNX Runtime cannot load the compiled graph: {first_line(exc)}") from None
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, x, targets=None):
        """Logits and relevance for the batch ``x``; ``targets``: None (top classes) or one int per sample."""
        feed = {self.input_name: x}
        if targets is not None:
            feed[TARGET] = np.asarray(targets, dtype=np.int64).reshape(-1)
        try:
            logits, relevance = self.session.run(list(OUTPUTS), feed)
        except Exception as exc:
            raise InputError(f"{self.label}: ONNX Runtime rejects an input of shape {tuple(np.shape(x))}: "
                             f"{first_line(exc)}") from None
        return logits, relevance


# -- the on-disk cache ---------------------------------------------------------------------
def cache_dir() -> Path:
    """``$ONNXRAP_CACHE``, else the user's cache folder (``$XDG_CACHE_HOME`` or ~/.cache)/onnxrap."""
    if os.environ.get("ONNXRAP_CACHE"):
        return Path(os.environ["ONNXRAP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxrap"


def model_hash(graph):
    h = hashlib.sha256()
    if graph.path is not None and graph.owns_model:
        with open(graph.path, "rb") as f:
            for block in iter(lambda: f.read(2**22), b""):
                h.update(block)
        for init in graph.model.graph.initializer:  # weights in external files
            h.update(init.raw_data)
    else:
        h.update(graph.model.SerializeToString())
    return h.hexdigest()


def method_key(method):
    """Everything that makes a method compute what it does: its class, seed, options and every rule
    (a custom composite may reuse a registered name with other rules)."""
    def describe(value):
        if isinstance(value, Method):
            return f"{type(value).__name__}({describe(vars(value))})"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in sorted(value.items(), key=str)) + "}"
        return repr(value)
    return describe(method)


def cache_key(graph_hash, method, dtype, shape, recompute, input_name, output_name):
    text = "|".join([graph_hash, code_hash(), method_key(method), str(np.dtype(dtype)),
                     "x".join(map(str, shape)), str(recompute), str(input_name), str(output_name)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_compile(graph, graph_hash, method, dtype, shape, recompute, capture=None):
    """The path of the compiled graph for these settings, compiling it on a cache miss."""
    key = cache_key(graph_hash, method, dtype, shape, recompute, graph.input_name, graph.output_name)
    folder = cache_dir()
    path = folder / f"{key}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        model = compile_graph(graph, method, dtype, shape, recompute, capture)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            staged = save(model, Path(tmp) / path.name, external_above=EXTERNAL_WEIGHTS_BYTES)
            data = staged.with_name(staged.name + ".data")
            if data.exists():
                os.replace(data, folder / data.name)
            os.replace(staged, path)
    return path
