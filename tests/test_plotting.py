"""Learning-curve aggregation against hand-computed numbers, and the launcher's files."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from tempo import plotting


def fake_run(root, name, bindings, points):
    logdir = root / name
    logdir.mkdir()
    (logdir / "config.gin").write_text("".join(f"{k} = {v!r}\n" for k, v in bindings.items()))
    lines = [{"step": 500, "time": 0.0, "train/return": 1.0}]
    for i, (step, value) in enumerate(points, 1):
        lines.append({"step": step, "time": 60.0 * i, "eval/return": value})
        lines.append({"step": step, "time": 60.0 * i, "fps": 10.0 * i})
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return logdir


@pytest.fixture
def runs(tmp_path):
    task = {"train.task": "dmc_cartpole_swingup"}
    fake_run(tmp_path, "a", {**task, "train.seed": 0}, [(1000, 10.0), (2000, 30.0), (3000, 50.0)])
    fake_run(tmp_path, "b", {**task, "train.seed": 1}, [(1000, 20.0), (2000, 10.0), (3000, 70.0)])
    fake_run(tmp_path, "c", {**task, "BilevelTrainer.meta": False}, [(1000, 5.0), (3000, 9.0)])
    lookahead = {**task, "BilevelTrainer.hypergrad_sign": "lookahead"}
    fake_run(tmp_path, "d", lookahead, [(1000, 1.0), (2000, 2.0)])
    return tmp_path


def test_aggregate_by_hand(runs):
    loaded = [plotting.load_run(runs / n) for n in "abcd"]
    assert [r["method"] for r in loaded] == ["tempo-released"] * 2 + [
        "dreamerv2",
        "tempo-lookahead",
    ]
    curves = plotting.aggregate(loaded)
    tempo = curves[("dmc_cartpole_swingup", "tempo-released")]
    np.testing.assert_array_equal(tempo["steps"], [1000, 2000, 3000])
    np.testing.assert_allclose(tempo["mean"], [15.0, 20.0, 60.0])
    np.testing.assert_allclose(tempo["min"], [10.0, 10.0, 50.0])
    np.testing.assert_allclose(tempo["max"], [20.0, 30.0, 70.0])
    assert tempo["seeds"] == [0, 1] and tempo["final"] == 60.0
    # Trapezoid over [1000, 3000]: (15 + 20) / 2 * 1000 + (20 + 60) / 2 * 1000 = 57500 -> / 2000.
    assert tempo["auc"] == pytest.approx(28.75)
    # frames / fps over the log intervals after the first: 1000 / 20 + 1000 / 30.
    assert tempo["wall_s"] == pytest.approx(50.0 + 1000 / 30)
    assert curves[("dmc_cartpole_swingup", "dreamerv2")]["auc"] == pytest.approx(7.0)


def test_training_seconds_skip_the_pause_between_sittings():
    records = [
        {"step": 3000, "time": 100.0, "fps": 5.0},  # first interval: prefill, compile
        {"step": 4000, "time": 300.0, "fps": 5.0},
        {"step": 4500, "time": 400.0, "fps": 5.0},  # stopped here
        {"step": 4500, "time": 90000.0, "eval/return": 3.0},  # resumed a day later
        {"step": 5500, "time": 90100.0, "fps": 10.0},
    ]
    assert plotting.training_seconds(records) == pytest.approx(200.0 + 100.0 + 100.0)


def test_launcher_writes_png_and_csv(runs, tmp_path):
    out = tmp_path / "curves"
    cmd = [sys.executable, "-m", "launch.plot", f"--logdirs={runs}/*", f"--out={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "curves.csv")))
    tempo = [r for r in rows if r["method"] == "tempo-released"]
    assert [(int(r["step"]), float(r["mean"])) for r in tempo] == [
        (1000, 15.0),
        (2000, 20.0),
        (3000, 60.0),
    ]
    assert "tempo-lookahead" in result.stdout and "dreamerv2" in result.stdout
    table = (tmp_path / "curves.md").read_text()
    # seeds 0,1; 3000 frames; final 60; AUC 28.75; 50 + 33.3 s of training.
    row = "| dmc_cartpole_swingup | tempo-released | 0,1 | 3,000 | 60.0 | 28.8 | 0.02 | 0.77 |"
    assert row in table.splitlines() and row in result.stdout


def test_a_run_with_one_evaluation_has_no_auc_or_hours_yet(tmp_path):
    # One eval point and one log interval (the first, not timed): both undefined.
    fake_run(tmp_path, "a", {"train.task": "dmc_finger_spin"}, [(5000, 2.2)])
    curves = plotting.aggregate([plotting.load_run(tmp_path / "a")])
    row = "| dmc_finger_spin | tempo-released | 0 | 5,000 | 2.2 | n/a | n/a | n/a |"
    assert row in plotting.summary_table(curves).splitlines()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ValueError, match="not a tempo run directory"):
        plotting.load_run(tmp_path)
