"""Output distributions of the heads, built on TensorFlow Probability.

Every distribution is computed in float32 (or float64 when the model runs in
float64) even when the network runs in a 16-bit mixed-precision policy: log
probabilities and KL divergences of 16-bit values lose too much precision.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def distribution_dtype(x: tf.Tensor) -> tf.DType:
    """float32 for 16-bit tensors, otherwise the tensor's own float dtype."""
    return tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype


def to_distribution_dtype(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, distribution_dtype(x))


class MSEDist:
    """A unit-variance Normal around the prediction, without TFP's overhead.

    DreamerV2 and the released TEMPO code use `Normal(mode, 1)` for the reward,
    value and vector-observation heads: the log-likelihood is
    -(x - mode)^2 / 2 - log(2 pi) / 2 per element, summed over the event
    dimensions. (The constant has no gradient; the factor 1/2 sets the weight of
    every such head against the KL term.)
    """

    def __init__(self, mode: tf.Tensor, event_dims: int = 0):
        self._mode = mode
        self._event_dims = event_dims

    def mode(self) -> tf.Tensor:
        return self._mode

    def mean(self) -> tf.Tensor:
        return self._mode

    def log_prob(self, value: tf.Tensor) -> tf.Tensor:
        error = self._mode - tf.cast(value, self._mode.dtype)
        log_prob = -0.5 * tf.square(error) - _HALF_LOG_2PI
        if self._event_dims:
            log_prob = tf.reduce_sum(log_prob, axis=list(range(-self._event_dims, 0)))
        return log_prob


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class OneHotDist(tfd.OneHotCategorical):
    """One-hot categorical whose samples carry straight-through gradients.

    The sample is the one-hot vector in the forward pass and has the gradient of
    the probabilities in the backward pass, so discrete latents and discrete
    actions can be trained by backpropagation through the world model.
    """

    def __init__(
        self,
        logits=None,
        probs=None,
        dtype=None,
        validate_args=False,
        allow_nan_stats=True,
        name="OneHotDist",
    ):
        logits = None if logits is None else to_distribution_dtype(logits)
        if dtype is None:
            dtype = logits.dtype if logits is not None else to_distribution_dtype(probs).dtype
        super().__init__(logits, probs, dtype, validate_args, allow_nan_stats, name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return tfd.OneHotCategorical._parameter_properties(dtype, num_classes)

    def mode(self) -> tf.Tensor:
        return tf.cast(super().mode(), self.dtype)

    def sample(self, sample_shape=(), seed=None, **kwargs) -> tf.Tensor:
        sample = tf.cast(super().sample(sample_shape, seed=seed, **kwargs), self.dtype)
        probs = tf.cast(self.probs_parameter(), self.dtype)
        while len(probs.shape) < len(sample.shape):
            probs = probs[None]
        return sample + probs - tf.stop_gradient(probs)


class ClippedTruncatedNormal(tfd.TruncatedNormal):
    """Truncated normal on [low, high] whose samples stay strictly inside.

    Samples exactly at +-1 make the log-probability of an action infinite; the
    clip keeps them inside by `clip` with a straight-through gradient.
    """

    def __init__(
        self,
        loc,
        scale,
        low=-1.0,
        high=1.0,
        validate_args=False,
        allow_nan_stats=True,
        name="ClippedTruncatedNormal",
        clip=1e-6,
    ):
        super().__init__(loc, scale, low, high, validate_args, allow_nan_stats, name)
        self.clip = clip

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return tfd.TruncatedNormal._parameter_properties(dtype, num_classes)

    def sample(self, sample_shape=(), seed=None, **kwargs) -> tf.Tensor:
        sample = super().sample(sample_shape, seed=seed, **kwargs)
        clipped = tf.clip_by_value(sample, self.low + self.clip, self.high - self.clip)
        return sample + tf.stop_gradient(clipped - sample)

    def mode(self) -> tf.Tensor:
        return tf.clip_by_value(self.loc, self.low, self.high) + tf.zeros_like(self.scale)


def independent(dist: tfd.Distribution, dims: int) -> tfd.Distribution:
    """Treats the last `dims` batch dimensions as event dimensions."""
    return tfd.Independent(dist, reinterpreted_batch_ndims=dims) if dims else dist
