#!/usr/bin/env python3
"""Download-free classifier zoo: real topologies built directly as ONNX graphs.

Builds VGG-16, ResNet-50, Inception-V3, a MobileNetV2/EfficientNet-Lite
style network, EfficientNet-B0 and MobileNetV3-Large with ``onnx.helper``
and NumPy only (no PyTorch, no pretrained weights).  The topologies are written from the papers' descriptions:

* VGG-16: Simonyan & Zisserman 2014, configuration "D".
* ResNet-50: He et al. 2015, bottleneck blocks [3, 4, 6, 3] (stride on the
  3x3 conv by default, as in the widely used "v1.5" variant).
* Inception-V3: Szegedy et al. 2015 ("Rethinking the Inception
  Architecture"), the standard Mixed_5b..Mixed_7c layout, no auxiliary head.
* MobileNetV2: Sandler et al. 2018, inverted residuals with linear
  bottlenecks and ReLU6 (written as Clip(0, 6)).
* EfficientNet-B0: Tan & Le 2019, MBConv blocks with squeeze-excitation and
  SiLU written as Mul(x, Sigmoid(x)), as PyTorch exports torchvision's model.
* MobileNetV3-Large: Howard et al. 2019, bneck blocks with Relu or
  HardSwish and squeeze-excitation gated by HardSigmoid (torchvision's).

Weights are random but deterministic (``np.random.default_rng(seed)``):
He-normal conv/Gemm weights, small random biases, BatchNormalization with
random scale (around 1), bias, running mean and positive running var.  They
are not arbitrary noise, though: the builder evaluates each node in NumPy as
it is added, on a small fixed calibration batch of "normalised images"
(~N(0, 1) per channel), and sets every BN's running statistics from the
statistics its input really has (plus a little noise) and every Gemm bias so
that its output is centred.  The network therefore behaves like a trained one
statistically: each BN re-normalises to roughly N(beta, scale^2), activations
stay O(1) through the full depth, ReLUs/Clips are active about half of the
time, and the logits depend on the input (the arg-max class changes from
image to image) instead of being dominated by a constant.  This holds for
inputs like the calibration batch.  Without a bounded activation
(EfficientNet-B0's SiLU, MobileNetV3's HardSwish) a shift in the input's
statistics grows with depth: per-pixel uniform noise through ImageNet
normalisation gives logits of 10^2 to 10^3 there (about 50 in MobileNetV2,
whose Clip bounds it).

All builders return a checked ``onnx.ModelProto`` with input ``input`` of
shape [batch, 3, size, size] (``batch`` is a symbolic dim) and output
``logits`` of shape [batch, num_classes], float32.

Library use::

    import zoo                       # with tools/ on sys.path
    model = zoo.resnet50(width=1/8, size=64, num_classes=10)
    onnx.save(model, "r50_small.onnx")

CLI::

    python tools/zoo.py resnet50 r50.onnx [--width W] [--size S]
        [--classes K] [--seed S] [--opset O] [--batchnorm] [--pool P]
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "GraphBuilder",
    "calibration_batch",
    "vgg16",
    "resnet50",
    "inception_v3",
    "mobilenet_v2_like",
    "MOBILENET_V2_BLOCKS",
    "efficientnet_b0_like",
    "EFFICIENTNET_B0_BLOCKS",
    "mobilenet_v3_large_like",
    "MOBILENET_V3_LARGE_BLOCKS",
    "BUILDERS",
    "build",
    "count_params",
    "op_counts",
    "main",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BN_EPSILON = 1e-5
# Spread of the logits over inputs (a trained ImageNet model has a few units).
LOGIT_STD = 2.0
MIN_OPSET = 9

IntPair = Union[int, Tuple[int, int]]


def _pair(v: IntPair) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _scaled(channels: float, width: float) -> int:
    """Channel count ``channels`` scaled by ``width`` (at least 1)."""
    return max(1, int(round(channels * width)))


def _out_len(n: int, k: int, s: int, p: int, what: str) -> int:
    out = (n + 2 * p - k) // s + 1
    if out < 1:
        raise ValueError(
            f"{what}: spatial size {n} is too small for kernel {k}, stride {s}, "
            f"pad {p}; use a larger input size"
        )
    return out


def _windows(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, ho: int, wo: int):
    """Yield the strided (N, C, ho, wo) view of padded ``xp`` per kernel tap."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]


