"""TEMPO's meta-weighter: one weight in [low, high] per world-model sample."""

from __future__ import annotations

import tensorflow as tf

from tempo.networks.batch_norm import GlobalBatchNormalization
from tempo.networks.mlp import MLP


class MetaWeighter(tf.keras.Model):
    """An MLP (4 x 400, ELU, batch norm) mapping the model's view of a sample to
    `low + (high - low) * sigmoid(x)`: 0.75 + sigmoid(x) / 2 by default, so no
    sample is dropped or dominates.

    It also owns the value normalizer of the task-aware loss: a batch
    normalization without scale or offset over the critic values of the
    posterior and prior states together (batch statistics when training, a
    running average with momentum 0.9 kept for logging).
    """

    def __init__(
        self,
        layers: int = 4,
        units: int = 400,
        act: str = "elu",
        norm: str = "batch",
        low: float = 0.75,
        high: float = 1.25,
        name: str = "meta_weighter",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        if not low < high:
            raise ValueError(f"MetaWeighter needs low < high, got low={low}, high={high}.")
        self.low, self.high = low, high
        self.mlp = MLP(layers, units, act, norm, name="mlp", dtype=self.dtype_policy)
        self.out = tf.keras.layers.Dense(1, name="out", dtype=self.dtype_policy)
        # Never 16-bit (it feeds the upper loss): float32 under mixed precision.
        mixed = self.dtype_policy.compute_dtype in ("float16", "bfloat16")
        self.value_norm = GlobalBatchNormalization(
            momentum=0.9,
            center=False,
            scale=False,
            name="value_norm",
            dtype="float32" if mixed else self.dtype_policy,
        )

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Weights of shape inputs.shape[:-1]."""
        x = self.out(self.mlp(inputs, training=training))[..., 0]
        x = tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x
        return self.low + (self.high - self.low) * tf.nn.sigmoid(x)

    def normalize_values(
        self, v_post: tf.Tensor, v_prior: tf.Tensor, training: bool | None = None
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Normalizes both value tensors (same shape) with their joint statistics."""
        both = tf.concat([tf.reshape(v_post, [-1, 1]), tf.reshape(v_prior, [-1, 1])], 0)
        both = self.value_norm(both, training=training)
        post_n, prior_n = tf.split(both, 2, 0)
        return tf.reshape(post_n, tf.shape(v_post)), tf.reshape(prior_n, tf.shape(v_prior))
