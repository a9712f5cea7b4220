"""Lambda-returns: the TD(lambda) targets of DreamerV2's actor and critic."""

from __future__ import annotations

import tensorflow as tf


def lambda_return(
    reward: tf.Tensor,
    value: tf.Tensor,
    discount: tf.Tensor,
    bootstrap: tf.Tensor,
    lambda_: float,
) -> tf.Tensor:
    """Time-major returns R_t = r_t + d_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1}).

    Args:
      reward, value, discount: [H, ...] tensors; value[t] is the value of state t.
      bootstrap: [...] value of the state after the last one; R_H = bootstrap.
      lambda_: 0 gives one-step TD targets, 1 gives discounted Monte-Carlo returns.

    Returns:
      [H, ...] returns. The horizon is static (15 imagination steps), so the
      recursion is an unrolled Python loop, which TensorFlow compiles well.
    """
    if not reward.shape[0] == value.shape[0] == discount.shape[0]:
        raise ValueError(
            f"reward, value and discount need one time length, got {reward.shape}, "
            f"{value.shape}, {discount.shape}."
        )
    next_values = tf.concat([value[1:], bootstrap[None]], 0)
    inputs = reward + discount * next_values * (1 - lambda_)
    returns = []
    last = bootstrap
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lambda_ * last
        returns.append(last)
    return tf.stack(returns[::-1], 0)