def calibration_batch(size: IntPair, n: int = 4, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Random "normalised image" batch [n, C, H, W], float32, ~N(0, 1) per channel.

    Half of the images are white noise, half are piecewise-smooth multi-scale
    noise (blocks of 2..H/4 pixels) so the statistics resemble both random
    and natural-looking inputs.
    """
    h, w = _pair(size)
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((n, channels, h, w))
    for k in range(n // 2, n):
        img = np.zeros((channels, h, w))
        s = 2
        while s <= max(2, min(h, w) // 4):
            coarse = rng.standard_normal((channels, -(-h // s), -(-w // s)))
            img += np.repeat(np.repeat(coarse, s, axis=1), s, axis=2)[:, :h, :w]
            s *= 2
        img += 0.3 * rng.standard_normal((channels, h, w))
        out[k] = img
    out -= out.mean(axis=(2, 3), keepdims=True)
    out /= out.std(axis=(2, 3), keepdims=True) + 1e-6
    return out.astype(np.float32)


class GraphBuilder:
    """Small helper that appends ONNX nodes/initializers, shared by all models.

    Every layer method takes the name of an existing tensor, appends one node
    (plus its initializers) and returns the name of its output tensor.  A
    ``name`` becomes the node name and its output tensor name; initializers
    are ``<name>.weight``, ``<name>.bias``, ``<name>.running_mean``, ...
    Names are made unique automatically.

    The builder also evaluates every node eagerly in NumPy on a small
    calibration batch (``self.values``), which gives the static shapes and
    lets it pick BatchNormalization running statistics and Gemm biases from
    the actual activation statistics, so the random network is
    well-conditioned at any depth.  ``self.values[name]`` doubles as a
    reference output for checking a runtime against.
    """

    def __init__(
        self,
        graph_name: str,
        size: IntPair,
        in_channels: int = 3,
        seed: int = 0,
        opset: int = 17,
        bn_epsilon: float = BN_EPSILON,
        calib_batch: Optional[int] = None,
    ):
        max_opset = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= max_opset:
            raise ValueError(f"opset must be in [{MIN_OPSET}, {max_opset}], got {opset}")
        h, w = _pair(size)
        if h < 1 or w < 1 or in_channels < 1:
            raise ValueError("size and in_channels must be positive")
        self.graph_name = graph_name
        self.opset = int(opset)
        self.rng = np.random.default_rng(seed)
        self.bn_epsilon = float(bn_epsilon)
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.values: Dict[str, np.ndarray] = {}
        self._names: set = set()
        self._counters: Dict[str, int] = collections.Counter()
        self._shared: Dict[str, str] = {}
        self.input = INPUT_NAME
        self.in_channels = int(in_channels)
        self.size = (h, w)
        if calib_batch is None:
            calib_batch = 8 if h * w <= 128 * 128 else 4
        self._names.add(INPUT_NAME)
        self.values[INPUT_NAME] = calibration_batch(
            (h, w), calib_batch, in_channels, seed=seed + 1_000_003
        )

    # ------------------------------------------------------------------ utils
    def _unique(self, name: Optional[str], op: str) -> str:
        if name is None:
            self._counters[op] += 1
            name = f"{op}_{self._counters[op]}"
        base, i = name, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def _init(self, name: str, array: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _shared_scalar(self, value: float) -> str:
        """A float32 scalar initializer shared by every node that needs it."""
        key = repr(float(value))
        if key not in self._shared:
            label = f"{value:g}".replace("-", "m").replace(".", "p")
            name = self._unique(f"const_{label}", "const")
            self.initializers.append(
                numpy_helper.from_array(np.array(value, dtype=np.float32), name))
            self._shared[key] = name
        return self._shared[key]

    def _emit(self, op: str, inputs: Sequence[str], name: str, value: np.ndarray, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(f"{name}: non-finite calibration activations")
        self.values[name] = value.astype(np.float32, copy=False)
        return name

    def _map(self, x: str) -> np.ndarray:
        v = self.values[x]
        if v.ndim != 4:
            raise ValueError(f"{x!r} is not a feature map (shape {self.shape(x)})")
        return v

    def shape(self, x: str) -> Tuple[int, ...]:
        """Shape of ``x`` without the batch dimension."""
        return tuple(self.values[x].shape[1:])

    def channels(self, x: str) -> int:
        return self.values[x].shape[1]

    def _he(self, shape: Tuple[int, ...], fan_in: int) -> np.ndarray:
        w = self.rng.standard_normal(shape, dtype=np.float32)
        return w * np.float32(math.sqrt(2.0 / fan_in))

    # ----------------------------------------------------------------- layers
    def conv(
        self,
        x: str,
        out_channels: int,
        kernel: IntPair,
        stride: IntPair = 1,
        pad: Optional[IntPair] = None,
        group: int = 1,
        bias: bool = False,
        name: Optional[str] = None,
    ) -> str:
        """Conv with He-normal weights; ``pad=None`` means kernel//2 ("same")."""
        xv = self._map(x)
        n, cin, h, w = xv.shape
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride)
        ph, pw = (kh // 2, kw // 2) if pad is None else _pair(pad)
        if cin % group or out_channels % group:
            raise ValueError(f"group {group} must divide {cin} and {out_channels}")
        name = self._unique(name, "Conv")
        ho, wo = _out_len(h, kh, sh, ph, name), _out_len(w, kw, sw, pw, name)
        cg, og = cin // group, out_channels // group
        weight = self._he((out_channels, cg, kh, kw), cg * kh * kw)
        inputs = [x, self._init(f"{name}.weight", weight)]
        xp = np.pad(xv, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        if cg == 1 and og == 1:  # depthwise
            y = np.zeros((n, out_channels, ho, wo), np.float32)
            for i, j, win in _windows(xp, kh, kw, sh, sw, ho, wo):
                y += win * weight[None, :, 0, i, j, None, None]
        else:
            wg = weight.reshape(group, og, cg, kh, kw)
            y = np.zeros((n, group, og, ho * wo), np.float32)
            for i, j, win in _windows(xp, kh, kw, sh, sw, ho, wo):
                y += np.matmul(wg[None, :, :, :, i, j], win.reshape(n, group, cg, ho * wo))
            y = y.reshape(n, out_channels, ho, wo)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        if group != 1:
            attrs["group"] = group
        if bias:
            b = (self.rng.standard_normal(out_channels) * 0.05).astype(np.float32)
            inputs.append(self._init(f"{name}.bias", b))
            y += b[None, :, None, None]
        return self._emit("Conv", inputs, name, y, **attrs)

    def bn(self, x: str, name: Optional[str] = None, gamma: float = 1.0) -> str:
        """BatchNormalization (inference form) with random, plausible params.

        The running mean/var are the calibration statistics of ``x`` with a
        little noise, so the output is roughly N(beta, scale^2) per channel;
        scale is around ``gamma`` (1 by default), beta is small.
        """
        xv = self._map(x)
        c = xv.shape[1]
        name = self._unique(name, "BatchNormalization")
        rng = self.rng
        mu = xv.mean(axis=(0, 2, 3), dtype=np.float64)
        var = xv.var(axis=(0, 2, 3), dtype=np.float64)
        var = np.maximum(var, 1e-4 * max(float(var.mean()), 1e-12))
        scale = (gamma * np.clip(rng.normal(1.0, 0.1, c), 0.5, 1.5)).astype(np.float32)
        beta = rng.normal(0.0, 0.1, c).astype(np.float32)
        r_mean = (mu + 0.1 * np.sqrt(var) * rng.standard_normal(c)).astype(np.float32)
        r_var = (var * np.exp(rng.normal(0.0, 0.1, c))).astype(np.float32)
        inputs = [
            x,
            self._init(f"{name}.weight", scale),
            self._init(f"{name}.bias", beta),
            self._init(f"{name}.running_mean", r_mean),
            self._init(f"{name}.running_var", r_var),
        ]
        k = scale / np.sqrt(r_var + np.float32(self.bn_epsilon))
        y = (xv - r_mean[:, None, None]) * k[:, None, None] + beta[:, None, None]
        return self._emit("BatchNormalization", inputs, name, y, epsilon=self.bn_epsilon)

    def relu(self, x: str, name: Optional[str] = None) -> str:
        return self._emit("Relu", [x], self._unique(name, "Relu"), np.maximum(self.values[x], 0))

    def clip(self, x: str, lo: float = 0.0, hi: float = 6.0, name: Optional[str] = None) -> str:
        """Clip(lo, hi): attributes before opset 11, scalar inputs from 11 on."""
        name = self._unique(name, "Clip")
        y = np.clip(self.values[x], np.float32(lo), np.float32(hi))
        if self.opset < 11:
            return self._emit("Clip", [x], name, y, min=float(lo), max=float(hi))
        return self._emit("Clip", [x, self._shared_scalar(lo), self._shared_scalar(hi)], name, y)

    def sigmoid(self, x: str, name: Optional[str] = None) -> str:
        y = 0.5 * (1.0 + np.tanh(0.5 * self.values[x]))  # no overflow for large |x|
        return self._emit("Sigmoid", [x], self._unique(name, "Sigmoid"), y)

    def hardsigmoid(self, x: str, name: Optional[str] = None) -> str:
        """HardSigmoid with PyTorch's alpha 1/6 and beta 1/2: clip(x / 6 + 1/2, 0, 1)."""
        alpha = np.float32(1.0 / 6.0)
        y = np.clip(self.values[x] * alpha + np.float32(0.5), 0, 1)
        name = self._unique(name, "HardSigmoid")
        return self._emit("HardSigmoid", [x], name, y, alpha=float(alpha), beta=0.5)

    def mul(self, a: str, b: str, name: Optional[str] = None) -> str:
        """Mul of two data tensors (with broadcasting, e.g. an [N, C, 1, 1] gate)."""
        return self._emit("Mul", [a, b], self._unique(name, "Mul"), self.values[a] * self.values[b])

    def silu(self, x: str, name: Optional[str] = None) -> str:
        """SiLU as PyTorch exports it: Mul(x, Sigmoid(x))."""
        name = self._unique(name, "Mul")
        s = self.sigmoid(x, name=f"{name}.sigmoid")
        return self._emit("Mul", [x, s], name, self.values[x] * self.values[s])

    def hardswish(self, x: str, name: Optional[str] = None) -> str:
        """HardSwish from opset 14; before it, as PyTorch exports it: Mul(x, HardSigmoid(x))."""
        name = self._unique(name, "HardSwish")
        if self.opset < 14:
            s = self.hardsigmoid(x, name=f"{name}.hardsigmoid")
            return self._emit("Mul", [x, s], name, self.values[x] * self.values[s])
        v = self.values[x]
        y = v * np.clip(v * np.float32(1.0 / 6.0) + np.float32(0.5), 0, 1)
        return self._emit("HardSwish", [x], name, y)

    def activation(self, x: str, act: str, name: Optional[str] = None) -> str:
        """``act`` by name: relu, relu6 (Clip(0, 6)), silu, hardswish, sigmoid or hardsigmoid."""
        fns = {"relu": self.relu, "relu6": self.clip, "silu": self.silu,
               "hardswish": self.hardswish, "sigmoid": self.sigmoid,
               "hardsigmoid": self.hardsigmoid}
        if act not in fns:
            raise ValueError(f"unknown activation {act!r}")
        return fns[act](x, name=name)

    def _pool(self, op, x, kernel, stride, pad, name, count_include_pad=True):
        xv = self._map(x)
        n, c, h, w = xv.shape
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride)
        ph, pw = _pair(pad)
        name = self._unique(name, op)
        ho, wo = _out_len(h, kh, sh, ph, name), _out_len(w, kw, sw, pw, name)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        pads = ((0, 0), (0, 0), (ph, ph), (pw, pw))
        if op == "MaxPool":
            xp = np.pad(xv, pads, constant_values=-np.inf)
            y = np.full((n, c, ho, wo), -np.inf, np.float32)
            for _, _, win in _windows(xp, kh, kw, sh, sw, ho, wo):
                np.maximum(y, win, out=y)
        else:
            xp = np.pad(xv, pads)
            y = np.zeros((n, c, ho, wo), np.float32)
            for _, _, win in _windows(xp, kh, kw, sh, sw, ho, wo):
                y += win
            if count_include_pad:
                attrs["count_include_pad"] = 1
                y /= kh * kw
            else:
                ones = np.pad(np.ones((1, 1, h, w), np.float32), pads)
                cnt = sum(win for _, _, win in _windows(ones, kh, kw, sh, sw, ho, wo))
                y /= cnt
        return self._emit(op, [x], name, y, **attrs)

    def maxpool(
        self, x: str, kernel: IntPair, stride: IntPair, pad: IntPair = 0, name: Optional[str] = None
    ) -> str:
        return self._pool("MaxPool", x, kernel, stride, pad, name)

    def avgpool(
        self,
        x: str,
        kernel: IntPair,
        stride: IntPair,
        pad: IntPair = 0,
        count_include_pad: bool = True,
        name: Optional[str] = None,
    ) -> str:
        """AveragePool; ``count_include_pad`` defaults to True (torchvision)."""
        return self._pool("AveragePool", x, kernel, stride, pad, name, count_include_pad)

    def add(self, a: str, b: str, name: Optional[str] = None) -> str:
        va, vb = self.values[a], self.values[b]
        if va.shape != vb.shape:
            raise ValueError(f"Add of mismatched shapes {va.shape[1:]} and {vb.shape[1:]}")
        return self._emit("Add", [a, b], self._unique(name, "Add"), va + vb)

    def concat(self, xs: Sequence[str], name: Optional[str] = None) -> str:
        vs = [self._map(x) for x in xs]
        spatial = {v.shape[2:] for v in vs}
        if len(spatial) != 1:
            raise ValueError(f"Concat of mismatched spatial sizes {sorted(spatial)}")
        name = self._unique(name, "Concat")
        return self._emit("Concat", list(xs), name, np.concatenate(vs, axis=1), axis=1)

    def gap(self, x: str, name: Optional[str] = None) -> str:
        """GlobalAveragePool -> [N, C, 1, 1]."""
        y = self._map(x).mean(axis=(2, 3), keepdims=True)
        return self._emit("GlobalAveragePool", [x], self._unique(name, "GlobalAveragePool"), y)

    def reducemean(self, x: str, name: Optional[str] = None) -> str:
        """ReduceMean over axes [2, 3], keepdims=1 (axes as input from opset 18)."""
        y = self._map(x).mean(axis=(2, 3), keepdims=True)
        name = self._unique(name, "ReduceMean")
        if self.opset >= 18:
            axes = self._init(f"{name}.axes", np.array([2, 3], dtype=np.int64))
            return self._emit("ReduceMean", [x, axes], name, y, keepdims=1)
        return self._emit("ReduceMean", [x], name, y, axes=[2, 3], keepdims=1)

    def pool(self, x: str, mode: str = "gap", name: Optional[str] = None) -> str:
        """Global pooling: ``mode`` is "gap" (GlobalAveragePool) or "reducemean"."""
        if mode == "gap":
            return self.gap(x, name)
        if mode == "reducemean":
            return self.reducemean(x, name)
        raise ValueError(f"pool must be 'gap' or 'reducemean', got {mode!r}")

    def flatten(self, x: str, name: Optional[str] = None) -> str:
        v = self.values[x]
        y = v.reshape(v.shape[0], -1)
        return self._emit("Flatten", [x], self._unique(name, "Flatten"), y, axis=1)

    def gemm(
        self, x: str, out_features: int, name: Optional[str] = None,
        out_std: Optional[float] = None,
    ) -> str:
        """Fully connected layer, weight [out, in] with transB=1 (torch layout).

        The bias cancels the mean of W @ x over the calibration batch (plus a
        little noise), so outputs are centred and driven by the input rather
        than by a constant.  Weights are He-normal; with ``out_std`` they are
        rescaled so the outputs' spread over the calibration batch is about
        ``out_std`` (used for logits, so softmax is not flat).
        """
        xv = self.values[x]
        if xv.ndim != 2:
            raise ValueError(f"Gemm needs a flat input, {x!r} has shape {xv.shape[1:]}")
        fin = xv.shape[1]
        name = self._unique(name, "Gemm")
        weight = self._he((out_features, fin), fin)
        y = xv @ weight.T
        std = float(y.std(axis=0).mean()) + 1e-6
        if out_std is not None:
            k = np.float32(out_std / std)
            weight, y, std = weight * k, y * k, out_std
        bias = (-y.mean(axis=0) + 0.1 * std * self.rng.standard_normal(out_features))
        bias = bias.astype(np.float32)
        inputs = [x, self._init(f"{name}.weight", weight), self._init(f"{name}.bias", bias)]
        return self._emit("Gemm", inputs, name, y + bias, transB=1)

    # ------------------------------------------------------------- composites
    def conv_bn_act(
        self,
        x: str,
        out_channels: int,
        kernel: IntPair,
        stride: IntPair = 1,
        pad: Optional[IntPair] = None,
        group: int = 1,
        act: Optional[str] = "relu",
        name: str = "conv",
        gamma: float = 1.0,
    ) -> str:
        """Conv (no bias) + BatchNormalization + optional activation.

        ``act`` is one of :meth:`activation`'s names or None (linear).  Nodes
        are named ``<name>.conv``, ``<name>.bn`` and ``<name>.<act>``.
        """
        y = self.conv(x, out_channels, kernel, stride, pad, group, bias=False, name=f"{name}.conv")
        y = self.bn(y, name=f"{name}.bn", gamma=gamma)
        if act is not None:
            y = self.activation(y, act, name=f"{name}.{act}")
        return y

    def squeeze_excitation(
        self, x: str, squeeze_channels: int, act: str, gate: str, pool: str = "gap",
        name: str = "se",
    ) -> str:
        """torchvision's SqueezeExcitation: Mul(gate(fc2(act(fc1(pool(x))))), x).

        fc1 and fc2 are 1x1 convs with bias; ``gate`` is "sigmoid"
        (EfficientNet) or "hardsigmoid" (MobileNetV3).  The gate is the Mul's
        first input, as in torchvision's ``scale * input``.
        """
        s = self.pool(x, pool, name=f"{name}.avgpool")
        s = self.conv(s, squeeze_channels, 1, bias=True, name=f"{name}.fc1")
        s = self.activation(s, act, name=f"{name}.{act}")
        s = self.conv(s, self.channels(x), 1, bias=True, name=f"{name}.fc2")
        s = self.activation(s, gate, name=f"{name}.{gate}")
        return self.mul(s, x, name=f"{name}.scale")

    # ------------------------------------------------------------------ build
    def build(self, output: str, doc: str = "") -> onnx.ModelProto:
        """Make ``output`` the graph output ``logits`` and return the checked model."""
        out_v = self.values[output]
        if out_v.ndim != 2:
            raise ValueError(f"output {output!r} must be flat, has shape {out_v.shape[1:]}")
        for node in self.nodes:
            for field in (node.output, node.input):
                for i, t in enumerate(field):
                    if t == output:
                        field[i] = OUTPUT_NAME
        self.values[OUTPUT_NAME] = self.values.pop(output)
        h, w = self.size
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            helper.make_graph(
                self.nodes,
                self.graph_name,
                [helper.make_tensor_value_info(
                    INPUT_NAME, TensorProto.FLOAT, ["batch", self.in_channels, h, w])],
                [helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["batch", out_v.shape[1]])],
            ),
            opset_imports=opsets,
            producer_name="onnxrap.zoo",
            ir_version=helper.find_min_ir_version_for(opsets),
            doc_string=doc,
        )
        # Move the weights in last (and drop our list) to avoid extra copies.
        model.graph.initializer.extend(self.initializers)
        self.initializers = []
        onnx.checker.check_model(model, full_check=True)
        return model


