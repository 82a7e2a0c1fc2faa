"""Tests for tools/zoo.py: small versions of the zoo topologies run in ORT."""

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import zoo  # noqa: E402

ort = pytest.importorskip("onnxruntime")


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _input_size(model):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[2].dim_value, dims[3].dim_value


def _run(model, batch=2, seed=0):
    h, w = _input_size(model)
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)
    (y,) = _session(model).run(None, {"input": x})
    return y


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


SMALL = {
    "vgg16": lambda **kw: zoo.vgg16(width=1 / 16, size=32, num_classes=10, **kw),
    "vgg16_bn": lambda **kw: zoo.vgg16(width=1 / 16, size=32, num_classes=10, batchnorm=True, **kw),
    "resnet50": lambda **kw: zoo.resnet50(width=1 / 16, size=32, num_classes=10, **kw),
    "inception_v3": lambda **kw: zoo.inception_v3(width=1 / 16, size=75, num_classes=10, **kw),
    "mobilenet_v2_like": lambda **kw: zoo.mobilenet_v2_like(
        width=1 / 8, size=32, num_classes=10, **kw),
    "efficientnet_b0_like": lambda **kw: zoo.efficientnet_b0_like(
        width=1 / 8, size=32, num_classes=10, **kw),
    # 64, not 32: at a 1x1 final grid its BN statistics come from 8 calibration
    # values each, and the two-Gemm head lets other inputs' logits reach 1e3.
    "mobilenet_v3_large_like": lambda **kw: zoo.mobilenet_v3_large_like(
        width=1 / 8, size=64, num_classes=10, **kw),
}


@pytest.fixture(scope="module")
def small_models():
    return {name: fn() for name, fn in SMALL.items()}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_model_runs(small_models, name):
    model = small_models[name]
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    in_dims = model.graph.input[0].type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and in_dims[1].dim_value == 3
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for batch in (1, 3):
        y = _run(model, batch=batch)
        assert y.shape == (batch, 10) and y.dtype == np.float32
        assert np.all(np.isfinite(y))
        assert np.ptp(y) > 1e-3  # not all equal
    y = _run(model, batch=4, seed=1)
    assert np.ptp(y, axis=0).max() > 1e-3  # the logits depend on the input
    assert np.abs(y).max() < 1e3  # activations stay O(1) through the depth


def test_vgg16_topology(small_models):
    ops = _ops(small_models["vgg16"])
    assert ops == {"Conv": 13, "Relu": 15, "MaxPool": 5, "Flatten": 1, "Gemm": 3}
    convs = [n for n in small_models["vgg16"].graph.node if n.op_type == "Conv"]
    assert all(_attr(n, "kernel_shape") == [3, 3] and _attr(n, "pads") == [1, 1, 1, 1]
               for n in convs)
    assert _ops(small_models["vgg16_bn"])["BatchNormalization"] == 13


def test_resnet50_topology(small_models):
    model = small_models["resnet50"]
    ops = _ops(model)
    assert ops["Conv"] == 53 and ops["BatchNormalization"] == 53
    assert ops["Add"] == 16 and ops["Relu"] == 49
    assert ops["MaxPool"] == 1 and ops["GlobalAveragePool"] == 1 and ops["Gemm"] == 1
    stem = model.graph.node[0]
    assert _attr(stem, "kernel_shape") == [7, 7] and _attr(stem, "strides") == [2, 2]
    assert sum(n.name.endswith("downsample.conv") for n in model.graph.node) == 4


