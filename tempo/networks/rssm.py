"""Recurrent state-space model (RSSM) of DreamerV2.

A state is a dict of tensors: `deter` (GRU state), `stoch` (the sampled
latent), and the parameters of the latent distribution: `logit` for
`discrete` categorical latents (shape [..., stoch, discrete]), or `mean` and
`std` for Gaussian latents (shape [..., stoch]).

Sampling takes an explicit stateless seed (a shape-[2] int tensor) so that a
trainer that owns one `tf.random.Generator` makes every update reproducible;
`seed=None` falls back to TensorFlow's stateful sampling.
"""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas
from tempo.networks import distributions as dists
from tempo.networks.mlp import activation, norm_layer

State = dict[str, tf.Tensor]


def split_seed(seed: tf.Tensor | None, num: int) -> list:
    """`num` independent stateless seeds from one (or Nones from None)."""
    if seed is None:
        return [None] * num
    return tf.unstack(step_seeds(seed, num))


def unrolled(configured: bool) -> bool:
    """Whether a sequence loop runs unrolled: as configured, and always under
    tf.distribute, whose cross-replica sampling gathers across replicas at every
    step (kept out of graph loops)."""
    return configured or replicas.context() is not None


def step_seeds(seed: tf.Tensor, num: int) -> tf.Tensor:
    """The seeds of `split_seed` as one [num, 2] tensor, for loops in the graph."""
    return tf.cast(tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), num), tf.int32)