# --------------------------------------------------------------------- VGG-16
# Configuration "D": numbers are conv widths, "M" is a 2x2/2 max pool.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    batchnorm: bool = False,
    seed: int = 0,
    opset: int = 17,
) -> onnx.ModelProto:
    """VGG-16 (config D): 13 conv3x3+ReLU, 5 max pools, 3 fully connected.

    Conv widths 64..512 and the 4096-wide classifier are scaled by ``width``.
    There is no adaptive pool: the classifier input is C * (size/32)^2, so
    ``size`` must be at least 32 (224 gives the usual 512*7*7).
    """
    g = GraphBuilder("vgg16_bn" if batchnorm else "vgg16", size, seed=seed, opset=opset)
    x, block, idx = g.input, 1, 1
    for v in _VGG16_CFG:
        if v == "M":
            x = g.maxpool(x, 2, 2, name=f"features.pool{block}")
            block, idx = block + 1, 1
            continue
        base = f"features.conv{block}_{idx}"
        x = g.conv(x, _scaled(v, width), 3, 1, 1, bias=True, name=base)
        if batchnorm:
            x = g.bn(x, name=f"{base}.bn")
        x = g.relu(x, name=f"{base}.relu")
        idx += 1
    x = g.flatten(x, name="flatten")
    hidden = _scaled(4096, width)
    x = g.relu(g.gemm(x, hidden, name="classifier.fc1"), name="classifier.relu1")
    x = g.relu(g.gemm(x, hidden, name="classifier.fc2"), name="classifier.relu2")
    x = g.gemm(x, num_classes, name="classifier.fc3", out_std=LOGIT_STD)
    return g.build(x, doc=f"VGG-16{' BN' if batchnorm else ''} width={width} size={size} seed={seed}")


