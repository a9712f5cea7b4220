"""MLP heads that output distributions: reward, discount, critic and actor."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempo.networks import distributions as dists
from tempo.networks.mlp import MLP

DISTS = ("mse", "normal", "binary", "onehot", "trunc_normal")


class DistLayer(tf.keras.layers.Layer):
    """Maps features to a distribution over an array of `shape`.

    'mse' and 'binary' need one dense output, 'normal' and 'trunc_normal' a
    second one for the standard deviation, 'onehot' one logit per class.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dist: str = "mse",
        min_std: float = 0.1,
        init_std: float = 0.0,
        name: str = "dist",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if dist not in DISTS:
            raise ValueError(f"Unknown distribution {dist!r}; choose one of {DISTS}.")
        self._shape = tuple(shape)
        self._dist = dist
        self._min_std = min_std
        self._init_std = init_std
        size = int(np.prod(self._shape))
        self._out = tf.keras.layers.Dense(size, name="out", dtype=self.dtype_policy)
        self._std = None
        if dist in ("normal", "trunc_normal"):
            self._std = tf.keras.layers.Dense(size, name="std", dtype=self.dtype_policy)

    def call(self, x: tf.Tensor):
        return self.distribution(self.params(x))

    def params(self, x: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """The dense outputs that parameterize the distribution, [..., *shape] each
        (one, or two with a standard deviation)."""
        lead = x.shape[:-1].as_list() if x.shape[:-1].is_fully_defined() else None
        if lead is None:
            lead_dyn = tf.shape(x)[:-1]
            reshape = lambda y: tf.reshape(y, tf.concat([lead_dyn, self._shape], 0))
        else:
            reshape = lambda y: tf.reshape(y, lead + list(self._shape))
        out = dists.to_distribution_dtype(reshape(self._out(x)))
        if self._std is None:
            return (out,)
        return out, dists.to_distribution_dtype(reshape(self._std(x)))

    def distribution(self, params: tuple[tf.Tensor, ...]):
        """The distribution of `params(x)`: kept apart so that outputs computed
        once (the policy's, during imagination) can be turned into it again."""
        out = params[0]
        event_dims = len(self._shape)
        if self._dist == "mse":
            return dists.MSEDist(out, event_dims)
        if self._dist == "binary":
            return dists.independent(dists.tfd.Bernoulli(logits=out, dtype=out.dtype), event_dims)
        if self._dist == "onehot":
            return dists.OneHotDist(out)
        std = params[1]
        if self._dist == "normal":
            std = tf.nn.softplus(std + self._init_std) + self._min_std
            return dists.independent(dists.tfd.Normal(out, std), event_dims)
        # trunc_normal: DreamerV2's squashed mean and sigmoid-bounded std (init_std
        # 0 for the actor: a std of 2 * sigmoid(0) + 0.1 = 1.1 at zero output).
        std = 2.0 * tf.nn.sigmoid((std + self._init_std) / 2.0) + self._min_std
        dist = dists.ClippedTruncatedNormal(tf.tanh(out), std, -1.0, 1.0)
        return dists.independent(dist, event_dims)


class DistHead(tf.keras.Model):
    """An MLP followed by a `DistLayer`: the reward, discount and critic heads."""

    def __init__(
        self,
        shape: tuple[int, ...] = (),
        dist: str = "mse",
        layers: int = 4,
        units: int = 400,
        act: str = "elu",
        norm: str = "none",
        min_std: float = 0.1,
        name: str = "head",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.mlp = MLP(layers, units, act, norm, name="mlp", dtype=self.dtype_policy)
        self.dist = DistLayer(shape, dist, min_std=min_std, name="dist", dtype=self.dtype_policy)

    def call(
        self,
        features: tf.Tensor,
        training: bool | None = None,
        onehot: tuple[int, int] | None = None,
    ):
        """`onehot`: the features' one-hot layout, if they start with sampled
        discrete latents (`RSSM.onehot_layout`); the MLP's first layer gathers."""
        return self.dist(self.mlp(features, training=training, onehot=onehot))

    def params(
        self,
        features: tf.Tensor,
        training: bool | None = None,
        onehot: tuple[int, int] | None = None,
    ) -> tuple[tf.Tensor, ...]:
        """What `distribution` turns into `self(features)`: the raw outputs."""
        with tf.name_scope(self.name):  # as a call would: profiles name the network
            return self.dist.params(self.mlp(features, training=training, onehot=onehot))

    def distribution(self, params: tuple[tf.Tensor, ...]):
        return self.dist.distribution(params)


class Actor(DistHead):
    """The policy: one-hot categorical for discrete actions, truncated normal on
    [-1, 1] for continuous ones (DreamerV2's 'auto' choice)."""

    def __init__(
        self,
        action_size: int,
        discrete: bool,
        layers: int = 4,
        units: int = 400,
        act: str = "elu",
        norm: str = "none",
        min_std: float = 0.1,
        name: str = "actor",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(
            (action_size,),
            "onehot" if discrete else "trunc_normal",
            layers,
            units,
            act,
            norm,
            min_std,
            name=name,
            dtype=dtype,
        )
        self.action_size = action_size
        self.discrete = discrete
