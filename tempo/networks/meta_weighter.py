"""TEMPO's meta-weighter: one weight in [low, high] per world-model sample."""

from __future__ import annotations

import tensorflow as tf

from tempo.networks.mlp import MLP, leading_shape, norm_layer, restore_leading


class MetaWeighter(tf.keras.Model):
    """An MLP (4 x 400, ELU, batch norm) and a dense output logit x, normalized
    like the hidden layers (the released `norm_out`: a batch normalization with
    learned scale and offset), mapped to `low + (high - low) * sigmoid(x)`:
    0.75 + sigmoid(x) / 2 by default, so no sample is dropped or dominates.

    The output normalization standardizes the logits over the batch before the
    squash, so the weights stay spread around 1 with a learned spread and
    centre instead of drifting to the bounds."""

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
        self.out_norm = norm_layer(norm, "out_norm", dtype=self.dtype_policy)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """Weights of shape inputs.shape[:-1]."""
        lead = leading_shape(inputs, 1)
        x = self.out(self.mlp(tf.reshape(inputs, [-1, inputs.shape[-1]]), training=training))
        if self.out_norm is not None:  # statistics over every sample of the batch
            x = self.out_norm(x, training=training)
        x = restore_leading(x, lead)[..., 0]
        x = tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x
        return self.low + (self.high - self.low) * tf.nn.sigmoid(x)
