"""Pure math: lambda-returns against numpy, balanced KL against hand values."""

import numpy as np
import pytest
import tensorflow as tf

import tempo  # noqa: F401
from tempo.agent.kl import balanced_kl
from tempo.agent.returns import lambda_return
from tempo.agent.world_model import weighted_model_loss


def numpy_lambda_return(reward, value, discount, bootstrap, lam):
    """Straightforward backward recursion, written independently of the TF code."""
    horizon = reward.shape[0]
    returns = np.zeros_like(reward)
    next_return = bootstrap
    for t in range(horizon - 1, -1, -1):
        next_value = value[t + 1] if t + 1 < horizon else bootstrap
        returns[t] = reward[t] + discount[t] * ((1 - lam) * next_value + lam * next_return)
        next_return = returns[t]
    return returns


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_return_matches_numpy(lam):
    rng = np.random.default_rng(0)
    reward, value = rng.normal(size=(2, 7, 5))
    discount = rng.uniform(0.5, 1.0, (7, 5))
    bootstrap = rng.normal(size=5)
    got = lambda_return(*(tf.constant(x) for x in (reward, value, discount, bootstrap)), lam)
    np.testing.assert_allclose(
        got.numpy(), numpy_lambda_return(reward, value, discount, bootstrap, lam), rtol=1e-12
    )


def test_lambda_return_special_cases_by_hand():
    reward = tf.constant([1.0, 2.0])
    value = tf.constant([10.0, 20.0])
    discount = tf.constant([0.5, 0.5])
    bootstrap = tf.constant(4.0)
    # lambda = 0: one-step TD targets r_t + d_t v_{t+1}.
    np.testing.assert_allclose(lambda_return(reward, value, discount, bootstrap, 0.0), [11.0, 4.0])
    # lambda = 1: discounted Monte-Carlo return 1 + 0.5 * (2 + 0.5 * 4) = 3.
    np.testing.assert_allclose(lambda_return(reward, value, discount, bootstrap, 1.0), [3.0, 4.0])


def test_lambda_return_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="one time length"):
        lambda_return(tf.zeros([3]), tf.zeros([4]), tf.zeros([3]), tf.zeros([]), 0.95)


def test_balanced_kl_by_hand():
    kl = tf.constant([1.0, 3.0])  # mean 2
    # No weights, no free bits: 0.8 * 2 + 0.2 * 2 = 2.
    assert float(balanced_kl(kl, kl)) == pytest.approx(2.0)
    # Weights (0.5, 1.5): mean(w * kl) = (0.5 + 4.5) / 2 = 2.5.
    w = tf.constant([0.5, 1.5])
    assert float(balanced_kl(kl, kl, w)) == pytest.approx(2.5)
    # Free bits above the mean clamp both terms to `free`.
    assert float(balanced_kl(kl, kl, free=5.0)) == pytest.approx(5.0)
    # Per-sample free bits (free_avg=False): mean(max(kl, 2)) = (2 + 3) / 2 = 2.5.
    assert float(balanced_kl(kl, kl, free=2.0, free_avg=False)) == pytest.approx(2.5)


def test_balanced_kl_gradient_split():
    """The prior receives `balance` of the gradient and the posterior the rest."""
    a = tf.Variable([1.0, 3.0])
    b = tf.Variable([1.0, 3.0])
    with tf.GradientTape() as tape:
        loss = balanced_kl(a, b, tf.constant([1.0, 2.0]), balance=0.8)
    ga, gb = tape.gradient(loss, [a, b])
    np.testing.assert_allclose(ga, [0.8 * 1 / 2, 0.8 * 2 / 2], rtol=1e-6)
    np.testing.assert_allclose(gb, [0.2 * 1 / 2, 0.2 * 2 / 2], rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = balanced_kl(a, b, free=10.0)
    assert all(
        g is None or float(tf.reduce_sum(tf.abs(g))) == 0 for g in tape.gradient(loss, [a, b])
    )


def test_weighted_model_loss_with_weights_free_bits_and_atari_scales_by_hand():
    """L = sum_k scale_k * -mean(w * l_k) + scale_kl * KL term, the weights also
    inside the KL means (atari: kl 0.1, discount 5)."""
    w = tf.constant([[0.8, 1.2], [1.0, 1.25]])
    likes = {
        "image": tf.constant([[-2.0, -4.0], [-1.0, -3.0]]),
        "reward": tf.constant([[-0.5, -0.5], [-1.5, -0.5]]),
        "discount": tf.constant([[-0.1, -0.2], [-0.3, -0.4]]),
    }
    kl = tf.constant([[1.0, 2.0], [3.0, 0.5]])
    total, metrics = weighted_model_loss(
        likes, (kl, kl), w, {"kl": 0.1, "discount": 5.0}, 0.8, 1.0, True
    )
    image = -(0.8 * -2 + 1.2 * -4 + 1.0 * -1 + 1.25 * -3) / 4  # 2.7875
    reward = -(0.8 * -0.5 + 1.2 * -0.5 + 1.0 * -1.5 + 1.25 * -0.5) / 4  # 0.78125
    discount = -(0.8 * -0.1 + 1.2 * -0.2 + 1.0 * -0.3 + 1.25 * -0.4) / 4  # 0.28
    kl_term = max((0.8 * 1 + 1.2 * 2 + 1.0 * 3 + 1.25 * 0.5) / 4, 1.0)  # 1.70625
    assert float(metrics["image_loss"]) == pytest.approx(image)
    assert float(metrics["discount_loss"]) == pytest.approx(discount)
    assert float(metrics["kl_loss"]) == pytest.approx(kl_term)
    assert float(total) == pytest.approx(image + reward + 5.0 * discount + 0.1 * kl_term)
    # The logged KL is the unweighted mean.
    assert float(metrics["kl"]) == pytest.approx(6.5 / 4)
