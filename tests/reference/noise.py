"""Recorded noise for every random draw, so two programs sample identically.

The released TEMPO code samples with TensorFlow's stateful ops; tempo samples
with stateless seeds. To compare them update for update, both run with TFP's
samplers replaced by deterministic transforms of noise that a `NoiseTape`
hands out in draw order, one stream per kind:

- 'normal':  Gaussian latents, loc + scale * eps (the reparameterized sample);
- 'gumbel':  categorical latents and one-hot actions, one_hot(argmax(logits + g))
             (Gumbel-max: an exact sample of the categorical);
- 'uniform': the truncated-normal actor, by the inverse CDF at u (for fixed u
             its derivative is the implicit reparameterization gradient TFP uses).

Only the innermost sampler is replaced: each program's own straight-through
estimators, clipping and reshaping run unchanged around it. The generator
records the tape (`record=True`) and the tests replay it; a replayed draw of
another kind or shape than recorded raises, naming both.

This module imports only numpy, TensorFlow and TFP, so it runs both under the
release's TensorFlow 2.15 and under tempo's.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions
KINDS = ("normal", "gumbel", "uniform")


class NoiseTape:
    """Hands out noise arrays in order, per kind; records or replays them."""

    def __init__(self, recorded: dict[str, list[np.ndarray]] | None = None, seed: int = 0):
        self.record = recorded is None
        self.streams = {k: [] for k in KINDS} if recorded is None else recorded
        self.position = {k: 0 for k in KINDS}
        self._rng = np.random.RandomState(seed)

    def draw(self, kind: str, shape) -> tf.Tensor:
        shape = tuple(int(d) for d in shape)
        index = self.position[kind]
        self.position[kind] += 1
        if self.record:
            self.streams[kind].append(self._generate(kind, shape))
        elif index >= len(self.streams[kind]):
            raise AssertionError(
                f"draw {index} of kind {kind!r} (shape {shape}) was never recorded: this "
                f"program samples more often than the reference ({len(self.streams[kind])} draws)."
            )
        value = self.streams[kind][index]
        if value.shape != shape:
            raise AssertionError(
                f"draw {index} of kind {kind!r}: this program asks for shape {shape}, "
                f"the reference drew {value.shape}."
            )
        return tf.constant(value)

    def rewind(self) -> None:
        self.position = {k: 0 for k in KINDS}

    def unused(self) -> dict[str, int]:
        """Recorded draws of each kind that were not replayed (should be none)."""
        return {
            k: len(v) - self.position[k]
            for k, v in self.streams.items()
            if len(v) != self.position[k]
        }

    def _generate(self, kind: str, shape) -> np.ndarray:
        if kind == "normal":
            return self._rng.randn(*shape).astype(np.float32)
        u = self._rng.uniform(1e-6, 1 - 1e-6, shape)
        if kind == "gumbel":
            return (-np.log(-np.log(u))).astype(np.float32)
        return u.astype(np.float32)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{k}/{i}": v for k, vs in self.streams.items() for i, v in enumerate(vs)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> NoiseTape:
        streams = {k: [] for k in KINDS}
        for name in arrays:
            if name.startswith(prefix):
                kind, index = name[len(prefix) :].split("/")
                streams[kind].append((int(index), np.asarray(arrays[name])))
        return cls({k: [v for _, v in sorted(vs, key=lambda x: x[0])] for k, vs in streams.items()})


def _static(shape) -> list[int]:
    shape = tf.TensorShape(shape)
    if not shape.is_fully_defined():
        raise ValueError(f"recorded noise needs static shapes, got {shape}")
    return shape.as_list()


@contextlib.contextmanager
def replaced_samplers(tape: NoiseTape):
    """Within the block, TFP's Normal, OneHotCategorical, TruncatedNormal (and
    MultivariateNormalDiag, which the release's Gaussian latents use) sample
    from `tape` instead of TensorFlow's random ops."""

    def normal(self, n, seed=None):
        loc, scale = tf.convert_to_tensor(self.loc), tf.convert_to_tensor(self.scale)
        batch = tf.broadcast_static_shape(loc.shape, scale.shape)
        eps = tf.cast(tape.draw("normal", [n, *_static(batch)]), loc.dtype)
        return eps * scale + loc

    def mvn_diag(self, sample_shape=(), seed=None, name="sample", **kwargs):
        if np.size(sample_shape) != 0:
            raise NotImplementedError("recorded MultivariateNormalDiag draws take no sample_shape")
        loc = tf.convert_to_tensor(self.loc)
        # One draw, shaped as TFP's Normal draws it (n = 1 in front).
        eps = tf.cast(tape.draw("normal", [1, *_static(loc.shape)]), loc.dtype)[0]
        return eps * self.scale.diag_part() + loc

    def one_hot(self, n, seed=None):
        logits = tf.convert_to_tensor(self.logits_parameter())
        gumbel = tf.cast(tape.draw("gumbel", [n, *_static(logits.shape)]), logits.dtype)
        index = tf.argmax(logits[None] + gumbel, -1)
        return tf.one_hot(index, int(logits.shape[-1]), dtype=self.dtype)

    def truncated(self, n, seed=None):
        loc, scale = tf.convert_to_tensor(self.loc), tf.convert_to_tensor(self.scale)
        low = tf.cast(self.low, loc.dtype)
        high = tf.cast(self.high, loc.dtype)
        batch = tf.broadcast_static_shape(loc.shape, scale.shape)
        u = tf.cast(tape.draw("uniform", [n, *_static(batch)]), loc.dtype)
        cdf = lambda x: 0.5 * tf.math.erfc(-x / np.sqrt(2.0).astype(np.float32))
        cdf_low = cdf((low - loc) / scale)
        cdf_high = cdf((high - loc) / scale)
        p = cdf_low + u * (cdf_high - cdf_low)
        p = tf.clip_by_value(p, 1e-7, 1 - 1e-7)
        return loc + scale * tf.math.ndtri(p)

    patches = [
        (tfd.Normal, "_sample_n", normal),
        (tfd.OneHotCategorical, "_sample_n", one_hot),
        (tfd.TruncatedNormal, "_sample_n", truncated),
        (tfd.MultivariateNormalDiag, "sample", mvn_diag),
    ]
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in patches]
    try:
        for cls, name, fn in patches:
            setattr(cls, name, fn)
        yield tape
    finally:
        for cls, name, old in saved:
            if old is None:
                delattr(cls, name)
            else:
                setattr(cls, name, old)
