#!/usr/bin/env python3
"""Write independent reference attributions computed with zennit (a PyTorch LRP library).

onnxrap never needs PyTorch: this script runs once, by hand, and its outputs
are committed under ``tests/fixtures/zennit/`` so that CI can check onnxrap's
LRP and gradient methods against a second, independent implementation.

For each of three small networks (``dense``, ``conv_bn``, ``residual``) it

1. builds the network in float32 with fixed seeds (random weights, random
   BatchNorm statistics, eval mode) and exports it to ONNX (opset 17,
   TorchScript exporter, input ``input``, output ``logits``, dynamic batch):
   ``<name>.onnx`` with BatchNormalization kept (``do_constant_folding=False``)
   and, for the BN networks, ``<name>_folded.onnx`` with every BN merged into
   the convolution before it (done here in float64, then rounded to float32);
2. casts exactly those float32 weights to float64 and runs zennit on the
   float64 copy, so the references carry no float32 rounding of their own;
3. saves ``<name>.npz``: the float32 inputs ``x`` (a batch of 2), the
   ``target`` (arg-max class per sample), the float64 logits and one float64
   input-shaped array per attribution, each with string fields ``<key>__rules``,
   ``<key>__seed`` and ``<key>__onnx`` saying what it is and which ONNX file it
   belongs to; ``info_json`` repeats all of it as one JSON document.

LRP arrays are computed on the BN-folded model (the float64 cast of the weights
in ``<name>_folded.onnx``), with output seed logit * one-hot; the gradient on the
BN-kept model, seed one-hot.  See ``tests/fixtures/zennit/README.md`` for the
exact rule definitions and how onnxrap has to be configured to agree.

Requirements (only for this script): torch (CPU is enough), zennit 0.5.1
(pip install --no-deps zennit; zennit's ``__init__`` imports torchvision for
its ResNet canonizer only: when torchvision is missing or broken, a stub module
is put in its place, since nothing here uses it), onnx, onnxruntime.

Usage:  python tools/make_zennit_fixtures.py [--out tests/fixtures/zennit] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
EPSILON = 1e-6       # the epsilon of the Epsilon rule
STABILIZER = 1e-6    # zennit's default stabilizer of every other rule


# --------------------------------------------------------------------------- zennit import

def import_zennit():
    """Import zennit; stub ``torchvision`` when it cannot be imported.

    zennit/__init__.py does ``from . import torchvision`` which does
    ``from torchvision.models.resnet import Bottleneck, BasicBlock`` only to
    build ResNet canonizers (isinstance checks).  There is no torchvision
    wheel for the CPU build of torch 2.13 here (the PyPI one fails with
    "operator torchvision::nms does not exist"), so two dummy classes stand in.
    """
    try:
        import torchvision.models.resnet  # noqa: F401
    except Exception:  # missing, or present but broken
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        tv.models, models.resnet = models, resnet
        sys.modules.update({"torchvision": tv, "torchvision.models": models,
                            "torchvision.models.resnet": resnet})
    import zennit
    return zennit


zennit = import_zennit()
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite, layer_map_base  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, ZBox  # noqa: E402
from zennit.types import Linear as AnyLinear  # noqa: E402


def safe_division(z):
    """A zennit stabilizer callable giving the safe division of docs/rules.md (notation): ``R / z`` where z != 0, else 0.

    zennit divides the upper relevance by ``stabilizer(z)``; returning +inf
    where z == 0 makes that quotient exactly 0 there and leaves every other
    denominator untouched (no epsilon at all).
    """
    return torch.where(z == 0, torch.full_like(z, float("inf")), z)


# --------------------------------------------------------------------------- networks

def make_dense():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


class ConvBN(nn.Module):
    """Conv-BN-ReLU-MaxPool-Conv-BN-ReLU-GAP-Flatten-Linear; ``folded`` replaces the BNs by Identity."""

    def __init__(self, folded=False):
        super().__init__()
        norm = (lambda c: nn.Identity()) if folded else nn.BatchNorm2d
        # children are registered in forward order: SequentialMergeBatchNorm relies on it
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = norm(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = norm(8)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.gap(x)))


class Residual(nn.Module):
    """Conv stem (Conv-BN-ReLU), one residual block (Conv-BN-ReLU-Conv-BN + identity, ReLU), GAP, Linear.

    ``zennit_sum=True`` computes the residual addition as ``zennit.layer.Sum``
    over a stacked pair, so that zennit can attach a rule to it (a bare ``+``
    is not a module and would get the gradient, i.e. both summands would get
    the full relevance).  The export copy uses a plain ``+`` (one ONNX Add).
    Both compute the same numbers.
    """

    def __init__(self, folded=False, zennit_sum=False):
        super().__init__()
        norm = (lambda c: nn.Identity()) if folded else nn.BatchNorm2d
        self.zennit_sum = zennit_sum
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = norm(8)
        self.stem_relu = nn.ReLU()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = norm(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = norm(8)
        self.add = Sum(dim=-1)
        self.relu_out = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem_relu(self.stem_bn(self.stem(x)))
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(h)))))
        s = self.add(torch.stack([y, h], dim=-1)) if self.zennit_sum else y + h
        return self.fc(self.flatten(self.gap(self.relu_out(s))))


def randomize_bn(model, gen):
    """Random running statistics and affine parameters, so every BN does real work."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))


