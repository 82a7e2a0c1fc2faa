"""``onnxrap compile``: methods traced into one ONNX graph agree with the eager engine."""
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest

from helpers import GOLDEN, GOLDEN_CASES, rel_l2
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, compile_graph

PROPAGATION = ["rap", "rap-reference", "rap-paper", "lrp-eps", "lrp-ab", "lrp-a1b0", "lrp-a2b1",
               "lrp-preset-a", "lrp-preset-b", "gradient", "gradient-x-input"]


@pytest.fixture(scope="module")
def case(golden):
    """The session's golden explainers and cases (conftest)."""
    return golden


def compiled(ex, method, **kw):
    return CompiledModel(compile_graph(ex.graph, methods.get(method), **kw))


def assert_agrees(name, x, method, relevance, eager, **options):
    assert relevance.shape == x.shape and relevance.dtype == np.float32
    err = rel_l2(relevance, eager.relevance)
    if err <= 1e-5:
        return
    # rap-paper's corrections (10) and (11) apply where R != 0, and rounding decides whether R cancels
    # to exactly 0 (docs/rules.md, paper): on vgg16bn_w8 one unit of 206,271 does in float32 and not in
    # float64, which moves the map by 7e-4, and two float32 runs that round differently differ by as
    # much.  The compiled run must then be as close to float64 as the eager one, within a factor 4.
    # Every other method must agree to 1e-5.
    assert method == "rap-paper", err
    exact = Explainer(GOLDEN / name / "model.onnx", dtype="float64", recompute=False).explain(x, method=method,
                                                                                              **options)
    own = rel_l2(eager.relevance, exact.relevance)
    assert rel_l2(relevance, exact.relevance) < 4 * max(own, 1e-5), (err, own)


@pytest.mark.parametrize("method", PROPAGATION)
@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_compiled_agrees_with_eager(case, name, method):
    ex, c = case(name)
    logits, relevance = compiled(ex, method).run(c["x"])
    eager = ex.explain(c["x"], method=method)
    np.testing.assert_allclose(logits.reshape(eager.logits.shape), eager.logits, rtol=1e-5, atol=1e-5)
    assert_agrees(name, c["x"], method, relevance, eager)


@pytest.mark.parametrize("flow", ["normal", "inversion"])
@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_compiled_rap_paper_flows_agree(case, name, flow):
    ex, c = case(name)
    _, relevance = CompiledModel(compile_graph(ex.graph, methods.get("rap-paper", flow=flow))).run(c["x"])
    eager = ex.explain(c["x"], method="rap-paper", flow=flow)
    assert_agrees(name, c["x"], "rap-paper", relevance, eager, flow=flow)


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_compiled_rap_conserves_the_logit(case, name):
    ex, c = case(name)
    logits, relevance = compiled(ex, "rap").run(c["x"])
    logit = float(logits.reshape(len(logits), -1)[0, int(c["target"])])
    assert abs(float(relevance.sum(dtype=np.float64)) - logit) < 1e-4 * abs(logit)


