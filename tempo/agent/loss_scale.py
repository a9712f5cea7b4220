"""Dynamic loss scaling for float16 compute (`build_trainer.precision = 'mixed_float16'`)."""

from __future__ import annotations

import tensorflow as tf


class LossScale(tf.Module):
    """Losses are multiplied by `scale` before differentiation and gradients
    divided by it after, so that small float16 gradients do not flush to zero.
    A non-finite gradient skips the update (the trainer's usual guard) and halves
    the scale; `growth_interval` finite updates in a row double it.

    bfloat16 has float32's exponent range and needs none of this.
    """

    def __init__(
        self, initial: float = 2.0**15, growth_interval: int = 2000, name: str = "loss_scale"
    ):
        super().__init__(name=name)
        self.growth_interval = growth_interval
        self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def update(self, finite: tf.Tensor) -> None:
        """After an update: halve on non-finite, double after enough finite ones."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        scale = tf.where(grow, 2.0 * self.scale, self.scale)
        self.scale.assign(tf.where(finite, scale, self.scale / 2.0))
        keep = tf.logical_and(finite, tf.logical_not(grow))
        self.good_steps.assign(tf.where(keep, self.good_steps + 1, tf.zeros_like(self.good_steps)))
