"""Small MobileNetV3-like and EfficientNet-B0-like classifiers as PyTorch exports them
(tests/fixtures/gates, tools/make_gate_fixtures.py): explained, conserving, compiled."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import rel_l2, run_cli
from onnx_helpers import const, make_model, node, run
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, NotCompilable, compile_graph
from onnxrap.ops.elementwise import Gate
from onnxrap.rules import Rule
from onnxrap.rules.joins import SignalTakesAll

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gates"
MODELS = ["mobilenetv3_opset17", "mobilenetv3_opset13", "efficientnet_b0_opset17", "efficientnet_b0_dynamo"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    name = request.param
    case = dict(np.load(FIXTURES / f"{name}.npz"))
    return name, FIXTURES / f"{name}.onnx", case


def test_the_models_hold_the_patterns(model):
    name, path, case = model
    ex = Explainer(path)
    gates = [op for op in ex.graph.ops if isinstance(op, Gate)]
    types = {op.op_type for op in ex.graph.ops}
    if name.startswith("efficientnet"):
        producer = {op.output: op for op in ex.graph.ops}
        silu = [op for op in gates if producer[op.inputs[op.gate]].inputs == [op.signal]]
        assert len(gates) == 21 and len(silu) == 16  # 16 SiLUs as x * Sigmoid(x), 5 squeeze-excitations
    elif name.endswith("13"):
        assert len(gates) == 10 and "HardSwish" not in types  # Hardswish as x * HardSigmoid(x) before opset 14
    else:
        assert len(gates) == 3 and {"HardSwish", "HardSigmoid"} <= types
    np.testing.assert_allclose(ex.explain(case["x"], method="gradient").logits, case["ort_logits"], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rap_conserves_the_logit(model, dtype):
    _, path, case = model
    e = Explainer(path, dtype=dtype).explain(case["x"], method="rap")
    logit = e.logits[np.arange(len(e.target)), e.target]
    # the logits are ONNX Runtime's float32 ones; float64's sum is its own forward's logit, 2e-6 away
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), logit, rtol=1e-5)
    assert e.recomputed == []  # float32 kept the sum: no float64 redo


def test_the_gradient_is_onnx_runtimes_derivative(model):
    """The gradient along a random direction is the central difference of ONNX Runtime's own forward:
    the product rule through every gate, and the slopes of HardSwish, Sigmoid and SiLU."""
    _, path, case = model
    import onnx

    proto = onnx.load(str(path))
    x = case["x"][:1].astype(np.float64)
    ex = Explainer(path, dtype="float64")
    e = ex.explain(x.astype(np.float32), method="gradient")
    t = int(e.target[0])
    d = np.random.default_rng(0).standard_normal(x.shape)
    h = 1e-3
    up, down = (run(proto, (x + s * h * d).astype(np.float32))[0][0, t] for s in (1, -1))
    numeric = (float(up) - float(down)) / (2 * h)
    assert abs(numeric - float((e.relevance * d).sum())) < 2e-2 * max(abs(numeric), 1e-2)


def test_inspect_lists_them_as_supported(model, capsys):
    _, path, _ = model
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out and "NOT SUPPORTED" not in out
    for op_type in ("Mul", "Sigmoid", "HardSigmoid", "HardSwish"):
        lines = [line for line in out.splitlines() if line.strip().startswith(op_type + " ")]
        assert all(line.rstrip().endswith("supported") for line in lines)


@pytest.mark.parametrize("method", ["rap", "gradient", "lrp-a1b0", "rap-reference"])
def test_compiled_agrees_with_eager(model, method):
    _, path, case = model
    ex = Explainer(path)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get(method))).run(case["x"])
    eager = ex.explain(case["x"], method=method)
    assert rel_l2(relevance, eager.relevance) < 1e-5


def activation_chain():
    """x (1, 6) through a MatMul and every smooth activation in turn, then a MatMul to 3 logits."""
    rng = np.random.default_rng(5)
    chain = [("Tanh", {}), ("Softplus", {}), ("Elu", {"alpha": 0.7}), ("Selu", {}), ("HardSwish", {}),
             ("Mish", {}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Sigmoid", {})]
    nodes, inits, t = [], [], "x"
    for k, (op_type, attrs) in enumerate(chain):
        inits.append(const(f"W{k}", rng.normal(size=(6, 6))))
        nodes += [node("MatMul", [t, f"W{k}"], f"z{k}"), node(op_type, [f"z{k}"], f"a{k}", **attrs)]
        t = f"a{k}"
    inits.append(const("Wout", rng.normal(size=(6, 3))))
    nodes.append(node("MatMul", [t, "Wout"], "y"))
    return make_model(nodes, [("x", [None, 6])], [("y", [None, 3])], inits, opset=18)


@pytest.mark.parametrize("method", ["gradient", "rap"])
def test_compiled_float64_recomputes_the_smooth_activations(method):
    """float64 runs onnxrap's own forward (Exp, Log, Tanh in the traced graph) as the eager engine does."""
    ex = Explainer(activation_chain(), dtype="float64")
    x = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    model = compile_graph(ex.graph, methods.get(method), dtype="float64", recompute=True)
    assert {"Exp", "Log", "Tanh"} <= {n.op_type for n in model.graph.node if n.name.startswith("onnxrap/")}
    _, relevance = CompiledModel(model).run(x)
    assert rel_l2(relevance, ex.explain(x, method=method).relevance) < 1e-10


