"""Canonicalisation of the ONNX graph itself: tensors whose batch axis an exporter moved, rewritten batch-first.

``nn.MultiheadAttention`` (and so ``nn.TransformerEncoder``, torchvision's ViT) computes sequence-first: its
exports transpose the tokens to ``(T, N, D)``, project them there, merge the batch with the heads into one
axis ``(T, N * heads, d)`` on the way to the batched products, and put everything back.  Every rule reads
axis 0 as the batch (docs/rules.md, rap.ops), so onnxrap refuses such moves where relevance reaches them.
``batch_axis_restored`` rewrites the nodes between such moves so that every tensor a rule reads has the batch
first, as timm's attention has it, and returns a new model whose outputs are the original's.

How.  Each data tensor ``t`` is tracked as a *layout*: a batch-first tensor ``c`` of the new graph, whose axes
are *factors* (axis 0 the batch), and ``t``'s axes as groups of those factors, so that ``t = reshape(
transpose(c, concat(groups)), ...)``.  A Transpose only permutes the groups and a Reshape, Squeeze,
Unsqueeze or Flatten only regroups them (row-major order is kept; a factor is split where the new shape
cuts it, which reshapes ``c``), so neither writes a node.  Gather, Slice and Split along one factor other
than the batch are written on ``c``.  An op that computes (a MatMul, Gemm, Softmax, LayerNormalization,
reduction, elementwise arithmetic) reads a *batch-first view* of its input: ``c`` transposed so that the
batch leads and the other groups follow in ``t``'s order (a Transpose with ``perm[0] == 0`` and a Reshape
that copies axis 0), and is written on it with its axes mapped; where that view is ``t`` itself (the batch
alone and first), it is ``t`` under its own name, and the node is written as it was.  A Gemm on ``(T * N,
D)`` becomes a MatMul on ``(N, T, D)`` and an Add of its bias.

Shapes come from ONNX Runtime (shape inference cannot follow PyTorch's shape arithmetic): the model is run at
batch sizes 1 and 2 (or at its fixed batch size), every data tensor an output, and an axis whose size differs
holds the batch.  With a fixed batch of 1 a batch factor of size 1 may stand in either neighbouring group;
it joins the next one, or the one before where the next is the last axis (the one a MatMul contracts).

Proof.  The rewrite is applied only where every step is one of the above, the batch factor is never split
nor reduced over, and the graph's outputs come back with their own layout; the new model is then run on the
probe's last input (a batch of 2 where the batch is free) and its outputs must equal the original's to float32
rounding.  Anything else raises NotRewritten, saying why, and the graph is parsed as exported: the moves are
refused by name as before, with that reason.

A module of its own, not a pass of passes.py: those rewrite parsed ops, and this one must run before parsing
(the parsers refuse the moves) and writes ONNX nodes, so that the capture, the compiled engine and ONNX
Runtime's check of the rewrite all read one ordinary model.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

UNARY = {"Relu", "Erf", "Sigmoid", "Tanh", "Gelu", "Identity", "Dropout", "Elu", "LeakyRelu", "Softplus", "Neg",
         "Abs", "Sqrt", "Exp", "HardSigmoid", "HardSwish", "Mish", "Selu", "Celu", "Clip", "Cast"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow"}
REGROUPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"}
_TOLERANCE = 1e-4  # relative to the largest output: float32 rounding of a reordered sum, with room


class NotRewritten(Exception):
    """A step the rewrite cannot prove; the graph stays as exported."""


class Factor:
    """One axis of a canonical tensor ``c``; its identity is the object."""

    def __init__(self, size, batch=False):
        self.size = size  # at the probe's batch size
        self.batch = batch


class Layout:
    def __init__(self, canon, factors, groups):
        self.canon = canon  # the batch-first tensor of the new graph
        self.factors = factors  # c's axes in order; factors[0] is the batch
        self.groups = groups  # per axis of t, the factors it merges in row-major order

    @classmethod
    def of(cls, name, shape):
        factors = [Factor(shape[0], batch=True)] + [Factor(d) for d in shape[1:]]
        return cls(name, factors, [[f] for f in factors])

    @property
    def identity(self):
        return len(self.groups) == len(self.factors) and all(g == [f] for g, f in zip(self.groups, self.factors))

    @property
    def batch_axis(self):
        return next(a for a, g in enumerate(self.groups) if self.factors[0] in g)


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(model):
    """Initializers and Constant nodes' values."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def moves_the_batch(model, data):
    """Whether a Transpose on the data path (``data``: the tensors that depend on the input's values) moves
    axis 0 other than into a Split or Slices that take it apart again (timm's q, k, v: passes.heads_unbound)."""
    readers = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node.op_type)
    for node in model.graph.node:
        perm = _attrs(node).get("perm")
        if node.op_type == "Transpose" and node.input[0] in data and perm and perm[0] != 0 and \
                not set(readers.get(node.output[0], ())) <= {"Split", "Slice"}:
            return True
    return False


