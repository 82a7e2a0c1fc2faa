#!/usr/bin/env python3
"""Write small ONNX classifiers as different exporters write them, for ``tests/test_exporters.py``.

onnxrap promises to explain "any exported ONNX classifier".  The same kind of
network looks different in ONNX depending on who wrote it: the TorchScript
exporter at different opsets (attributes that became inputs), with and without
BatchNormalization folded, PyTorch's dynamo exporter, a TensorFlow/Keras-style
converter (NHWC input, Transpose, bias as a separate Add, MatMul + Add, a
Softmax output, preprocessing inside the graph) and ONNX Runtime's offline
optimiser.  This script runs once, by hand; its outputs are committed under
``tests/fixtures/exporters/`` so that CI (no PyTorch) can check onnxrap on each.

Files (see ``tests/fixtures/exporters/README.md`` for the details):

* ``torchscript_bn.onnx``       TorchScript exporter, opset 17, BN kept, dynamic batch
* ``torchscript_folded.onnx``   the same with ``do_constant_folding=True`` (BN folded into Conv)
* ``torchscript_opset{11,13,18,20}.onnx``  the same weights at other opsets, BN kept
* ``dynamo.onnx``               ``torch.onnx.export(..., dynamo=True)`` (its default optimize=True: BN folded)
* ``dynamo_unoptimized.onnx``   the same with ``optimize=False`` (BN kept), same weights
* ``keras_nhwc.onnx``           onnx.helper graph in the style of tf2onnx (NHWC input, Softmax output)
* ``keras_preproc.onnx``        the same with raw [0, 255] pixels and Sub/Div normalisation inside
* ``ort_basic.onnx``            ONNX Runtime ``ORT_ENABLE_BASIC`` offline optimisation of torchscript_bn
* ``ort_extended.onnx``         ONNX Runtime ``ORT_ENABLE_EXTENDED`` (may contain com.microsoft ops)

and beside each ``<name>.npz`` with ``x`` (a float32 batch of 2 in the model's
layout), ``ort_logits`` (ONNX Runtime's output) and, for the PyTorch ones,
``torch_logits``; ``manifest.json`` lists every file's op types, opsets and
the versions of the tools that wrote it.

Requirements (only for this script): torch 2.13.0 (CPU), onnxscript (for the
dynamo exporter), onnx, onnxruntime, numpy.

Usage:  python tools/make_exporter_fixtures.py [--out tests/fixtures/exporters] [--seed 0]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OPSETS = (11, 13, 18)  # plus the TorchScript exporter's newest, if higher


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------
# PyTorch network
# --------------------------------------------------------------------------------------
def build_torch_net(seed):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class SmallCNN(nn.Module):
        """3x32x32 -> 10: every pattern the brief asks the exporters to write."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            # residual block
            self.conv2a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2a = nn.BatchNorm2d(8)
            self.conv2b = nn.Conv2d(8, 8, 3, padding=1, bias=True)
            self.bn2b = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            # explicit F.pad before a convolution with padding=0
            self.conv3 = nn.Conv2d(8, 16, 3, padding=0, bias=True)
            self.bn3 = nn.BatchNorm2d(16)
            self.relu6 = nn.ReLU6()
            # depthwise
            self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
            self.bn4 = nn.BatchNorm2d(16)
            # a squeeze-like branch through ReduceMean, added back (broadcast Add)
            self.se = nn.Conv2d(16, 16, 1, bias=True)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            r = F.relu(self.bn2a(self.conv2a(x)))
            r = self.bn2b(self.conv2b(r))
            x = F.relu(x + r)
            x = self.pool(x)
            x = F.pad(x, (1, 1, 1, 1))
            x = self.relu6(self.bn3(self.conv3(x)))
            x = self.relu6(self.bn4(self.dw(x)))
            m = x.mean(dim=(2, 3), keepdim=True)
            x = F.relu(x + self.se(m))
            x = self.gap(x)
            x = x.view(x.size(0), -1)
            return self.fc(x)

    torch.manual_seed(seed)
    net = SmallCNN()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return net.eval()


