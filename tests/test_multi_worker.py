"""Two training processes on this machine under MultiWorkerMirroredStrategy,
talking over the loopback interface: the code path of a multi-host run
(collectives over gRPC, chief and worker logdirs, checkpointing as a collective).

Slow (two processes of about a minute together on 2 cores): `make test-all`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_workers_train_in_lockstep_on_their_own_experience(tmp_path):
    import tensorflow as tf

    logdir = tmp_path / "run"
    cluster = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "launch.train", f"--logdir={logdir}"]
        cmd += ["--gin_file=gin_configs/base.gin", "--gin_file=gin_configs/debug.gin"]
        cmd += ["--task=gym_CartPole-v1", "--steps=200", "--gin_param=train.batch_size = 4"]
        cmd += ["--gin_param=make_strategy.name = 'multi_worker'"]
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        assert "Done: {'step': 200" in out, out[-3000:]
    chief, worker = logdir, logdir / "worker1"
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
