"""Two training processes on this machine under MultiWorkerMirroredStrategy,
talking over the loopback interface: the code path of a multi-host run
(collectives over gRPC, chief and worker logdirs, checkpointing as a collective,
a stop and a restart of both, a worker whose peer never comes).

Slow (about three minutes on 2 cores): `make test-all`.
"""

import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(logdir, cluster, index, steps, *params) -> subprocess.Popen:
    config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(config), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "launch.train", f"--logdir={logdir}"]
    cmd += ["--gin_file=gin_configs/base.gin", "--gin_file=gin_configs/debug.gin"]
    cmd += ["--task=gym_CartPole-v1", f"--steps={steps}", "--gin_param=train.batch_size = 4"]
    cmd += ["--gin_param=make_strategy.name = 'multi_worker'"]
    cmd += [f"--gin_param={p}" for p in params]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def logged_frames(metrics: pathlib.Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line]


@pytest.mark.slow
def test_two_workers_train_in_lockstep_stop_together_and_resume(tmp_path):
    import tensorflow as tf

    logdir = tmp_path / "run"
    chief, worker = logdir, logdir / "worker1"
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]

    # A preemption notice to one worker stops both at the same step, each
    # with a checkpoint there (a worker going on alone would wait forever on
    # its next collective update).
    procs = [start_worker(logdir, cluster, i, 300) for i in range(2)]
    deadline = time.monotonic() + 300
    while not any(f >= 160 for f in logged_frames(chief / "metrics.jsonl")):
        assert time.monotonic() < deadline and procs[0].poll() is None, "no training logged"
        time.sleep(0.2)
    procs[0].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    stopped = []
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        match = re.search(r"Stopped by signal at env frame ([\d,]+); checkpoint saved", out)
        assert match, out[-3000:]
        stopped.append(int(match.group(1).replace(",", "")))
    assert stopped[0] == stopped[1] < 300, stopped
    saved = [
        [
            pathlib.Path(p).name
            for p in tf.train.get_checkpoint_state(d / "checkpoints").all_model_checkpoint_paths
        ]
        for d in (chief, worker)
    ]
    assert saved[0] == saved[1] and saved[0][-1] == f"ckpt-{stopped[0]}", saved

    # The other worker killed before its last save: its newest checkpoint is
    # one save older than the chief's. Restarted, both resume from the newest
    # step both hold, and finish the budget.
    state = tf.train.get_checkpoint_state(worker / "checkpoints")
    kept = list(state.all_model_checkpoint_paths[:-1])
    assert kept, (saved, stopped)
    for path in worker.glob(f"checkpoints/ckpt-{stopped[0]}.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(worker / "checkpoints"), kept[-1], kept)
    common = int(kept[-1].rsplit("-", 1)[1])
    assert 0 < common < stopped[0]
    procs = [start_worker(logdir, cluster, i, 300) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert f"ckpt-{common} at env frame {common}." in out, out[-3000:]
        assert "Prefill" not in out, out[-3000:]
        assert "\nFinished 300 env frames; " in out, out[-3000:]

    # Each writes its logs, replay, checkpoint (saving is collective) and export:
    # the chief in --logdir, the other worker in <logdir>/worker1.
    for directory in (chief, worker):
        for path in ("metrics.jsonl", "checkpoints/checkpoint", "saved_model/saved_model.pb"):
            assert (directory / path).exists(), (directory, path)
        assert list((directory / "replay").glob("*.npz")), directory
    # Each worker collected its own episodes (seeded apart), not copies.
    returns = [
        [
            r["train/return"]
            for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
            if "train/return" in r
        ]
        for d in (chief, worker)
    ]
    assert returns[0] != returns[1]
    # Synchronous data parallelism: every network and optimizer variable is
    # equal on both workers; only each agent's exploration random state differs.
    a = tf.train.load_checkpoint(str(chief / "checkpoints"))
    b = tf.train.load_checkpoint(str(worker / "checkpoints"))
    names = sorted(a.get_variable_to_shape_map())
    assert names == sorted(b.get_variable_to_shape_map())
    differ = []
    for name in names:
        x, y = np.asarray(a.get_tensor(name)), np.asarray(b.get_tensor(name))
        if x.dtype.kind in "fiu" and not np.array_equal(x, y):
            differ.append(name)
    assert differ == ["agent/rng/_state_var/.ATTRIBUTES/VARIABLE_VALUE"], differ
    assert any("world_model" in n or "trainer" in n for n in names)
    assert int(a.get_tensor("agent_steps/.ATTRIBUTES/VARIABLE_VALUE")) == 300


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_whose_peer_never_comes_stops_with_a_message(tmp_path, index):
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    start = time.monotonic()
    proc = start_worker(
        tmp_path / "run", cluster, index, 200, "make_strategy.connect_timeout_s = 10"
    )
    out = proc.communicate(timeout=120)[0]
    assert time.monotonic() - start < 90
    assert proc.returncode != 0
    assert f"worker {index} could not reach every worker" in out, out[-3000:]
    assert "make_strategy.connect_timeout_s" in out
    assert not (tmp_path / "run").exists()  # nothing was written


@pytest.mark.slow
def test_a_lost_worker_ends_the_other_with_one_line_and_the_same_commands_resume(tmp_path):
    """Worker 1 killed mid-run (SIGKILL: no chance to say goodbye): the chief's
    next collective fails, and it ends within a minute with one line naming the
    lost worker, its last checkpoint and its command; both restarted with the same
    commands resume from the newest checkpoint they both hold and finish."""
    import tensorflow as tf

    logdir = tmp_path / "run"
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = [start_worker(logdir, cluster, i, 300) for i in range(2)]
    deadline = time.monotonic() + 600
    index = logdir / "checkpoints" / "checkpoint"
    while not (index.exists() and any(f >= 160 for f in logged_frames(logdir / "metrics.jsonl"))):
        assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint"
        time.sleep(0.2)
    procs[1].kill()
    killed = time.monotonic()
    out = procs[0].communicate(timeout=300)[0]
    procs[1].communicate()
    assert time.monotonic() - killed < 60
    assert procs[0].returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    latest = tf.train.latest_checkpoint(str(logdir / "checkpoints"))
    saved = int(latest.rsplit("-", 1)[1])
    assert errors[0].startswith("error: Lost worker 1 of this multi-worker run; "), errors[0]
    assert f"since its last checkpoint ({latest}, env frame {saved}) is lost." in errors[0]
    python = os.path.relpath(sys.executable, ROOT)  # as launch.ending names it
    python = sys.executable if python.startswith("..") else python
    command = shlex.join([python, *procs[0].args[1:]])
    assert errors[0].endswith(f"This worker's command: {command}"), errors[0]
    summary = json.loads((logdir / "summary.json").read_text())
    assert summary["ended"] == "failed" and summary["checkpoint"] == latest

    procs = [start_worker(logdir, cluster, i, 300) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert re.search(r"Resumed from \S+ckpt-(\d+) at env frame \1\.", out), out[-3000:]
        assert "\nFinished 300 env frames; " in out, out[-3000:]
