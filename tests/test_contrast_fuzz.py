"""rap with a contrast conserves its score on the fuzzer's random graphs (docs/rules.md, contrast).

The seed ``e_t - w`` makes the score ``z_t - w . z``; rap's head keeps the signs of C and shares
only what C misses by |C|, and every op below conserves as for a plain seed.  Checked at every op,
for ``others`` and for the class after the target, on the same graphs as tests/test_fuzz.py.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings

from onnxrap import Explainer
from onnxrap.methods import contrast_seed
from test_fuzz import MAX_EXAMPLES, Case, graph_specs

TOLERANCE = 1e-7  # relative to the sample's relevance mass at the head: float64 rounding only


@settings(max_examples=max(1, MAX_EXAMPLES // 4), deadline=None,
          derandomize=not os.environ.get("ONNXRAP_FUZZ_RANDOM"), print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@pytest.mark.slow
@given(spec=graph_specs())
def test_rap_contrast_conserves_on_random_graphs(spec):
    case = Case(spec)
    case.validate()
    note(f"nodes: {[n.op_type for n in case.model.graph.node]}")
    head = next(op for op in case.linear if op["head"])["node"]  # where the seed (summing to 0) becomes the score
    ex = Explainer(case.model, dtype="float64")
    classes = ex.explain(case.x, method="gradient").logits.shape[1]
    n = len(case.x)
    for target, contrast in ((None, "others"), (np.ones(n, int), 0)):  # the top class, the others; 1 rather than 0
        got = ex.explain(case.x, target=target, method="rap", contrast=contrast, trace=True)
        scores = (contrast_seed(got.target, classes, contrast) * got.logits).sum(axis=1)
        totals = got.relevance.reshape(n, -1).sum(axis=1)
        for i in range(n):
            out_in = [(name, float(np.ravel(out)[i]), float(np.ravel(inp)[i])) for name, _, out, inp in got.layer_sums]
            mass = max(max(abs(o) + abs(r) for _, o, r in out_in), abs(scores[i]), 1e-12)
            leaks = [f"{name}: out {o!r} in {r!r}" for name, o, r in out_in
                     if name != head and abs(o - r) > TOLERANCE * mass]
            at_head = next(r for name, _, r in out_in if name == head)
            assert abs(totals[i] - scores[i]) <= 1e-5 * mass and abs(at_head - scores[i]) <= 1e-5 * mass \
                and not leaks, (f"sample {i}, target {got.target[i]}, contrast {contrast}: rap sums to "
                                f"{totals[i]!r}, the score is {scores[i]!r}; ops that do not conserve: {leaks}")