class LayerNormGRUCell(tf.keras.layers.Layer):
    """GRU cell with one dense layer for all three gates, layer-normalized, and
    an update-gate bias of -1 (the cell prefers to keep its state early on)."""

    def __init__(self, size: int, act: str = "tanh", update_bias: float = -1.0, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self._act = activation(act)
        self._update_bias = update_bias
        # DreamerV2 keeps the dense bias even though layer norm follows it.
        self._layer = tf.keras.layers.Dense(
            3 * size, use_bias=True, name="dense", dtype=self.dtype_policy
        )
        self._norm = tf.keras.layers.LayerNormalization(
            epsilon=1e-3, name="norm", dtype=self.dtype_policy
        )

    def call(self, inputs: tf.Tensor, state: tf.Tensor) -> tf.Tensor:
        parts = self._norm(self._layer(tf.concat([inputs, state], -1)))
        reset, cand, update = tf.split(parts, 3, -1)
        reset = tf.nn.sigmoid(reset)
        cand = self._act(reset * cand)
        update = tf.nn.sigmoid(update + self._update_bias)
        return update * cand + (1 - update) * state


class RSSM(tf.keras.Model):
    """Prior p(z_t | h_t) with h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1}) and
    posterior q(z_t | h_t, embed_t)."""

    def __init__(
        self,
        action_size: int,
        stoch: int = 32,
        deter: int = 1024,
        hidden: int = 1024,
        discrete: int = 32,
        act: str = "elu",
        norm: str = "none",
        std_act: str = "sigmoid2",
        min_std: float = 0.1,
        unroll: bool = True,
        name: str = "rssm",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        if std_act not in ("softplus", "sigmoid", "sigmoid2"):
            raise ValueError(f"Unknown std_act {std_act!r}; use softplus, sigmoid or sigmoid2.")
        self.action_size = action_size
        self.stoch, self.deter, self.hidden, self.discrete = stoch, deter, hidden, discrete
        self._act = activation(act)
        self._std_act = std_act
        self._min_std = min_std
        # observe(): a Python loop unrolled over T (one graph node per step and
        # op: slower to compile, faster to run) or a tf.scan (a loop in the graph).
        self.unroll = unroll
        stats_size = stoch * discrete if discrete else 2 * stoch
        self._img_in = tf.keras.layers.Dense(hidden, name="img_in", dtype=self.dtype_policy)
        self._img_in_norm = norm_layer(norm, "img_in_norm", dtype=self.dtype_policy)
        self._cell = LayerNormGRUCell(deter, name="gru", dtype=self.dtype_policy)
        self._img_out = tf.keras.layers.Dense(hidden, name="img_out", dtype=self.dtype_policy)
        self._img_out_norm = norm_layer(norm, "img_out_norm", dtype=self.dtype_policy)
        self._img_dist = tf.keras.layers.Dense(stats_size, name="img_dist", dtype=self.dtype_policy)
        self._obs_out = tf.keras.layers.Dense(hidden, name="obs_out", dtype=self.dtype_policy)
        self._obs_out_norm = norm_layer(norm, "obs_out_norm", dtype=self.dtype_policy)
        self._obs_dist = tf.keras.layers.Dense(stats_size, name="obs_dist", dtype=self.dtype_policy)

    # ----- state helpers -------------------------------------------------
    @property
    def feat_size(self) -> int:
        return self.deter + self.stoch * (self.discrete or 1)

    @property
    def onehot_layout(self) -> tuple[int, int] | None:
        """(groups, classes) of the one-hot latents that start every sampled
        feature vector (`get_feat` of a sampled or mode state), for heads that
        gather instead of multiplying; None for Gaussian latents."""
        return (self.stoch, self.discrete) if self.discrete else None

    @property
    def stats_size(self) -> int:
        """Size of the flattened distribution parameters fed to the meta-weighter."""
        return self.stoch * (self.discrete or 1)

    def initial(self, batch_size, dtype: tf.DType | None = None) -> State:
        dtype = dtype or self.compute_dtype
        zeros = lambda *shape: tf.zeros([batch_size, *shape], dtype)
        if self.discrete:
            state = dict(
                logit=zeros(self.stoch, self.discrete), stoch=zeros(self.stoch, self.discrete)
            )
        else:
            state = dict(mean=zeros(self.stoch), std=zeros(self.stoch), stoch=zeros(self.stoch))
        state["deter"] = zeros(self.deter)
        return state

    def get_feat(self, state: State) -> tf.Tensor:
        stoch = tf.cast(state["stoch"], self.compute_dtype)
        if self.discrete:
            stoch = _merge_last_two(stoch)
        return tf.concat([stoch, tf.cast(state["deter"], self.compute_dtype)], -1)

    def get_stats(self, state: State) -> tf.Tensor:
        """Flattened logits (discrete) or means (Gaussian): the meta-weighter's view."""
        if self.discrete:
            return _merge_last_two(state["logit"])
        return state["mean"]

    def get_dist(self, state: State):
        if self.discrete:
            return dists.independent(dists.OneHotDist(state["logit"]), 1)
        mean = dists.to_distribution_dtype(state["mean"])
        std = dists.to_distribution_dtype(state["std"])
        return dists.independent(dists.tfd.Normal(mean, std), 1)

    # ----- one step ------------------------------------------------------
    def img_step(self, prev_state: State, prev_action: tf.Tensor, seed=None, sample=True) -> State:
        """Prior step: advance the GRU with the previous latent and action."""
        prev_stoch = tf.cast(prev_state["stoch"], self.compute_dtype)
        if self.discrete:
            prev_stoch = tf.reshape(prev_stoch, [-1, self.stoch * self.discrete])
        x = tf.concat([prev_stoch, tf.cast(prev_action, self.compute_dtype)], -1)
        x = self._dense_norm_act(self._img_in, self._img_in_norm, x)
        deter = self._cell(x, tf.cast(prev_state["deter"], self.compute_dtype))
        x = self._dense_norm_act(self._img_out, self._img_out_norm, deter)
        stats = self._suff_stats(self._img_dist(x))
        return self._with_sample(stats, deter, seed, sample)

    def obs_step(
        self, prev_state: State, prev_action, embed, is_first, seed=None, sample=True
    ) -> tuple[State, State]:
        """Posterior step: reset on `is_first`, take the prior, correct it with the embedding."""
        prev_state, prev_action = self._reset(prev_state, prev_action, is_first)
        prior_seed, post_seed = split_seed(seed, 2)
        prior = self.img_step(prev_state, prev_action, prior_seed, sample)
        x = tf.concat([prior["deter"], tf.cast(embed, self.compute_dtype)], -1)
        x = self._dense_norm_act(self._obs_out, self._obs_out_norm, x)
        stats = self._suff_stats(self._obs_dist(x))
        post = self._with_sample(stats, prior["deter"], post_seed, sample)
        return post, prior

    # ----- sequences -----------------------------------------------------
    def observe(
        self, embed, action, is_first, state: State | None = None, seed=None
    ) -> tuple[State, State]:
        """Posterior and prior states for a [B, T] sequence (batch-major out).

        `action[:, t]` is the action that led to observation t, as stored in
        replay. With `unroll` the loop is unrolled over the static length T,
        otherwise it is a `tf.scan` over time; both draw the same samples.
        """
        if state is None:
            state = self.initial(tf.shape(embed)[0])
        length = embed.shape[1]
        if not unrolled(self.unroll):
            return self._observe_scan(embed, action, is_first, state, seed)
        seeds = split_seed(seed, length)
        # Unstacked once: the gradient of T slices `embed[:, t]` would be T
        # full-size scatters (T^2 memory traffic); that of an unstack is one stack.
        steps = zip(*(tf.unstack(x, axis=1) for x in (action, embed, is_first)))
        posts, priors = [], []
        for t, (act, emb, first) in enumerate(steps):
            state, prior = self.obs_step(state, act, emb, first, seeds[t])
            posts.append(state)
            priors.append(prior)
        return _stack(posts, 1), _stack(priors, 1)

    def _observe_scan(self, embed, action, is_first, state: State, seed) -> tuple[State, State]:
        inputs = [_time_major(action), _time_major(embed), _time_major(is_first)]
        if seed is not None:
            inputs.append(step_seeds(seed, embed.shape[1]))

        def step(carry, xs):
            return self.obs_step(carry[0], *xs[:3], xs[3] if len(xs) > 3 else None)

        state = {k: tf.cast(v, self.compute_dtype) for k, v in state.items()}
        posts, priors = tf.scan(step, tuple(inputs), initializer=(state, state))
        batch_major = lambda s: {k: _time_major(v) for k, v in s.items()}
        return batch_major(posts), batch_major(priors)

    def imagine(self, action, state: State, seed=None) -> State:
        """Prior states for a given [B, T] action sequence (open-loop prediction)."""
        length = action.shape[1]
        seeds = split_seed(seed, length)
        priors = []
        for t, act in enumerate(tf.unstack(action, axis=1)):
            state = self.img_step(state, act, seeds[t])
            priors.append(state)
        return _stack(priors, 1)

    # ----- internals -----------------------------------------------------
    def _dense_norm_act(self, dense, norm, x):
        x = dense(x)
        if norm is not None:
            x = norm(x)
        return self._act(x)

    def _suff_stats(self, x: tf.Tensor) -> State:
        if self.discrete:
            return {"logit": tf.reshape(x, [-1, self.stoch, self.discrete])}
        mean, std = tf.split(x, 2, -1)
        if self._std_act == "softplus":
            std = tf.nn.softplus(std)
        elif self._std_act == "sigmoid":
            std = tf.nn.sigmoid(std)
        else:
            std = 2 * tf.nn.sigmoid(std / 2)
        return {"mean": mean, "std": std + self._min_std}

    def _with_sample(self, stats: State, deter, seed, sample: bool) -> State:
        dist = self.get_dist(stats)
        if sample:
            stoch = replicas.sample(dist, seed)
        else:
            stoch = dist.mode()
        return {"stoch": tf.cast(stoch, self.compute_dtype), "deter": deter, **stats}

    def _reset(self, state: State, action, is_first):
        """Zeroes the carried state and action where an episode starts."""
        keep = 1.0 - tf.cast(is_first, self.compute_dtype)

        def mask(x):
            k = tf.reshape(keep, [-1] + [1] * (len(x.shape) - 1))
            return tf.cast(x, self.compute_dtype) * k

        return {k: mask(v) for k, v in state.items()}, mask(action)


def _merge_last_two(x: tf.Tensor) -> tf.Tensor:
    """[..., S, K] -> [..., S * K], keeping static batch dimensions when known."""
    lead = x.shape[:-2]
    size = x.shape[-2] * x.shape[-1]
    if lead.is_fully_defined():
        return tf.reshape(x, lead.as_list() + [size])
    return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [size]], 0))


def _stack(states: list[State], axis: int) -> State:
    return {k: tf.stack([s[k] for s in states], axis) for k in states[0]}


def _time_major(x: tf.Tensor) -> tf.Tensor:
    """Swaps the first two axes ([B, T, ...] <-> [T, B, ...])."""
    return tf.transpose(x, [1, 0, *range(2, len(x.shape))])
