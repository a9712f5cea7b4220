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