# ------------------------------------------------------------------ ResNet-50
def _bottleneck(
    g: GraphBuilder, x: str, planes: int, stride: int, downsample: bool,
    name: str, stride_in_1x1: bool,
) -> str:
    out_ch = planes * 4
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    y = g.conv_bn_act(x, planes, 1, s1, 0, name=f"{name}.1")
    y = g.conv_bn_act(y, planes, 3, s3, 1, name=f"{name}.2")
    # Smaller scale on the last BN of the residual branch (as trained ResNets
    # have) keeps the identity path from growing too fast along a stage.
    y = g.conv_bn_act(y, out_ch, 1, 1, 0, act=None, name=f"{name}.3", gamma=0.5)
    shortcut = x
    if downsample:
        shortcut = g.conv_bn_act(x, out_ch, 1, stride, 0, act=None, name=f"{name}.downsample")
    y = g.add(y, shortcut, name=f"{name}.add")
    return g.relu(y, name=f"{name}.relu")


def resnet50(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
    stride_in_1x1: bool = False,
    pool: str = "gap",
) -> onnx.ModelProto:
    """ResNet-50: 7x7/2 stem, 3x3/2 max pool, bottleneck stages [3, 4, 6, 3].

    Each bottleneck is 1x1 -> 3x3 -> 1x1 (x4 expansion), BN after every conv,
    a 1x1 conv + BN projection shortcut on the first block of each stage,
    then Add and ReLU.  The stride sits on the 3x3 conv ("v1.5") unless
    ``stride_in_1x1`` (the original paper's placement).  Widths scale with
    ``width``.  Any ``size`` from a few pixels up works (224 gives the usual
    7x7 final grid).
    """
    g = GraphBuilder("resnet50", size, seed=seed, opset=opset)
    x = g.conv_bn_act(g.input, _scaled(64, width), 7, 2, 3, name="stem")
    x = g.maxpool(x, 3, 2, 1, name="stem.maxpool")
    for stage, (planes, blocks, stride) in enumerate(
        zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2)), start=1
    ):
        for i in range(blocks):
            x = _bottleneck(
                g, x, _scaled(planes, width), stride if i == 0 else 1, i == 0,
                f"layer{stage}.{i}", stride_in_1x1,
            )
    x = g.flatten(g.pool(x, pool, name="avgpool"), name="flatten")
    x = g.gemm(x, num_classes, name="fc", out_std=LOGIT_STD)
    return g.build(x, doc=f"ResNet-50 width={width} size={size} seed={seed}")


