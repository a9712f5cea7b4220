"""Mixed precision: a debug update under mixed_bfloat16 is finite and close to float32."""

import numpy as np
import pytest
import tensorflow as tf
from support import functions_run_eagerly, random_batch, tiny_trainer

SHAPES = {"image": (64, 64, 1), "vector": (3,)}
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2% per op); a
# dozen layers forward accumulate ~1%, so losses get 5%. Gradients go through
# twice as many 16-bit ops: their norms get 20%, and the step each network takes
# (Adam: about lr * sign(gradient) on the first update) must point the same way
# (cosine > 0.9; random directions would give ~0).
LOSS_RTOL, NORM_RTOL, MIN_COSINE = 0.05, 0.2, 0.9


def _update(precision):
    trainer = tiny_trainer(SHAPES, discrete=True, meta=True, seed=1, precision=precision)
    nets = {
        "world_model": trainer.world_model,
        "meta_weighter": trainer.meta_weighter,
        "actor": trainer.behavior.actor,
        "critic": trainer.behavior.critic,
    }
    before = {k: [v.numpy() for v in n.trainable_variables] for k, n in nets.items()}
    data = random_batch(SHAPES, 3, True, batch=3, length=6, terminal_at=3)
    _, metrics = trainer.train(data, trainer.initial_state(3))
    steps = {
        k: np.concatenate(
            [(v.numpy() - b).ravel() for v, b in zip(n.trainable_variables, before[k])]
        )
        for k, n in nets.items()
    }
    return trainer, {k: float(v) for k, v in metrics.items()}, steps


@pytest.fixture(scope="module")
def runs():
    """One update in each precision, run eagerly: the tests compare numbers and
    dtypes, which eager execution computes with the ops the traced update runs
    (tracing two updates took four fifths of this fixture's time)."""
    with functions_run_eagerly():
        return _update("float32"), _update("mixed_bfloat16")


def test_bfloat16_networks_compute_in_16_bits_and_keep_float32_variables(runs):
    _, (trainer, _, _) = runs
    assert trainer.world_model.rssm.compute_dtype == "bfloat16"
    assert trainer.world_model.encoder._convs[0].compute_dtype == "bfloat16"
    assert trainer.behavior.actor.mlp._dense[0].compute_dtype == "bfloat16"
    assert trainer.value_norm.compute_dtype == "float32"
    assert all(v.dtype == tf.float32 for v in trainer.world_model.variables)
    # The policy went to the constructors; the process-wide one is untouched.
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_bfloat16_update_is_finite_and_close_to_float32(runs):
    (_, want, want_steps), (_, got, got_steps) = runs
    assert sorted(want) == sorted(got)
    assert all(np.isfinite(v) for v in got.values()), got
    assert got["update_skipped"] == 0.0 and got["behavior_skipped"] == 0.0
    for key in want:
        if key.endswith("_loss") or key in ("kl", "actor_entropy", "meta_weight_mean"):
            assert got[key] == pytest.approx(want[key], rel=LOSS_RTOL, abs=1e-2), key
        elif key == "model_grad_norm":
            # Dominated by the last transposed convolution's bias, whose gradient
            # sums one residual per pixel (64 x 64 x 18 terms) in bfloat16: its
            # norm moved by 65% here while every step's direction agrees (cosine
            # check below). Only the order of magnitude is comparable.
            assert 1 / 3 < got[key] / want[key] < 3, (key, got[key], want[key])
        elif key.endswith("_grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=NORM_RTOL), key
    for name, step in want_steps.items():
        other = got_steps[name]
        cosine = step @ other / (np.linalg.norm(step) * np.linalg.norm(other))
        assert cosine > MIN_COSINE, (name, cosine)


def test_float16_loss_scale_halves_on_overflow_then_updates_apply():
    """A scale of 2^17 overflows float16 on these batches (updates applied from
    2^12 on when this test was written): an overflowing update is skipped (no
    variable moves) and halves the scale; halving continues until updates apply,
    and then the scale stays put (growth interval 2000)."""
    trainer = tiny_trainer(SHAPES, discrete=True, meta=True, seed=1, precision="mixed_float16")
    assert trainer.world_model.rssm.compute_dtype == "float16"
    trainer.build()
    trainer.loss_scale.scale.assign(2.0**17)
    scale = 2.0**17
    state, history = trainer.initial_state(3), []
    weights = [v.numpy().copy() for v in trainer.world_model.trainable_variables]
    for seed in range(7):
        data = random_batch(SHAPES, 3, True, batch=3, length=6, terminal_at=3, seed=seed)
        state, metrics = trainer.train(data, state)
        history.append({k: float(v) for k, v in metrics.items()})
        if seed == 0:  # the overflow: skipped, nothing moved
            assert history[0]["update_skipped"] == 1.0
            for before, var in zip(weights, trainer.world_model.trainable_variables):
                np.testing.assert_array_equal(before, var.numpy())
    for metrics in history:  # a skipped update halves the scale, an applied one keeps it
        skipped = metrics["update_skipped"] or metrics["behavior_skipped"]
        assert metrics["loss_scale"] == (scale / 2 if skipped else scale)
        scale = metrics["loss_scale"]
    applied = [m for m in history if not m["update_skipped"] and not m["behavior_skipped"]]
    assert applied, history
    assert all(np.isfinite(v) for m in applied for v in m.values())
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_loss_scale_doubles_after_its_growth_interval_and_halves_on_overflow():
    from tempo.agent.loss_scale import LossScale

    scale = LossScale(initial=8.0, growth_interval=3)
    seen = []
    for finite in (True, True, True, True, False, True, True, True):
        scale.update(tf.constant(finite))
        seen.append(float(scale.scale))
    # Three finite updates double it; an overflow halves it and restarts the count.
    assert seen == [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 8.0, 16.0]