def _probe(model, input_name, data, shape, elem):
    """The model run at batch sizes 1 and 2 (a fixed batch: its own), every data tensor an output, and every
    tensor of shape arithmetic that a data node reads.  Returns ``({tensor: shape at the last batch size},
    {tensor: axes holding the batch}, {tensor of shape arithmetic: value, where the same at both}, {output:
    value}, the input)`` of the last run (a batch of 2, where a rewrite that mixed samples would show); None
    where ONNX Runtime cannot run it."""
    known = _constants(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = [o.name for o in probe.graph.output]
    read = {t for n in model.graph.node if any(i in data for i in n.input) for t in n.input
            if t and t not in data and t not in known}
    wanted = [t for n in model.graph.node for t in n.output if (t in data or t in read) and t not in declared]
    for t in wanted:
        probe.graph.output.append(helper.make_empty_tensor_value_info(t))
    names = [o.name for o in probe.graph.output]
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    runs = []
    try:
        session = ort.InferenceSession(probe.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
        for b in [shape[0]] if shape[0] is not None else [1, 2]:
            feed = np.random.default_rng(0).standard_normal((b,) + tuple(shape[1:])).astype(dtype)
            runs.append(dict(zip(names, session.run(None, {input_name: feed}))))
            x = feed
    except Exception:
        return None
    first, last = runs[0], runs[-1]
    shapes = {t: np.shape(v) for t, v in last.items() if t in data} | {input_name: x.shape}
    batch_axes = {t: {a for a, (d, e) in enumerate(zip(np.shape(first[t]), s)) if d != e} for t, s in shapes.items()
                  if t in first and np.ndim(first[t]) == len(s)} | {input_name: {0}}
    computed = {t: last[t] for t in read if t in last and np.shape(first[t]) == np.shape(last[t]) and
                np.array_equal(first[t], last[t])}
    return shapes, batch_axes, computed, {t: last[t] for t in declared}, x


def _options():
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as exported
    return so


class _Rewrite:
    """One walk over the ONNX nodes in order, writing the new graph's nodes (module docstring)."""

    def __init__(self, model, data, shapes, batch_axes, computed, fixed):
        self.model = model
        self.constants = _constants(model) | computed
        self.computed = computed
        self.shapes_read = set()  # outputs of the Shape nodes of moved tensors, which the new graph has not
        self.producers = {t: n for n in model.graph.node for t in n.output}
        self.data = data
        self.shapes, self.batch_axes, self.fixed = shapes, batch_axes, fixed
        self.layouts = {}  # tensors whose batch moved: original name -> Layout
        self.nodes = []  # the new graph's nodes
        self.ours = set()  # ids of the nodes the rewrite wrote
        self.initializers = []
        self.views = {}  # (canon, groups) -> (view tensor, view axes per axis, view sizes)
        self.taken = {t for n in model.graph.node for t in list(n.input) + list(n.output)} | \
            {t.name for t in model.graph.initializer} | {t.name for t in model.graph.input}
        self.rewritten = 0
        self.at = None  # the ONNX node being rewritten: the new nodes are named after it

    # -- names, constants, nodes ------------------------------------------------------
    def fresh(self, base):
        name, k = base, 1
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def constant(self, base, value):
        name = self.fresh(base)
        self.constants[name] = np.asarray(value)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, node, k, attr):
        if len(node.input) > k and node.input[k]:
            if node.input[k] not in self.constants:
                raise NotRewritten(f"{node.name}: input {k} is not a constant")
            return [int(a) for a in np.ravel(self.constants[node.input[k]])]
        value = _attrs(node).get(attr)
        return None if value is None else [int(a) for a in np.ravel(value)]

    def write(self, op_type, inputs, outputs, domain="", **attrs):
        node = helper.make_node(op_type, inputs, outputs, name=self.fresh(f"{self.at.name}/batch first"),
                                domain=domain, **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        self.ours.add(id(node))
        return outputs[0]

    def copy(self, node, inputs, outputs, **changed):
        attrs = _attrs(node)
        attrs.update(changed)
        return self.write(node.op_type, inputs, outputs, domain=node.domain, **attrs)

    def keep(self, node):
        copied = onnx.NodeProto()
        copied.CopyFrom(node)  # the caller's model is never changed
        self.nodes.append(copied)

    # -- the walk -----------------------------------------------------------------
    def run(self):
        for i, node in enumerate(self.model.graph.node):
            if not node.name:  # messages and the new nodes name it as graph.py does
                node = helper.make_node(node.op_type, node.input, node.output, name=f"{node.op_type}_{i}",
                                        domain=node.domain, **_attrs(node))
            self.at = node
            perm = _attrs(node).get("perm")
            leaves = node.op_type == "Transpose" and node.input[0] in self.data and bool(perm) and perm[0] != 0
            if not leaves and not any(t in self.layouts for t in node.input):
                self.keep(node)
                continue
            if node.op_type in ("Shape", "Size"):
                self.shapes_read.update(node.output)  # the new nodes' shapes are constants
                continue
            self.rewritten += 1
            handler = getattr(self, f"_{node.op_type}", None)
            if node.op_type in REGROUPS:
                handler = self._regroup
            elif node.op_type in UNARY and len([t for t in node.input if t in self.data]) == 1:
                handler = self._unary
            elif node.op_type in ELEMENTWISE:
                handler = self._elementwise
            elif node.op_type in REDUCES:
                handler = self._reduce
            if handler is None or node.domain not in ("", "ai.onnx"):
                raise NotRewritten(f"{node.name} ({node.op_type}) reads a tensor whose batch axis moved")
            handler(node)
        for output in self.model.graph.output:
            layout = self.layouts.get(output.name)
            if layout is not None:
                if not layout.identity:
                    raise NotRewritten(f"output {output.name} keeps its batch axis moved")
                self.write("Identity", [layout.canon], [output.name])
        return self.assembled()

    def assembled(self):
        """The new model: the nodes its outputs need.  Shape arithmetic that read a moved tensor's shape is
        gone; where a node still needs its result (attention's scale from the head size), the value the probe
        found at both batch sizes stands as a constant."""
        g = self.model.graph
        broken = set(self.shapes_read)
        for node in self.nodes:  # the shape arithmetic after them (data tensors are all the new nodes' own)
            if any(t in broken for t in node.input):
                broken.update(t for t in node.output if t not in self.data)
        live, needed = [], {o.name for o in g.output}
        for node in reversed(self.nodes):  # nodes no output needs (the moved tensors' shape arithmetic) go
            wanted = [t for t in node.output if t in needed]
            if wanted and any(t in broken for t in node.output):
                for t in wanted:
                    if t not in self.computed:
                        raise NotRewritten(f"{node.name} computes {t} from the shape of a tensor the rewrite moved")
                    self.initializers.append(numpy_helper.from_array(self.computed[t], t))
            elif wanted:
                live.append(node)
                needed.update(t for t in node.input if t)
        live.reverse()
        known = {i.name for i in g.input} | {t.name for t in g.initializer} | {t.name for t in self.initializers}
        for node in live:
            missing = [t for t in node.input if t and t not in known]
            if missing:
                raise NotRewritten(f"{node.name} reads {missing[0]}, which the rewrite removed")
            known.update(node.output)
        used = {t for n in live for t in n.input}
        inits = [t for t in list(g.initializer) + self.initializers if t.name in used]
        values = [vi for vi in g.value_info if vi.name in known and vi.name not in self.layouts]
        graph = helper.make_graph(live, g.name, list(g.input), list(g.output), inits, value_info=values)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        model.producer_name, model.producer_version = self.model.producer_name, self.model.producer_version
        for p in self.model.metadata_props:
            model.metadata_props.add(key=p.key, value=p.value)
        return model

    def start(self, name):
        """The layout of a tensor whose batch is its axis 0: itself."""
        shape = self.shapes.get(name)
        if not shape or (self.fixed is None and self.batch_axes.get(name) != {0}):
            raise NotRewritten(f"{name}: its batch axis is not axis 0")
        return Layout.of(name, shape)

    def settle(self, name, layout):
        """Record ``name``'s layout.  Where it is ``c`` itself, ``c`` takes the name where the rewrite wrote it,
        and the tensor is read as it is."""
        if layout.identity and layout.canon != name:
            old = layout.canon
            producer = next((n for n in reversed(self.nodes) if old in n.output), None)
            if producer is not None and id(producer) in self.ours:
                for n in self.nodes:
                    for field in (n.input, n.output):
                        for k, t in enumerate(field):
                            if t == old:
                                field[k] = name
                for other in self.layouts.values():
                    if other.canon == old:
                        other.canon = name
                self.views = {key: v for key, v in self.views.items() if key[0] != old}
                layout.canon = name
        if layout.identity and layout.canon == name:
            self.layouts.pop(name, None)
        else:
            self.layouts[name] = layout

    def split_factors(self, layout):
        """``c`` reshaped to ``layout``'s factors, after a shape move cut one in two."""
        shape = np.array([0] + [f.size for f in layout.factors[1:]], np.int64)
        base = f"{self.at.output[0]}/factors"
        layout.canon = self.write("Reshape", [layout.canon, self.constant(f"{base}/shape", shape)], [self.fresh(base)])

    # -- shape moves: no node, or one on c ------------------------------------------------
    def _Transpose(self, node):
        layout = self.layouts.get(node.input[0]) or self.start(node.input[0])  # where the batch leaves axis 0
        perm = _attrs(node).get("perm")
        self.settle(node.output[0], Layout(layout.canon, layout.factors, [layout.groups[p] for p in perm]))

    def _regroup(self, node):
        """Reshape, Squeeze, Unsqueeze, Flatten: the factors' row-major order kept, regrouped to the output's
        shape; a factor the new shape cuts is split in two (``c`` reshaped).  A batch of a fixed size 1 joins
        the next axis, or the one before where the next is the last."""
        layout = self.layouts[node.input[0]]
        out = self.shapes.get(node.output[0])
        if out is None:
            raise NotRewritten(f"{node.name}: no shape")
        factors = list(layout.factors)
        queue = [f for g in layout.groups for f in g]
        batch, flags, groups, split = factors[0], self.batch_axes.get(node.output[0], set()), [], False
        for j, size in enumerate(out):
            group, prod = [], 1
            while True:
                head = queue[0] if queue else None
                if prod == size:
                    wants_batch = self.fixed is None and j in flags and batch not in group
                    takes_unit = head is batch and batch.size == 1 and self.fixed is not None and (
                        (size == 1 and not group) or j + 1 >= len(out) - 1)
                    if not (wants_batch or takes_unit):
                        break
                if head is None:
                    raise NotRewritten(f"{node.name}: its shape does not follow its input's")
                if head is batch and self.fixed is None and j not in flags:
                    raise NotRewritten(f"{node.name}: the batch would join an axis that does not hold it")
                if size % (prod * head.size) == 0:
                    group.append(queue.pop(0))
                    prod *= head.size
                elif not head.batch and size % prod == 0 and head.size % (size // prod) == 0:
                    first, second = Factor(size // prod), Factor(head.size // (size // prod))
                    at = factors.index(head)
                    factors[at:at + 1] = [first, second]
                    queue[0] = second
                    group.append(first)
                    prod *= first.size
                    split = True
                else:
                    raise NotRewritten(f"{node.name}: its shape cuts a factor, or the batch")
            groups.append(group)
        if any(f.size != 1 or f.batch for f in queue) or not groups:
            raise NotRewritten(f"{node.name}: its shape does not follow its input's")
        groups[-1] += queue  # factors of size 1 left over
        new = Layout(layout.canon, factors, groups)
        if split:
            self.split_factors(new)
        self.settle(node.output[0], new)

    def one_factor(self, node, layout, axis):
        """The factor that ``axis`` of the moved tensor is, where it is one other than the batch."""
        group = layout.groups[axis]
        if len(group) != 1 or group[0].batch:
            raise NotRewritten(f"{node.name}: selects along an axis that holds the batch or merges factors")
        return group[0]

    def _Gather(self, node):
        layout = self.layouts.get(node.input[0])
        if layout is None or node.input[1] not in self.constants:
            raise NotRewritten(f"{node.name}: gathers by data")
        axis = _attrs(node).get("axis", 0) % len(layout.groups)
        index = self.constants[node.input[1]]
        factor = self.one_factor(node, layout, axis)
        canon = self.copy(node, [layout.canon, node.input[1]], [self.fresh(f"{node.output[0]}/factors")],
                          axis=layout.factors.index(factor))
        if np.ndim(index) == 0:
            factors = [f for f in layout.factors if f is not factor]
            groups = layout.groups[:axis] + layout.groups[axis + 1:]
        elif np.ndim(index) == 1:
            kept = Factor(int(np.size(index)))
            factors = [kept if f is factor else f for f in layout.factors]
            groups = [[kept] if g == [factor] else g for g in layout.groups]
        else:
            raise NotRewritten(f"{node.name}: gathers a block of indices")
        self.settle(node.output[0], Layout(canon, factors, groups))

    def _Slice(self, node):
        layout = self.layouts[node.input[0]]
        rank = len(layout.groups)
        starts, ends = self.ints(node, 1, "starts"), self.ints(node, 2, "ends")
        axes = self.ints(node, 3, "axes") or list(range(len(starts)))
        steps = self.ints(node, 4, "steps") or [1] * len(starts)
        out = self.shapes[node.output[0]]
        factors, groups, at = list(layout.factors), list(layout.groups), []
        for a in axes:
            factor = self.one_factor(node, layout, a % rank)
            kept = Factor(out[a % rank])
            factors[factors.index(factor)] = kept
            groups[a % rank] = [kept]
            at.append(layout.factors.index(factor))
        base = node.output[0]
        inputs = [layout.canon] + [self.constant(f"{base}/{k}", np.array(v, np.int64))
                                   for k, v in (("starts", starts), ("ends", ends), ("axes", at), ("steps", steps))]
        canon = self.write("Slice", inputs, [self.fresh(f"{base}/factors")])
        self.settle(node.output[0], Layout(canon, factors, groups))

    def _Split(self, node):
        layout = self.layouts[node.input[0]]
        axis = _attrs(node).get("axis", 0) % len(layout.groups)
        factor = self.one_factor(node, layout, axis)
        canons = [self.fresh(f"{t}/factors") if t else "" for t in node.output]
        self.copy(node, [layout.canon] + list(node.input[1:]), canons, axis=layout.factors.index(factor))
        for t, canon in zip(node.output, canons):
            if t:
                kept = Factor(self.shapes[t][axis])
                factors = [kept if f is factor else f for f in layout.factors]
                groups = [[kept] if g == [factor] else g for g in layout.groups]
                self.settle(t, Layout(canon, factors, groups))

    # -- ops that compute ------------------------------------------------------------------
    def _unary(self, node):
        """Elementwise on one tensor: on ``c`` as it is."""
        layout = self.layouts[node.input[0]]
        canon = self.copy(node, [layout.canon] + list(node.input[1:]), [self.fresh(f"{node.output[0]}/factors")])
        self.settle(node.output[0], Layout(canon, layout.factors, layout.groups))

    def view(self, name):
        """``name`` batch-first: ``(tensor, view axes per axis of name, view sizes)``.  The batch leads; each
        other axis follows in order, the batch's own axis as the factors before the batch and those after (an
        axis each, where there are any).  Where the batch is alone and first, the view is the tensor itself,
        under its own name."""
        layout = self.layouts.get(name)
        if layout is None:
            return name, [[a] for a in range(len(self.shapes[name]))], list(self.shapes[name])
        key = (layout.canon, tuple(tuple(id(f) for f in g) for g in layout.groups))
        if key in self.views:
            return self.views[key]
        batch = layout.factors[0]
        parts, axes = [[batch]], []
        for g in layout.groups:
            if batch in g:
                i = g.index(batch)
                before, after = g[:i], g[i + 1:]
                here = ([len(parts)] if before else []) + [0] + ([len(parts) + bool(before)] if after else [])
                parts += [p for p in (before, after) if p]
                axes.append(here)
            else:
                parts.append(g)
                axes.append([len(parts) - 1])
        sizes = [batch.size] + [int(np.prod([f.size for f in p])) for p in parts[1:]]
        perm = [layout.factors.index(f) for p in parts for f in p]
        target = tensor = layout.canon  # c itself, where its axes are already the view's
        if perm != list(range(len(perm))) or any(len(p) != 1 for p in parts):
            itself = axes[0] == [0] and all(len(a) == 1 for a in axes)
            target = name if itself else self.fresh(f"{name}/batch first")
            if perm != list(range(len(perm))):
                tensor = self.write("Transpose", [tensor], [self.fresh(f"{target}/transposed")], perm=perm)
            if any(len(p) != 1 for p in parts):
                shape = self.constant(f"{target}/shape", np.array([0] + sizes[1:], np.int64))
                tensor = self.write("Reshape", [tensor, shape], [self.fresh(f"{target}/reshaped")])
            self.nodes[-1].output[0] = target
        self.views[key] = (target, axes, sizes)
        return self.views[key]

    def on_views(self, node, data_inputs, trailing, dropped=(), **changed):
        """Write ``node`` on its data inputs' views (each with the same axes) and record its output's layout.
        ``trailing``: how many last axes the op reads together (the batch must not be among them); ``dropped``:
        the axes it reduces away."""
        views = [self.view(t) for t in data_inputs]
        axes, sizes = views[0][1], views[0][2]
        if any(v[1] != axes or v[2][0] != sizes[0] for v in views):
            raise NotRewritten(f"{node.name}: its data inputs hold the batch in different places")
        batch_at = next(a for a, va in enumerate(axes) if 0 in va)
        if batch_at >= len(axes) - trailing:
            raise NotRewritten(f"{node.name}: reads the batch axis together with others")
        if all(v[0] == t for v, t in zip(views, data_inputs)):
            self.keep(node)  # the batch alone and first: the node as exported
            return
        by_name = dict(zip(data_inputs, (v[0] for v in views)))
        out = self.copy(node, [by_name.get(t, t) for t in node.input], [self.fresh(f"{node.output[0]}/batch first")],
                        **changed)
        out_shape = self.shapes[node.output[0]]
        kept = [a for a in range(len(axes)) if a not in dropped]
        gone = {v for a in dropped for v in axes[a]}
        new_sizes = list(sizes)
        for k, a in enumerate(kept):
            if axes[a] != [0] and len(axes[a]) == 1:
                new_sizes[axes[a][0]] = out_shape[k]
        order = [v for v in range(len(sizes)) if v not in gone]
        factors = [Factor(sizes[0], batch=True)] + [Factor(new_sizes[v]) for v in order[1:]]
        groups = [[factors[order.index(v)] for v in axes[a]] for a in kept]
        self.settle(node.output[0], Layout(out, factors, groups))

    def constant_on_view(self, node, name, value):
        """A constant that broadcasts against the data tensor ``name`` (1 along its batch), as it broadcasts
        against ``name``'s view: its axes moved as the view moves them, 1 on every part of the batch's axis."""
        rank = len(self.shapes[name])
        if np.ndim(value) > rank:
            raise NotRewritten(f"{node.name}: a constant of more axes than its data")
        value = np.reshape(value, (1,) * (rank - np.ndim(value)) + np.shape(value))
        _, axes, sizes = self.view(name)
        shape = [1] * len(sizes)
        for a, va in enumerate(axes):
            if va == [0]:
                shape[0] = value.shape[a]
            if 0 in va and value.shape[a] != 1 and (self.fixed is None or va != [0]):  # a fixed batch: its own
                raise NotRewritten(f"{node.name}: a constant that differs along the batch")
            if len(va) == 1:
                shape[va[0]] = value.shape[a]
        moved = value.transpose(sorted(range(rank), key=lambda a: min(axes[a]))).reshape(shape)
        return self.constant(f"{node.output[0]}/operand", moved)

    def _elementwise(self, node):
        data = [t for t in node.input if t in self.data]
        if len(data) == 2:
            if len(self.shapes[data[0]]) != len(self.shapes[data[1]]):
                raise NotRewritten(f"{node.name}: data operands of different ranks")
            self.on_views(node, data, 0)
            return
        other = next(t for t in node.input if t not in self.data)
        if other not in self.constants:
            raise NotRewritten(f"{node.name}: its other operand is neither data nor a constant")
        if self.view(data[0])[0] != data[0]:  # else the node as exported (on_views)
            moved = self.constant_on_view(node, data[0], self.constants[other])
            node = helper.make_node(node.op_type, [moved if t == other else t for t in node.input], list(node.output),
                                    name=node.name)
        self.on_views(node, data, 0)

    def _Concat(self, node):
        """Along an axis other than the batch, of data with the batch alone on one axis, and of constants or a
        constant broadcast along the batch by an Expand (a class token: ``cls.expand(1, N, D)``), which is
        written again on the view's batch."""
        data = [t for t in node.input if t in self.data]
        rank = len(self.shapes[node.output[0]])
        axis = _attrs(node)["axis"] % rank
        views = [self.view(t) for t in data]
        axes, sizes = views[0][1], views[0][2]
        if any(v[1] != axes or v[2][0] != sizes[0] for v in views) or any(len(va) != 1 for va in axes) or \
                axes[axis] == [0]:
            raise NotRewritten(f"{node.name}: joins along the batch, or data that merge it with other axes")
        inputs = []
        for t in node.input:
            if t in self.data:
                inputs.append(views[data.index(t)][0])
                continue
            producer = self.producers.get(t)
            expanded = t not in self.constants and producer is not None and producer.op_type == "Expand" and \
                producer.input[0] in self.constants
            if t not in self.constants and not expanded:
                raise NotRewritten(f"{node.name}: joins a part that is neither data nor a constant")
            moved = self.constant_on_view(node, data[0], self.constants[producer.input[0] if expanded else t])
            if expanded:  # broadcast along the view's batch: Expand to [N, 1, ...]
                shape = self.write("Shape", [views[0][0]], [self.fresh(f"{t}/batch first/shape")])
                first = [self.constant(f"{t}/batch first/{k}", np.array([k], np.int64)) for k in (0, 1)]
                batch = self.write("Slice", [shape] + first, [self.fresh(f"{t}/batch first/batch")])
                ones = self.constant(f"{t}/batch first/ones", np.ones(len(sizes) - 1, np.int64))
                target = self.write("Concat", [batch, ones], [self.fresh(f"{t}/batch first/expand")], axis=0)
                moved = self.write("Expand", [moved, target], [self.fresh(f"{t}/batch first")])
            inputs.append(moved)
        out = self.copy(node, inputs, [self.fresh(f"{node.output[0]}/batch first")], axis=axes[axis][0])
        factors = [Factor(sizes[0], batch=True)] + [Factor(s) for s in sizes[1:]]
        factors[axes[axis][0]] = Factor(self.shapes[node.output[0]][axis])
        self.settle(node.output[0], Layout(out, factors, [[factors[va[0]]] for va in axes]))

    def _MatMul(self, node):
        data = [t for t in node.input if t in self.data]
        if len(data) == 2:
            self.on_views(node, data, 2)
        elif node.input[0] in self.data and np.ndim(self.constants.get(node.input[1])) == 2:
            self.on_views(node, data, 1)
        else:
            raise NotRewritten(f"{node.name}: a MatMul by other than a matrix")

    def _Gemm(self, node):
        """A Gemm on ``(T * N, D)`` with the batch inside: a MatMul on the view and an Add of the bias."""
        attrs = _attrs(node)
        has_bias = len(node.input) > 2 and node.input[2]
        if attrs.get("transA", 0) or node.input[1] not in self.constants or \
                (has_bias and node.input[2] not in self.constants):
            raise NotRewritten(f"{node.name}: a Gemm that is no dense layer on its data")
        w = self.constants[node.input[1]] * attrs.get("alpha", 1.0)
        w = w.T if attrs.get("transB", 0) else w
        product = self.fresh(f"{node.output[0]}/product") if has_bias else node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], self.constant(f"{node.input[1]}/matrix", w)], [product],
                                  name=node.name)
        self.shapes[product] = self.shapes[node.output[0]]
        self.data.add(product)
        self.on_views(matmul, [node.input[0]], 1)
        if has_bias:
            bias = np.ravel(self.constants[node.input[2]] * attrs.get("beta", 1.0)).astype(w.dtype)
            add = helper.make_node("Add", [product, self.constant(f"{node.input[2]}/bias", bias)], [node.output[0]],
                                   name=node.name)
            if product in self.layouts:
                self._elementwise(add)
            else:
                self.keep(add)

    def over_axes(self, node, over, keepdims=True, **mapped_attrs):
        """An op over the axes ``over`` of its input (Softmax, LayerNormalization, reductions) on its view, each axis
        mapped (``mapped_attrs``: attribute name -> its value from the mapped axes); never over the batch."""
        name = node.input[0]
        layout = self.layouts[name]
        rank = len(layout.groups)
        axes = sorted(a % rank for a in over)
        if layout.batch_axis in axes:
            raise NotRewritten(f"{node.name}: computes over the batch axis")
        view_axes = self.view(name)[1]
        mapped = [view_axes[a][0] for a in axes]
        changed = {key: fn(mapped) for key, fn in mapped_attrs.items()}
        if "axes_input" in changed:
            inputs = list(node.input)
            inputs[1] = self.constant(f"{node.output[0]}/axes", np.array(changed.pop("axes_input"), np.int64))
            node = helper.make_node(node.op_type, inputs, list(node.output), name=node.name, **_attrs(node))
        trailing = rank - min(axes) if node.op_type == "LayerNormalization" else 0
        self.on_views(node, [name], trailing, dropped=() if keepdims else axes, **changed)

    def _Softmax(self, node):
        rank = len(self.layouts[node.input[0]].groups)
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 1)
        axis = _attrs(node).get("axis", -1 if opset >= 13 else 1) % rank
        if opset < 13 and axis != rank - 1:
            raise NotRewritten(f"{node.name}: a Softmax over flattened axes")
        self.over_axes(node, [axis], axis=lambda m: m[0])

    def _LayerNormalization(self, node):
        rank = len(self.layouts[node.input[0]].groups)
        axis = _attrs(node).get("axis", -1) % rank
        self.over_axes(node, list(range(axis, rank)), axis=lambda m: m[0])

    def _reduce(self, node):
        attrs = _attrs(node)
        if len(node.input) > 1 and node.input[1]:
            axes, key = self.ints(node, 1, "axes"), "axes_input"
        else:
            axes, key = attrs.get("axes"), "axes"
        if not axes:
            raise NotRewritten(f"{node.name}: reduces every axis, the batch too")
        self.over_axes(node, list(axes), keepdims=bool(attrs.get("keepdims", 1)), **{key: list})