# --------------------------------------------------------------- Inception-V3
def _inception_a(g: GraphBuilder, x: str, pool_features: int, c, name: str) -> str:
    b1 = g.conv_bn_act(x, c(64), 1, name=f"{name}.branch1x1")
    b5 = g.conv_bn_act(x, c(48), 1, name=f"{name}.branch5x5_1")
    b5 = g.conv_bn_act(b5, c(64), 5, name=f"{name}.branch5x5_2")
    b3 = g.conv_bn_act(x, c(64), 1, name=f"{name}.branch3x3dbl_1")
    b3 = g.conv_bn_act(b3, c(96), 3, name=f"{name}.branch3x3dbl_2")
    b3 = g.conv_bn_act(b3, c(96), 3, name=f"{name}.branch3x3dbl_3")
    bp = g.avgpool(x, 3, 1, 1, name=f"{name}.branch_pool.avgpool")
    bp = g.conv_bn_act(bp, c(pool_features), 1, name=f"{name}.branch_pool")
    return g.concat([b1, b5, b3, bp], name=f"{name}.concat")


def _inception_b(g: GraphBuilder, x: str, c, name: str) -> str:
    """Grid reduction 35 -> 17 (Mixed_6a)."""
    b3 = g.conv_bn_act(x, c(384), 3, 2, 0, name=f"{name}.branch3x3")
    bd = g.conv_bn_act(x, c(64), 1, name=f"{name}.branch3x3dbl_1")
    bd = g.conv_bn_act(bd, c(96), 3, name=f"{name}.branch3x3dbl_2")
    bd = g.conv_bn_act(bd, c(96), 3, 2, 0, name=f"{name}.branch3x3dbl_3")
    bp = g.maxpool(x, 3, 2, name=f"{name}.branch_pool")
    return g.concat([b3, bd, bp], name=f"{name}.concat")


def _inception_c(g: GraphBuilder, x: str, c7: int, c, name: str) -> str:
    """17x17 module with factorised 1x7 / 7x1 convolutions (Mixed_6b..6e)."""
    b1 = g.conv_bn_act(x, c(192), 1, name=f"{name}.branch1x1")
    b7 = g.conv_bn_act(x, c(c7), 1, name=f"{name}.branch7x7_1")
    b7 = g.conv_bn_act(b7, c(c7), (1, 7), name=f"{name}.branch7x7_2")
    b7 = g.conv_bn_act(b7, c(192), (7, 1), name=f"{name}.branch7x7_3")
    bd = g.conv_bn_act(x, c(c7), 1, name=f"{name}.branch7x7dbl_1")
    bd = g.conv_bn_act(bd, c(c7), (7, 1), name=f"{name}.branch7x7dbl_2")
    bd = g.conv_bn_act(bd, c(c7), (1, 7), name=f"{name}.branch7x7dbl_3")
    bd = g.conv_bn_act(bd, c(c7), (7, 1), name=f"{name}.branch7x7dbl_4")
    bd = g.conv_bn_act(bd, c(192), (1, 7), name=f"{name}.branch7x7dbl_5")
    bp = g.avgpool(x, 3, 1, 1, name=f"{name}.branch_pool.avgpool")
    bp = g.conv_bn_act(bp, c(192), 1, name=f"{name}.branch_pool")
    return g.concat([b1, b7, bd, bp], name=f"{name}.concat")


