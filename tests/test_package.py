"""Importing tempo sets TensorFlow's environment defaults, and never overrides a user's."""

import subprocess
import sys

SCRIPT = (
    "import os, tempo; "
    "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], os.environ['TF_USE_LEGACY_KERAS'])"
)


def run(env):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_onednn_and_keras2_are_defaults_a_user_setting_wins():
    base = {"PATH": "/usr/bin:/bin"}
    assert run(base) == ["1", "1"]
    assert run({**base, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_USE_LEGACY_KERAS": "0"}) == ["0", "0"]


def test_no_tensorflow_error_lines_on_a_machine_without_a_gpu_unless_asked_for():
    """TensorFlow's start-up errors about a missing GPU (cuInit, oneDNN's int64
    fallback) are hidden where no NVIDIA driver is; TF_CPP_MIN_LOG_LEVEL wins."""
    import tempo

    script = (
        "import os, tempo, tensorflow as tf; "
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], int(tf.reduce_sum(tf.ones([3], tf.int64))))"
    )
    base = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=base, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    gpu_machine = tempo._nvidia_driver_present()  # (TF_CONFIG is not in `base`)
    assert out.stdout.split() == ["2" if gpu_machine else "3", "3"]
    if not gpu_machine:
        assert not [line for line in out.stderr.splitlines() if line.startswith("E0000")]
    chosen = {**base, "TF_CPP_MIN_LOG_LEVEL": "0"}
    out = subprocess.run([sys.executable, "-c", script], env=chosen, capture_output=True, text=True)
    assert out.stdout.split()[0] == "0"