def fold_bn(model32, folded32):
    """Merge each BN into the conv before it (float64 arithmetic, zennit's formula), store as float32.

    W' = W * g / sqrt(v + eps),  b' = (b - mu) * g / sqrt(v + eps) + beta
    (zennit/canonizers.py MergeBatchNorm.merge_batch_norm).
    """
    state = {k: v.double() for k, v in model32.state_dict().items()}
    out = {}
    pairs = [(name, bn) for name, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("stem", "stem_bn"))
             if f"{bn}.weight" in state]
    for conv, bn in pairs:
        scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + getattr(model32, bn).eps)
        out[f"{conv}.weight"] = state[f"{conv}.weight"] * scale[:, None, None, None]
        out[f"{conv}.bias"] = (state[f"{conv}.bias"] - state[f"{bn}.running_mean"]) * scale + state[f"{bn}.bias"]
    for k, v in state.items():
        if k not in out and k in folded32.state_dict():
            out[k] = v
    folded32.load_state_dict({k: v.float() for k, v in out.items()})
    return folded32.eval()


def float64_copy(model32):
    """The same network in float64: exactly the float32 weights, cast."""
    return copy.deepcopy(model32).double().eval()


# --------------------------------------------------------------------------- zennit runs

def lrp_composite(linear_rule, first_rule=None, stabilizer=STABILIZER, canonizers=None):
    """A LayerMapComposite with zennit's shared base map plus ``linear_rule`` on every Conv and Linear.

    The base map (zennit/composites.py layer_map_base, used by every built-in
    composite) is: Activation -> Pass, zennit Sum -> Norm, AvgPool (incl.
    AdaptiveAvgPool2d) -> Norm, BatchNorm -> Pass.  Modules it does not list
    (MaxPool2d, Flatten) get the plain gradient: MaxPool hands each window's
    relevance to its arg-max, Flatten reshapes.  Norm at the average pools is
    the z-rule x * pool^T(R / pool(x)) with a stabilized denominator; onnxrap's
    LRP composites use that same z-rule (WindowShare(absolute=False)) at
    average pools, so both must agree there (the pool's input is a ReLU output,
    non-negative).  Without this entry zennit would give the avg pool its
    gradient, R / N spread uniformly, which is a different rule.
    ``first_rule`` (when given) replaces ``linear_rule`` at the first Conv or
    Linear module in forward order (SpecialFirstLayerMapComposite).
    """
    layer_map = layer_map_base(stabilizer) + [(AnyLinear, linear_rule)]
    if first_rule is None:
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    return SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(AnyLinear, first_rule)],
                                         canonizers=canonizers)


def attribute(model64, x64, composite, seed):
    """zennit's Gradient attributor; ``seed`` is 'logit' (logit * one-hot) or 'one' (one-hot)."""
    with torch.no_grad():
        logits = model64(x64)
    target = logits.argmax(1)
    hot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)

    def grad_output(out):
        return hot * out if seed == "logit" else hot

    x = x64.clone().requires_grad_(True)
    attributor = Gradient(model=model64, composite=composite)
    out, rel = attributor(x, grad_output)
    assert torch.equal(out.argmax(1), target)
    return rel.detach().numpy()


def box(x64):
    """Per-sample scalar bounds for ZBox: the sample's min and max, shaped to broadcast over a batch."""
    flat = x64.reshape(x64.shape[0], -1)
    shape = (x64.shape[0],) + (1,) * (x64.ndim - 1)
    return flat.min(1).values.reshape(shape), flat.max(1).values.reshape(shape)