def batch_axis_restored(model, input_name, data, input_shape, elem):
    """``(the model rewritten batch-first, how many nodes were rewritten)``; None where nothing moves the batch
    axis.  Raises NotRewritten, saying why, where the rewrite cannot prove a step (the module's docstring).
    ``data``: the tensors that depend on the input's values (graph.data_tensors); ``input_shape``: the input's
    declared shape (None: a free dimension)."""
    if not input_shape or not moves_the_batch(model, data):
        return None
    if any(d is None for d in input_shape[1:]):
        raise NotRewritten("the input's shape is free beyond the batch axis")
    probed = _probe(model, input_name, data, input_shape, elem)
    if probed is None:
        raise NotRewritten("ONNX Runtime cannot run the model on noise to learn its shapes")
    shapes, batch_axes, computed, outputs, x = probed
    rewrite = _Rewrite(model, data, shapes, batch_axes, computed, input_shape[0])
    try:
        rewritten = rewrite.run()
        session = ort.InferenceSession(rewritten.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
        got = session.run(list(outputs), {input_name: x})
    except NotRewritten:
        raise
    except Exception as exc:  # a case the walk did not foresee: no rewrite, never a wrong one
        raise NotRewritten(f"{type(exc).__name__} at {rewrite.at.name if rewrite.at is not None else '?'}") from None
    for name, value in zip(outputs, got):
        expected = outputs[name]
        scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
        if value.shape != expected.shape or not np.allclose(value, expected, rtol=0, atol=_TOLERANCE * scale):
            raise NotRewritten(f"the rewritten model's output {name} differs from the exported one's")
    return rewritten, rewrite.rewritten