def test_inception_v3_topology(small_models):
    model = small_models["inception_v3"]
    ops = _ops(model)
    assert ops["Conv"] == 94 and ops["BatchNormalization"] == 94 and ops["Relu"] == 94
    assert ops["Concat"] == 15 and ops["MaxPool"] == 4 and ops["AveragePool"] == 9
    kernels = {tuple(_attr(n, "kernel_shape")) for n in model.graph.node if n.op_type == "Conv"}
    assert {(1, 7), (7, 1), (1, 3), (3, 1), (5, 5)} <= kernels
    for n in model.graph.node:
        if n.op_type == "AveragePool":
            assert _attr(n, "count_include_pad") == 1
            assert _attr(n, "kernel_shape") == [3, 3] and _attr(n, "pads") == [1, 1, 1, 1]
        if n.op_type == "Conv":
            assert len(n.input) == 2  # no bias: BN follows
    with pytest.raises(ValueError):
        zoo.inception_v3(width=1 / 16, size=74)


def test_mobilenet_topology(small_models):
    model = small_models["mobilenet_v2_like"]
    ops = _ops(model)
    assert ops["Add"] > 0 and ops["Clip"] > 0 and ops["GlobalAveragePool"] == 1
    assert "Relu" not in ops
    depthwise = [n for n in model.graph.node
                 if n.op_type == "Conv" and _attr(n, "group", 1) > 1]
    assert depthwise
    weights = {i.name: i for i in model.graph.initializer}
    for n in depthwise:  # group == channels: weight is [C, 1, 3, 3]
        dims = list(weights[n.input[1]].dims)
        assert dims[1] == 1 and dims[0] == _attr(n, "group") and dims[2:] == [3, 3]
    # linear bottleneck: project BN feeds an Add or the next block, not a Clip
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    for n in model.graph.node:
        if n.name.endswith("project.bn"):
            assert "Clip" not in consumers[n.output[0]]


@pytest.mark.parametrize("opset", [10, 11, 17, 18])
def test_mobilenet_clip_and_reducemean_follow_opset(opset):
    model = zoo.mobilenet_v2_like(
        width=1 / 8, size=32, num_classes=7, opset=opset, pool="reducemean",
        blocks=[(1, 16, 1, 1), (6, 24, 2, 2)],
    )
    assert model.opset_import[0].version == opset
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert clips
    for n in clips:
        if opset < 11:
            assert len(n.input) == 1 and _attr(n, "min") == 0.0 and _attr(n, "max") == 6.0
        else:
            assert len(n.input) == 3
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    if opset >= 11:
        assert inits[clips[0].input[1]] == 0.0 and inits[clips[0].input[2]] == 6.0
    (rm,) = [n for n in model.graph.node if n.op_type == "ReduceMean"]
    if opset >= 18:
        assert list(inits[rm.input[1]]) == [2, 3]
    else:
        assert _attr(rm, "axes") == [2, 3]
    assert _attr(rm, "keepdims") == 1
    ops = _ops(model)
    assert ops["Add"] == 1 and "GlobalAveragePool" not in ops
    y = _run(model)
    assert y.shape == (2, 7) and np.all(np.isfinite(y))


@pytest.mark.slow
def test_mobilenet_default_is_mobilenet_v2():
    model = zoo.mobilenet_v2_like()
    assert zoo.count_params(model) == 3_504_872  # MobileNetV2 1.0, 1000 classes
    assert _ops(model)["Add"] == 10


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def _se_muls(model):
    """The squeeze-excitation Muls: a gate of shape [N, C, 1, 1] times a feature map."""
    return [n for n in model.graph.node if n.name.endswith(".se.scale")]


def test_efficientnet_b0_topology(small_models):
    model = small_models["efficientnet_b0_like"]
    ops = _ops(model)
    assert ops == {"Conv": 81, "BatchNormalization": 49, "Sigmoid": 65, "Mul": 65, "Add": 9,
                   "GlobalAveragePool": 17, "Flatten": 1, "Gemm": 1}
    assert "Relu" not in ops and "Clip" not in ops
    producers = _producers(model)
    se = _se_muls(model)
    assert len(se) == 16
    for n in model.graph.node:
        if n.op_type != "Mul":
            continue
        a, b = (producers.get(i) for i in n.input)
        if n in se:  # Mul(Sigmoid(fc2(SiLU(fc1(GAP(x))))), x)
            assert a.op_type == "Sigmoid" and producers[a.input[0]].name.endswith("se.fc2")
        else:  # SiLU as PyTorch exports it: Mul(x, Sigmoid(x))
            assert b.op_type == "Sigmoid" and b.input[0] == n.input[0]
    kernels = {_attr(n, "kernel_shape")[0] for n in model.graph.node
               if n.op_type == "Conv" and _attr(n, "group", 1) > 1}
    assert kernels == {3, 5}
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n.op_type)
    for n in model.graph.node:
        if n.name.endswith("project.bn"):  # linear bottleneck
            assert set(consumers[n.output[0]]) <= {"Add", "Conv"}


