"""Data-parallel strategies by name, for `build_trainer.strategy` in gin."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")

# Run in a child process: TensorFlow holds the interpreter lock while it waits
# for the cluster, so no thread of the waiting process itself could act.
_WATCHDOG = """
import os, signal, sys, time
pid, deadline, message = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), sys.argv[3]
while time.monotonic() < deadline:
    time.sleep(0.2)
    if os.getppid() != pid:
        sys.exit(0)
sys.stderr.write(message + "\\n")
sys.stderr.flush()
os.kill(pid, signal.SIGKILL)
"""


def make_strategy(
    name: str = "default",
    devices: tuple[str, ...] | None = None,
    connect_timeout_s: float = 600.0,
) -> tf.distribute.Strategy | None:
    """'default': None (one device, the plain update); 'mirrored': all local GPUs
    (or `devices`); 'multi_worker': every worker's local GPUs, the cluster read
    by TensorFlow from the TF_CONFIG environment variable of each process.

    A multi-worker process whose peers have not all started within
    `connect_timeout_s` is ended with a message that says so (TensorFlow itself
    would wait for them forever); nothing has been written by then."""
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) if devices else None)
    if name == "multi_worker":
        if devices:
            raise ValueError("multi_worker uses every local GPU; devices cannot be chosen.")
        return _multi_worker(connect_timeout_s)
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")


def _multi_worker(connect_timeout_s: float) -> tf.distribute.Strategy:
    config = _tf_config()
    task = config["task"]
    message = (
        f"tempo: {task['type']} {task['index']} could not reach every worker of its cluster "
        f"{config['cluster']} within {connect_timeout_s:g} s (make_strategy.connect_timeout_s), "
        "so it stops. Start the same command on every host that TF_CONFIG lists, each with its "
        "own task index, or allow a longer start-up with --gin_param "
        "'make_strategy.connect_timeout_s = <seconds>'."
    )
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(connect_timeout_s), message],
        stdin=subprocess.DEVNULL,
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        watchdog.kill()
        watchdog.wait()


def _tf_config() -> dict:
    """TF_CONFIG, checked for what a multi-worker run needs."""
    example = (
        'export TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\''
    )
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "make_strategy.name = 'multi_worker' needs the TF_CONFIG environment variable "
            f"naming the cluster and this process's place in it, e.g. {example}"
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        jobs = cluster[task["type"]]
        if not 0 <= int(task["index"]) < len(jobs):
            raise IndexError(f"task index {task['index']} is not one of 0..{len(jobs) - 1}")
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(
            f"TF_CONFIG={raw!r} is not a usable cluster description ({error!r}); "
            f"it must look like {example}"
        ) from error
    return config
