"""Observation decoder: transposed convolutions for images, an MLP for vectors."""

from __future__ import annotations

import tensorflow as tf

from tempo.networks import distributions as dists
from tempo.networks.encoder import select_keys
from tempo.networks.heads import DistLayer
from tempo.networks.mlp import (
    activation,
    leading_shape,
    mlp_from_widths,
    norm_layer,
    restore_leading,
)


class UpConv(tf.keras.layers.Conv2DTranspose):
    """A stride-2 transposed convolution whose input may be a 1x1 map (the
    decoder's first). There every output pixel is the input vector times one
    slice of the kernel: one matrix product, 3x faster on oneDNN CPUs than
    TensorFlow's transposed-convolution kernel (and its gradient) for that shape,
    with the same variables and, up to summation order, the same values."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        plain = (
            self.padding == "valid"
            and self.data_format == "channels_last"
            and self.output_padding is None
            and tuple(self.dilation_rate) == (1, 1)
        )
        if tuple(inputs.shape[1:3]) != (1, 1) or not plain:
            return super().call(inputs)
        height, width, channels, _ = self.kernel.shape
        # kernel [h, w, out, in] -> [in, h * w * out]: row c scatters input channel c.
        matrix = tf.reshape(
            tf.transpose(self.kernel, [3, 0, 1, 2]), [-1, height * width * channels]
        )
        x = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), matrix)
        x = tf.reshape(x, [-1, height, width, channels])
        return tf.nn.bias_add(x, self.bias) if self.use_bias else x


class Decoder(tf.keras.Model):
    """DreamerV2's decoder. Images: a dense layer to a 1x1 map of
    32 * cnn_depth channels, then transposed convolutions (kernels 5, 5, 6, 6,
    stride 2: 1 -> 5 -> 13 -> 30 -> 64 pixels) with unit-variance Gaussian
    outputs. Vectors: an MLP and one MSE output per key."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        cnn_keys: str = r".*",
        mlp_keys: str = r".*",
        act: str = "elu",
        norm: str = "none",
        cnn_depth: int = 48,
        cnn_kernels: tuple[int, ...] = (5, 5, 6, 6),
        mlp_layers: tuple[int, ...] = (400, 400, 400, 400),
        name: str = "decoder",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.cnn_keys, self.mlp_keys = select_keys(self.shapes, cnn_keys, mlp_keys)
        self._act = activation(act)
        self._cnn_depth = cnn_depth
        self._channels = {k: self.shapes[k][-1] for k in self.cnn_keys}
        if self.cnn_keys:
            self._convin = tf.keras.layers.Dense(
                32 * cnn_depth, name="convin", dtype=self.dtype_policy
            )
            self._deconvs, self._deconv_norms = [], []
            last = len(cnn_kernels) - 1
            for i, kernel in enumerate(cnn_kernels):
                depth = (
                    sum(self._channels.values()) if i == last else 2 ** (last - i - 1) * cnn_depth
                )
                self._deconvs.append(
                    UpConv(depth, kernel, 2, name=f"conv{i}", dtype=self.dtype_policy)
                )
                self._deconv_norms.append(
                    None if i == last else norm_layer(norm, f"convnorm{i}", dtype=self.dtype_policy)
                )
        if self.mlp_keys:
            self._mlp = mlp_from_widths(mlp_layers, act, norm, dtype=self.dtype_policy)
            self._mlp_out = {
                k: DistLayer(self.shapes[k], "mse", name=f"out_{k}", dtype=self.dtype_policy)
                for k in self.mlp_keys
            }

    def call(self, features: tf.Tensor, training: bool | None = None) -> dict:
        out = {}
        if self.cnn_keys:
            out.update(self._cnn(features, training))
        if self.mlp_keys:
            x = self._mlp(features, training=training)
            out.update({k: layer(x) for k, layer in self._mlp_out.items()})
        return out

    def _cnn(self, features: tf.Tensor, training) -> dict:
        lead = leading_shape(features, 1)
        x = self._convin(tf.reshape(features, [-1, features.shape[-1]]))
        x = tf.reshape(x, [-1, 1, 1, 32 * self._cnn_depth])
        last = len(self._deconvs) - 1
        for i, (deconv, norm) in enumerate(zip(self._deconvs, self._deconv_norms)):
            x = deconv(x)
            if i < last:
                if norm is not None:
                    x = norm(x, training=training)
                x = self._act(x)
        mean = dists.to_distribution_dtype(restore_leading(x, lead))
        means = tf.split(mean, list(self._channels.values()), -1)
        return {
            key: dists.independent(dists.tfd.Normal(m, tf.ones_like(m)), 3)
            for key, m in zip(self._channels, means)
        }