class Untraceable(Rule):
    """A rule that branches on array values: the tracer cannot express it."""

    def __call__(self, op, ctx, R):
        return SignalTakesAll()(op, ctx, R) if bool((R != 0).any()) else [None, None]


def test_a_rule_the_tracer_cannot_express_falls_back_to_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    path = FIXTURES / "mobilenetv3_opset17.onnx"
    case = dict(np.load(FIXTURES / "mobilenetv3_opset17.npz"))
    mine = methods.Composite({"gate": Untraceable()}, base="rap", name="rap-untraceable", conserves=True)
    ex = Explainer(path, engine="onnx")
    with pytest.raises(NotCompilable) as info:
        compile_graph(ex.graph, mine)
    assert "Mul" in str(info.value) and "cannot be traced" in str(info.value)
    e = ex.explain(case["x"], method=mine)
    assert ex.engine_note.startswith("eager: ") and "Mul" in ex.engine_note
    assert rel_l2(e.relevance, Explainer(path).explain(case["x"], method="rap").relevance) < 1e-6


@pytest.mark.parametrize("name, fused", [("mobilenetv3_opset17", "HardSigmoid"), ("efficientnet_b0_opset17", "Sigmoid")])
def test_onnx_runtimes_fused_forms(tmp_path, name, fused):
    """ONNX Runtime's offline optimiser writes SE gates' activations into FusedConv and SiLU as QuickGelu
    (x * Sigmoid(alpha x)): the same function, the same gradient, and rap still conserves."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(FIXTURES / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
    model = onnx.load(str(tmp_path / "optimised.onnx"))
    activations = {a.s.decode() for n in model.graph.node for a in n.attribute if a.name == "activation"}
    assert fused in activations
    assert name.startswith("mobilenet") or "QuickGelu" in {n.op_type for n in model.graph.node}
    case = dict(np.load(FIXTURES / f"{name}.npz"))
    optimised = Explainer(tmp_path / "optimised.onnx")
    e = optimised.explain(case["x"], method="rap")
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.logits[np.arange(2), e.target], rtol=1e-5)
    plain = Explainer(FIXTURES / f"{name}.onnx").explain(case["x"], method="gradient", target=e.target)
    assert rel_l2(optimised.explain(case["x"], method="gradient", target=e.target).relevance, plain.relevance) < 1e-4
