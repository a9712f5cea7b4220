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
    np.testing.assert_allclose(tempo["per_seed"], [[10, 30, 50], [20, 10, 70]])
    # Seed 0: (20 + 40) / 2 = 30; seed 1: (15 + 40) / 2 = 27.5 (per 1000 frames).
    np.testing.assert_allclose(tempo["seed_auc"], [30.0, 27.5])
    assert tempo["final_std"] == pytest.approx(np.std([50, 70], ddof=1))
    assert tempo["auc_std"] == pytest.approx(np.std([30, 27.5], ddof=1))
    # Trapezoid over [1000, 3000]: (15 + 20) / 2 * 1000 + (20 + 60) / 2 * 1000 = 57500 -> / 2000.
    assert tempo["auc"] == pytest.approx(28.75)
    # frames / fps over the log intervals after the first: 1000 / 20 + 1000 / 30.
    assert tempo["wall_s"] == pytest.approx(50.0 + 1000 / 30)
    assert tempo["timed_frames"] == 2 * 2000
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
    out = tmp_path / "new" / "curves"  # a folder that does not exist yet
    cmd = [sys.executable, "-m", "launch.plot", f"--logdirs={runs}/*", f"--out={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "new" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "new" / "curves.csv")))
    tempo = [r for r in rows if r["method"] == "tempo-released"]
    assert [(int(r["step"]), float(r["mean"])) for r in tempo] == [
        (1000, 15.0),
        (2000, 20.0),
        (3000, 60.0),
    ]
    assert "tempo-lookahead" in result.stdout and "dreamerv2" in result.stdout
    table = (tmp_path / "new" / "curves.md").read_text()
    # seeds 0,1; 3000 frames; final 60; AUC 28.75; 50 + 33.3 s of training per
    # seed over 2000 timed frames (1000-3000): 83.3 s per 2000 -> 1.16 h per 100k.
    # Per seed: final 50 and 70 (std 14.1); AUC 30 and 27.5 (std 1.8).
    row = (
        "| dmc_cartpole_swingup | tempo-released | 0,1 | 3,000 | 60.0 ± 14.1 | 28.8 ± 1.8 "
        "| 0.02 | 1.16 | none, none | 0/0, 0/0 |"
    )
    assert row in table.splitlines() and row in result.stdout


def test_a_run_with_one_evaluation_has_no_auc_or_hours_yet(tmp_path):
    # One eval point and one log interval (the first, not timed): both undefined.
    fake_run(tmp_path, "a", {"train.task": "dmc_finger_spin"}, [(5000, 2.2)])
    curves = plotting.aggregate([plotting.load_run(tmp_path / "a")])
    row = "| dmc_finger_spin | tempo-released | 0 | 5,000 | 2.2 | n/a | n/a | n/a | none | 0/0 |"
    assert row in plotting.summary_table(curves).splitlines()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(ValueError, match="not a tempo run directory"):
        plotting.load_run(tmp_path)


def test_differences_to_dreamerv2_with_a_bootstrap_interval(runs):
    curves = plotting.aggregate([plotting.load_run(runs / n) for n in "abc"])
    (row,) = plotting.differences(curves)
    assert row["method"] == "tempo-released" and (row["seeds"], row["baseline_seeds"]) == (2, 1)
    diff, low, high = row["final"]
    assert diff == pytest.approx(60.0 - 9.0)
    # One baseline seed; TEMPO's seeds resampled: the mean is 50, 60 or 70, minus 9.
    assert (low, high) == (pytest.approx(41.0), pytest.approx(61.0))
    diff, low, high = row["auc"]
    assert diff == pytest.approx(28.75 - 7.0)
    assert low == pytest.approx(27.5 - 7.0) and high == pytest.approx(30.0 - 7.0)
    table = plotting.summary_table(curves)
    assert "| dmc_cartpole_swingup | tempo-released | 2 (1) | 3,000 | 51.0 [41.0, 61.0] |" in table


def test_a_run_under_way_is_compared_at_its_own_budget(tmp_path):
    """TEMPO at 2,000 frames against a DreamerV2 run at 3,000: both are cut at
    2,000, not TEMPO's last point set against DreamerV2's."""
    finger = {"train.task": "dmc_finger_spin"}
    fake_run(tmp_path, "t", finger, [(1000, 10.0), (2000, 20.0)])
    dv2 = {**finger, "BilevelTrainer.meta": False}
    fake_run(tmp_path, "d", dv2, [(1000, 4.0), (2000, 6.0), (3000, 100.0)])
    curves = plotting.aggregate([plotting.load_run(tmp_path / n) for n in "td"])
    (row,) = plotting.differences(curves)
    assert row["frames"] == 2000
    assert row["final"] == (pytest.approx(14.0),) * 3  # 20 - 6, one seed each
    assert row["auc"] == (pytest.approx(10.0),) * 3  # (10 + 20) / 2 - (4 + 6) / 2
    # The per-method table still reports each method over all it ran.
    assert curves[("dmc_finger_spin", "dreamerv2")]["final"] == 100.0
    assert "| dmc_finger_spin | tempo-released | 1 (1) | 2,000 | 14.0 [14.0, 14.0] |" in (
        plotting.summary_table(curves)
    )


def test_identical_seeds_give_a_zero_width_interval(tmp_path):
    for name, meta in (("t0", True), ("t1", True), ("d0", False), ("d1", False)):
        bindings = {"train.task": "dmc_finger_spin", "train.seed": int(name[1])}
        fake_run(
            tmp_path, name, {**bindings, "BilevelTrainer.meta": meta}, [(1000, 4.0), (2000, 8.0)]
        )
    curves = plotting.aggregate([plotting.load_run(p) for p in sorted(tmp_path.iterdir())])
    (row,) = plotting.differences(curves)
    assert row["final"] == (0.0, 0.0, 0.0) and row["auc"] == (0.0, 0.0, 0.0)


def write_episode(replay, stamp, rewards):
    """An episode file as the driver writes it: the reset entry (no action, no
    reward, not counted as a step), then one entry per agent step."""
    rewards = [0.0, *rewards]
    name = f"20261126T0000{stamp:02d}000000-{'ab' * 16}-{len(rewards)}.npz"
    np.savez_compressed(replay / name, reward=np.asarray(rewards, np.float32))


def test_rewarded_episodes_after_prefill_and_the_frame_cap(tmp_path):
    bindings = {"train.task": "dmc_finger_spin", "train.prefill": 10, "train.action_repeat": 2}
    logdir = fake_run(tmp_path, "run", bindings, [(40, 0.0), (80, 5.0), (120, 9.0)])
    replay = logdir / "replay"
    replay.mkdir()
    write_episode(replay, 1, [0, 1, 0, 0, 0, 0, 0, 0, 0, 0])  # prefill (random actions): ignored
    write_episode(replay, 2, [0] * 10)  # agent steps 10-20
    write_episode(replay, 3, [0] * 9 + [0.5])  # steps 20-30: rewarded, ends at frame 60
    write_episode(replay, 4, [1] * 10)
    (replay / "notes.npz").write_bytes(b"")  # not an episode file name: skipped
    run = plotting.load_run(logdir)
    assert run["first_reward"] == 60 and run["rewarded"] == (2, 3)
    capped = plotting.load_run(logdir, max_frames=50)
    assert capped["first_reward"] is None and capped["rewarded"] == (0, 1)
    curves = plotting.aggregate([run])
    assert "| 60 | 2/3 |" in plotting.summary_table(curves)
    assert capped["steps"].tolist() == [40] and capped["frames"] <= 50
    # A continuation from the checkpoint at frame 40: what came after it only.
    after = plotting.load_run(logdir, min_frames=40)
    assert after["steps"].tolist() == [40, 80, 120] and after["rewarded"] == (2, 2)
    later = plotting.load_run(logdir, min_frames=60)
    assert later["steps"].tolist() == [80, 120] and later["first_reward"] == 80
    assert later["rewarded"] == (1, 1)


def test_method_names_separate_placebo_runs_from_tempo():
    """A TEMPO run whose meta-weighter cannot move (meta learning rate 1e-9) is
    its own method in the tables, not a seed of tempo-released."""
    name = plotting.method_name
    assert name({"BilevelTrainer.meta": False, "meta/Optimizer.lr": 1e-9}) == "dreamerv2"
    assert name({"BilevelTrainer.meta": True, "meta/Optimizer.lr": 1e-4}) == "tempo-released"
    assert name({"meta/Optimizer.lr": 1e-9}) == "tempo-placebo"
    lookahead = {"BilevelTrainer.hypergrad_sign": "lookahead", "meta/Optimizer.lr": 1e-4}
    assert name(lookahead) == "tempo-lookahead"


def test_a_placebo_run_directory_loads_as_its_own_method(tmp_path):
    bindings = {"train.task": "dmc_finger_spin", "meta/Optimizer.lr": 1e-9}
    logdir = fake_run(tmp_path, "p", bindings, [(1000, 3.0)])
    assert plotting.load_run(logdir)["method"] == "tempo-placebo"


def test_an_interval_does_not_depend_on_the_other_tasks_plotted(tmp_path):
    # Eight seeds of spread-out values: percentiles that move with the draws.
    values = np.random.default_rng(3).uniform(0, 100, (2, 2, 8)).round(1)
    for t, task in enumerate(("dmc_finger_spin", "dmc_cartpole_swingup")):
        for m, meta in enumerate((True, False)):
            for seed, value in enumerate(values[t, m]):
                bindings = {"train.task": task, "train.seed": seed, "BilevelTrainer.meta": meta}
                fake_run(tmp_path, f"{task}{seed}{meta}", bindings, [(1000, 0.0), (2000, value)])
    runs = [plotting.load_run(p) for p in sorted(tmp_path.iterdir())]
    both = plotting.differences(plotting.aggregate(runs))
    finger_runs = [r for r in runs if r["task"] == "dmc_finger_spin"]
    (alone,) = plotting.differences(plotting.aggregate(finger_runs))
    (finger,) = [r for r in both if r["task"] == "dmc_finger_spin"]
    assert finger == alone and finger["final"][1] < finger["final"][0] < finger["final"][2]


def test_a_method_has_one_color_in_every_panel(runs):
    """Finger spin plots only TEMPO, cartpole both: TEMPO keeps its color."""
    curves = plotting.aggregate([plotting.load_run(runs / n) for n in "abcd"])
    finger = {
        ("dmc_finger_spin", "tempo-released"): curves[("dmc_cartpole_swingup", "tempo-released")]
    }
    colors = plotting.method_colors({**curves, **finger})
    assert colors == {"dreamerv2": "C0", "tempo-lookahead": "C1", "tempo-released": "C2"}


def test_a_run_of_the_released_code_loads_beside_ours(tmp_path):
    """tests/reference/released_run.py leaves the release's own logdir and a
    marker: its per-episode eval records (the first one the random episode of
    its prefill) become one mean per frame; its episode files count agent steps."""
    logdir = tmp_path / "released"
    (logdir / "train_episodes").mkdir(parents=True)
    marker = {"task": "dmc_cartpole_swingup", "seed": 1, "prefill": 10, "action_repeat": 2}
    marker["method"] = "released-dreamerv2"
    (logdir / plotting.RELEASED_MARKER).write_text(json.dumps(marker))
    lines = [
        {"step": 20, "eval_return": 99.0},  # random actions during the prefill
        {"step": 20, "eval_return": 4.0},
        {"step": 20, "eval_return": 6.0},
        {"step": 40, "train_return": 1.0, "fps": 5.0},
        {"step": 60, "eval_return": 30.0},
        {"step": 60, "eval_return": 10.0},
        {"step": 80, "fps": 10.0},
    ]
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for stamp, rewards in ((1, [0] * 10), (2, [0] * 9 + [1]), (3, [0] * 10)):
        name = f"20261126T0000{stamp:02d}-{'ab' * 16}-{len(rewards)}.npz"  # its names: steps
        np.savez_compressed(
            logdir / "train_episodes" / name, reward=np.asarray([0.0, *rewards], np.float32)
        )
    run = plotting.load_run(logdir)
    assert run["method"] == "released-dreamerv2" and run["seed"] == 1
    assert run["steps"].tolist() == [20, 60] and run["values"].tolist() == [5.0, 20.0]
    # Episodes end at agent steps 10, 20, 30: the last two after the prefill,
    # the one ending at frame 40 rewarded.
    assert run["first_reward"] == 40 and run["rewarded"] == (1, 2)
    assert run["wall_s"] == pytest.approx(40 / 10.0)
    ours = fake_run(tmp_path, "ours", {"train.task": "dmc_cartpole_swingup"}, [(20, 1.0)])
    ours_run = plotting.load_run(ours)
    table = plotting.summary_table(plotting.aggregate([run, ours_run]), "released-dreamerv2")
    assert "Minus released-dreamerv2" in table and "| tempo-released |" in table


def test_curves_read_back_from_a_csv_stand_in_for_runs_whose_directories_are_gone(runs, tmp_path):
    """An earlier launch.plot's CSV gives each seed's curve back, as the runs
    did; a run directory of the same (task, method, seed) replaces its curve;
    what the CSV cannot hold (hours, rewarded episodes) shows as n/a."""
    loaded = [plotting.load_run(runs / n) for n in "abc"]
    plotting.write_csv(plotting.aggregate(loaded), tmp_path / "earlier.csv")
    back = plotting.runs_from_csv(tmp_path / "earlier.csv")
    assert sorted((r["method"], r["seed"]) for r in back) == [
        ("dreamerv2", 0),
        ("tempo-released", 0),
        ("tempo-released", 1),
    ]
    seed1 = next(r for r in back if r["method"] == "tempo-released" and r["seed"] == 1)
    assert seed1["steps"].tolist() == [1000, 2000, 3000] and seed1["values"].tolist() == [
        20,
        10,
        70,
    ]
    assert seed1["frames"] == 3000 and seed1["from_csv"]
    cut = plotting.runs_from_csv(tmp_path / "earlier.csv", max_frames=2000, min_frames=2000)
    assert {r["steps"].tolist()[0] for r in cut if len(r["steps"])} == {2000}

    # Seed 1 of tempo-released was run again: its directory wins over the CSV.
    task = {"train.task": "dmc_cartpole_swingup", "train.seed": 1}
    again = plotting.load_run(fake_run(tmp_path, "again", task, [(1000, 0.0), (3000, 100.0)]))
    merged = plotting.replace_runs(back, [again])
    assert len(merged) == 3 and again in merged
    curves = plotting.aggregate(merged)
    tempo = curves[("dmc_cartpole_swingup", "tempo-released")]
    # Seed 0 from the CSV (10, 50 at the shared steps 1000, 3000), seed 1 run again (0, 100).
    np.testing.assert_allclose(tempo["per_seed"], [[10, 50], [0, 100]])
    assert tempo["final"] == 75.0 and tempo["from_csv"] == [0]
    # Hours from the one timed seed: 2000 frames / 20 fps = 100 s over 2000 timed
    # frames (0.03 h; 1.39 h per 100k). AUC per seed: (10 + 50) / 2, (0 + 100) / 2.
    assert tempo["wall_s"] == pytest.approx(100.0) and tempo["timed_frames"] == 2000
    table = plotting.summary_table(curves)
    row = (
        "| dmc_cartpole_swingup | tempo-released | 0,1 | 3,000 | 75.0 ± 35.4 | 40.0 ± 14.1 "
        "| 0.03 | 1.39 | n/a, none | n/a, 0/0 |"
    )
    assert row in table.splitlines(), table
    assert "dmc_cartpole_swingup tempo-released seed 0" in table
    assert "dmc_cartpole_swingup dreamerv2 seed 0" in table


def test_the_launcher_merges_an_earlier_csv_and_rejects_another_file(runs, tmp_path):
    plotting.write_csv(plotting.aggregate([plotting.load_run(runs / "c")]), tmp_path / "old.csv")
    out = tmp_path / "merged"
    cmd = [sys.executable, "-m", "launch.plot", f"--from_csv={tmp_path / 'old.csv'}"]
    result = subprocess.run(
        [*cmd, f"--logdirs={runs}/a", f"--out={out}"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(f"{out}.csv")))
    assert {(r["method"], r["seeds"]) for r in rows} == {
        ("dreamerv2", "0"),
        ("tempo-released", "0"),
    }
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    result = subprocess.run(
        [sys.executable, "-m", "launch.plot", f"--from_csv={tmp_path / 'other.csv'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "not a curves CSV written by launch.plot" in result.stderr
    assert "Traceback" not in result.stderr
