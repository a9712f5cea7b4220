"""End to end: launch.train on tiny configs, the logdir it leaves, export, resume."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from support import once_per_session

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEBUG = ["--gin_file", "gin_configs/base.gin", "--gin_file", "gin_configs/debug.gin"]
# For runs whose tests inspect neither: no video or weight analyses (their
# tracing took a sixth of a debug CartPole run; the shared CartPole run covers them).
NO_VIDEO = ["--gin_param=train.video_every = 0"]
NO_EXPORT = ["--gin_param=train.export = False"]


def launch(logdir, *args, wait=True, timeout=600):
    cmd = [sys.executable, "-m", "launch.train", f"--logdir={logdir}", *DEBUG, *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


# Acts with the exported policy in a process that never imports tempo.
POLICY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import gymnasium as gym
    path = sys.argv[1]
    spec = json.load(open(path + "/policy_spec.json"))
    policy = tf.saved_model.load(path)
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=0)
    state = policy.initial_state(tf.constant(1))
    first, total, steps = True, 0.0, 0
    while steps < 50:
        batch = {
            "vector": tf.constant(obs[None], tf.float32),
            "reward": tf.zeros([1], tf.float32),
            "is_first": tf.constant([first]),
            "is_last": tf.constant([False]),
            "is_terminal": tf.constant([False]),
        }
        action, state = policy.step(batch, state)
        action = action.numpy()[0]
        assert action.shape == (spec["action_size"],) and action.sum() == 1.0
        obs, reward, term, trunc, _ = env.step(int(action.argmax()))
        total, steps, first = total + reward, steps + 1, False
        if term or trunc:
            obs, _ = env.reset()
            first = True
    print("TEMPO_IMPORTED", "tempo" in sys.modules, "STEPS", steps)
    """
)


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    """A finished 200-frame CartPole TEMPO run with an export: (logdir, stdout).

    Made once per test session (`support.once_per_session`), whichever
    pytest-xdist worker asks first: the tests that use it only read it or work
    on a copy (`copy_of`). (As a module-scoped fixture on one worker it was made
    twice a session: a worker tears module fixtures down whenever its next test
    comes from another module.)"""

    def make(stdout):
        logdir = stdout.parent / "cartpole_run"
        shutil.rmtree(logdir, ignore_errors=True)  # a failed attempt's leftovers
        args = ["--task=gym_CartPole-v1", "--steps=200", "--seed=1"]
        stdout.write_text(launch(logdir, *args, "--gin_param=train.eval_every = 100"))

    stdout = once_per_session(tmp_path_factory, "cartpole_run.stdout", make)
    return stdout.parent / "cartpole_run", stdout.read_text()