def fold_bn_into_convs(net):
    """A copy of ``net`` with every BatchNorm merged into the Conv before it (float64, rounded)."""
    import copy

    import torch
    from torch import nn

    net = copy.deepcopy(net)
    pairs = [("conv1", "bn1"), ("conv2a", "bn2a"), ("conv2b", "bn2b"), ("conv3", "bn3"), ("dw", "bn4")]
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = getattr(net, conv_name), getattr(net, bn_name)
            gain = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = conv.weight.double() * gain.reshape(-1, 1, 1, 1)
            b = conv.bias.double() if conv.bias is not None else torch.zeros_like(gain)
            b = (b - bn.running_mean.double()) * gain + bn.bias.double()
            new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                            conv.padding, conv.dilation, conv.groups, bias=True)
            new.weight.copy_(w.float())
            new.bias.copy_(b.float())
            setattr(net, conv_name, new)
            setattr(net, bn_name, nn.Identity())
    return net.eval()


def export_torchscript(net, x, path, opset, fold):
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset,
                          do_constant_folding=fold, training=torch.onnx.TrainingMode.EVAL,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


def export_dynamo(net, x, path, optimize=True):
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), external_data=False, optimize=optimize)
    program.save(str(path), external_data=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return model


# --------------------------------------------------------------------------------------
# Keras / tf2onnx-style graphs, written directly with onnx.helper
# --------------------------------------------------------------------------------------
def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def build_keras(seed, preproc):
    """NHWC input -> Transpose -> Conv + Add(bias) -> Clip(0,6) -> depthwise Conv + Add -> Clip
    -> Conv(SAME_UPPER) + Add -> Relu -> ReduceMean / GlobalAveragePool -> Reshape / Flatten
    -> MatMul + Add -> Softmax.  ``preproc``: raw [0, 255] pixels, Sub(mean), Div(std) first."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def he(shape, fan_in):
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    x = "input_1" if not preproc else "image_raw"
    if preproc:
        mean = np.array([123.675, 116.28, 103.53])
        std = np.array([58.395, 57.12, 57.375])
        inits += [_init("preproc/mean", mean), _init("preproc/std", std)]
        nodes += [helper.make_node("Sub", [x, "preproc/mean"], ["preproc/centred"], name="preproc/sub"),
                  helper.make_node("Div", ["preproc/centred", "preproc/std"], ["preproc/scaled"], name="preproc/div")]
        x = "preproc/scaled"
    nodes.append(helper.make_node("Transpose", [x], ["model/conv1/transpose"], perm=[0, 3, 1, 2],
                                  name="model/conv1/Conv2D__6"))
    # conv1 3->8, 3x3, explicit pads, bias as a separate Add of shape [1, C, 1, 1]
    inits += [_init("model/conv1/kernel", he((8, 3, 3, 3), 27)), _init("model/conv1/bias", 0.1 * rng.standard_normal((1, 8, 1, 1))),
              _init("clip_min", 0.0), _init("clip_max", 6.0)]
    nodes += [helper.make_node("Conv", ["model/conv1/transpose", "model/conv1/kernel"], ["model/conv1/Conv2D"],
                               pads=[1, 1, 1, 1], strides=[1, 1], kernel_shape=[3, 3], name="model/conv1/Conv2D"),
              helper.make_node("Add", ["model/conv1/Conv2D", "model/conv1/bias"], ["model/conv1/BiasAdd"],
                               name="model/conv1/BiasAdd"),
              helper.make_node("Clip", ["model/conv1/BiasAdd", "clip_min", "clip_max"], ["model/re_lu/Relu6"],
                               name="model/re_lu/Relu6")]
    # depthwise 3x3, stride 2
    inits += [_init("model/dw/depthwise_kernel", he((8, 1, 3, 3), 9)),
              _init("model/dw/bias", 0.1 * rng.standard_normal((1, 8, 1, 1)))]
    nodes += [helper.make_node("Conv", ["model/re_lu/Relu6", "model/dw/depthwise_kernel"], ["model/dw/depthwise"],
                               group=8, pads=[0, 0, 1, 1], strides=[2, 2], kernel_shape=[3, 3],
                               name="model/dw/depthwise"),
              helper.make_node("Add", ["model/dw/depthwise", "model/dw/bias"], ["model/dw/BiasAdd"], name="model/dw/BiasAdd"),
              helper.make_node("Clip", ["model/dw/BiasAdd", "clip_min", "clip_max"], ["model/re_lu_1/Relu6"],
                               name="model/re_lu_1/Relu6")]
    # pointwise-ish 3x3 conv 8->16 with auto_pad SAME_UPPER (as converters of padding="same" write it)
    inits += [_init("model/conv2/kernel", he((16, 8, 3, 3), 72)),
              _init("model/conv2/bias", 0.1 * rng.standard_normal((1, 16, 1, 1)))]
    nodes += [helper.make_node("Conv", ["model/re_lu_1/Relu6", "model/conv2/kernel"], ["model/conv2/Conv2D"],
                               auto_pad="SAME_UPPER", strides=[1, 1], kernel_shape=[3, 3], name="model/conv2/Conv2D"),
              helper.make_node("Add", ["model/conv2/Conv2D", "model/conv2/bias"], ["model/conv2/BiasAdd"],
                               name="model/conv2/BiasAdd"),
              helper.make_node("Relu", ["model/conv2/BiasAdd"], ["model/conv2/Relu"], name="model/conv2/Relu")]
    if preproc:
        nodes += [helper.make_node("GlobalAveragePool", ["model/conv2/Relu"], ["model/gap/pooled"], name="model/gap/Mean"),
                  helper.make_node("Flatten", ["model/gap/pooled"], ["model/flatten/Reshape"], axis=1,
                                   name="model/flatten/Reshape")]
    else:
        inits.append(numpy_helper.from_array(np.array([-1, 16], dtype=np.int64), "model/flatten/shape"))
        nodes += [helper.make_node("ReduceMean", ["model/conv2/Relu"], ["model/gap/Mean"], axes=[2, 3], keepdims=1,
                                   name="model/gap/Mean"),
                  helper.make_node("Reshape", ["model/gap/Mean", "model/flatten/shape"], ["model/flatten/Reshape"],
                                   name="model/flatten/Reshape")]
    inits += [_init("model/dense/kernel", he((16, 10), 16)), _init("model/dense/bias", 0.1 * rng.standard_normal(10))]
    nodes += [helper.make_node("MatMul", ["model/flatten/Reshape", "model/dense/kernel"], ["model/dense/MatMul"],
                               name="model/dense/MatMul"),
              helper.make_node("Add", ["model/dense/MatMul", "model/dense/bias"], ["model/dense/BiasAdd"],
                               name="model/dense/BiasAdd"),
              helper.make_node("Softmax", ["model/dense/BiasAdd"], ["dense"], axis=-1, name="model/dense/Softmax")]
    graph = helper.make_graph(
        nodes, "keras_preproc" if preproc else "keras_nhwc",
        [helper.make_tensor_value_info("image_raw" if preproc else "input_1", TensorProto.FLOAT,
                                       ["unk__0", 32, 32, 3])],
        [helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["unk__1", 10])],
        inits)
    model = helper.make_model(graph, producer_name="tf2onnx-style (onnx.helper)", producer_version="1.16",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------------------
# ONNX Runtime offline optimisation
# --------------------------------------------------------------------------------------
def ort_optimise(src, dst, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


# --------------------------------------------------------------------------------------
def op_types(model):
    return dict(sorted(Counter(f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                               for n in model.graph.node).items()))


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "exporters"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-torch", action="store_true", help="write only the Keras-style graphs (no PyTorch needed)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"versions": {k: version(k) for k in ("torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "numpy")},
                "python": sys.version.split()[0], "seed": args.seed, "files": {}, "skipped": {}}

    def record(name, model, x, ort_out, torch_out=None, **extra):
        arrays = {"x": x.astype(np.float32), "ort_logits": ort_out.astype(np.float32)}
        if torch_out is not None:
            arrays["torch_logits"] = torch_out.astype(np.float32)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        entry = {"opsets": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
                 "producer": f"{model.producer_name} {model.producer_version}".strip(),
                 "ir_version": model.ir_version, "op_types": op_types(model),
                 "bytes": (out / f"{name}.onnx").stat().st_size, **extra}
        if torch_out is not None:
            entry["max_abs_torch_vs_ort"] = float(np.max(np.abs(torch_out - ort_out)))
        manifest["files"][name] = entry
        print(f"{name}: {entry['bytes']} bytes, opsets {entry['opsets']}, ops {entry['op_types']}")

    rng = np.random.default_rng(args.seed + 100)

    if not args.skip_torch:
        import torch

        net = build_torch_net(args.seed)
        x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            ref = net(xt).numpy()

        def torch_file(name, model, net_used=net, **extra):
            with torch.no_grad():
                t = net_used(xt).numpy()
            o = ort_logits(out / f"{name}.onnx", x)
            assert np.allclose(o, t, rtol=1e-4, atol=1e-4), (name, np.max(np.abs(o - t)))
            record(name, model, x, o, t, **extra)

        m = export_torchscript(net, xt, out / "torchscript_bn.onnx", 17, fold=False)
        torch_file("torchscript_bn", m, exporter="torch.onnx.export(dynamo=False, opset_version=17, "
                                                    "do_constant_folding=False)")

        m = export_torchscript(net, xt, out / "torchscript_folded.onnx", 17, fold=True)
        how = "exporter (do_constant_folding=True, training=EVAL)"
        if "BatchNormalization" in op_types(m):  # the exporter kept BN: fold it in PyTorch instead
            folded = fold_bn_into_convs(net)
            m = export_torchscript(folded, xt, out / "torchscript_folded.onnx", 17, fold=True)
            how = "PyTorch before export (the exporter kept BN)"
        torch_file("torchscript_folded", m, exporter="torch.onnx.export(dynamo=False, opset_version=17, "
                                                        "do_constant_folding=True, training=EVAL)",
                   bn_folded_by=how)

        from torch.onnx import _constants

        newest = _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
        for opset in sorted(set(OPSETS) | ({newest} if newest > max(OPSETS) else set())):
            name = f"torchscript_opset{opset}"
            m = export_torchscript(net, xt, out / f"{name}.onnx", opset, fold=False)
            torch_file(name, m, exporter=f"torch.onnx.export(dynamo=False, opset_version={opset}, "
                                         "do_constant_folding=False)")

        # The dynamo exporter's default (optimize=True) runs onnxscript's optimiser, which folds
        # BN (and the zero Pad) into the convolutions; optimize=False keeps BN, as the brief's
        # "dynamo, BN kept" comparison needs.
        for name, optimize in (("dynamo", True), ("dynamo_unoptimized", False)):
            try:
                m = export_dynamo(net, xt, out / f"{name}.onnx", optimize=optimize)
                torch_file(name, m, exporter=f"torch.onnx.export(dynamo=True, optimize={optimize}) with "
                                             "dynamic_shapes batch (default opset)")
            except Exception as exc:  # recorded, not fatal: the tests skip a missing file
                (out / f"{name}.onnx").unlink(missing_ok=True)
                manifest["skipped"][name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                traceback.print_exc()

        # ONNX Runtime's offline optimiser on the BN-kept TorchScript graph
        for name, level in (("ort_basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
                            ("ort_extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)):
            m = ort_optimise(out / "torchscript_bn.onnx", out / f"{name}.onnx", level)
            o = ort_logits(out / f"{name}.onnx", x)
            assert np.allclose(o, ref, rtol=1e-4, atol=1e-4), name
            record(name, m, x, o, ref, exporter=f"onnxruntime {ort.__version__} {level.name} "
                                                "optimized_model_filepath on torchscript_bn.onnx")

    for name, preproc in (("keras_nhwc", False), ("keras_preproc", True)):
        model = build_keras(args.seed + 7, preproc)
        onnx.save(model, str(out / f"{name}.onnx"))
        if preproc:
            xk = rng.integers(0, 256, size=(2, 32, 32, 3)).astype(np.float32)
        else:
            xk = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
        probs = ort_logits(out / f"{name}.onnx", xk)
        # the pre-softmax logits, from the graph cut before its Softmax
        cut = onnx.ModelProto()
        cut.CopyFrom(model)
        del cut.graph.output[:]
        cut.graph.output.append(helper.make_tensor_value_info("model/dense/BiasAdd", TensorProto.FLOAT, None))
        logits = ort_logits_model(cut, xk)
        arrays_extra = {"ort_probabilities": probs}
        record(name, model, xk, logits, exporter="onnx.helper (no TensorFlow), tf2onnx naming and patterns",
               output="Softmax probabilities; ort_logits are its input (the pre-softmax logits)")
        with np.load(out / f"{name}.npz") as f:
            saved = dict(f)
        np.savez_compressed(out / f"{name}.npz", **saved, **{k: v.astype(np.float32) for k, v in arrays_extra.items()})

    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {len(manifest['files'])} models to {out} ({total} bytes in all)")
    if manifest["skipped"]:
        print(f"skipped: {manifest['skipped']}")


def ort_logits_model(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


if __name__ == "__main__":
    main()