def test_mobilenet_v3_large_topology(small_models):
    model = small_models["mobilenet_v3_large_like"]
    ops = _ops(model)
    assert ops == {"Conv": 62, "BatchNormalization": 46, "HardSwish": 21, "Relu": 19, "Add": 10,
                   "GlobalAveragePool": 9, "HardSigmoid": 8, "Mul": 8, "Flatten": 1, "Gemm": 2}
    producers = _producers(model)
    se = _se_muls(model)
    assert len(se) == 8 and all(n.op_type == "Mul" for n in se)
    for n in se:  # Mul(HardSigmoid(fc2(Relu(fc1(GAP(x))))), x)
        gate = producers[n.input[0]]
        assert gate.op_type == "HardSigmoid"
        assert abs(_attr(gate, "alpha") - 1 / 6) < 1e-7 and _attr(gate, "beta") == 0.5
        assert producers[producers[gate.input[0]].input[0]].op_type == "Relu"
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert all(abs(_attr(n, "epsilon") - 1e-3) < 1e-9 for n in bns)  # torchvision's


@pytest.mark.parametrize("opset", [13, 14, 18])
def test_mobilenet_v3_hardswish_follows_opset(opset):
    """HardSwish is an op from opset 14; before it PyTorch writes Mul(x, HardSigmoid(x))."""
    model = zoo.mobilenet_v3_large_like(
        width=1 / 8, size=32, num_classes=7, opset=opset, pool="reducemean",
        blocks=zoo.MOBILENET_V3_LARGE_BLOCKS[3:7])
    ops = _ops(model)
    assert "GlobalAveragePool" not in ops and ops["ReduceMean"] == 4  # 3 SE + head
    if opset < 14:
        assert "HardSwish" not in ops and ops["HardSigmoid"] == 3 + 5  # SE gates + hardswishes
    else:
        assert ops["HardSwish"] == 5 and ops["HardSigmoid"] == 3  # stem, block 6 (2), head, fc1
    y = _run(model)
    assert y.shape == (2, 7) and np.all(np.isfinite(y))


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("efficientnet_b0_like", 5_288_548),
                                          ("mobilenet_v3_large_like", 5_483_032)])
def test_full_size_matches_torchvision_parameter_count(name, params):
    model = zoo.build(name)
    assert zoo.count_params(model) == params  # torchvision's efficientnet_b0 / mobilenet_v3_large
    y = _run(model, batch=1)
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))


@pytest.mark.parametrize("name", ["efficientnet_b0_like", "mobilenet_v3_large_like"])
def test_rap_on_gated_models_conserves_and_compiles(small_models, name, tmp_path, monkeypatch):
    """rap explains the SE/SiLU/HardSwish exports: it conserves the target logit, and the
    compiled engine agrees with the eager one."""
    from helpers import rel_l2
    from onnxrap import Explainer

    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    path = tmp_path / f"{name}.onnx"
    onnx.save(small_models[name], str(path))
    x = zoo.calibration_batch(_input_size(small_models[name]), 3, seed=11)
    eager = Explainer(path).explain(x, method="rap")
    np.testing.assert_allclose(eager.relevance.sum(axis=(1, 2, 3)), eager.target_logit, rtol=1e-4)
    compiled = Explainer(path, engine="onnx").explain(x, method="rap")
    np.testing.assert_array_equal(compiled.target, eager.target)
    assert rel_l2(compiled.relevance, eager.relevance) < 1e-5


