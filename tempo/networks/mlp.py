"""Dense stacks shared by the encoder, decoder, heads and meta-weighter."""

from __future__ import annotations

import tensorflow as tf

from tempo.networks.batch_norm import GlobalBatchNormalization
from tempo.networks.onehot_matmul import onehot_prefix_matmul

NORMS = ("none", "layer", "batch")


def activation(name: str):
    """Looks up an activation by name ('elu', 'relu', 'tanh', 'none', ...)."""
    if name in (None, "none", "linear", "identity"):
        return tf.identity
    return tf.keras.activations.get(name)


def norm_layer(norm: str, name: str, **kwargs) -> tf.keras.layers.Layer | None:
    if norm == "none":
        return None
    if norm == "layer":
        return tf.keras.layers.LayerNormalization(epsilon=1e-3, name=name, **kwargs)
    if norm == "batch":
        return GlobalBatchNormalization(name=name, **kwargs)
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


class MLP(tf.keras.layers.Layer):
    """`layers` x (Dense(units) -> norm -> activation).

    Inputs may have any number of leading batch dimensions; they are flattened
    for the dense layers (batch normalization then sees every sample). A call
    with `onehot=(groups, classes)` says that the inputs start with that many
    one-hot groups (sampled discrete latents): the first layer then gathers
    kernel rows for them instead of multiplying (same values and gradients).
    """

    def __init__(
        self,
        layers: int = 4,
        units: int = 400,
        act: str = "elu",
        norm: str = "none",
        name: str = "mlp",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self._act = activation(act)
        self._dense = [
            tf.keras.layers.Dense(units, name=f"dense{i}", dtype=self.dtype_policy)
            for i in range(layers)
        ]
        self._norms = [
            norm_layer(norm, name=f"norm{i}", dtype=self.dtype_policy) for i in range(layers)
        ]

    def call(
        self,
        x: tf.Tensor,
        training: bool | None = None,
        onehot: tuple[int, int] | None = None,
    ) -> tf.Tensor:
        lead = leading_shape(x, 1)
        x = tf.reshape(x, [-1, x.shape[-1]])
        for i, (dense, norm) in enumerate(zip(self._dense, self._norms)):
            if i == 0 and onehot is not None and dense.built:
                x = _onehot_dense(dense, x, onehot)
            else:
                x = dense(x)
            if norm is not None:
                x = norm(x, training=training)
            x = self._act(x)
        return restore_leading(x, lead)


def _onehot_dense(dense: tf.keras.layers.Dense, x: tf.Tensor, onehot: tuple[int, int]):
    """`dense(x)` through `onehot_prefix_matmul` (dense has no activation here)."""
    with tf.name_scope(dense.name):
        kernel, bias = tf.cast(dense.kernel, x.dtype), tf.cast(dense.bias, x.dtype)
        return tf.nn.bias_add(onehot_prefix_matmul(x, kernel, *onehot), bias)


def mlp_from_widths(
    widths: tuple[int, ...], act: str, norm: str, name: str = "mlp", **kwargs
) -> MLP:
    """An MLP from DreamerV2's per-layer width list (all widths must be equal)."""
    if not widths or len(set(widths)) > 1:
        raise ValueError(f"mlp_layers must be a non-empty list of one width, got {widths}.")
    return MLP(len(widths), widths[0], act, norm, name=name, **kwargs)


def leading_shape(x: tf.Tensor, event_dims: int):
    """The batch dimensions in front of the last `event_dims`, static when known."""
    lead = x.shape[: len(x.shape) - event_dims]
    return lead.as_list() if lead.is_fully_defined() else tf.shape(x)[: len(lead)]


def restore_leading(x: tf.Tensor, lead) -> tf.Tensor:
    """Undoes a flatten of the leading dimensions (keeps x's trailing shape)."""
    if isinstance(lead, list):
        return tf.reshape(x, lead + x.shape[1:].as_list())
    return tf.reshape(x, tf.concat([lead, tf.shape(x)[1:]], 0))
