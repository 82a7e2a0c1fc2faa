"""Load an ONNX classifier and turn it into a DAG of the ops that carry data.

Steps: read and check the model; pick the image input; rewrite tensors whose
batch axis the exporter moved batch-first (``batch_first.py``: sequence-first
attention); pick the logits (a terminal Softmax is skipped); mark the tensors that depend on the input's
*values* (``Shape``/``Size`` only read its shape); evaluate everything else
as constants; recognise LayerNorms written out node by node and attention's q, k
and v split off past the batch axis (``passes.py``);
parse each data node into an ``Op``; canonicalise with the named passes of
``passes.py``; and build a networkx DAG with the position of
every linear op (``head``: no linear op after it, ``input``: none before it).
The caller's ``ModelProto`` is read, never changed.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from . import ops as op_registry
from .errors import InputError, ModelError, UnsupportedOpsError, first_line
from .ops.linear import Linear
from .ops.structure import Concat
from .batch_first import NotRewritten, batch_axis_restored
from .passes import (CANONICAL_PASSES, OpIndex, batchnorms_over_tokens, heads_unbound, layernorms_written_out,
                     logits_behind_squashers)
from .signs import mark_signed_inputs

# Inputs that only lend their shape or type: a data tensor there does not make the output data.
SHAPE_OR_TYPE_INPUTS = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}
# The input types onnxrap explains, and the NumPy type an input is fed to ONNX Runtime as.
FLOAT_INPUTS = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
                onnx.TensorProto.FLOAT16: np.float16}


def load_model(source) -> tuple[onnx.ModelProto, str, Path | None]:
    """Read a path, bytes or ModelProto; return the model, a label for messages and its file, if any."""
    path = None
    if isinstance(source, onnx.ModelProto):
        return _checked(source, "<model>", None), "<model>", None
    if isinstance(source, (bytes, bytearray)):
        label = "<bytes>"
        try:
            model = onnx.load_model_from_string(bytes(source))
        except Exception as exc:
            raise ModelError(f"{label}: not an ONNX model ({first_line(exc)})") from None
    else:
        path = Path(os.fspath(source))
        label = str(path)
        if path.is_dir():
            raise ModelError(f"{label}: is a folder, not a file (give the .onnx file)")
        if not path.is_file():
            raise ModelError(f"{label}: no such model file")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            if _readable_without_external_data(path):
                raise ModelError(f"{label}: its external weights cannot be read ({first_line(exc)}); keep the "
                                 "files the exporter wrote beside the model") from None
            raise ModelError(f"{label}: not an ONNX model or truncated ({first_line(exc)})") from None
    return _checked(model, label, path), label, path


def _readable_without_external_data(path) -> bool:
    """Whether the file is a model whose own bytes parse, so that what failed is its external weights."""
    try:
        onnx.load(str(path), load_external_data=False)
        return True
    except Exception:
        return False


def _checked(model, label, path):
    if not model.graph.node:
        raise ModelError(f"{label}: not an ONNX model (the graph has no nodes)")
    try:  # from the file where there is one: serialising a large model again costs seconds
        onnx.checker.check_model(str(path) if path is not None else model)
    except Exception as exc:
        raise ModelError(f"{label}: the ONNX checker rejects the model: {first_line(exc)}") from None
    return model


def shown_shape(shape) -> str:
    """A declared shape as messages and reports write it: free dimensions as ``?``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]" if shape else "unknown"


def _skeleton(model, folded=None):
    """The model without its large initializers (declared as inputs instead), for shape inference; ``folded``:
    ``{tensor: value}`` computed by folding, written as Constant nodes in place of the nodes that computed them
    (onnx's data propagation reads those)."""
    g = model.graph
    nodes = []
    for node in g.node:
        outputs = [t for t in node.output if t]
        if folded and outputs and all(t in folded for t in outputs):
            nodes += [onnx.helper.make_node("Constant", [], [t],
                                            value=numpy_helper.from_array(np.asarray(folded[t]), t)) for t in outputs]
        else:
            nodes.append(node)
    declared = {i.name for i in g.input}
    small, big = [], []
    for init in g.initializer:
        if np.prod(init.dims, dtype=np.int64) <= 4096:
            small.append(init)
        elif init.name not in declared:
            big.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    graph = onnx.helper.make_graph(nodes, g.name, list(g.input) + big, g.output, small, value_info=g.value_info)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)



