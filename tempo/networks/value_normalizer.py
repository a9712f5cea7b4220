"""The value normalizer of TEMPO's task-aware (upper) loss."""

from __future__ import annotations

import tensorflow as tf

from tempo.networks.batch_norm import GlobalBatchNormalization


class ValueNormalizer(GlobalBatchNormalization):
    """Standardizes the critic values of the posterior and the prior states
    together: a batch normalization without scale or offset (batch statistics
    in training; a running average with momentum 0.9 kept for logging), as the
    released code's `value_norm`.

    Normalizing both sets with one mean and variance keeps their difference,
    the upper loss, comparable across tasks whatever the scale of the returns.
    """

    def __init__(self, momentum: float = 0.9, name: str = "value_norm", **kwargs):
        super().__init__(momentum=momentum, center=False, scale=False, name=name, **kwargs)

    def normalize(
        self, v_post: tf.Tensor, v_prior: tf.Tensor, training: bool | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Both value tensors (same shape) normalized with their joint statistics."""
        both = tf.concat([tf.reshape(v_post, [-1, 1]), tf.reshape(v_prior, [-1, 1])], 0)
        both = self(both, training=training)
        post_n, prior_n = tf.split(both, 2, 0)
        return tf.reshape(post_n, tf.shape(v_post)), tf.reshape(prior_n, tf.shape(v_prior))