def copy_of(run, tmp_path):
    """A copy of a shared run's logdir that a test may change (the checkpoint
    index holds relative paths, so the copy restores on its own)."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def test_gym_run_leaves_a_complete_logdir_and_a_standalone_policy(cartpole_run, tmp_path):
    logdir, out = cartpole_run
    assert (logdir / "config.gin").read_text().count("train.task = 'gym_CartPole-v1'") == 1
    # The end: one line with the final evaluation, the outputs and how to evaluate.
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["ended"] == "finished" and summary["step"] == 200
    progress = [line for line in out.splitlines() if line.startswith("frame ")]
    assert progress[-1].startswith("frame 200/200  ") and len(progress[-1]) <= 120
    assert f"  eval {summary['eval_return']:.4g}  model_loss " in progress[-1]
    assert out.splitlines()[-1] == (
        f"Finished 200 env frames; final eval return {summary['eval_return']:.4g}; outputs in "
        f"{logdir} (policy in saved_model/). Evaluate: "
        f"{os.path.relpath(sys.executable)} -m launch.evaluate --logdir={logdir}"
    )
    operative = (logdir / "operative_config.gin").read_text()
    assert (
        "RSSM.deter = 16" in operative and "BilevelTrainer.hypergrad_sign = 'released'" in operative
    )
    assert list(logdir.glob("events.out.tfevents.*")) or list(logdir.rglob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert lines and lines[-1]["step"] == 200
    keys = set().union(*lines)
    for key in (
        "train/model_loss",
        "train/upper_loss",
        "train/meta_weight_mean",
        "weights/spearman_value",  # the weight analysis (tempo/weight_summaries.py)
        "fps",
        "train/return",
        "eval/return",
    ):
        assert key in keys, key
    assert (logdir / "checkpoints" / "checkpoint").exists()
    assert len(list((logdir / "replay").glob("*.npz"))) >= 1
    spec = json.loads((logdir / "saved_model" / "policy_spec.json").read_text())
    assert spec["observation"]["vector"]["shape"] == [4] and spec["discrete"]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_USE_LEGACY_KERAS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", POLICY_SCRIPT, str(logdir / "saved_model")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TEMPO_IMPORTED False STEPS 50" in out.stdout


def test_dmc_pixels_dreamerv2_run(tmp_path):
    logdir = tmp_path / "dmc"
    launch(
        logdir,
        "--task=dmc_cartpole_swingup",
        "--steps=120",
        "--meta=false",
        "--gin_param=train.obs_type = 'pixels'",
        "--gin_param=train.time_limit = 30",
    )
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    assert "train/image_loss" in keys and "train/upper_loss" not in keys
    assert lines[-1]["step"] == 120
    spec = json.loads((logdir / "saved_model" / "policy_spec.json").read_text())
    assert spec["observation"]["image"] == {"shape": [64, 64, 3], "dtype": "uint8"}
    assert (logdir / "checkpoints" / "checkpoint").exists()
    import tensorflow as tf

    # The continuous-action export: its spec, its serving signature, and acting.
    assert spec["discrete"] is False and spec["action_size"] == 1
    assert spec["env"]["task"] == "dmc_cartpole_swingup"
    assert spec["env"]["obs_type"] == "pixels" and spec["env"]["time_limit"] == 30
    assert spec["env"]["action_repeat"] == 2
    policy = tf.saved_model.load(str(logdir / "saved_model"))
    initial = policy.initial_state(tf.constant(1))
    assert spec["state"] == {k: list(v.shape[1:]) for k, v in initial.items()}
    serving = policy.signatures["serving_default"]
    inputs = set(serving.structured_input_signature[1])
    assert inputs == {*spec["observation"], *(f"state_{k}" for k in spec["state"])}
    assert set(serving.structured_outputs) == {"action", *(f"state_{k}" for k in spec["state"])}
    from tempo.envs import make_env

    env = make_env("dmc_cartpole_swingup", seed=3, obs_type="pixels", time_limit=30)
    obs, state = env.reset(), initial
    for _ in range(4):
        batch = {k: tf.constant(np.asarray(obs[k])[None]) for k in spec["observation"]}
        action, next_state = policy.step(batch, state)
        again, _ = policy.step(batch, state)  # the exported policy is deterministic
        np.testing.assert_array_equal(action, again)
        served = serving(**batch, **{f"state_{k}": v for k, v in state.items()})
        np.testing.assert_allclose(served["action"], action, rtol=1e-6)
        assert action.shape == (1, 1) and -1.0 <= float(action[0, 0]) <= 1.0
        obs, state = env.step(action.numpy()[0]), next_state
    env.close()

    tags = {
        value.tag
        for path in logdir.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }
    assert "openl_image" in tags and "train/model_loss" in tags


# In `make test-all`: the SIGKILL inside a checkpoint write below asserts all of
# this (a resume at the last registered checkpoint, the episodes kept) for a
# kill at the hardest moment.
@pytest.mark.slow
def test_sigkill_then_resume_at_the_checkpointed_step(tmp_path):
    logdir = tmp_path / "kill"
    args = ["--task=gym_CartPole-v1", "--meta=false", "--gin_param=train.checkpoint_every = 40"]
    proc = launch(logdir, *args, *NO_VIDEO, "--steps=100000", wait=False)
    index = logdir / "checkpoints" / "checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and not index.exists():
        time.sleep(0.5)
    assert index.exists(), "no checkpoint written"
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    episodes = sorted(p.name for p in (logdir / "replay").glob("*.npz"))
    saved = int(index.read_text().split('"')[1].rsplit("-", 1)[1])
    assert saved > 0

    resume = ["--task=gym_CartPole-v1", "--meta=false", *NO_VIDEO, *NO_EXPORT]
    out = launch(logdir, *resume, f"--steps={saved + 40}")
    assert f"Resumed from {logdir / 'checkpoints'}" in out
    assert f"at env frame {saved}." in out
    assert set(episodes) <= {p.name for p in (logdir / "replay").glob("*.npz")}
    last = json.loads((logdir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == saved + 40


def test_sigterm_saves_a_checkpoint_flushes_the_logs_and_the_run_resumes_there(tmp_path):
    """SIGTERM (and SIGINT, the same handler) ends the run cleanly: a checkpoint
    at the frame it stopped at (the only one: periodic ones are off), the logs
    written up to that frame, exit code 0; the next run resumes there."""
    logdir = tmp_path / "term"
    args = ["--task=gym_CartPole-v1", "--meta=false", *NO_VIDEO]
    args += ["--gin_param=train.checkpoint_every = 1000000"]
    proc = launch(logdir, *args, "--steps=100000", wait=False)
    metrics = logdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and "train/model_loss" not in (
        metrics.read_text() if metrics.exists() else ""
    ):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    stopped = [line for line in out.splitlines() if line.startswith("Stopped by signal")]
    assert len(stopped) == 1 and stopped[0] == out.splitlines()[-1], out[-3000:]
    frame = int(stopped[0].split("env frame ")[1].split(";")[0].replace(",", ""))
    index = (logdir / "checkpoints" / "checkpoint").read_text()
    assert int(index.split('"')[1].rsplit("-", 1)[1]) == frame
    # The end line names the checkpoint and the command that resumes: this one.
    checkpoint = logdir / "checkpoints" / f"ckpt-{frame}"
    command = shlex.join(
        ["-m", "launch.train", f"--logdir={logdir}", *DEBUG, *args, "--steps=100000"]
    )
    assert f"checkpoint saved (ckpt-{frame}). Resume with the same command: " in stopped[0]
    assert stopped[0].endswith(command), stopped[0]
    summary = json.loads((logdir / "summary.json").read_text())
    assert (summary["ended"], summary["step"], summary["checkpoint"]) == (
        "stopped",
        frame,
        str(checkpoint),
    )
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == frame
    assert not (logdir / "saved_model").exists()  # a stopped run is not finished

    out = launch(logdir, *args, *NO_EXPORT, f"--steps={frame + 20}")
    assert f"at env frame {frame}." in out
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] == frame + 20
    assert out.splitlines()[-1].startswith(f"Finished {frame + 20:,} env frames; ")


def test_unknown_task_fails_with_a_clear_message(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        f"--logdir={tmp_path / 'x'}",
        *DEBUG,
        "--task=dmc_nowhere_run",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "nowhere" in (out.stdout + out.stderr)


@pytest.mark.parametrize(
    "binding, expected",
    [
        ("RSSM.deterr = 3", "parameter named 'deterr'. In bindings string line 1"),
        ("train.batch_size = 'sixteen'", "train.batch_size = 'sixteen' must be int, not str."),
        ("train.task = 'foo_bar'", "Unknown suite 'foo' in task 'foo_bar'"),
        ("BilevelTrainer.hypergrad_sign = 'up'", "choose one of ('released', 'lookahead')"),
    ],
)
def test_bad_configuration_fails_with_one_line_and_writes_nothing(tmp_path, binding, expected):
    cmd = [
        sys.executable,
        "-m",
        "launch.train",
        f"--logdir={tmp_path / 'y'}",
        *DEBUG,
        f"--gin_param={binding}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    errors = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "y").exists()


def test_evaluate_and_export_launchers(cartpole_run, tmp_path):
    logdir = copy_of(cartpole_run[0], tmp_path)
    shutil.rmtree(logdir / "saved_model")  # launch.export makes it again from the checkpoint
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", *a], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    out = run("launch.export", f"--logdir={logdir}")
    assert out.returncode == 0, out.stderr[-2000:]
    spec = json.loads((logdir / "saved_model" / "policy_spec.json").read_text())
    assert spec["env"]["task"] == "gym_CartPole-v1"
    results = []
    # The export acts on the latent's mode; the checkpoint does too when told so.
    mode = "--gin_param=train.eval_state_mean = True"
    for source in (f"--logdir={logdir}", f"--saved_model={logdir / 'saved_model'}"):
        out = run(
            "launch.evaluate", source, "--episodes=2", *([mode] if "logdir" in source else [])
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["episodes"] == 2 and len(result["returns"]) == 2
        results.append(result["returns"])
    # The checkpoint and the SavedModel act identically (same mode actions, same seed).
    assert results[0] == results[1]
    out = run("launch.evaluate", f"--logdir={tmp_path / 'nothing'}")
    assert out.returncode != 0 and "config.gin" in out.stderr


def tiny_run(logdir, task, meta=False, **overrides):
    """An in-process run of `tempo.run.train` with a tiny trainer: seconds. A
    DreamerV2 one unless `meta`: the loop is the same, and its update traces in
    a third of TEMPO's time (the shared CartPole run runs the loop with TEMPO)."""
    from support import tiny_trainer

    from tempo.run import train

    settings = dict(
        steps=1000,
        prefill=20,
        pretrain=0,
        train_every=5,
        batch_size=2,
        batch_length=4,
        eval_every=0,
        log_every=10,
        checkpoint_every=10,
        # No videos or weight analyses (their tracing is most of a short run's
        # time): the shared CartPole run's records cover them.
        video_every=0,
        export=False,
        trainer_fn=lambda shapes, size, discrete, seed: tiny_trainer(
            shapes, size, discrete, seed=seed, meta=meta
        ),
    )
    return train(logdir, task=task, **{**settings, **overrides})


