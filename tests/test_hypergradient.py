"""The hypergradient against finite differences of the one-step look-ahead."""

import numpy as np
import pytest
import tensorflow as tf
from support import random_batch, tiny_trainer

from tempo.agent.hypergradient import bilevel_gradients, meta_gradient
from tempo.profiling import upstream_ops

SHAPES = {"image": (64, 64, 1), "vector": (3,)}
# The look-ahead identity dL_up(theta - eta g_low)/dalpha = -eta h holds to first
# order in eta; with pixel log-likelihoods summed over 4096 pixels the neglected
# term is visible (a few %) at eta = 1e-4, and ~1e-4 relative at eta = 1e-6.
ETA = 1e-6


def _lookahead_upper_loss(trainer, data, state, seed, eta):
    """L_up(theta_rep - eta * dL_low/dtheta_rep) at the current meta parameters,
    computed by an independent path: two plain forward passes and one gradient."""
    rep_vars = trainer.world_model.rep_variables
    with tf.GradientTape() as tape:
        lower, _, _ = trainer.losses(data, state, seed)
    grads = tape.gradient(lower, rep_vars)
    saved = [v.numpy() for v in rep_vars]
    for var, grad in zip(rep_vars, grads):
        var.assign_sub(eta * grad)
    _, upper, _ = trainer.losses(data, state, seed)
    for var, value in zip(rep_vars, saved):
        var.assign(value)
    return float(upper)


def _directional_fd(trainer, data, state, seed, direction, eps, eta):
    meta_vars = trainer.meta_weighter.trainable_variables
    saved = [v.numpy() for v in meta_vars]
    values = []
    for sign in (1.0, -1.0):
        for var, value, d in zip(meta_vars, saved, direction):
            var.assign(value + sign * eps * d)
        values.append(_lookahead_upper_loss(trainer, data, state, seed, eta))
    for var, value in zip(meta_vars, saved):
        var.assign(value)
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize("discrete_actions", [True, False])
def test_hypergradient_matches_finite_difference_of_lookahead(float64, discrete_actions):
    # Gaussian latents: their reparameterized samples are exactly differentiable,
    # while straight-through categorical samples are a biased gradient by design.
    trainer = tiny_trainer(
        SHAPES, discrete=discrete_actions, latent_classes=0, sign="lookahead", lookahead_lr=ETA
    )
    raw = random_batch(SHAPES, 3, discrete_actions, batch=2, length=4, seed=1)
    data = trainer.world_model.preprocess({k: tf.constant(v) for k, v in raw.items()})
    state = trainer.initial_state(2)
    seed = tf.constant([3, 4], tf.int32)
    grads = trainer.meta_gradient(raw, state, seed)
    rng = np.random.default_rng(0)
    for _ in range(3):
        direction = [rng.normal(size=v.shape) for v in trainer.meta_weighter.trainable_variables]
        norm = np.sqrt(sum(np.sum(d**2) for d in direction))
        direction = [d / norm for d in direction]
        analytic = sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))
        fd = _directional_fd(trainer, data, state, seed, direction, eps=1e-2, eta=ETA)
        assert abs(analytic) > 1e-12, "degenerate test: zero hypergradient"
        assert abs(fd - analytic) <= 1e-2 * abs(fd), (fd, analytic)


def test_hypergradient_released_is_negative_lookahead_over_eta(float64):
    trainer = tiny_trainer(SHAPES, latent_classes=0, sign="lookahead", lookahead_lr=ETA)
    raw = random_batch(SHAPES, 3, True, batch=2, length=4, seed=2)
    state = trainer.initial_state(2)
    seed = tf.constant([5, 6], tf.int32)
    lookahead = trainer.meta_gradient(raw, state, seed)
    trainer.hypergrad_sign = "released"
    released = trainer.meta_gradient(raw, state, seed)
    for la, rel in zip(lookahead, released):
        np.testing.assert_allclose(rel.numpy(), -la.numpy() / ETA, rtol=1e-12, atol=1e-300)
    assert any(np.abs(r.numpy()).max() > 0 for r in released)


def test_hypergradient_of_quadratic_matches_closed_form(float64):
    """Toy bi-level problem with a closed form: L_low = sum_i w_i(alpha) * c_i(theta)
    where w = alpha (linear), c_i = 0.5 * a_i * theta_i^2; L_up = sum(b * theta).
    Then dL_low/dtheta_i = w_i a_i theta_i, so h_i = a_i theta_i * g_up_i = a_i theta_i b_i."""
    a = tf.constant([1.0, 2.0, -3.0], tf.float64)
    b = tf.constant([0.5, -1.0, 2.0], tf.float64)
    theta = tf.Variable([0.3, -0.7, 1.1], dtype=tf.float64)
    alpha = tf.Variable([1.0, 0.9, 1.2], dtype=tf.float64)

    def losses():
        lower = tf.reduce_sum(alpha * 0.5 * a * theta**2)
        upper = tf.reduce_sum(b * theta)
        return lower, upper, {}

    g_low, g_up, h, _ = bilevel_gradients(losses, [theta], [theta], [alpha])
    np.testing.assert_allclose(g_low[0], (alpha * a * theta).numpy())
    np.testing.assert_allclose(g_up[0], b.numpy())
    np.testing.assert_allclose(h[0], (a * theta * b).numpy())
    np.testing.assert_allclose(meta_gradient(h, "lookahead", 0.1)[0], -0.1 * h[0].numpy())
    with pytest.raises(ValueError, match="hypergradient sign"):
        meta_gradient(h, "upside-down", 0.1)


def _ancestors(tensor: tf.Tensor) -> set[str]:
    """Names of the ops a graph tensor waits for, through data and control edges."""
    return {op.name for op in upstream_ops([tensor.op])}


def test_lower_backward_pass_waits_for_the_upper_one():
    """Run side by side, the two backward passes hold both sets of cotangents at
    once (atari TEMPO's memory peak); the lower gradient of a variable the upper
    loss never reaches (a decoder's, here `head`) must still come after g_up."""
    rep = tf.Variable([0.3, -0.7])
    head = tf.Variable([1.5, 0.5])
    alpha = tf.Variable([1.0, 2.0])
    found = {}

    @tf.function
    def run():
        def losses():
            feature = tf.tanh(rep)
            lower = tf.reduce_sum(alpha * tf.square(head * feature - 1.0))
            upper = tf.reduce_sum(tf.sin(feature))
            return lower, upper, {}

        g_low, g_up, h, _ = bilevel_gradients(losses, [rep, head], [rep], [alpha])
        found["up"] = {g.op.name for g in g_up}
        found["low"] = [_ancestors(g) for g in g_low]
        return g_low, g_up, h

    g_low, g_up, h = run()
    for ancestors in found["low"]:
        assert found["up"] <= ancestors
    # The ordering changes no value: against the same gradients taken eagerly.
    feature = np.tanh([0.3, -0.7])
    residual = np.array([1.5, 0.5]) * feature - 1.0
    np.testing.assert_allclose(g_low[1], 2 * np.array([1.0, 2.0]) * residual * feature, rtol=1e-5)
    np.testing.assert_allclose(g_up[0], np.cos(feature) * (1 - feature**2), rtol=1e-5)
    g_low_rep = 2 * residual * np.array([1.5, 0.5]) * (1 - feature**2)  # per unit of alpha
    np.testing.assert_allclose(h[0], g_low_rep * g_up[0].numpy(), rtol=1e-5)