def _inferred_shapes(model, types=None):
    """``{tensor: shape}`` from an inferred model's value infos (free dimensions as None); ``types``, if
    given, gets each tensor's element type."""
    shapes = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if types is not None:
            types[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
                                    for d in t.shape.dim)
    return shapes


def _fill_free_dimensions(shapes, model, input_name, folded=None):
    """Fill in the dimensions of ``shapes`` that shape inference left free but that do not depend on the
    batch size: inferred again with the values of shape computations propagated, at batch sizes 2 and 3
    where the batch is free (a dimension the same in both is fixed), else once.  Exporters compute
    attention's 1 / sqrt(head size) from the shape of a tensor reshaped to a size read off the input's shape
    (TorchScript's ``x.shape[-1] ** -0.5``).  ``folded``: values folded so far (``_skeleton``)."""
    runs = [_shapes_at(model, input_name, batch, folded) for batch in
            ((2, 3) if _free_batch(model, input_name) else (None,))]
    if None in runs:
        return  # shapes only help
    for name, shape in shapes.items():
        seen = [run.get(name) for run in runs]
        if None in seen or any(len(s) != len(shape) for s in seen):
            continue
        shapes[name] = tuple(d if d is not None else (ds[0] if len(set(ds)) == 1 else None)
                             for d, *ds in zip(shape, *seen))


def _with_sample_shape(model, label, input_name, sample_shape, copy):
    """``model`` with ``input_name``'s free dimensions after the batch set to ``sample_shape``'s (a copy where
    ``copy``).  optimum's exports leave channels, height and width free and compute window pads and position
    biases from them: those fold into constants only at one size."""
    if copy:
        model, original = onnx.ModelProto(), model
        model.CopyFrom(original)
    vi = next(vi for vi in model.graph.input if vi.name == input_name)
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != len(sample_shape) + 1:
        raise InputError(f"{label}: input {input_name} has rank {len(dims)}, a sample of shape "
                         f"{tuple(sample_shape)} rank {len(sample_shape) + 1} with its batch")
    for dim, size in zip(list(dims)[1:], sample_shape):
        if not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = int(size)
    return model


def _free_batch(model, input_name) -> bool:
    declared = next((vi.type.tensor_type.shape.dim for vi in model.graph.input if vi.name == input_name), [])
    return bool(declared) and not declared[0].HasField("dim_value")


def _shapes_at(model, input_name, batch, folded=None):
    """``{tensor: shape}`` inferred with the values of shape computations propagated, the input's free batch
    set to ``batch`` (None: as declared); None where inference fails."""
    skeleton = _skeleton(model, folded)
    for vi in skeleton.graph.input:
        if vi.name == input_name and batch is not None:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_value = batch
    try:
        return _inferred_shapes(onnx.shape_inference.infer_shapes(skeleton, data_prop=True))
    except Exception:
        return None


def _evaluated(node, known, opset):
    """The outputs of the ONNX ``node`` from the values ``known`` of its inputs (onnx's reference
    evaluator), as NumPy arrays; None where it cannot evaluate them."""
    from onnx.reference import ReferenceEvaluator

    try:
        ins = [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None) for t in node.input if t]
        outs = [onnx.helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None) for t in node.output if t]
        sub = onnx.helper.make_model(onnx.helper.make_graph([node], "fold", ins, outs), opset_imports=opset)
        return [np.asarray(v) for v in ReferenceEvaluator(sub).run(None, {t: known[t] for t in node.input if t})]
    except Exception:
        return None


def data_tensors(nodes, input_name) -> set[str]:
    """The tensors that depend on the values of the input ``input_name`` (not only on its shape or type)."""
    data = {input_name}
    for node in nodes:
        ignored = SHAPE_OR_TYPE_INPUTS.get(node.op_type, ())
        if any(t in data for k, t in enumerate(node.input) if k not in ignored):
            data.update(t for t in node.output if t)
    return data