def _inception_d(g: GraphBuilder, x: str, c, name: str) -> str:
    """Grid reduction 17 -> 8 (Mixed_7a)."""
    b3 = g.conv_bn_act(x, c(192), 1, name=f"{name}.branch3x3_1")
    b3 = g.conv_bn_act(b3, c(320), 3, 2, 0, name=f"{name}.branch3x3_2")
    b7 = g.conv_bn_act(x, c(192), 1, name=f"{name}.branch7x7x3_1")
    b7 = g.conv_bn_act(b7, c(192), (1, 7), name=f"{name}.branch7x7x3_2")
    b7 = g.conv_bn_act(b7, c(192), (7, 1), name=f"{name}.branch7x7x3_3")
    b7 = g.conv_bn_act(b7, c(192), 3, 2, 0, name=f"{name}.branch7x7x3_4")
    bp = g.maxpool(x, 3, 2, name=f"{name}.branch_pool")
    return g.concat([b3, b7, bp], name=f"{name}.concat")


def _inception_e(g: GraphBuilder, x: str, c, name: str) -> str:
    """8x8 module with expanded 1x3 / 3x1 split branches (Mixed_7b, 7c)."""
    b1 = g.conv_bn_act(x, c(320), 1, name=f"{name}.branch1x1")
    b3 = g.conv_bn_act(x, c(384), 1, name=f"{name}.branch3x3_1")
    b3 = g.concat([
        g.conv_bn_act(b3, c(384), (1, 3), name=f"{name}.branch3x3_2a"),
        g.conv_bn_act(b3, c(384), (3, 1), name=f"{name}.branch3x3_2b"),
    ], name=f"{name}.branch3x3.concat")
    bd = g.conv_bn_act(x, c(448), 1, name=f"{name}.branch3x3dbl_1")
    bd = g.conv_bn_act(bd, c(384), 3, name=f"{name}.branch3x3dbl_2")
    bd = g.concat([
        g.conv_bn_act(bd, c(384), (1, 3), name=f"{name}.branch3x3dbl_3a"),
        g.conv_bn_act(bd, c(384), (3, 1), name=f"{name}.branch3x3dbl_3b"),
    ], name=f"{name}.branch3x3dbl.concat")
    bp = g.avgpool(x, 3, 1, 1, name=f"{name}.branch_pool.avgpool")
    bp = g.conv_bn_act(bp, c(192), 1, name=f"{name}.branch_pool")
    return g.concat([b1, b3, bd, bp], name=f"{name}.concat")


def inception_v3(
    width: float = 1.0,
    size: int = 299,
    num_classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
    pool: str = "gap",
) -> onnx.ModelProto:
    """Inception-V3 without the auxiliary head.

    Stem (conv/BN/ReLU x5 with two 3x3/2 max pools), Mixed_5b..5d
    (InceptionA), Mixed_6a (reduction), Mixed_6b..6e (1x7/7x1 factorised),
    Mixed_7a (reduction), Mixed_7b..7c (split 1x3/3x1 branches), global
    average pool, Gemm.  Pooling branches use AveragePool 3x3/1 pad 1 with
    count_include_pad=1.  Every conv is Conv(no bias) + BN + ReLU.  The
    smallest valid ``size`` is 75 (299 gives 35/17/8 grids).
    """
    if min(_pair(size)) < 75:
        raise ValueError(f"inception_v3 needs size >= 75, got {size}")
    g = GraphBuilder("inception_v3", size, seed=seed, opset=opset)

    def c(ch: int) -> int:
        return _scaled(ch, width)

    x = g.conv_bn_act(g.input, c(32), 3, 2, 0, name="Conv2d_1a_3x3")
    x = g.conv_bn_act(x, c(32), 3, 1, 0, name="Conv2d_2a_3x3")
    x = g.conv_bn_act(x, c(64), 3, 1, 1, name="Conv2d_2b_3x3")
    x = g.maxpool(x, 3, 2, name="maxpool1")
    x = g.conv_bn_act(x, c(80), 1, name="Conv2d_3b_1x1")
    x = g.conv_bn_act(x, c(192), 3, 1, 0, name="Conv2d_4a_3x3")
    x = g.maxpool(x, 3, 2, name="maxpool2")
    x = _inception_a(g, x, 32, c, "Mixed_5b")
    x = _inception_a(g, x, 64, c, "Mixed_5c")
    x = _inception_a(g, x, 64, c, "Mixed_5d")
    x = _inception_b(g, x, c, "Mixed_6a")
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _inception_c(g, x, c7, c, name)
    x = _inception_d(g, x, c, "Mixed_7a")
    x = _inception_e(g, x, c, "Mixed_7b")
    x = _inception_e(g, x, c, "Mixed_7c")
    x = g.flatten(g.pool(x, pool, name="avgpool"), name="flatten")
    x = g.gemm(x, num_classes, name="fc", out_std=LOGIT_STD)
    return g.build(x, doc=f"Inception-V3 (no aux) width={width} size={size} seed={seed}")


