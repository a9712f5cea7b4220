"""The world model: encoder, RSSM and heads, with TEMPO's per-sample weighted loss."""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas
from tempo.agent.kl import balanced_kl
from tempo.networks import distributions as dists
from tempo.networks.decoder import Decoder
from tempo.networks.encoder import Encoder
from tempo.networks.heads import DistHead
from tempo.networks.rssm import RSSM, State, split_seed, step_seeds, unrolled

REWARD_TRANSFORMS = {"identity": tf.identity, "tanh": tf.tanh, "sign": tf.sign}


class WorldModel(tf.keras.Model):
    """Owns the representation (encoder + RSSM, `theta_rep`) and the heads that
    predict observations, rewards and (optionally) discounts from features."""

    def __init__(
        self,
        encoder: Encoder,
        rssm: RSSM,
        decoder: Decoder,
        reward_head: DistHead,
        discount_head: DistHead | None = None,
        discount: float = 0.99,
        reward_transform: str = "tanh",
        loss_scales: dict[str, float] | None = None,
        kl_balance: float = 0.8,
        kl_free: float = 0.0,
        kl_free_avg: bool = True,
        grad_heads: tuple[str, ...] = ("decoder", "reward", "discount"),
        unroll_imagination: bool = True,
        name: str = "world_model",
        dtype: str | tf.keras.mixed_precision.Policy | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        if reward_transform not in REWARD_TRANSFORMS:
            raise ValueError(
                f"Unknown reward_transform {reward_transform!r}; "
                f"choose one of {sorted(REWARD_TRANSFORMS)}."
            )
        unknown = set(grad_heads) - {"decoder", "reward", "discount"}
        if unknown:
            raise ValueError(
                f"Unknown grad_heads {sorted(unknown)}; use decoder, reward, discount."
            )
        self.encoder = encoder
        self.rssm = rssm
        self.decoder = decoder
        self.reward_head = reward_head
        self.discount_head = discount_head
        self.discount = discount
        self.reward_transform = reward_transform
        self.loss_scales = dict(loss_scales or {})
        self.kl_balance = kl_balance
        self.kl_free = kl_free
        self.kl_free_avg = kl_free_avg
        self.grad_heads = tuple(grad_heads)
        # The imagination rollout unrolled over the horizon, or a tf.scan (see RSSM.unroll).
        self.unroll_imagination = unroll_imagination

    # ----- variables -------------------------------------------------------
    @property
    def rep_variables(self) -> list[tf.Variable]:
        """theta_rep: what the task-aware upper loss differentiates (encoder + RSSM)."""
        return self.encoder.trainable_variables + self.rssm.trainable_variables

    def build_from_shapes(self, action_size: int) -> None:
        """Creates every variable with one tiny eager forward pass."""
        data = {k: tf.zeros([1, 1, *s], self._obs_dtype(k)) for k, s in self.encoder.shapes.items()}
        data.update(
            action=tf.zeros([1, 1, action_size]),
            reward=tf.zeros([1, 1]),
            is_first=tf.ones([1, 1], tf.bool),
            is_terminal=tf.zeros([1, 1], tf.bool),
        )
        data = self.preprocess(data)
        _, post, _ = self.infer(data, self.rssm.initial(1))
        self.log_likelihoods(data, post)

    def _obs_dtype(self, key: str) -> tf.DType:
        return tf.uint8 if len(self.encoder.shapes[key]) == 3 else tf.float32

    # ----- step 0: preprocess -------------------------------------------------
    def preprocess(self, data: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """uint8 images -> [-0.5, 0.5]; transformed rewards; discount targets
        gamma * (1 - is_terminal)."""
        dtype = self.compute_dtype
        out = {}
        for key, value in data.items():
            value = tf.convert_to_tensor(value)
            if value.dtype == tf.uint8:
                value = tf.cast(value, dtype) / 255.0 - 0.5
            elif value.dtype.is_floating:
                value = tf.cast(value, dtype)
            out[key] = value
        if "reward" in out:
            out["reward"] = REWARD_TRANSFORMS[self.reward_transform](out["reward"])
        if "is_terminal" in out:
            out["discount"] = self.discount * (1.0 - tf.cast(out["is_terminal"], dtype))
        return out

    # ----- step 1: infer --------------------------------------------------------
    def infer(
        self, data: dict, state: State, seed=None, embed: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, State, State]:
        """Embeds the observations (unless `embed` is given) and runs the RSSM over them."""
        if embed is None:
            embed = self.encoder(data)
        post, prior = self.rssm.observe(embed, data["action"], data["is_first"], state, seed)
        return embed, post, prior

    def latent_entropies(self, post: State, prior: State) -> dict[str, tf.Tensor]:
        """Mean entropy of the posterior and prior latent distributions (logged)."""
        dist = self.rssm.get_dist
        return {
            "prior_entropy": tf.reduce_mean(dist(prior).entropy()),
            "post_entropy": tf.reduce_mean(dist(post).entropy()),
        }

    # ----- step 4: per-sample terms and the weighted loss ------------------------
    def log_likelihoods(self, data: dict, post: State) -> dict[str, tf.Tensor]:
        """Per-sample [B, T] log-likelihood of every predicted quantity."""
        feat = self.rssm.get_feat(post)
        feat_for = lambda head: feat if head in self.grad_heads else tf.stop_gradient(feat)
        target = dists.to_distribution_dtype  # 16-bit targets: float32 like the distributions
        likes = {}
        for key, dist in self.decoder(feat_for("decoder")).items():
            likes[key] = dist.log_prob(target(data[key]))
        likes["reward"] = self.reward_head(feat_for("reward")).log_prob(target(data["reward"]))
        if self.discount_head is not None:
            disc = target(data["discount"])
            likes["discount"] = self.discount_head(feat_for("discount")).log_prob(disc)
        return likes

    def kl_terms(self, post: State, prior: State) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-sample KL(sg(post) || prior) and KL(post || sg(prior)) (same values,
        different gradients)."""
        sg = lambda s: {k: tf.stop_gradient(v) for k, v in s.items()}
        dist = self.rssm.get_dist
        train_prior = dist(sg(post)).kl_divergence(dist(prior))
        train_post = dist(post).kl_divergence(dist(sg(prior)))
        return train_prior, train_post

    def weighted_loss(
        self,
        likes: dict[str, tf.Tensor],
        kls: tuple[tf.Tensor, tf.Tensor],
        weights: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """L_low = sum_k scale_k * -mean(w * l_k) + scale_kl * balanced KL (w = 1 if None)."""
        return weighted_model_loss(
            likes, kls, weights, self.loss_scales, self.kl_balance, self.kl_free, self.kl_free_avg
        )

    # ----- open-loop predictions for TensorBoard -----------------------------------
    def video_prediction(
        self, data: dict, key: str, context: int = 5, num: int = 6, seed=None
    ) -> tf.Tensor:
        """Truth / model / error strips of an image key: the first `context` steps
        are filtered with observations, the rest predicted open-loop from the
        replayed actions. Returns uint8 [T, 3H, num * W, C] (sequences side by side)."""
        data = {k: v[:num] for k, v in self.preprocess(data).items()}
        obs_seed, img_seed = split_seed(seed, 2)
        embed = self.encoder({k: v[:, :context] for k, v in data.items()})
        start = self.rssm.initial(tf.shape(embed)[0])
        post, _ = self.rssm.observe(
            embed, data["action"][:, :context], data["is_first"][:, :context], start, obs_seed
        )
        recon = self.decoder(self.rssm.get_feat(post))[key].mode()
        last = {k: v[:, -1] for k, v in post.items()}
        prior = self.rssm.imagine(data["action"][:, context:], last, img_seed)
        openl = self.decoder(self.rssm.get_feat(prior))[key].mode()
        truth = tf.cast(data[key], recon.dtype) + 0.5
        model = tf.concat([recon, openl], 1) + 0.5
        error = (model - truth + 1) / 2
        video = tf.concat([truth, model, error], 2)  # [N, T, 3H, W, C]
        video = tf.transpose(video, [1, 2, 0, 3, 4])  # [T, 3H, N, W, C]
        shape = tf.shape(video)
        video = tf.reshape(video, [shape[0], shape[1], shape[2] * shape[3], shape[4]])
        return tf.cast(tf.clip_by_value(video, 0.0, 1.0) * 255, tf.uint8)

    # ----- imagination for the behaviour step ----------------------------------
    def imagine(
        self,
        policy: DistHead,
        start: State,
        is_terminal: tf.Tensor,
        horizon: int,
        seed=None,
        onehot: tuple[int, int] | None = None,
    ) -> dict[str, tf.Tensor]:
        """Rolls the prior forward `horizon` steps from every start state with
        actions sampled from `policy(features)`. Returns time-major [H + 1, N]
        tensors: feat, action, discount, weight (cumulative discount) and the RSSM
        state entries; and [H, N] `policy`: the policy's raw outputs at states
        0..H-1, which chose actions 1..H (a tuple for `policy.distribution`), so
        that the actor loss reuses that forward pass instead of repeating it.
        `onehot`: `rssm.onehot_layout`, for the policy and discount heads to
        gather the kernel rows of the sampled one-hot latents (MLP's `onehot`);
        None keeps their dense first layer."""
        flat = lambda x: tf.reshape(x, [-1, *x.shape[2:]])
        state = {k: flat(v) for k, v in start.items()}
        feat = self.rssm.get_feat(state)
        action = tf.zeros([tf.shape(feat)[0], self.rssm.action_size], feat.dtype)
        params_at = lambda feat: tuple(policy.params(tf.stop_gradient(feat), onehot=onehot))

        def step(carry, step_seed):
            state, _, _, params = carry
            act_seed, img_seed = split_seed(step_seed, 2)
            action = replicas.sample(policy.distribution(params), act_seed)
            state = self.rssm.img_step(state, action, img_seed)
            feat = self.rssm.get_feat(state)
            return state, feat, tf.cast(action, feat.dtype), params_at(feat)

        first = (state, feat, action, params_at(feat))
        if unrolled(self.unroll_imagination):
            steps = [first]
            for step_seed in split_seed(seed, horizon):
                steps.append(step(steps[-1], step_seed))
            states, feats, actions, params = [
                tf.nest.map_structure(lambda *x: tf.stack(x, 0), *part) for part in zip(*steps)
            ]
        else:
            if seed is None:  # stateful sampling: scan over step indices
                body, elems = (lambda carry, _: step(carry, None)), tf.range(horizon)
            else:
                body, elems = step, step_seeds(seed, horizon)
            rest = tf.scan(body, elems, initializer=first)
            states, feats, actions, params = tf.nest.map_structure(
                lambda x, r: tf.concat([x[None], r], 0), first, rest
            )
        # Unrolled, the policy's call on the last state feeds nothing and is pruned.
        policy_params = tuple(p[:-1] for p in params)
        seq = dict(states, feat=feats, action=actions, policy=policy_params)
        dtype = tf.float32 if feat.dtype in (tf.float16, tf.bfloat16) else feat.dtype
        if self.discount_head is not None:
            disc = self.discount_head(seq["feat"], onehot=onehot).mean()
            first = self.discount * (1.0 - tf.cast(flat(is_terminal), dtype))
            disc = tf.concat([first[None], disc[1:]], 0)
        else:
            disc = self.discount * tf.ones(tf.shape(seq["feat"])[:-1], dtype)
        seq["discount"] = disc
        seq["weight"] = tf.math.cumprod(tf.concat([tf.ones_like(disc[:1]), disc[:-1]], 0), 0)
        return seq


def weighted_model_loss(
    likes: dict[str, tf.Tensor],
    kls: tuple[tf.Tensor, tf.Tensor],
    weights: tf.Tensor | None,
    loss_scales: dict[str, float],
    kl_balance: float,
    kl_free: float,
    kl_free_avg: bool,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """docs/design.md, "One update", step 4: L_low = sum_k scale_k * L_k + scale_kl * L_kl with
    L_k = -mean(w * l_k) and the balanced KL weighted per sample."""
    losses = {}
    for key, like in likes.items():
        w = 1.0 if weights is None else tf.cast(weights, like.dtype)
        losses[key] = -tf.reduce_mean(w * like)
    losses["kl"] = balanced_kl(
        kls[0], kls[1], weights, kl_balance, kl_free, kl_free_avg, mean=replicas.global_mean
    )
    total = tf.add_n(
        [loss_scales.get(k, 1.0) * tf.cast(v, losses["kl"].dtype) for k, v in losses.items()]
    )
    metrics = {f"{k}_loss": v for k, v in losses.items()}
    metrics["kl"] = tf.reduce_mean(kls[0])
    metrics["model_loss"] = total
    return total, metrics