def _node_names(graph) -> list[str]:
    """Every node's name; unnamed nodes get ``OpType_index`` so messages can name them."""
    seen, names = set(), []
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        if name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        names.append(name)
    return names


def _dequantized(node, inputs):
    """``(x - zero_point) * scale`` of constant inputs, with a scale per tensor or along ``axis``; None for
    blocked quantization (opset 21's ``block_size``), which is left to onnx's evaluator."""
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("block_size", 0):
        return None
    x, scale = np.asarray(inputs[0]), np.asarray(inputs[1])
    zero = np.asarray(inputs[2]) if len(inputs) > 2 and inputs[2] is not None else np.zeros((), x.dtype)
    if scale.ndim == 1 and x.ndim > 1:  # one scale per index of the axis
        shape = [1] * x.ndim
        shape[attrs.get("axis", 1) % x.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((x.astype(np.float32) - zero.astype(np.float32)) * scale).astype(scale.dtype)


class Graph:
    """The canonical DAG of a classifier: ``ops`` in topological order, ``dag`` over op names."""

    def __init__(self, source, input_name: str | None = None, output_name: str | None = None, strict=True,
                 sample_shape=None):
        """``strict=False`` records unsupported nodes in ``unsupported`` instead of raising (for inspect).
        ``sample_shape``: the shape of one sample, which fixes the input's free dimensions after the batch."""
        model, self.label, self.path = load_model(source)
        self.owns_model = not isinstance(source, onnx.ModelProto)  # a caller's proto is never changed
        if sample_shape is not None:
            model = _with_sample_shape(model, self.label, self._pick_input(model.graph, input_name), sample_shape,
                                       copy=not self.owns_model)
            self.owns_model = True
        self.model = model
        self.weights_home = None  # a TemporaryDirectory holding the weights, once a Capture moved them there
        nodes, names = self._read(model)
        self.input_name = self._pick_input(model.graph, input_name)
        # batch_first.py: nn.MultiheadAttention's sequence-first tensors rewritten batch-first, a new model whose
        # outputs are the exported one's; batch_first_nodes: how many ONNX nodes it rewrote (inspect says so)
        self.batch_first_nodes, not_rewritten = 0, None
        try:
            restored = batch_axis_restored(model, self.input_name, data_tensors(nodes, self.input_name),
                                           self._shapes.get(self.input_name),
                                           self._types.get(self.input_name) or onnx.TensorProto.FLOAT)
        except NotRewritten as why:
            restored, not_rewritten = None, str(why)
        if restored is not None:
            (model, self.batch_first_nodes), self.owns_model = restored, True
            self.model = model
            nodes, names = self._read(model)
        if any(n.op_type == "Shape" and None in self._shapes.get(n.input[0], (None,))[1:] for n in nodes):
            _fill_free_dimensions(self._shapes, model, self.input_name)
        # explained_through: the squashers and roundings between the logits and the output (inspect names them)
        self.output_name, (self.logits_name, self.explained_through) = self._pick_output(model.graph, nodes,
                                                                                         output_name)

        self.data_tensors = data_tensors(nodes, self.input_name)
        if self.logits_name not in self.data_tensors:
            raise ModelError(f"{self.label}: output {self.logits_name} does not depend on input {self.input_name}")
        relevant = self._data_ancestors(nodes)
        self.constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        self.per_sample = set()  # constants folded to their value for one sample (_fold_per_sample)
        unresolved = self._fold_constants(nodes, names, relevant)
        while unresolved:  # a folded bound (torch's free-batch ShuffleNet: each unit's split) fixes later shapes
            _fill_free_dimensions(self._shapes, model, self.input_name, self._folded_for_inference())
            left = self._fold_constants(nodes, names, relevant)
            unresolved = left if len(left) < len(unresolved) else []
        self.batch_sized = {}  # shapes that hold the batch size: tensor -> (value at batch 1, 1 where the batch is)
        while self._fold_per_sample(nodes, relevant):  # a value folded fixes the shapes of later ones (PiT's stages)
            pass
        self.folded_nodes = [nodes[i] for i in range(len(nodes)) if i not in relevant and
                             any(t in self.constants for t in nodes[i].output)]
        kept = {self.logits_name, *(o.name for o in model.graph.output)}
        fused = [(indices, op) for find in (layernorms_written_out, heads_unbound, batchnorms_over_tokens)
                 for indices, op in find(nodes, names, self.constants, self.static_shape, kept)
                 if relevant.issuperset(indices)]
        # fused_nodes: (op, ONNX node) for each node that one op stands for (inspect counts them apart)
        self.fused_nodes = [(op, nodes[i]) for indices, op in fused for i in sorted(indices)]
        self.data_nodes = [nodes[i] for i in sorted(relevant.difference(*(indices for indices, _ in fused)))]
        # what the data path reads (a Split's parts outside it get no op)
        self.read_on_data_path = {t for i in relevant for t in nodes[i].input} | {self.logits_name}
        self.ops, self.unsupported = self._parse(nodes, names, relevant, fused)
        self._canonicalise()
        self.dag = self._build_dag()
        self._mark_positions()
        # The ops hold what they need; keep only the constants read at run time (shapes, Concat parts).
        read = {name for op in self.ops if isinstance(op, Concat) for name, is_data in op.parts if not is_data}
        self.constants = {k: v for k, v in self.constants.items() if k in read or v.size <= 4096}
        self.unsupported += mark_signed_inputs(self)  # Softmaxes, norms, Divs that scale nothing, where reached
        if not_rewritten:  # the moves of the batch axis say why they were not rewritten batch-first
            self.unsupported = [(name, op_type, f"{why} (not rewritten batch-first: {not_rewritten})"
                                 if op_type == "Transpose" and why and "batch axis" in why else why)
                                for name, op_type, why in self.unsupported]
        if self.unsupported and strict:
            raise UnsupportedOpsError(self.unsupported)

    def _read(self, model):
        """The model's nodes and their names; its tensors' types and shapes as shape inference knows them."""
        try:
            inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
        except Exception:
            inferred = model  # shapes only help; the capture run checks everything
        self._types = {}
        self._shapes = _inferred_shapes(inferred, self._types)
        nodes = list(model.graph.node)
        self._node_producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}  # built once
        return nodes, _node_names(model.graph)

    # -- input and output ---------------------------------------------------
    def _pick_input(self, g, wanted):
        inits = {i.name for i in g.initializer}
        candidates = [i.name for i in g.input if i.name not in inits]
        if wanted is not None:
            if wanted not in candidates:
                raise ModelError(f"{self.label}: no input named {wanted!r} (inputs: {', '.join(candidates)})")
            others = [name for name in candidates if name != wanted]
            if others:  # ONNX Runtime runs a model only with every input fed; onnxrap feeds one
                raise ModelError(f"{self.label}: the model also needs input(s) {', '.join(others)}, which onnxrap "
                                 "cannot feed (an exporter that left constants as inputs writes such a model)")
            return wanted
        if not candidates:
            raise ModelError(f"{self.label}: the model has no data input (every graph input is a constant "
                             "initializer)")
        if len(candidates) != 1:  # --input NAME would only meet the refusal above
            raise ModelError(f"{self.label}: the model has {len(candidates)} data inputs "
                             f"({', '.join(candidates)}); onnxrap feeds one and ONNX Runtime runs a model only with "
                             "every input fed, so no --input NAME helps (an exporter that left constants as inputs "
                             "writes such a model)")
        return candidates[0]

    def _pick_output(self, g, nodes, wanted):
        outputs = [o.name for o in g.output]
        if wanted is not None and wanted not in outputs:
            raise ModelError(f"{self.label}: no output named {wanted!r} (outputs: {', '.join(outputs)})")
        output = wanted or outputs[0]
        return output, logits_behind_squashers(output, nodes, self._node_producer)

    # -- data and constants ---------------------------------------------------
    def _data_ancestors(self, nodes):
        """Indices of the data nodes the logits depend on."""
        producer = self._node_producer
        keep, todo = set(), [self.logits_name]
        while todo:
            t = todo.pop()
            i = producer.get(t)
            if i is None or i in keep or t not in self.data_tensors:
                continue
            keep.add(i)
            todo.extend(nodes[i].input)
        return keep

    def static_shape(self, name):
        shape = self._shapes.get(name)
        if name in self.constants:
            return tuple(np.shape(self.constants[name]))
        return shape

    def _unfolded(self, nodes, relevant):
        """``(the non-data tensors the data path reads that are no constant yet, the indices of the nodes that
        compute them)``, walking back from them to what is known: data or a constant."""
        known = lambda t: t in self.data_tensors or t in self.constants  # noqa: E731
        needed = {t for i in relevant for t in nodes[i].input if t and not known(t)}
        computing, todo = set(), list(needed)
        while todo:
            i = self._node_producer.get(todo.pop())
            if i is not None and i not in computing and i not in relevant:
                computing.add(i)
                todo.extend(t for t in nodes[i].input if t and not known(t))
        return needed, computing

    def _folded_for_inference(self):
        """The values folded so far that shape inference may read (``_skeleton``): the small ones computed by
        nodes, not those folded to one sample's value (their batch is not the model's)."""
        return {t: v for t, v in self.constants.items()
                if t in self._node_producer and v.size <= 4096 and t not in self.per_sample}

    def _fold_constants(self, nodes, names, relevant):
        """Evaluate every non-data node the data path reads, where its inputs are known; return the ones left."""
        _, order = self._unfolded(nodes, relevant)
        opset = [o for o in self.model.opset_import]
        partial = {}  # a Shape's output with free dimensions (None) -> the shape
        for i in sorted(order):
            node = nodes[i]
            if node.op_type == "CastLike" and node.input[1] in self.data_tensors:
                if node.input[0] in self.constants:  # the data tensor lends only its type
                    elem = self._types.get(node.input[1]) or onnx.TensorProto.FLOAT
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
                    self.constants[node.output[0]] = self.constants[node.input[0]].astype(dtype)
                continue
            if node.op_type in ("Gather", "Slice") and node.input[0] in partial:
                # static dimensions of a shape with free ones (attention's 1 / sqrt(head size) from x.shape[-1]):
                # the free ones stand as -1, which no dimension is, and must not be picked
                values = _evaluated(node, {**self.constants, node.input[0]: partial[node.input[0]]}, opset)
                if values is not None and (values[0] >= 0).all():
                    self.constants[node.output[0]] = values[0]
                continue
            if node.op_type in ("Shape", "Size"):
                shape = self._shapes.get(node.input[0])
                if shape is not None and None in shape and node.op_type == "Shape" and not node.attribute:
                    partial[node.output[0]] = np.array([-1 if d is None else d for d in shape], dtype=np.int64)
                if shape is None or None in shape:
                    continue  # dynamic: its value is known only per run
                shape = np.array(shape, dtype=np.int64)
                if node.op_type == "Size":
                    self.constants[node.output[0]] = np.array(shape.prod(), dtype=np.int64)
                else:
                    attrs = {a.name: a.i for a in node.attribute}
                    self.constants[node.output[0]] = shape[attrs.get("start", 0):attrs.get("end", len(shape)) or None]
                continue
            if not all(t in self.constants for t in node.input if t):
                continue
            if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
                # quantized weights (TFLite's dynamic range, QDQ models); onnx's evaluator has this op
                # only from opset 19, and the formula is the same at every opset for a scale per tensor or axis
                value = _dequantized(node, [self.constants[t] if t else None for t in node.input])
                if value is not None:
                    self.constants[node.output[0]] = value
                    continue
            values = _evaluated(node, self.constants, opset)
            for t, value in zip([t for t in node.output if t], values or ()):  # None: left for the capture run
                self.constants[t] = value
        return [i for i in order if not all(t in self.constants for t in nodes[i].output if t)]

    def _fold_per_sample(self, nodes, relevant):
        """Fold what the data path reads that depends on the free batch size only by repeating one value per
        sample: a class token or positional encoding broadcast to ``Shape(x)`` (CaiT's ``expand``, XCiT's and
        EdgeNeXt's ``repeat``), or a value that does not depend on it at all.  The shape computations are
        evaluated at batch sizes 1, 2 and 3; a float value that is the batch-1 value repeated along axis 0
        at both is folded to the batch-1 value, which every reader broadcasts back (an Add or Mul with data,
        a Concat along another axis, a MatMul); a value the same at all three is a constant; a vector of
        integers whose entries are the batch size, or a multiple of it, where they change with it is a shape
        with the batch in it
        (``batch_sized``: Resize's sizes ``Concat(Shape(x)[:2], size)``, ``F.interpolate(x, size=...)``), which
        index routing (ops/routing.py) evaluates at each batch size.  Returns whether a
        constant of the second kind was folded (then shape inference knows more, and a next round may fold more)."""
        model = self.model
        needed, pending = self._unfolded(nodes, relevant)
        if not needed or not _free_batch(model, self.input_name):
            return False
        opset = list(model.opset_import)
        folded = self._folded_for_inference()
        runs = []
        for batch in (1, 2, 3):
            # shape inference reads a value folded to one sample as what it is at this batch size
            repeated = {t: np.repeat(self.constants[t], batch, axis=0) for t in self.per_sample}
            shapes = _shapes_at(model, self.input_name, batch, {**folded, **repeated})
            if shapes is None:
                return False
            known = dict(self.constants)
            for i in sorted(pending):
                node = nodes[i]
                if node.op_type in ("Shape", "Size") and node.input[0] not in known:
                    shape = shapes.get(node.input[0])
                    if shape is None or None in shape:
                        continue
                    value = _evaluated(node, {node.input[0]: np.zeros(shape, np.float32)}, opset)
                elif all(t in known for t in node.input if t):
                    value = _evaluated(node, known, opset)
                else:
                    continue
                known.update(zip([t for t in node.output if t], value or ()))
            runs.append(known)
        constant = False
        for t in needed:
            one, *more = (run.get(t) for run in runs)
            if one is None or any(v is None for v in more):
                continue
            if all(v.shape == one.shape and np.array_equal(v, one) for v in more):
                self.constants[t] = one
                constant = True
            elif np.issubdtype(one.dtype, np.floating) and one.ndim >= 1 and one.shape[0] == 1 and all(
                    np.array_equal(v, np.repeat(one, batch, axis=0)) for v, batch in zip(more, (2, 3))):
                self.constants[t] = one
                self.per_sample.add(t)
                constant = True
            elif one.ndim == 1 and np.issubdtype(one.dtype, np.integer) and all(v.shape == one.shape for v in more):
                step = more[0] - one  # a shape with the batch size in it (Resize's sizes from Shape(x)), or a
                # multiple of it (Swin V2's windows merged into the batch: F.normalize's expand_as)
                if (step >= 0).all() and np.array_equal(more[1] - more[0], step) and \
                        np.array_equal(one[step != 0], step[step != 0]):
                    self.batch_sized[t] = (one, step)
        return constant

    def producer_node(self, tensor):
        """The ONNX node writing ``tensor``; None for the inputs and initializers."""
        i = self._node_producer.get(tensor)
        return None if i is None else self.model.graph.node[i]

    def require_constant(self, name):
        if name not in self.constants:
            raise op_registry.Unsupported(f"{name} must be a constant")
        return self.constants[name]

    # -- ops --------------------------------------------------------------------
    def _parse(self, nodes, names, relevant, fused):
        """Each data node's ops; each fused group's one op where its last node stands (its output's place)."""
        parsed, unsupported = [], []
        at_last = {max(indices): op for indices, op in fused}
        absorbed = {i for indices, _ in fused for i in indices}
        for i in sorted(relevant):
            node = nodes[i]
            if i in absorbed:
                if i in at_last:
                    parsed.append(at_last[i])
                continue
            view = op_registry.NodeView(node, self, names[i])
            try:
                if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                    raise op_registry.Unsupported("control flow")
                parsed.extend(op_registry.parse(view))
            except op_registry.Unsupported as why:
                unsupported.append((names[i], node.op_type, str(why)))
        return parsed, unsupported

    def _canonicalise(self):
        index = OpIndex(self.ops, self.logits_name, self.static_shape)
        for canonical_pass in CANONICAL_PASSES:
            canonical_pass.apply(index)
        self.ops = index.ops

    def _build_dag(self):
        dag = nx.DiGraph()
        producer = {op.output: op for op in self.ops}
        for op in self.ops:
            dag.add_node(op.name, op=op)
            for t in op.inputs:
                if t in producer:
                    dag.add_edge(producer[t].name, op.name, tensor=t)
        return dag

    def _mark_positions(self):
        """Linear ops: ``head`` (no linear op after it), ``input`` (none before it).
        Other ops: ``tail`` when no linear op follows them (between the heads and the logits)."""
        linear = {op.name for op in self.ops if isinstance(op, Linear)}
        for op in self.ops:
            later_linear = nx.descendants(self.dag, op.name) & linear
            if op.name in linear:
                positions = []
                if not later_linear:
                    positions.append("head")
                if not (nx.ancestors(self.dag, op.name) & linear):
                    positions.append("input")
                op.positions = tuple(positions)
            elif not later_linear:
                op.positions = ("tail",)

    # -- facts for the user -------------------------------------------------------
    @property
    def input_shape(self):
        return self._shapes.get(self.input_name)

    @property
    def layout(self) -> str:
        """``features`` for rank-2 inputs; ``nhwc`` when only the last axis looks like colour channels."""
        shape = self.input_shape
        if shape is None or len(shape) < 3:
            return "features"
        if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
            return "nhwc"
        return "nchw"

    @property
    def classes(self):
        """The number of classes where the logits' shape fixes it, else None."""
        shape = self._shapes.get(self.logits_name)
        if shape is None or len(shape) < 2 or None in shape[1:]:
            return None
        return int(np.prod(shape[1:]))

    def class_scores_problem(self, shape):
        """Why logits of ``shape`` (None: an unknown dimension) are not one vector of class scores per
        sample; None where they are.  One definition for inspect (static shapes) and explain (real ones)."""
        if shape is None:
            return None
        shown = tuple("?" if d is None else d for d in shape)
        if len(shape) < 2 or any(d not in (1, None) for d in shape[2:]) or (shape[1] is not None and shape[1] < 2):
            return f"output {self.logits_name} has shape {shown}, not a vector of class scores per sample"
        return None

    def problems(self) -> list[str]:
        """Everything that stops an explanation before any run, as one line each (explain raises the
        first; inspect lists them all).  Unsupported ops are in ``unsupported``."""
        found = []
        if self.input_type not in FLOAT_INPUTS:
            found.append(f"input {self.input_name} is not a float tensor "
                         f"({onnx.TensorProto.DataType.Name(self.input_type)})")
        scores = self.class_scores_problem(self._shapes.get(self.logits_name))
        if scores:
            found.append(scores)
        return found

    @property
    def sample_dims_free(self) -> bool:
        """Whether the input declares a free dimension after the batch (height and width in optimum's exports)."""
        vi = next(vi for vi in self.model.graph.input if vi.name == self.input_name)
        return any(not d.HasField("dim_value") for d in list(vi.type.tensor_type.shape.dim)[1:])

    @property
    def input_type(self):
        return self._types.get(self.input_name, onnx.TensorProto.FLOAT)

    @functools.cached_property
    def sample_axis(self):
        """The input's axis of samples: 1 where only Gemms with transA read it (features x samples), else 0.
        Read on every explain; the ops are fixed once the graph is built, so it is found once."""
        readers = [op for op in self.ops if self.input_name in op.inputs]
        return 1 if readers and all(getattr(op, "trans_input", False) for op in readers) else 0

    @property
    def fixed_batch(self):
        """The batch size the model was exported for, or None where it is free."""
        shape = self.input_shape or ()
        first = shape[self.sample_axis] if len(shape) > self.sample_axis else None
        return first if isinstance(first, int) and first > 0 else None