# ----------------------------------------------------------- MobileNetV2-like
# (expansion t, output channels c, repeats n, first stride s) per stage: the
# MobileNetV2 paper's table.
MOBILENET_V2_BLOCKS: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2_like(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
    blocks: Optional[Sequence[Tuple[int, int, int, int]]] = None,
    pool: str = "gap",
    stem_channels: int = 32,
    last_channels: int = 1280,
) -> onnx.ModelProto:
    """MobileNetV2 / EfficientNet-Lite style network (ReLU6 as Clip(0, 6)).

    Stem conv3x3/2 + BN + Clip; inverted residual blocks: 1x1 expand conv +
    BN + Clip (skipped when t == 1), depthwise 3x3 conv (group = channels) +
    BN + Clip, 1x1 project conv + BN with no activation (linear bottleneck),
    residual Add when stride 1 and in == out channels; then a 1x1 conv to
    ``last_channels`` + BN + Clip, global pooling (``pool`` = "gap" for
    GlobalAveragePool or "reducemean" for ReduceMean over [2, 3]), Flatten,
    Gemm.  ``blocks`` is a list of (t, c, n, s) stages; default
    ``MOBILENET_V2_BLOCKS`` (MobileNetV2 itself).  All widths, including
    stem/last, scale with ``width``.
    """
    if blocks is None:
        blocks = MOBILENET_V2_BLOCKS
    g = GraphBuilder("mobilenet_v2_like", size, seed=seed, opset=opset)
    x = g.conv_bn_act(g.input, _scaled(stem_channels, width), 3, 2, 1, act="relu6", name="stem")
    idx = 0
    for t, ch, n, s in blocks:
        out_ch = _scaled(ch, width)
        for i in range(n):
            stride = s if i == 0 else 1
            name = f"blocks.{idx}"
            in_ch = g.channels(x)
            hidden = int(round(in_ch * t))
            y = x
            if t != 1:
                y = g.conv_bn_act(y, hidden, 1, 1, 0, act="relu6", name=f"{name}.expand")
            y = g.conv_bn_act(y, hidden, 3, stride, 1, group=hidden, act="relu6",
                              name=f"{name}.depthwise")
            y = g.conv_bn_act(y, out_ch, 1, 1, 0, act=None, name=f"{name}.project",
                              gamma=0.5 if (stride == 1 and in_ch == out_ch) else 1.0)
            if stride == 1 and in_ch == out_ch:
                y = g.add(y, x, name=f"{name}.add")
            x = y
            idx += 1
    x = g.conv_bn_act(x, _scaled(last_channels, width), 1, 1, 0, act="relu6", name="head")
    x = g.flatten(g.pool(x, pool, name="avgpool"), name="flatten")
    x = g.gemm(x, num_classes, name="classifier", out_std=LOGIT_STD)
    return g.build(x, doc=f"MobileNetV2-like width={width} size={size} seed={seed}")


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's rounding of a channel count to a multiple of ``divisor`` (at most 10% down)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _inverted_residual(
    g: GraphBuilder, x: str, hidden: int, out_ch: int, kernel: int, stride: int, act: str,
    se: Optional[Tuple[int, str, str]], pool: str, name: str,
) -> str:
    """MBConv / MobileNetV3 bneck: [1x1 expand] -> depthwise -> [SE] -> linear 1x1 project [+ x].

    The expand conv is left out when ``hidden`` equals the input width; ``se``
    is (squeeze channels, SE activation, gate) or None.
    """
    in_ch = g.channels(x)
    residual = stride == 1 and in_ch == out_ch
    y = x
    if hidden != in_ch:
        y = g.conv_bn_act(y, hidden, 1, 1, 0, act=act, name=f"{name}.expand")
    y = g.conv_bn_act(y, hidden, kernel, stride, kernel // 2, group=hidden, act=act,
                      name=f"{name}.depthwise")
    if se is not None:
        squeeze, se_act, gate = se
        y = g.squeeze_excitation(y, squeeze, se_act, gate, pool, name=f"{name}.se")
    y = g.conv_bn_act(y, out_ch, 1, 1, 0, act=None, name=f"{name}.project",
                      gamma=0.5 if residual else 1.0)
    return g.add(y, x, name=f"{name}.add") if residual else y


