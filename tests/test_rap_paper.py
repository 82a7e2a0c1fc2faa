"""rap-paper: the journal's equations as docs/rules.md, paper, reads them (onnxrap/rules/paper.py)."""
import numpy as np
import pytest

from helpers import DIGIT_IMAGES, DIGITS
from onnxrap import InputError
from onnxrap.cli import main


@pytest.mark.parametrize("name", ["mlp", "vgg16bn_w8"])
@pytest.mark.parametrize("flow", ["normal", "inversion"])
def test_each_flow_keeps_its_sum_through_every_op(golden, name, flow):
    ex, case = golden(name)
    e = ex.explain(case["x"], method="rap-paper", flow=flow, trace=True)
    head, *rest = e.layer_sums
    # (5) sends R to promoters and -R to inhibitors: the flows start from a zero sum.
    assert abs(head[2][0] - e.target_logit[0]) < 1e-5 * abs(e.target_logit[0])
    assert abs(head[3][0]) < 1e-5
    for op_name, op_type, out_sum, in_sum in rest:
        assert abs(out_sum[0] - in_sum[0]) < 1e-5, (op_name, op_type)
    assert abs(e.relevance.sum()) < 1e-4
    assert np.abs(e.relevance).sum() > 1e-3  # and yet it says something


@pytest.mark.slow
def test_sum_is_normal_plus_inversion(golden):
    ex, case = golden("vgg16bn_w8")
    parts = {flow: ex.explain(case["x"], method="rap-paper", flow=flow).relevance
             for flow in ("normal", "inversion", "sum")}
    np.testing.assert_allclose(parts["sum"], parts["normal"] + parts["inversion"], rtol=1e-5, atol=1e-9)
    assert ex.explain(case["x"], method="rap-paper").method == "rap-paper(flow=sum)"


def test_flow_option_is_checked(golden):
    ex, case = golden("mlp")
    with pytest.raises(InputError, match="flow"):
        ex.explain(case["x"], method="rap-paper", flow="sideways")


def test_rap_paper_from_the_command_line(tmp_path, capsys):
    code = main(["explain", str(DIGITS), str(DIGIT_IMAGES[0]), "-o", str(tmp_path), "--method", "rap,rap-paper",
                 "--flow", "normal"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / f"{DIGIT_IMAGES[0].stem}_rap+rap-paper.png").exists()
