"""``onnxrap audit`` on the bundled digits model: the records and tables against direct computation,
resumption after an interruption, local worker processes, Ray, and bad input."""
import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import DIGITS, ROOT, assert_one_line_error, run_cli
from onnxrap import Explainer
from onnxrap.cli import main
from onnxrap.api import softmax

pytest.importorskip("jinja2")
from onnxrap.audit.scores import off_object  # noqa: E402
from onnxrap.audit.store import AuditStore  # noqa: E402

HOLDOUT = ROOT / "models" / "digits_holdout.npz"
N = 24


def audit(out, *extra, data=HOLDOUT, limit=N):
    return main(["audit", str(DIGITS), str(data), "-o", str(out), "--limit", str(limit), "--quiet", "--device",
                 "cpu", "--batch-size", "8", *extra])


def records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "plain"
    assert audit(out, "--faithfulness", "6") == 0
    return out


# -- records and tables --------------------------------------------------------------------------------------------

def test_records_match_the_explainer(plain):
    data = np.load(HOLDOUT)
    x, y = data["x"][:N], data["y"][:N]
    exp = Explainer(DIGITS).explain(x, method="rap")
    rs = records(plain)
    assert [r["index"] for r in rs] == list(range(N))
    for i, r in enumerate(rs):
        probs = softmax(exp.logits[i])
        assert r["label"] == y[i] and r["predicted"] == int(np.argmax(probs))
        assert r["correct"] == (y[i] == r["predicted"])
        assert r["confidence"] == pytest.approx(probs.max(), rel=1e-5)
        assert r["methods"]["rap"]["relevance_sum"] == pytest.approx(exp.target_logit[i], rel=1e-4)
        assert r["methods"]["rap"]["off_object"] == pytest.approx(off_object(exp.heatmap[i]), rel=1e-4, abs=1e-6)
        for path in r["thumbs"].values():
            assert (plain / path).stat().st_size > 0