# ----------------------------------------------------------- EfficientNet-B0
# (expansion t, kernel k, output channels c, repeats n, first stride s) per
# stage: Tan & Le 2019, Table 1 (torchvision's efficientnet_b0).
EFFICIENTNET_B0_BLOCKS: Tuple[Tuple[int, int, int, int, int], ...] = (
    (1, 3, 16, 1, 1),
    (6, 3, 24, 2, 2),
    (6, 5, 40, 2, 2),
    (6, 3, 80, 3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
)


def efficientnet_b0_like(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
    blocks: Optional[Sequence[Tuple[int, int, int, int, int]]] = None,
    pool: str = "gap",
    stem_channels: int = 32,
    last_channels: int = 1280,
) -> onnx.ModelProto:
    """EfficientNet-B0 as PyTorch exports torchvision's model (SiLU as Mul(x, Sigmoid(x))).

    Stem conv3x3/2 + BN + SiLU; MBConv blocks: 1x1 expand conv + BN + SiLU
    (skipped when t == 1), depthwise kxk conv + BN + SiLU, squeeze-excitation
    (pool -> 1x1 conv to max(1, block input / 4) -> SiLU -> 1x1 conv ->
    Sigmoid -> Mul with the depthwise output), 1x1 project conv + BN with no
    activation, residual Add when stride 1 and in == out channels (stochastic
    depth is the identity at inference); then a 1x1 conv to
    ``last_channels`` + BN + SiLU, global pooling, Flatten, Gemm (dropout is
    gone at export).  ``blocks`` is a list of (t, k, c, n, s) stages; default
    ``EFFICIENTNET_B0_BLOCKS``.  Widths scale with ``width``; ``pool`` also
    sets the squeeze-excitation pooling.
    """
    if blocks is None:
        blocks = EFFICIENTNET_B0_BLOCKS
    g = GraphBuilder("efficientnet_b0_like", size, seed=seed, opset=opset)
    x = g.conv_bn_act(g.input, _scaled(stem_channels, width), 3, 2, 1, act="silu", name="stem")
    idx = 0
    for t, k, ch, n, s in blocks:
        for i in range(n):
            in_ch = g.channels(x)
            se = (max(1, in_ch // 4), "silu", "sigmoid")
            x = _inverted_residual(g, x, in_ch * t, _scaled(ch, width), k, s if i == 0 else 1,
                                   "silu", se, pool, f"blocks.{idx}")
            idx += 1
    x = g.conv_bn_act(x, _scaled(last_channels, width), 1, 1, 0, act="silu", name="head")
    x = g.flatten(g.pool(x, pool, name="avgpool"), name="flatten")
    x = g.gemm(x, num_classes, name="classifier", out_std=LOGIT_STD)
    return g.build(x, doc=f"EfficientNet-B0-like width={width} size={size} seed={seed}")


# ---------------------------------------------------- MobileNetV3-Large-like
# (kernel, expanded channels, output channels, squeeze-excitation, activation,
# stride) per block: Howard et al. 2019, Table 1 (torchvision's
# mobilenet_v3_large).
MOBILENET_V3_LARGE_BLOCKS: Tuple[Tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)


def mobilenet_v3_large_like(
    width: float = 1.0,
    size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    opset: int = 17,
    blocks: Optional[Sequence[Tuple[int, int, int, bool, str, int]]] = None,
    pool: str = "gap",
    stem_channels: int = 16,
    last_conv_channels: int = 960,
    last_channels: int = 1280,
) -> onnx.ModelProto:
    """MobileNetV3-Large as PyTorch exports torchvision's model.

    Stem conv3x3/2 + BN + HardSwish; bneck blocks: 1x1 expand conv + BN + act
    (skipped when the expansion equals the input width), depthwise kxk conv +
    BN + act, optional squeeze-excitation (pool -> 1x1 conv to the expansion
    / 4 rounded to a multiple of 8 -> Relu -> 1x1 conv -> HardSigmoid -> Mul),
    1x1 project conv + BN with no activation, residual Add when stride 1 and
    in == out channels; act is Relu or HardSwish per the table.  Then a 1x1
    conv to ``last_conv_channels`` + BN + HardSwish, global pooling, Flatten,
    Gemm to ``last_channels`` + HardSwish, Gemm (dropout is gone at export).
    BN epsilon is 1e-3 as in torchvision.  HardSwish is one op from opset 14,
    ``x * HardSigmoid(x)`` before.  ``blocks`` is a list of (k, expanded, c,
    se, act, s); default ``MOBILENET_V3_LARGE_BLOCKS``.  Widths scale with
    ``width``; ``pool`` also sets the squeeze-excitation pooling.
    """
    if blocks is None:
        blocks = MOBILENET_V3_LARGE_BLOCKS
    g = GraphBuilder("mobilenet_v3_large_like", size, seed=seed, opset=opset, bn_epsilon=1e-3)
    x = g.conv_bn_act(g.input, _scaled(stem_channels, width), 3, 2, 1, act="hardswish",
                      name="stem")
    for idx, (k, expanded, ch, use_se, act, s) in enumerate(blocks):
        hidden = _scaled(expanded, width)
        se = (_make_divisible(hidden // 4), "relu", "hardsigmoid") if use_se else None
        x = _inverted_residual(g, x, hidden, _scaled(ch, width), k, s, act, se, pool,
                               f"blocks.{idx}")
    x = g.conv_bn_act(x, _scaled(last_conv_channels, width), 1, 1, 0, act="hardswish",
                      name="head")
    x = g.flatten(g.pool(x, pool, name="avgpool"), name="flatten")
    x = g.hardswish(g.gemm(x, _scaled(last_channels, width), name="classifier.fc1"),
                    name="classifier.hardswish")
    x = g.gemm(x, num_classes, name="classifier.fc2", out_std=LOGIT_STD)
    return g.build(x, doc=f"MobileNetV3-Large-like width={width} size={size} seed={seed}")


# ---------------------------------------------------------------- utilities
BUILDERS = {
    "vgg16": vgg16,
    "resnet50": resnet50,
    "inception_v3": inception_v3,
    "mobilenet_v2_like": mobilenet_v2_like,
    "efficientnet_b0_like": efficientnet_b0_like,
    "mobilenet_v3_large_like": mobilenet_v3_large_like,
}
_ALIASES = {
    "vgg": "vgg16",
    "vgg16_bn": "vgg16",
    "resnet": "resnet50",
    "inception": "inception_v3",
    "inceptionv3": "inception_v3",
    "mobilenet": "mobilenet_v2_like",
    "mobilenet_v2": "mobilenet_v2_like",
    "mobilenetv2": "mobilenet_v2_like",
    "efficientnet": "efficientnet_b0_like",
    "efficientnet_b0": "efficientnet_b0_like",
    "mobilenet_v3": "mobilenet_v3_large_like",
    "mobilenet_v3_large": "mobilenet_v3_large_like",
    "mobilenetv3": "mobilenet_v3_large_like",
}


def build(name: str, **kwargs) -> onnx.ModelProto:
    """Build a zoo model by name (aliases: vgg16_bn, mobilenet_v2, ...)."""
    key = name.lower().replace("-", "_")
    if key == "vgg16_bn":
        kwargs.setdefault("batchnorm", True)
    key = _ALIASES.get(key, key)
    if key not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[key](**kwargs)


_RUNNING_STATS = (".running_mean", ".running_var")


def count_params(model: onnx.ModelProto, trainable_only: bool = True) -> int:
    """Number of weight elements.

    With ``trainable_only`` (default) BN running statistics and scalar
    constants (Clip bounds, ReduceMean axes) are excluded, which matches the
    usual "parameter count" of a PyTorch model.
    """
    total = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        if trainable_only and (
            init.name.endswith(_RUNNING_STATS)
            or init.name.endswith(".axes")
            or init.data_type != TensorProto.FLOAT
            or len(init.dims) == 0
        ):
            continue
        total += n
    return total


def op_counts(model: onnx.ModelProto) -> Dict[str, int]:
    """Node count per op type, most frequent first."""
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(counts.most_common())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Build a random-weight classifier as an ONNX model (no downloads).")
    p.add_argument("name", help=f"model: {', '.join(BUILDERS)} (also vgg16_bn, mobilenet_v2)")
    p.add_argument("out", help="output .onnx path")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--size", type=int, default=None,
                   help="input height/width (default 224, 299 for inception_v3)")
    p.add_argument("--classes", type=int, default=1000, help="number of classes")
    p.add_argument("--seed", type=int, default=0, help="weight RNG seed")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--batchnorm", action="store_true", help="vgg16 only: BN after each conv")
    p.add_argument("--pool", choices=("gap", "reducemean"), default=None,
                   help="global pooling op (every model but vgg16)")
    args = p.parse_args(argv)

    key = _ALIASES.get(args.name.lower().replace("-", "_"), args.name.lower().replace("-", "_"))
    if key not in BUILDERS:
        p.error(f"unknown model {args.name!r}; choose from {', '.join(BUILDERS)}")
    kwargs = dict(width=args.width, num_classes=args.classes, seed=args.seed, opset=args.opset)
    if args.size is not None:
        kwargs["size"] = args.size
    if args.batchnorm or args.name.lower() == "vgg16_bn":
        if key != "vgg16":
            p.error("--batchnorm only applies to vgg16")
        kwargs["batchnorm"] = True
    if args.pool is not None:
        if key == "vgg16":
            p.error("--pool does not apply to vgg16")
        kwargs["pool"] = args.pool
    try:
        model = BUILDERS[key](**kwargs)
    except ValueError as exc:
        p.error(str(exc))
    onnx.save(model, args.out)

    inp = model.graph.input[0].type.tensor_type.shape.dim
    out = model.graph.output[0].type.tensor_type.shape.dim
    dims = lambda ds: "x".join(d.dim_param or str(d.dim_value) for d in ds)  # noqa: E731
    print(f"wrote {args.out}: {model.graph.name}, opset {args.opset}, "
          f"input {INPUT_NAME}[{dims(inp)}] -> {OUTPUT_NAME}[{dims(out)}]")
    print(f"nodes: {len(model.graph.node)}")
    for op, n in op_counts(model).items():
        print(f"  {op:20s} {n}")
    print(f"parameters: {count_params(model):,} "
          f"(+{count_params(model, False) - count_params(model):,} BN running stats/constants)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
