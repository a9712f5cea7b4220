"""launch.weights and tempo/weight_report.py: the per-episode plots, the CSV of
every step and the correlation table for a run's checkpoint, and the one-line
error for a checkpoint of another configuration."""

import csv
import os
import pathlib
import subprocess
import sys

import gin
import numpy as np
import pytest
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEBUG = [str(ROOT / "gin_configs" / "base.gin"), str(ROOT / "gin_configs" / "debug.gin")]
LENGTHS = (13, 9, 21)  # stored CartPole episodes (reset entry included)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def cartpole_episode(length, rng):
    actions = np.eye(2, dtype=np.float32)[rng.integers(0, 2, length)]
    actions[0] = 0
    return {
        "vector": rng.normal(size=(length, 4)).astype(np.float32),
        "action": actions,
        "reward": np.r_[0.0, np.ones(length - 1)].astype(np.float32) * rng.uniform(),
        "is_first": np.arange(length) == 0,
        "is_last": np.arange(length) == length - 1,
        "is_terminal": np.arange(length) == length - 1,
    }


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as launch.train leaves one (config.gin, a checkpoint,
    stored episodes) for CartPole at debug.gin sizes, made without training."""
    import tensorflow as tf

    from tempo import configurables
    from tempo.replay import Replay

    configurables.parse_config(DEBUG, ["train.task = 'gym_CartPole-v1'"])
    logdir = tmp_path / "run"
    trainer = configurables.build_trainer({"vector": (4,)}, 2, True)
    tf.train.Checkpoint(trainer=trainer).save(str(logdir / "checkpoints" / "ckpt"))
    (logdir / "config.gin").write_text(gin.config_str())
    replay = Replay(logdir / "replay", capacity=1000)
    rng = np.random.default_rng(0)
    episodes = [cartpole_episode(length, rng) for length in LENGTHS]
    for episode in episodes:
        replay.add_episode(episode)
    gin.clear_config()
    return logdir, episodes


def test_the_report_writes_a_plot_per_episode_every_step_and_the_correlations(run_dir, tmp_path):
    from matplotlib import image

    from tempo import configurables
    from tempo.weight_report import CSV_COLUMNS, UNTRAINED, method_title, report

    logdir, episodes = run_dir
    env_config = configurables.run_env_config(str(logdir), [])
    out = tmp_path / "out"
    build = configurables.build_trainer
    result = report(logdir, out, env_config, build, indices=[0, -1], chunk=8, compile=False)
    assert result["episodes"] == [0, 2] and result["title"] == "TEMPO, ckpt-1"
    for index in (0, 2):
        assert image.imread(out / f"episode_{index:04d}.png").shape[0] > 100
    assert not (out / "episode_0001.png").exists()
    with open(out / "steps.csv") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    columns = {name: np.array([float(r[i]) for r in rows[1:]]) for i, name in enumerate(rows[0])}
    assert len(rows) - 1 == LENGTHS[0] + LENGTHS[2]
    np.testing.assert_array_equal(columns["episode"], [0] * LENGTHS[0] + [2] * LENGTHS[2])
    t = np.r_[np.arange(LENGTHS[0]), np.arange(LENGTHS[2])]
    np.testing.assert_array_equal(columns["t"], t)
    np.testing.assert_array_equal(columns["position"], t)  # one is_first per stored episode
    stored = np.r_[episodes[0]["reward"], episodes[2]["reward"]]
    np.testing.assert_allclose(columns["reward"], stored, rtol=1e-5)
    assert ((columns["weight"] >= 0.75) & (columns["weight"] <= 1.25)).all()
    assert columns["weight"].std() > 0 and (columns["kl"] >= 0).all()
    summary = (out / "summary.md").read_text().splitlines()
    last = summary[-1].split("|")
    assert last[1].strip() == "all" and int(last[2]) == len(t)
    expected = scipy.stats.spearmanr(columns["weight"], columns["value"]).statistic
    assert float(last[7]) == pytest.approx(expected, abs=2e-3)  # rho value, from 6-digit CSV
    assert result["correlations"]["value"] == pytest.approx(expected, abs=2e-3)
    assert method_title(False, "x/ckpt-7") == f"{UNTRAINED}, ckpt-7"


def test_a_checkpoint_of_another_configuration_fails_with_one_line(run_dir):
    logdir, _ = run_dir
    cmd = [sys.executable, "-m", "launch.weights", f"--logdir={logdir}"]
    cmd += ["--gin_param=RSSM.deter = 20"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    errors = out.stderr.splitlines()  # nothing but the error (TensorFlow's logs held back)
    assert len(errors) == 1, out.stderr[-2000:]
    assert errors[0].startswith(f"error: The checkpoint {logdir / 'checkpoints' / 'ckpt-1'}")
    assert "incompatible tensor" in errors[0]
    assert "config.gin" in errors[0] and "--checkpoint" in errors[0]
    assert not (logdir / "weights").exists()


@pytest.mark.slow
def test_on_a_trained_run_the_training_logs_and_the_tool_show_the_weights(tmp_path):
    """End to end (minutes on a loaded CPU): a tiny TEMPO run logs the weight
    analysis to metrics.jsonl and TensorBoard, and launch.weights reads it."""
    import tensorflow as tf

    from tempo.logging import read_records

    logdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.train", f"--logdir={logdir}"]
    cmd += [f"--gin_file={path}" for path in DEBUG]
    cmd += ["--task=gym_CartPole-v1", "--steps=60", "--gin_param=train.export = False"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    first = read_records(logdir / "metrics.jsonl")[0]
    assert {"weights/spearman_value", "weights/spearman_position"} <= set(first)
    tags = set()
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags |= {value.tag for value in event.summary.value}
    assert {"weights/meta_weight", "weights/extremes"} <= tags
    cmd = [sys.executable, "-m", "launch.weights", f"--logdir={logdir}", "--episodes=2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TEMPO, ckpt-" in out.stdout
    assert len(list((logdir / "weights").glob("episode_*.png"))) == 2
    assert (logdir / "weights" / "steps.csv").exists()


def test_a_pixel_episode_plot_shows_the_frames_at_the_extreme_weights(tmp_path):
    from matplotlib import image

    from tempo.weight_report import plot_episode

    rng = np.random.default_rng(0)
    table = {key: rng.normal(size=30) for key in ("weight", "reward", "value", "kl", "recon")}
    table["position"] = np.arange(30)
    frames = np.zeros((30, 16, 16, 3), np.uint8)
    frames[np.argsort(table["weight"])[[0, 1, -2, -1]], ..., 0] = 255  # extremes pure red
    plot_episode(tmp_path / "with.png", table, "pixels", frames, k=2)
    plot_episode(tmp_path / "without.png", table, "vectors", None, k=2)
    red = lambda png: np.all(image.imread(png)[..., :3] == [1, 0, 0], axis=-1).mean()
    assert red(tmp_path / "without.png") == 0
    # Two strips of two frames each, every shown frame red: a sizeable part of the figure.
    assert red(tmp_path / "with.png") > 0.01