def test_parallel_env_workers_feed_one_learner(tmp_path):
    logdir = tmp_path / "par"
    summary = tiny_run(logdir, "gym_CartPole-v1", steps=120, num_envs=2, parallel_envs=True)
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert summary["step"] == lines[-1]["step"] == 120 and lines[-1]["updates"] > 0
    assert not (logdir / "saved_model").exists()  # export=False: no export
    # Both workers' episodes reach the replay, each one complete and contiguous.
    files = sorted((logdir / "replay").glob("*.npz"))
    assert len(files) >= 2
    for path in files:
        with np.load(path) as episode:
            assert episode["is_first"][0] and episode["is_last"][-1]
            assert episode["is_first"].sum() == 1 and episode["is_last"].sum() == 1


def test_evaluations_follow_the_released_grid_and_the_budget(tmp_path):
    """eval_every 50 after a prefill of 20 frames: evaluations at the loop's first
    frame and every 50 frames after it (the released code's grid), and at the
    budget; a resumed run continues the grid (the evaluation at the old budget
    does not shift it); `final_eval=False` leaves the budget out, and a
    finished run asked for it again adds only that."""
    from tempo.logging import read_records

    logdir = tmp_path / "evals"
    settings = dict(eval_every=50, eval_episodes=1, log_every=1000)

    def evals():
        records = read_records(logdir / "metrics.jsonl")
        return {r["step"]: r["eval/return"] for r in records if "eval/return" in r}

    assert tiny_run(logdir, "gym_CartPole-v1", steps=130, **settings)["step"] == 130
    assert list(evals()) == [20, 70, 120, 130]
    tiny_run(logdir, "gym_CartPole-v1", steps=200, final_eval=False, **settings)
    assert list(evals()) == [20, 70, 120, 130, 170]
    summary = tiny_run(logdir, "gym_CartPole-v1", steps=200, **settings)
    assert list(evals()) == [20, 70, 120, 130, 170, 200]
    assert summary["eval_return"] == evals()[200] and summary["step"] == 200