EXPORTERS = GOLDEN.parent / "fixtures" / "exporters"
FLAVOURS = sorted(p.stem for p in EXPORTERS.glob("*.onnx"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exported_flavours_with_a_free_batch(flavour):
    """Opsets 11 to 20, fused contrib ops, NHWC, shape subgraphs: one graph serves any batch size."""
    ex = Explainer(EXPORTERS / f"{flavour}.onnx")
    x = np.load(EXPORTERS / f"{flavour}.npz")["x"]
    xs = np.concatenate([x, x[:1] * 0.5])
    for method in ("rap", "gradient"):
        model = compiled(ex, method)
        eager = ex.explain(xs, method=method)
        for batch in (xs, xs[:1]):
            logits, relevance = model.run(batch)  # the default target: each sample's top class
            assert rel_l2(relevance, eager.relevance[:len(batch)]) < 1e-5, (method, len(batch))
        other = (eager.target + 1) % eager.logits.shape[1]
        _, relevance = model.run(xs, other)
        assert rel_l2(relevance, ex.explain(xs, target=other, method=method).relevance) < 1e-5
        _, relevance = model.run(xs, [int(other[0])])  # one target for every sample
        assert rel_l2(relevance, ex.explain(xs, target=int(other[0]), method=method).relevance) < 1e-5


def test_explainer_engine_onnx_batched_methods(case, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    ex, c = case("inception_mini")
    onnx_ex = Explainer(GOLDEN / "inception_mini" / "model.onnx", engine="onnx")
    rng = np.random.default_rng(1)
    xs = np.concatenate([c["x"], rng.standard_normal(c["x"].shape).astype(np.float32)])  # fixed batch 1: pieces
    for method, options in [("integrated-gradients", {"steps": 4}), ("smoothgrad", {"samples": 3}),
                            ("gradient-x-input", {}), ("rap", {})]:
        a = ex.explain(xs, method=method, **options)
        b = onnx_ex.explain(xs, method=method, **options)
        np.testing.assert_array_equal(a.target, b.target)
        assert rel_l2(b.relevance, a.relevance) < 1e-5, method
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 4 and all(n.endswith(".onnx") for n in cached)
    again = Explainer(GOLDEN / "inception_mini" / "model.onnx", engine="onnx")
    again.explain(xs, method="rap")
    assert sorted(p.name for p in tmp_path.iterdir()) == cached  # served from the cache


def test_auto_measures_and_says_which(tmp_path, monkeypatch, case):
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    _, c = case("mlp")
    ex = Explainer(GOLDEN / "mlp" / "model.onnx", engine="auto")
    e = ex.explain(c["x"], method="rap")
    assert ex.engine_note.startswith("auto: ") and ("eager" in ex.engine_note and "onnx" in ex.engine_note)
    assert rel_l2(e.relevance, c["rap_robust64"]) < 1e-4


def test_float64_compiled_matches_the_authors(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    c = dict(np.load(GOLDEN / "mlp" / "case.npz"))
    ex = Explainer(GOLDEN / "mlp" / "model.onnx", dtype="float64", engine="onnx")
    assert rel_l2(ex.explain(c["x"], method="rap").relevance, c["rap_robust64"]) < 1e-12
    assert rel_l2(ex.explain(c["x"], method="rap-reference").relevance, c["rap64"]) < 1e-12
    assert list(ex._compiled.values())[0] is not None  # Gemm, Relu: ORT has float64 kernels


def test_float64_without_ort_kernels_runs_eager(tmp_path, monkeypatch):
    # ONNX Runtime's CPU provider has no float64 Conv: the engine falls back to eager arithmetic.
    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path))
    c = dict(np.load(GOLDEN / "vgg16_w8" / "case.npz"))
    ex = Explainer(GOLDEN / "vgg16_w8" / "model.onnx", dtype="float64", engine="onnx")
    e = ex.explain(c["x"], method="rap-reference")
    assert list(ex._compiled.values()) == [None]
    assert e.relevance.dtype == np.float64 and rel_l2(e.relevance, c["rap64"]) < 1e-10


def test_portable_file(case, tmp_path):
    """A process with only onnxruntime and numpy reproduces the relevance from the compiled file."""
    ex, c = case("vgg16bn_w8")
    model = compile_graph(ex.graph, methods.get("rap"))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "explainer.onnx"
    onnx.save(model, str(path))
    np.save(tmp_path / "x.npy", c["x"])
    script = textwrap.dedent(f"""
        import sys
        import numpy as np, onnxruntime as ort
        s = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        logits, relevance = s.run(None, {{"input": np.load({str(tmp_path / 'x.npy')!r}),
                                          "target": np.array([{int(c['target'])}])}})
        np.save({str(tmp_path / 'r.npy')!r}, relevance)
        assert not any(m.startswith("onnxrap") for m in sys.modules), "onnxrap was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    relevance = np.load(tmp_path / "r.npy")
    assert rel_l2(relevance, c["rap_robust64"]) < 1e-4


def test_refuses_what_eager_refuses(tmp_path):
    from onnx import TensorProto, helper

    from onnxrap.cli import main

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="sine"), helper.make_node("Cos", ["a"], ["y"], name="cosine")]
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]),
              str(path))
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["compile", str(path), "-o", str(tmp_path / "out.onnx")]) == 2
    line = err.getvalue().strip()
    assert "\n" not in line and "sine (Sin" in line and "cosine (Cos" in line
    assert not (tmp_path / "out.onnx").exists()


def test_cli_compile_and_explain_engine(tmp_path, monkeypatch, capsys):
    from onnxrap.cli import main

    monkeypatch.setenv("ONNXRAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "explainer.onnx"
    model = str(GOLDEN / "mlp" / "model.onnx")
    assert main(["compile", model, "-o", str(out), "--method", "lrp-eps", "--epsilon", "0.01"]) == 0
    c = dict(np.load(GOLDEN / "mlp" / "case.npz"))
    _, relevance = CompiledModel(out).run(c["x"])
    eager = Explainer(model).explain(c["x"], method="lrp-eps", epsilon=0.01)
    assert rel_l2(relevance, eager.relevance) < 1e-5
    assert main(["compile", model, "-o", str(tmp_path / "ig.onnx"), "--method", "integrated-gradients"]) == 2
    assert "compile --method gradient" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", c["x"][0])
    assert main(["explain", model, str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), "--engine", "auto",
                 "--save-npy", "--quiet"]) == 0
    assert "engine: auto: " in capsys.readouterr().out


def test_external_weights_file(tmp_path, case):
    """Past the size limit (2 GB; here forced to 0) the weights go to OUT.data, which ORT reads."""
    from onnxrap.compile import save

    ex, c = case("mlp")
    path = save(compile_graph(ex.graph, methods.get("rap")), tmp_path / "rap.onnx", external_above=0)
    assert (tmp_path / "rap.onnx.data").stat().st_size > 4096  # the weight matrices, not the small tensors
    onnx.checker.check_model(str(path), full_check=True)
    _, relevance = CompiledModel(path).run(c["x"])
    assert rel_l2(relevance, ex.explain(c["x"], method="rap").relevance) < 1e-5


def test_refuses_a_non_float_input_like_explain(tmp_path):
    from onnx import TensorProto, helper

    from onnxrap.cli import main

    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    path = tmp_path / "int.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=1)], "g", [x], [y]),
                                ir_version=8, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    import contextlib
    import io

    lines = []
    for argv in (["compile", str(path), "-o", str(tmp_path / "o.onnx")],
                 ["explain", str(path), str(tmp_path / "none.npy"), "-o", str(tmp_path / "out")]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv) == 2
        lines.append(err.getvalue().strip())
    assert lines[0] == lines[1] and "not a float tensor" in lines[0]
