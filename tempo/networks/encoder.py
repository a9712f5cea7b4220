"""Observation encoder: a CNN over image keys and an MLP over vector keys."""

from __future__ import annotations

import re

import tensorflow as tf

from tempo.networks.mlp import (
    activation,
    leading_shape,
    mlp_from_widths,
    norm_layer,
    restore_leading,
)


def select_keys(
    shapes: dict[str, tuple[int, ...]], cnn_keys: str, mlp_keys: str
) -> tuple[list[str], list[str]]:
    """Splits observation keys into image keys (rank 3) and vector keys (rank 1)
    by the two regular expressions; raises if nothing is selected."""
    cnn = [k for k, s in shapes.items() if re.match(cnn_keys, k) and len(s) == 3]
    mlp = [k for k, s in shapes.items() if re.match(mlp_keys, k) and len(s) == 1]
    if not cnn and not mlp:
        raise ValueError(
            f"No observation key matches cnn_keys={cnn_keys!r} (images) or "
            f"mlp_keys={mlp_keys!r} (vectors); available keys and shapes: {shapes}. "
            "Set encoder/decoder cnn_keys and mlp_keys in the gin config."
        )
    return sorted(cnn), sorted(mlp)


class Encoder(tf.keras.Model):
    """DreamerV2's encoder: 4 strided convolutions (depth doubling from
    `cnn_depth`) over the channel-concatenated images, an MLP over the
    concatenated vectors, and the two outputs concatenated."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        cnn_keys: str = r".*",
        mlp_keys: str = r".*",
        act: str = "elu",
        norm: str = "none",
        cnn_depth: int = 48,
        cnn_kernels: tuple[int, ...] = (4, 4, 4, 4),
        mlp_layers: tuple[int, ...] = (400, 400, 400, 400),
        name: str = "encoder",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.cnn_keys, self.mlp_keys = select_keys(self.shapes, cnn_keys, mlp_keys)
        self._act = activation(act)
        self._convs = [
            tf.keras.layers.Conv2D(
                2**i * cnn_depth, kernel, 2, name=f"conv{i}", dtype=self.dtype_policy
            )
            for i, kernel in enumerate(cnn_kernels)
        ]
        self._conv_norms = [
            norm_layer(norm, f"convnorm{i}", dtype=self.dtype_policy)
            for i in range(len(cnn_kernels))
        ]
        self._mlp = None
        if self.mlp_keys:
            self._mlp = mlp_from_widths(mlp_layers, act, norm, dtype=self.dtype_policy)

    def call(self, obs: dict[str, tf.Tensor], training: bool | None = None) -> tf.Tensor:
        outputs = []
        if self.cnn_keys:
            x = tf.concat([obs[k] for k in self.cnn_keys], -1)
            lead = leading_shape(x, 3)
            x = tf.reshape(x, [-1] + x.shape[-3:].as_list())
            for conv, norm in zip(self._convs, self._conv_norms):
                x = conv(x)
                if norm is not None:
                    x = norm(x, training=training)
                x = self._act(x)
            x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
            outputs.append(restore_leading(x, lead))
        if self.mlp_keys:
            x = tf.concat([tf.cast(obs[k], self.compute_dtype) for k in self.mlp_keys], -1)
            outputs.append(self._mlp(x, training=training))
        if len(outputs) == 1:
            return outputs[0]
        return tf.concat([tf.cast(o, outputs[0].dtype) for o in outputs], -1)