def test_episode_end_frames_read_from_the_replay_match_the_step_counter(tmp_path):
    """launch.plot dates episodes from the replay's files; the reset entry that
    opens each file is not an agent step, so the frame at an episode's end is
    the count of the other entries up to it (CartPole: every episode rewarded)."""
    from tempo import plotting
    from tempo.replay import episode_files_in_order

    logdir = tmp_path / "frames"
    tiny_run(logdir, "gym_CartPole-v1", steps=150, log_every=50)
    ends, steps = [], 0
    for path, _ in episode_files_in_order(logdir / "replay"):
        with np.load(path) as episode:
            assert episode["is_first"][0] and not episode["is_first"][1:].any()
            steps += int(np.sum(~episode["is_first"]))
        ends.append(steps)
    assert steps <= 150 and len(ends) >= 3
    after_prefill = [end for end, start in zip(ends, [0, *ends]) if start >= 20]
    first, rewarded, episodes = plotting.rewarded_episodes(logdir, {"train.prefill": 20})
    assert first == after_prefill[0] and rewarded == episodes == len(after_prefill)


def test_a_failing_agent_build_leaves_no_env_worker_process(tmp_path):
    import multiprocessing

    def broken_trainer(shapes, size, discrete, seed):
        raise RuntimeError("out of memory while building")

    before = set(multiprocessing.active_children())
    # The traceback keeps train()'s frame alive (as a launcher printing it does),
    # so the workers must have been closed, not merely garbage collected.
    with pytest.raises(RuntimeError, match="out of memory") as info:
        tiny_run(
            tmp_path / "x",
            "gym_CartPole-v1",
            num_envs=2,
            parallel_envs=True,
            trainer_fn=broken_trainer,
        )
    assert info.traceback and set(multiprocessing.active_children()) - before == set()
    assert not (tmp_path / "x").exists()


