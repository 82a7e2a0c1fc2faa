"""timm's own model code at reduced widths, exported by torch.onnx as users export it (tests/fixtures/timm, written
by ``tools/make_timm_fixtures.py``; see the README there): each covers an op pattern that failed on timm's zoo and
was fixed.  Only onnx, onnxruntime and numpy are needed: torch's logits and its float64 autograd gradient (computed
before the export) are stored beside each model.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (assert_files_small, assert_logits_are_torchs, assert_rap_conserves, fixture_case,
                     manifest_names, rel_l2, run_cli)
from onnxrap import Explainer, methods
from onnxrap.compile import CompiledModel, NotCompilable, compile_graph

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "timm"
NAMES = manifest_names(FIXTURES)


@pytest.fixture(params=NAMES)
def case(request):
    return fixture_case(FIXTURES, request.param)


def test_every_file_is_small():
    assert_files_small(FIXTURES, NAMES, 1e6, 5e6)


def test_the_logits_are_onnx_runtimes_and_torchs(case):
    assert_logits_are_torchs(*case[1:])


def test_rap_conserves_the_logit_in_float32(case):
    assert_rap_conserves(*case[1:])


def test_the_gradient_is_torchs(case):
    """onnxrap's float64 gradient (its own forward from the input) against torch autograd's in float64: every op's
    adjoint.  1e-5, not rounding: the exporter folds BatchNorm into the convolutions' float32 weights."""
    _, path, data = case
    e = Explainer(path, dtype="float64").explain(data["x"], target=data["target"], method="gradient")
    assert rel_l2(e.relevance, data["torch_grad64"]) < 1e-5


# Windowed and relative-position attention fold the batch into the windows or heads (a Reshape to (N * k, ...)):
# a graph for any batch size cannot hold that, so compile_graph refuses them and the eager engine explains them.
BATCH_MERGED = {"botnet": "/stages/stages.3/stages.3.1/self_attn/Reshape_3",
                "swin": "/layers/layers.1/blocks/blocks.0/Reshape_6",
                "tiny_vit": "/stages/stages.1/blocks/blocks.0/Reshape_2"}
# ResNeSt's rap is sensitive to float32 rounding: eager rap in float32 differs from eager rap in float64 by 1.6e-3
# and 4e-3 (rel L2) on its two samples, compiled from eager by 1.4e-4 and 6.9e-4.
COMPILED_TOLERANCE = {("resnest", "rap"): 1e-3}


@pytest.mark.parametrize("method", ["rap", "gradient"])
def test_compiled_agrees_with_eager(case, method):
    name, path, data = case
    ex = Explainer(path)
    if name in BATCH_MERGED:
        with pytest.raises(NotCompilable) as info:
            compile_graph(ex.graph, methods.get(method), shape=data["x"].shape[1:])
        assert f"{BATCH_MERGED[name]} (Reshape: merges the batch axis with another" in str(info.value)
        return
    compiled = CompiledModel(compile_graph(ex.graph, methods.get(method), shape=data["x"].shape[1:]))
    _, relevance = compiled.run(data["x"], data["target"])
    eager = ex.explain(data["x"], target=data["target"], method=method).relevance
    assert rel_l2(relevance, eager) < COMPILED_TOLERANCE.get((name, method), 1e-4)


def test_inspect_is_clean(case, capsys):
    _, path, _ = case
    code, out, _ = run_cli(["inspect", path], capsys)
    assert code == 0 and "explainable: yes" in out
