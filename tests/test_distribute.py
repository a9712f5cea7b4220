"""Data parallelism: one update under MirroredStrategy over two logical CPUs
equals the single-device update on the same global batch; the run loop trains
under it and its checkpoint restores into a single-device agent.

The check runs in a fresh process (tests/mirrored_update.py) because the CPU
must be split into logical devices before TensorFlow initializes them.
"""

import json
import os
import subprocess
import sys

import pytest
from support import once_per_session

from tempo.strategy import make_strategy

HERE = os.path.dirname(os.path.abspath(__file__))
# Differences are |a - b| / max(1, |a|). float32 on different shard sizes sums in
# a different order: ~1e-7 relative per op, ~1e-6 after two updates. A wrong
# reduction (local KL mean under free bits, local batch-norm statistics,
# per-shard noise, summed instead of averaged gradients) moves losses and
# gradient norms by far more than 1e-5, and weights by up to a step (1e-4).
TOLERANCE = 1e-5


def script_result(tmp_path_factory, part: str) -> dict:
    """The script's JSON for one `part` (sampling, run, tempo or dreamerv2),
    computed once per test session. Each part runs in its own process (about a
    minute each, the sampling check seconds), so two pytest-xdist workers
    compute different parts at the same time."""

    def compute(out):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        script = os.path.join(HERE, "mirrored_update.py")
        proc = subprocess.run(
            [sys.executable, script, part, "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        out.write_text(proc.stdout.strip().splitlines()[-1])

    path = once_per_session(tmp_path_factory, f"mirrored_update_{part}.json", compute)
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    "mode",
    [
        "tempo",
        # In `make test-all`: what it adds to TEMPO's check (Gaussian latents,
        # truncated-normal actions) is drawn per replica in the sampling check,
        # and the mirrored run loop below trains DreamerV2.
        pytest.param("dreamerv2", marks=pytest.mark.slow),
    ],
)
def test_mirrored_updates_equal_single_device_updates(tmp_path_factory, mode):
    first, second = script_result(tmp_path_factory, mode)[mode]
    print(mode, first, second)
    for run in (first, second):
        assert run["keys_equal"] and run["variables_equal_names"]
        assert run["skipped"] == 0.0
        # Moving mean and variance of the meta-weighter's two hidden and one output
        # batch norms and of the value normalizer.
        assert run["num_values"] > 200 and run["moving_stats_checked"] == 8
    assert first["metrics"] <= TOLERANCE, (first["worst_metric"], first["metrics"])
    assert first["state"] <= TOLERANCE
    assert first["variables"] <= TOLERANCE, (first["worst_variable"], first["variables"])
    # The second update starts from weights that already differ by rounding (and
    # Adam's first steps amplify that): the same checks, 10x looser.
    assert second["metrics"] <= 10 * TOLERANCE, (second["worst_metric"], second["metrics"])
    assert second["state"] <= 10 * TOLERANCE
    assert second["variables"] <= 10 * TOLERANCE, (second["worst_variable"], second["variables"])


def test_run_loop_under_mirrored_strategy_checkpoints_for_a_single_device_agent(
    tmp_path_factory,
):
    run = script_result(tmp_path_factory, "run")["run"]
    assert run["updates"] == 4 and run["restored_step"] == 4, run
    assert run["finite_losses"] and run["exported"], run
    # The single-device agent restored from the mirrored run's checkpoint acts as
    # the policy that run exported from its own variables: the same returns.
    assert run["returns"] == run["exported_returns"], run


@pytest.mark.parametrize("sampler", ["onehot", "normal", "trunc_normal"])
def test_per_replica_draws_are_slices_of_the_whole_batch_draw(tmp_path_factory, sampler):
    draws = script_result(tmp_path_factory, "sampling")["sampling"][sampler]
    assert draws["exact"] <= 1e-6, draws
    assert draws["naive"] > 0.1, draws  # the same seed per shard is not the same noise


def test_strategy_names():
    assert make_strategy("default") is None
    with pytest.raises(ValueError, match="Unknown strategy"):
        make_strategy("tpu")


@pytest.mark.parametrize(
    "tf_config, problem",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "is not a usable cluster description"),
        ('{"cluster": {"worker": ["a:1"]}}', "is not a usable cluster description"),
        (
            '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}',
            "task index 2 is not one of 0..1",
        ),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
            "is not a usable cluster description",
        ),
    ],
)
def test_multi_worker_without_a_usable_tf_config_names_the_fix(monkeypatch, tf_config, problem):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=problem) as caught:
        make_strategy("multi_worker")
    assert '"task": {"type": "worker", "index": 0}' in str(caught.value)  # an example to follow