def attribution_specs(x64, first_kind):
    """(key, composite factory, description) for every LRP array."""
    low, high = box(x64)
    first = f"the first {first_kind} (the one reading the input)"
    base = ("ReLU: Pass; AvgPool/AdaptiveAvgPool: Norm(stabilizer={s}); residual Sum: Norm(stabilizer={s}); "
            "MaxPool, Flatten: gradient (no rule)")
    specs = []

    def ab(alpha, beta, **kw):
        return lambda: AlphaBeta(alpha=alpha, beta=beta, **kw)

    def zb(**kw):
        return lambda: ZBox(low=low, high=high, **kw)

    specs.append(("epsilon",
                  lambda: lrp_composite(Epsilon(epsilon=EPSILON)),
                  f"Epsilon(epsilon={EPSILON}) on every Conv and Linear (bias in z; denominator z + 1e-6*sign(z), "
                  f"sign(0)=+1); " + base.format(s=STABILIZER)))
    specs.append(("epsilon_sdiv",
                  lambda: lrp_composite(Epsilon(epsilon=EPSILON), stabilizer=safe_division),
                  f"Epsilon(epsilon={EPSILON}) on every Conv and Linear; " + base.format(s="safe_division")))
    specs.append(("zbox_epsilon",
                  lambda: lrp_composite(Epsilon(epsilon=EPSILON), first_rule=zb()()),
                  f"ZBox(low=min(x), high=max(x) per sample, stabilizer={STABILIZER}) at {first}; "
                  f"Epsilon(epsilon={EPSILON}) on every other Conv and Linear; " + base.format(s=STABILIZER)))
    specs.append(("zbox_epsilon_sdiv",
                  lambda: lrp_composite(Epsilon(epsilon=EPSILON), first_rule=zb(stabilizer=safe_division)(),
                                        stabilizer=safe_division),
                  f"ZBox(low=min(x), high=max(x) per sample, stabilizer=safe_division) at {first}; "
                  f"Epsilon(epsilon={EPSILON}) on every other Conv and Linear; " + base.format(s="safe_division")))
    for a, b in ((1, 0), (2, 1)):
        k = f"alpha{a}beta{b}"
        specs.append((k, lambda a=a, b=b: lrp_composite(ab(a, b)()),
                      f"AlphaBeta(alpha={a}, beta={b}, stabilizer={STABILIZER}) on every Conv and Linear incl. {first} "
                      f"(zennit default: bias clamped into the positive/negative denominators); "
                      + base.format(s=STABILIZER)))
        specs.append((f"{k}_nobias_sdiv",
                      lambda a=a, b=b: lrp_composite(ab(a, b, stabilizer=safe_division, zero_params=["bias"])(),
                                                     stabilizer=safe_division),
                      f"AlphaBeta(alpha={a}, beta={b}, stabilizer=safe_division, zero_params=['bias']) on every "
                      f"Conv and Linear incl. {first}; " + base.format(s="safe_division")))
        specs.append((f"zbox_{k}",
                      lambda a=a, b=b: lrp_composite(ab(a, b)(), first_rule=zb()()),
                      f"ZBox(low=min(x), high=max(x) per sample, stabilizer={STABILIZER}) at {first}; "
                      f"AlphaBeta(alpha={a}, beta={b}, stabilizer={STABILIZER}) on every other Conv and Linear; "
                      + base.format(s=STABILIZER)))
        specs.append((f"zbox_{k}_nobias_sdiv",
                      lambda a=a, b=b: lrp_composite(ab(a, b, stabilizer=safe_division, zero_params=["bias"])(),
                                                     first_rule=zb(stabilizer=safe_division)(),
                                                     stabilizer=safe_division),
                      f"ZBox(low=min(x), high=max(x) per sample, stabilizer=safe_division) at {first}; "
                      f"AlphaBeta(alpha={a}, beta={b}, stabilizer=safe_division, zero_params=['bias']) on every "
                      f"other Conv and Linear; " + base.format(s="safe_division")))
    return specs


# --------------------------------------------------------------------------- export and checks

def export(model32, example, path, fold_constants):
    torch.onnx.export(model32, (example,), str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=fold_constants, training=torch.onnx.TrainingMode.EVAL)


def ort_logits(path, x32):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x32})[0]


def op_types(path):
    import onnx
    return sorted({n.op_type for n in onnx.load(str(path)).graph.node})


