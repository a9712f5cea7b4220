"""Batch normalization with the statistics of the global batch under `tf.distribute`."""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas


class GlobalBatchNormalization(tf.keras.layers.BatchNormalization):
    """`BatchNormalization` whose batch mean and variance are those of the whole
    global batch when the update runs on several replicas, so that outputs,
    gradients and moving statistics equal the single-device ones.

    Unlike Keras' `synchronized=True` (which computes E[x^2] - E[x]^2 and adds
    all-reduces even on one replica), this keeps `tf.nn.moments` exactly on one
    replica and uses the same two-pass formula across replicas.
    """

    def _calculate_mean_and_var(self, inputs, reduction_axes, keep_dims, mask=None):
        if mask is None and replicas.context() is not None:
            x = tf.cast(inputs, tf.float32) if inputs.dtype == tf.float16 else inputs
            mean, variance = replicas.moments(x, reduction_axes, keepdims=keep_dims)
            return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
        return super()._calculate_mean_and_var(inputs, reduction_axes, keep_dims, mask=mask)