def test_consecutive_non_finite_updates_stop_the_run_and_keep_the_last_checkpoint(tmp_path):
    """In process: an environment whose rewards are NaN makes every update non-finite."""
    import gymnasium
    import numpy as np
    import tensorflow as tf

    from tempo.errors import NonFiniteError

    class NanReward(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gymnasium.spaces.Discrete(2)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return np.zeros(3, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.full(3, 0.01 * self.t, np.float32), float("nan"), False, self.t >= 10, {}

    gymnasium.register("TempoNanReward-v0", entry_point=NanReward)
    logdir = tmp_path / "nan"
    with pytest.raises(NonFiniteError, match="6 consecutive updates"):
        tiny_run(logdir, "gym_TempoNanReward-v0", max_nonfinite_updates=6)
    latest = tf.train.latest_checkpoint(str(logdir / "checkpoints"))
    saved_step = int(latest.rsplit("-", 1)[1])
    lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert saved_step < 20 + 6 * 5  # no checkpoint written at the failing step
    assert all(line.get("train/update_skipped") in (None, 1.0) for line in lines)
    # The checkpoint holds the untouched (initial, finite) world model.
    reader = tf.train.load_checkpoint(latest)
    values = [
        reader.get_tensor(name)
        for name, _ in tf.train.list_variables(latest)
        if "world_model" in name and "OPTIMIZER" not in name and name.endswith("VARIABLE_VALUE")
    ]
    assert values and all(np.isfinite(v).all() for v in values)


def test_resuming_with_a_mismatched_config_fails_clearly_and_changes_nothing(
    cartpole_run, tmp_path
):
    logdir = copy_of(cartpole_run[0], tmp_path)
    before = {
        p: p.read_bytes() for p in logdir.rglob("*") if p.is_file() and "events" not in p.name
    }
    cmd = [sys.executable, "-m", "launch.train", f"--logdir={logdir}", *DEBUG]
    cmd += ["--task=gym_CartPole-v1", "--steps=400", "--gin_param=RSSM.deter = 20"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    errors = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: The checkpoint")
    assert "incompatible tensor with shape (144, 16)" in errors[0] and "(148, 16)" in errors[0]
    after = {p: p.read_bytes() for p in logdir.rglob("*") if p.is_file() and "events" not in p.name}
    assert after == before


def file_bytes(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.mark.parametrize("at", ["periodic", "final"])
def test_failing_checkpoint_write_stops_the_run_with_earlier_checkpoints_intact(
    tmp_path, monkeypatch, at
):
    """A writer that fails like a full disk: at a periodic save (the second one of
    a run), or at the final save of a resumed run that saves nothing before it."""
    import tensorflow as tf

    from tempo.errors import CheckpointWriteError

    logdir, ckpt_dir = tmp_path / "ckfail", tmp_path / "ckfail" / "checkpoints"
    if at == "final":
        tiny_run(logdir, "gym_CartPole-v1", steps=60)
    real_write, seen = tf.train.Checkpoint._write, {"calls": 0}
    fail_from = 2 if at == "periodic" else 1

    def failing_write(self, prefix, options=None):
        seen["calls"] += 1
        if seen["calls"] < fail_from:
            return real_write(self, prefix, options=options)
        seen["before"] = file_bytes(ckpt_dir)
        (ckpt_dir / "ckpt-partial.data-00000-of-00001").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.Checkpoint, "_write", failing_write)
    settings = dict(steps=1000, checkpoint_every=40)
    if at == "final":
        settings = dict(steps=120, checkpoint_every=10**6)
    with pytest.raises(CheckpointWriteError) as info:
        tiny_run(logdir, "gym_CartPole-v1", **settings)
    message = str(info.value)
    assert "No space left on device" in message and "earlier checkpoints are intact" in message
    assert seen["calls"] == fail_from  # the failed write is not retried on the way out
    after = file_bytes(ckpt_dir)
    assert {k: v for k, v in after.items() if "partial" not in k} == seen["before"]
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    assert latest in message
    if at == "final":  # the logs were written before the error surfaced
        assert json.loads((logdir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 120
    if at == "periodic":  # (resuming works alike after either failure)
        monkeypatch.setattr(tf.train.Checkpoint, "_write", real_write)
        summary = tiny_run(logdir, "gym_CartPole-v1", steps=200, checkpoint_every=40)
        assert summary["step"] == 200  # resumed from the intact checkpoint and finished


def test_failing_episode_write_stops_the_run_and_keeps_earlier_files(tmp_path, monkeypatch):
    import errno

    import numpy as np
    import tensorflow as tf

    from tempo.replay import ReplayWriteError

    real_savez, seen = np.savez_compressed, {"calls": 0}
    replay_dir = tmp_path / "epfail" / "replay"

    def failing_savez(file, **arrays):
        seen["calls"] += 1
        if seen["calls"] <= 3:
            return real_savez(file, **arrays)
        # The episode's temporary file is open at this point; it must not survive.
        seen["before"] = {k: v for k, v in file_bytes(replay_dir).items() if "tmp" not in k}
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", failing_savez)
    with pytest.raises(ReplayWriteError, match="No space left on device.*saved earlier are intact"):
        tiny_run(tmp_path / "epfail", "gym_CartPole-v1")
    assert file_bytes(replay_dir) == seen["before"] and len(seen["before"]) == 3
    # The run stopped cleanly: a checkpoint at the failing step that restores.
    latest = tf.train.latest_checkpoint(str(tmp_path / "epfail" / "checkpoints"))
    assert latest is not None
    monkeypatch.setattr(np, "savez_compressed", real_savez)
    summary = tiny_run(
        tmp_path / "epfail", "gym_CartPole-v1", steps=int(latest.split("-")[-1]) + 20
    )
    assert summary["step"] == int(latest.split("-")[-1]) + 20


# Runs launch.train but SIGKILLs itself inside the N-th checkpoint or episode
# write: after the checkpoint's files are written but before it is registered
# ('checkpoint'), halfway through its files ('checkpoint_partial'), or with an
# episode's temporary file half written ('episode').
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import tempo
    import numpy as np
    import tensorflow as tf
    from absl import app
    from launch import train as launcher

    point, after = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_write = tf.train.Checkpoint._write

    def write(self, prefix, options=None):
        if point.startswith("checkpoint"):
            calls["n"] += 1
            if calls["n"] > after:
                if point == "checkpoint":
                    real_write(self, prefix, options=tf.train.CheckpointOptions())
                else:
                    open(prefix + ".index", "wb").write(b"\\x00" * 7)
                die()
        return real_write(self, prefix, options=options)

    real_savez = np.savez_compressed

    def savez(file, **arrays):
        if point == "episode":
            calls["n"] += 1
            if calls["n"] > after:
                file.write(b"PK\\x03\\x04 half an episode")
                file.flush()
                die()
        return real_savez(file, **arrays)

    tf.train.Checkpoint._write = write
    np.savez_compressed = savez
    sys.argv = ["train", *sys.argv[3:]]
    app.run(launcher.main)
    """
)


def latest_step(logdir) -> int:
    index = logdir / "checkpoints" / "checkpoint"
    return int(index.read_text().split('"')[1].rsplit("-", 1)[1])


@pytest.mark.parametrize(
    "point, after",
    [
        pytest.param("checkpoint", 1, marks=pytest.mark.slow),
        ("checkpoint_partial", 1),
        pytest.param("episode", 4, marks=pytest.mark.slow),  # atomic writes: test_replay too
    ],
)
def test_sigkill_inside_a_write_loses_only_work_since_the_last_checkpoint(tmp_path, point, after):
    logdir = tmp_path / point
    args = [f"--logdir={logdir}", *DEBUG, "--task=gym_CartPole-v1", "--meta=false"]
    args += ["--steps=100000", "--gin_param=train.checkpoint_every = 40"]
    args += [*NO_EXPORT, *NO_VIDEO]
    cmd = [sys.executable, "-c", KILL_SCRIPT, point, str(after), *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stdout[-2000:] + out.stderr[-2000:]
    replay = logdir / "replay"
    episodes = {p.name: p.read_bytes() for p in replay.glob("*.npz")}
    leftovers = list(replay.glob(".*.tmp"))
    if point == "episode":
        assert len(episodes) == after and len(leftovers) == 1  # the half-written one
    else:
        # Only the first checkpoint is registered; the killed one's files lie unused.
        state = (logdir / "checkpoints" / "checkpoint").read_text()
        assert state.count("all_model_checkpoint_paths") == 1
        indexes = sorted(int(p.name[5:-6]) for p in (logdir / "checkpoints").glob("ckpt-*.index"))
        assert indexes == [latest_step(logdir), indexes[-1]] and indexes[-1] > indexes[0]
    saved = latest_step(logdir) if (logdir / "checkpoints" / "checkpoint").exists() else 0

    resume = ["--task=gym_CartPole-v1", "--meta=false", *NO_VIDEO, *NO_EXPORT]
    out = launch(logdir, *resume, f"--steps={saved + 60}")
    if saved:
        assert f"Resumed from {logdir / 'checkpoints'}" in out and f"at env frame {saved}." in out
    after_restart = {p.name: p.read_bytes() for p in replay.glob("*.npz")}
    assert all(after_restart[name] == data for name, data in episodes.items())
    assert json.loads((logdir / "metrics.jsonl").read_text().splitlines()[-1])["step"] == saved + 60
    assert latest_step(logdir) == saved + 60