def rel_l2(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


# --------------------------------------------------------------------------- one network

def build(name, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "dense":
        m32 = make_dense()
        x = torch.randn(2, 20, generator=gen)
        return m32.eval(), None, None, x, "Linear"
    if name == "conv_bn":
        m32, f32, z32 = ConvBN(), ConvBN(folded=True), None
    else:
        m32, f32, z32 = Residual(), Residual(folded=True), Residual(folded=True, zennit_sum=True)
    randomize_bn(m32, gen)
    m32.eval()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    fold_bn(m32, f32)
    if z32 is not None:  # the zennit copy of the folded residual net: Sum module instead of "+"
        z32.load_state_dict(f32.state_dict())
        z32.eval()
    return m32, f32, z32, x, "Conv"


def usable(m32, x32t):
    """Both samples' top logit positive (the LRP seed logit * one-hot is then positive) and clear of the runner-up."""
    with torch.no_grad():
        top2 = m32.double()(x32t.double()).topk(2, dim=1).values
    m32.float()
    return bool((top2[:, 0] > 0.05).all() and (top2[:, 0] - top2[:, 1] > 1e-3).all())


def make(name, out, seed, log):
    # the first seed (seed*1000, seed*1000+1, ...) whose network gives a usable target: deterministic
    for attempt in range(1000):
        net_seed = seed * 1000 + attempt
        m32, f32, z32, x32t, first_kind = build(name, net_seed)
        if usable(m32, x32t):
            break
    else:
        raise RuntimeError(f"{name}: no seed gave positive target logits")
    x32 = x32t.numpy().astype(np.float32)
    x64 = torch.from_numpy(x32.astype(np.float64))

    # ---- ONNX
    onnx_kept = out / f"{name}.onnx"
    export(m32, x32t, onnx_kept, fold_constants=False)
    files = {"kept": onnx_kept.name}
    if f32 is not None:
        onnx_folded = out / f"{name}_folded.onnx"
        export(f32, x32t, onnx_folded, fold_constants=True)
        files["folded"] = onnx_folded.name
        assert "BatchNormalization" in op_types(onnx_kept), op_types(onnx_kept)
        assert "BatchNormalization" not in op_types(onnx_folded), op_types(onnx_folded)
    lrp_onnx = files.get("folded", files["kept"])

    # ---- float64 models (the exact float32 weights, cast)
    kept64 = float64_copy(m32)
    lrp32 = z32 if z32 is not None else (f32 if f32 is not None else m32)
    lrp64 = float64_copy(lrp32)
    if name == "residual":  # the BN-kept model with zennit's Sum, for the canonizer cross-check
        kept_sum64 = Residual(zennit_sum=True)
        kept_sum64.load_state_dict(m32.state_dict())
        kept_sum64 = float64_copy(kept_sum64)
    else:
        kept_sum64 = kept64

    with torch.no_grad():
        logits64 = kept64(x64).numpy()
        logits_lrp64 = lrp64(x64).numpy()
        logits32 = m32(x32t).numpy()
    target = logits64.argmax(1)
    assert np.array_equal(target, logits_lrp64.argmax(1))

    # ---- ORT agrees with PyTorch
    checks = {}
    for kind, fname in files.items():
        ort = ort_logits(out / fname, x32)
        ref64 = logits64 if kind == "kept" else logits_lrp64
        d32 = float(np.abs(ort - logits32).max())
        d64 = float(np.abs(ort - ref64).max())
        checks[fname] = {"max_abs_vs_torch_float32": d32, "max_abs_vs_float64": d64, "ops": op_types(out / fname)}
        assert d32 < 1e-4 and d64 < 1e-4, (fname, d32, d64)
        log(f"  {fname}: ORT vs torch fp32 {d32:.2e}, vs fp64 model {d64:.2e}; ops {checks[fname]['ops']}")

    arrays = {"x": x32, "target": target.astype(np.int64), "logits": logits64}
    if f32 is not None:
        arrays["logits_folded"] = logits_lrp64
    info = {"network": name, "zennit": importlib.metadata.version("zennit"),
            "torch": torch.__version__, "seed": net_seed, "onnx_checks": checks, "arrays": {}}

    def record(key, rel, rules, seed_kind, onnx_file):
        arrays[key] = rel.astype(np.float64)
        arrays[f"{key}__rules"] = np.array(rules)
        arrays[f"{key}__seed"] = np.array(seed_kind)
        arrays[f"{key}__onnx"] = np.array(f"onnx={onnx_file}")
        sums = rel.reshape(rel.shape[0], -1).sum(1)
        seed_val = logits64[np.arange(len(target)), target] if key == "gradient" else \
            logits_lrp64[np.arange(len(target)), target]
        info["arrays"][key] = {"rules": rules, "seed": seed_kind, "onnx": onnx_file,
                               "sum_per_sample": sums.tolist(), "target_logit": seed_val.tolist()}
        log(f"  {key:28s} sum {np.array2string(sums, precision=5)}  logit {np.array2string(seed_val, precision=5)}")

    # ---- gradient on the BN-kept model, one-hot seed
    grad = attribute(kept64, x64, None, "one")
    auto = x64.clone().requires_grad_(True)
    kept64(auto)[np.arange(2), target].sum().backward()
    assert np.allclose(grad, auto.grad.numpy(), rtol=0, atol=1e-14)
    record("gradient", grad, "zennit.attribution.Gradient without composite (plain autograd): "
           "d logit[target] / d input on the BN-kept model", "one-hot", files["kept"])

    # ---- LRP on the BN-folded model, seed logit * one-hot
    canon_diffs, exact_diffs = {}, {}
    for key, factory, rules in attribution_specs(x64, first_kind):
        rel = attribute(lrp64, x64, factory(), "logit")
        fold_note = ("; BN merged into the preceding Conv (weights as in the folded ONNX; zennit's "
                     "SequentialMergeBatchNorm on the BN-kept model gives the same up to float32 rounding "
                     "of the folded weights)") if f32 is not None else ""
        record(key, rel, rules + fold_note, "logit*one-hot", lrp_onnx)
        if f32 is not None:
            # cross-check: zennit's own canonizer on the BN-kept float64 model
            rel_c = attribute(kept_sum64, x64, _with_canonizer(factory(), SequentialMergeBatchNorm()), "logit")
            canon_diffs[key] = rel_l2(rel_c, rel)
            rel_e = attribute(kept_sum64, x64, _with_canonizer(factory(), ExactMergeBatchNorm()), "logit")
            exact_diffs[key] = rel_l2(rel_e, rel)
    if canon_diffs:
        info["crosscheck_rel_l2_zennit_SequentialMergeBatchNorm"] = canon_diffs
        info["crosscheck_rel_l2_SequentialMergeBatchNorm_with_eps0"] = exact_diffs
        log(f"  vs zennit's SequentialMergeBatchNorm on the BN-kept model: worst rel L2 "
            f"{max(canon_diffs.values()):.2e} (its merged BN still divides by sqrt(1 + eps))")
        log(f"  vs the same canonizer with the merged BN's eps set to 0: worst rel L2 "
            f"{max(exact_diffs.values()):.2e} (float32 rounding of the folded weights)")
        assert max(canon_diffs.values()) < 1e-4, canon_diffs
        assert max(exact_diffs.values()) < 1e-6, exact_diffs

    # how much zennit's 1e-6 stabilizers move the result vs safe division
    stab = {}
    for k in ("epsilon", "zbox_epsilon", "alpha1beta0", "alpha2beta1", "zbox_alpha1beta0", "zbox_alpha2beta1"):
        other = f"{k}_sdiv" if k.endswith("epsilon") else f"{k}_nobias_sdiv"
        stab[f"{k} vs {other}"] = rel_l2(arrays[other], arrays[k])
    info["rel_l2_between_variants"] = stab
    for k, v in stab.items():
        log(f"  rel L2 {k}: {v:.3e}")

    arrays["info_json"] = np.array(json.dumps(info, indent=1))
    np.savez(out / f"{name}.npz", **arrays)
    return info


def _with_canonizer(composite, canonizer):
    composite.canonizers = [canonizer]
    return composite


class ExactMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's SequentialMergeBatchNorm, but the emptied BN really is the identity.

    zennit/canonizers.py MergeBatchNorm.merge_batch_norm sets the merged BN to
    running_mean=0, running_var=1, weight=1, bias=0 and leaves ``eps``: the
    BN then still computes x / sqrt(1 + eps), a factor 1 - 5e-6 for eps=1e-5,
    so the canonized model is not the folded model (logits move by ~5e-6).
    Setting eps to 0 while merged removes exactly that.
    """

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self._eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self._eps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "zennit"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for i, name in enumerate(("dense", "conv_bn", "residual")):
        print(f"{name}:")
        make(name, out, args.seed + i, print)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