def test_summary_tables_and_means_agree_with_the_records(plain):
    rs = records(plain)
    summary = json.loads((plain / "summary.json").read_text())["summary"]
    assert summary["inputs"] == N and summary["labelled"] == N
    assert summary["accuracy"] == pytest.approx(np.mean([r["correct"] for r in rs]))
    assert sum(n for _, _, n in summary["confusion"]) == N
    per_class = {c["class"]: c for c in summary["classes"]}
    for label in {r["label"] for r in rs}:
        off = [r["methods"]["rap"]["off_object"] for r in rs if r["label"] == label]
        assert per_class[label]["n"] == len(off)
        assert per_class[label]["mean_off_object"]["rap"] == pytest.approx(np.mean(off))
    with open(plain / "records.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["index"]) for row in rows] == list(range(N))
    with open(plain / "confusion.csv") as f:
        assert sum(int(row["count"]) for row in csv.DictReader(f)) == N
    # The worst case is the most confident mistake, or without one the right answer most off the object.
    wrong = [r for r in rs if not r["correct"]]
    first = (max(wrong, key=lambda r: r["confidence"]) if wrong
             else max(rs, key=lambda r: r["methods"]["rap"]["off_object"]))
    assert summary["worst"][0] == first["index"]

    # Per-class means: the mean of each class's (normalised) heatmaps, computed here directly.
    data = np.load(HOLDOUT)
    x, y = data["x"][:N], data["y"][:N]
    heat = Explainer(DIGITS).explain(x, method="rap").heatmap
    heat = heat / np.abs(heat).sum(axis=(1, 2), keepdims=True)
    means = np.load(plain / "means.npz")
    for c in np.unique(y):
        np.testing.assert_allclose(means[f"heatmap_{c}"][0], heat[y == c].mean(axis=0), rtol=1e-4, atol=1e-7)
        assert (plain / f"means/class_{c}_input.png").exists() and (plain / f"means/class_{c}_rap.png").exists()


def test_page_and_faithfulness(plain):
    html = (plain / "index.html").read_text()
    for needle in ("Off-the-object score", "Worst cases first", "What the model looks at", "Faithfulness",
                   "Sanity checks", "GlobalAveragePool"):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # nothing from the network
    for name in ("audit.js", "audit.css", "data.js", "summary.js"):
        assert (plain / name).exists()
    faith = json.loads((plain / "summary.json").read_text())["faithfulness"]
    assert faith["inputs"] == 6 and [m["method"] for m in faith["methods"]] == ["rap", "random"]
    assert (plain / "faithfulness" / "table.md").exists()


def test_sanity_checks_equal_evaluate_on_the_same_sample(plain):
    """The page's sanity section: onnxrap.evaluate.sanity's own numbers for the faithfulness sample's kind of
    inputs (4 correctly classified ones, evenly spread), with 3 randomisation steps and 10 classes."""
    from onnxrap.evaluate.sanity import Sanity

    rs = records(plain)
    right = [r["index"] for r in rs if r["correct"]]
    picks = [right[p] for p in np.unique(np.round(np.linspace(0, len(right) - 1, 4)).astype(int))]
    targets = [rs[i]["predicted"] for i in picks]
    x = np.load(HOLDOUT)["x"][picks]
    direct = Sanity(Explainer(DIGITS), x, targets, steps=3, classes=10, batch_size=8)
    expected = direct.run_method("rap")

    sanity = json.loads((plain / "summary.json").read_text())["sanity"]
    assert sanity["indices"] == picks and sanity["inputs"] == 4 and sanity["depths"] == direct.depths
    got = sanity["methods"]["rap"]
    assert [p["depth"] for p in got["cascade"]] == [0] + direct.depths
    for a, b in zip(got["cascade"], expected["cascade"]):
        assert a == pytest.approx(b)
    assert got["classes"]["classes"] == expected["classes"]["classes"] == 10
    for which in ("top_vs_second", "across"):
        assert got["classes"][which] == pytest.approx(expected["classes"][which])
    row = sanity["rows"][0]
    assert row["randomised"]["ssim"] == pytest.approx(expected["cascade"][-1]["ssim"])
    assert row["across"] == pytest.approx(expected["classes"]["across"]["abs_pearson"])
    assert row["randomised"]["ssim"] < 0.9  # randomising the weights changes rap's maps on the digits

    with open(plain / "sanity" / "sanity.csv") as f:
        csv_rows = list(csv.DictReader(f))
    last = [r for r in csv_rows if r["check"] == "cascade" and r["similarity"] == "spearman_abs"][-1]
    assert float(last["value"]) == pytest.approx(expected["cascade"][-1]["spearman_abs"], rel=1e-5)
    assert (plain / "sanity" / "sanity.png").stat().st_size > 0
    html = (plain / "index.html").read_text()
    section = html[html.index('<section id="sanity">'):html.index('<section id="files">')]
    assert "sanity/sanity.png" in section and "Reading:" in section
    assert f"{row['randomised']['ssim']:.3f}" in section and f"{row['across']:.3f}" in section


def test_sanity_results_are_reused_on_a_rerun_and_redone_for_other_settings(tmp_path, monkeypatch):
    from onnxrap.evaluate.sanity import Sanity

    out = tmp_path / "rerun"
    assert audit(out, "--faithfulness", "0", "--sanity", "2", "--sanity-steps", "1", limit=8) == 0
    first = json.loads((out / "sanity" / "results.json").read_text())
    real_run, calls = Sanity.run_method, []

    def counted(self, *a, **k):
        calls.append(1)
        return real_run(self, *a, **k)

    monkeypatch.setattr(Sanity, "run_method", counted)
    assert audit(out, "--faithfulness", "0", "--sanity", "2", "--sanity-steps", "1", limit=8) == 0
    assert calls == [] and json.loads((out / "sanity" / "results.json").read_text()) == first
    assert audit(out, "--faithfulness", "0", "--sanity", "2", "--sanity-steps", "2", limit=8) == 0
    assert calls == [1]
    assert len(json.loads((out / "sanity" / "results.json").read_text())["sanity"]["depths"]) == 2
    assert audit(out, "--faithfulness", "0", "--sanity", "0", limit=8) == 0
    assert "Not measured (<code>--sanity 0</code>)" in (out / "index.html").read_text()


# -- resumption ----------------------------------------------------------------------------------------------------

def test_interrupted_audit_continues_to_the_same_records(plain, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real_add, calls = AuditStore.add, []

    def add_then_stop(self, result):
        real_add(self, result)
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C after two batches (16 records)
            raise KeyboardInterrupt

    monkeypatch.setattr(AuditStore, "add", add_then_stop)
    assert audit(out, "--faithfulness", "0") == 130
    assert len(records(out)) == 16
    monkeypatch.setattr(AuditStore, "add", real_add)
    assert audit(out, "--faithfulness", "0") == 0
    assert records(out) == records(plain)
    np.testing.assert_allclose(np.load(out / "means.npz")["heatmap_3"], np.load(plain / "means.npz")["heatmap_3"])


def test_records_past_the_checkpoint_are_redone(plain, tmp_path):
    """A killed run can leave records (or half a line) the class sums never saw: they are cut and redone."""
    out = tmp_path / "killed"
    assert audit(out, "--faithfulness", "0", limit=8) == 0
    with open(out / "records.jsonl", "a") as f:
        f.write(json.dumps(records(plain)[8]) + "\n" + '{"index": 9, "na')
    assert audit(out, "--faithfulness", "0") == 0
    assert records(out) == records(plain)
    assert sum(np.load(out / "checkpoint.npz")[f"count_{c}"] for c in range(10)
               if f"count_{c}" in np.load(out / "checkpoint.npz")) == N


@pytest.mark.slow
def test_ctrl_c_on_the_command_then_rerun(plain, tmp_path):
    out = tmp_path / "sigint"
    command = [sys.executable, "-m", "onnxrap", "audit", str(DIGITS), str(HOLDOUT), "-o", str(out), "--limit",
               "64", "--quiet", "--device", "cpu", "--batch-size", "4", "--faithfulness", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # A shell without job control starts background jobs with SIGINT ignored, and Python then keeps it
    # ignored: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    target = out / "records.jsonl"
    while proc.poll() is None and (not target.exists() or len(target.read_text().splitlines()) < 8):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to continue" in err
    done = len(records(out))
    assert 8 <= done < 64
    assert subprocess.run(command, cwd=ROOT, env=env).returncode == 0
    full = records(out)
    assert [r["index"] for r in full] == list(range(64))
    assert full[:N] == records(plain)


# -- scale ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_worker_processes_give_the_same_records(plain, tmp_path):
    out = tmp_path / "workers"
    assert audit(out, "--workers", "2", "--faithfulness", "0") == 0
    assert records(out) == records(plain)


@pytest.mark.slow
def test_ray_on_a_local_two_cpu_instance_gives_the_same_records(plain, tmp_path):
    pytest.importorskip("ray.data")
    out = tmp_path / "ray"
    assert audit(out, "--ray", "local", "--workers", "2", "--faithfulness", "0") == 0
    assert records(out) == records(plain)


# -- other data and bad input --------------------------------------------------------------------------------------

def test_class_folders_give_labels_and_names(tmp_path):
    from PIL import Image

    data = np.load(HOLDOUT)
    for i in range(6):
        folder = tmp_path / "data" / str(int(data["y"][i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((data["x"][i, 0] * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    out = tmp_path / "report"
    assert audit(out, "--faithfulness", "0", data=tmp_path / "data") == 0
    rs = records(out)
    assert sorted(r["name"] for r in rs) == sorted(f"{int(data['y'][i])}/img{i}.png" for i in range(6))
    assert all(r["label"] == int(r["name"].split("/")[0]) for r in rs)
    assert "folder names" in (out / "index.html").read_text()


def test_bad_input_is_one_line_and_exit_2(plain, tmp_path, capsys):
    assert audit(tmp_path / "x", "--workers", "0") == 2
    assert audit(tmp_path / "x", "--sanity-classes", "1") == 2
    assert main(["audit", str(DIGITS), str(HOLDOUT), "-o", str(plain), "--methods", "lrp-eps", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["onnxrap: error: --workers must be at least 1",
                   "onnxrap: error: --sanity-steps must be at least 1 and --sanity-classes at least 2",
                   f"onnxrap: error: {plain}: holds an audit made with another model, data, methods, "
                   "preprocessing or onnxrap version; pass --restart to replace it, or choose another -o"]
    assert audit(tmp_path / "y", "--methods", "nope") == 2
    assert audit(tmp_path / "z", data=tmp_path / "missing.npz") == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".lock", "w") as held:  # another audit writing there
        fcntl.flock(held, fcntl.LOCK_EX)
        assert audit(busy) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"onnxrap: error: {busy}: another audit is writing there now"
    assert not (busy / "records.jsonl").exists()


def test_output_path_and_labels_errors_leave_nothing_behind(tmp_path, capsys):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("not a folder")
    code, _, err = run_cli(["audit", DIGITS, HOLDOUT, "-o", in_the_way, "--quiet"], capsys)
    assert_one_line_error(code, err, "exists and is not a folder")
    too_long = tmp_path / ("d" * 300)
    code, _, err = run_cli(["audit", DIGITS, HOLDOUT, "-o", too_long, "--quiet"], capsys)
    assert_one_line_error(code, err, "cannot write there")
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")  # the model has 10 classes
    report = tmp_path / "report"
    code, _, err = run_cli(["audit", DIGITS, HOLDOUT, "-o", report, "--labels", labels, "--quiet"], capsys)
    assert_one_line_error(code, err, "2 labels, but the model has 10 classes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "labels.txt"]


def test_a_run_that_stored_no_record_does_not_block_a_corrected_one(tmp_path):
    out = tmp_path / "report"
    AuditStore(out, "first settings", ["rap"]).close()  # e.g. the first batch failed: state file, no record
    assert (out / "audit-state.json").exists() and (out / "records.jsonl").stat().st_size == 0
    store = AuditStore(out, "corrected settings", ["rap"])  # opens without --restart
    store.close()
    assert json.loads((out / "audit-state.json").read_text())["fingerprint"] == "corrected settings"