def test_deterministic_seed():
    a = zoo.resnet50(width=1 / 16, size=32, num_classes=5, seed=3)
    b = zoo.resnet50(width=1 / 16, size=32, num_classes=5, seed=3)
    c = zoo.resnet50(width=1 / 16, size=32, num_classes=5, seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()


def test_batchnorm_params_plausible(small_models):
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in small_models["resnet50"].graph.initializer}
    bns = [n for n in small_models["resnet50"].graph.node if n.op_type == "BatchNormalization"]
    for n in bns:
        assert abs(_attr(n, "epsilon") - 1e-5) < 1e-12
        scale, bias, mean, var = (inits[i] for i in n.input[1:])
        assert scale.dtype == np.float32 and np.all(scale > 0)
        assert np.all(var > 0) and np.any(bias != 0) and np.any(mean != 0)
    assert all(i.dtype in (np.float32,) for i in inits.values())


def test_builder_numpy_reference_matches_ort():
    """The builder's eager NumPy evaluation agrees with ORT for every op."""
    g = zoo.GraphBuilder("ops", 12, seed=5, opset=13)
    x = g.conv_bn_act(g.input, 8, 3, 2, 1, name="a")
    d = g.conv_bn_act(x, 8, 3, 1, 1, group=8, act="relu6", name="dw")
    e = g.conv(x, 8, (1, 3), bias=True, name="asym")
    x = g.add(d, e)
    m = g.maxpool(x, 3, 2, 1)
    p1 = g.avgpool(x, 3, 2, 1, count_include_pad=True)
    p2 = g.avgpool(x, 3, 2, 1, count_include_pad=False)
    x = g.concat([m, p1, p2])
    x = g.clip(g.relu(x), 0.0, 1.5)
    x = g.flatten(g.add(g.gap(x), g.reducemean(x)))
    x = g.gemm(x, 4)
    model = g.build(x)
    calib = g.values["input"]
    (y,) = _session(model).run(None, {"input": calib})
    np.testing.assert_allclose(y, g.values["logits"], rtol=1e-4, atol=1e-4)
    assert g.shape("logits") == (4,)


@pytest.mark.parametrize("opset", [13, 17])
def test_builder_numpy_reference_matches_ort_for_gates(opset):
    """The NumPy evaluation of the smooth activations and SE gates agrees with ORT."""
    g = zoo.GraphBuilder("gates", 12, seed=5, opset=opset)
    x = g.conv_bn_act(g.input, 8, 3, 2, 1, act="silu", name="a")
    x = g.squeeze_excitation(x, 2, "silu", "sigmoid", name="se1")
    y = g.conv_bn_act(x, 8, 3, 1, 1, group=8, act="hardswish", name="dw")
    y = g.squeeze_excitation(y, 4, "relu", "hardsigmoid", pool="reducemean", name="se2")
    x = g.add(g.hardsigmoid(y), g.sigmoid(x))
    x = g.gemm(g.flatten(g.gap(x)), 4)
    model = g.build(g.hardswish(x))
    (y,) = _session(model).run(None, {"input": g.values["input"]})
    np.testing.assert_allclose(y, g.values["logits"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        g.activation(x, "gelu")


def test_too_small_input_raises():
    with pytest.raises(ValueError):
        zoo.vgg16(width=1 / 16, size=16)


def test_cli(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert zoo.main(["vgg16", str(out), "--width", "0.0625", "--size", "32",
                     "--classes", "3", "--batchnorm", "--opset", "13"]) == 0
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 13
    text = capsys.readouterr().out
    assert "BatchNormalization" in text and "parameters:" in text
    assert f"{zoo.count_params(model):,}" in text
    assert _run(model).shape == (2, 3)
