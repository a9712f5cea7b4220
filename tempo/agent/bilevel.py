"""The compiled bi-level TEMPO trainer; with `meta=False` it is plain DreamerV2.

`BilevelTrainer.train` runs one update (docs/design.md, "One update"), each step a
named method: infer, task-aware (upper) loss, meta weights, weighted (lower)
loss, model step, meta step (hypergradient), behaviour step.
"""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas
from tempo.agent.behavior import ActorCritic
from tempo.agent.hypergradient import SIGNS, bilevel_gradients, meta_gradient
from tempo.agent.loss_scale import LossScale
from tempo.agent.numerics import all_finite
from tempo.agent.optimizer import Optimizer
from tempo.agent.world_model import WorldModel
from tempo.networks.meta_weighter import MetaWeighter
from tempo.networks.rssm import State, split_seed
from tempo.networks.value_normalizer import ValueNormalizer


class BilevelTrainer(tf.Module):
    """Owns the world model, meta-weighter, actor-critic, their optimizers, the
    update counter and the random generator, so one checkpoint of it restores
    a run exactly."""

    def __init__(
        self,
        world_model: WorldModel,
        behavior: ActorCritic,
        meta_weighter: MetaWeighter,
        model_opt: Optimizer,
        meta_opt: Optimizer,
        meta: bool = True,
        posterior_passes: int = 2,
        hypergrad_sign: str = "released",
        lookahead_lr: float | None = None,
        jit_compile: bool = False,
        seed: int = 0,
        strategy: tf.distribute.Strategy | None = None,
        loss_scale: LossScale | None = None,
        name: str = "trainer",
    ):
        super().__init__(name=name)
        if posterior_passes not in (1, 2):
            raise ValueError(f"posterior_passes must be 1 or 2, got {posterior_passes}.")
        if hypergrad_sign not in SIGNS:
            raise ValueError(f"Unknown hypergrad_sign {hypergrad_sign!r}; choose one of {SIGNS}.")
        self.world_model = world_model
        self.behavior = behavior
        self.meta_weighter = meta_weighter
        self.model_opt = model_opt
        self.meta_opt = meta_opt
        self.meta = meta
        self.posterior_passes = posterior_passes
        self.hypergrad_sign = hypergrad_sign
        # eta of the one-step look-ahead; the model learning rate unless set.
        self.lookahead_lr = model_opt.lr if lookahead_lr is None else lookahead_lr
        self.jit_compile = jit_compile
        # None: one device, the plain update. A strategy: data parallelism, the
        # variables must have been created in its scope (`build_trainer` does).
        self.strategy = strategy
        self.loss_scale = loss_scale  # float16 compute only
        self.rng = tf.random.Generator.from_seed(seed)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="train_step")
        # Consecutive updates skipped because a loss or gradient was not finite.
        self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False, name="nonfinite")
        # Never 16-bit (it feeds the upper loss): float32 under mixed precision.
        mixed = world_model.compute_dtype in ("float16", "bfloat16")
        self.value_norm = ValueNormalizer(dtype="float32" if mixed else world_model.dtype_policy)
        self._compiled = tf.function(self._train_step, jit_compile=jit_compile, autograph=False)
        self._built = False

    # ----- set-up ---------------------------------------------------------------
    def build(self) -> BilevelTrainer:
        """Creates every variable and optimizer slot eagerly (before compiling)."""
        wm = self.world_model
        wm.build_from_shapes(wm.rssm.action_size)
        self.behavior.build(wm.rssm.feat_size)
        self.meta_weighter(tf.zeros([1, self.meta_input_size]))
        self.value_norm.normalize(tf.zeros([2]), tf.zeros([2]))
        self.model_opt.build(wm.trainable_variables)
        self.meta_opt.build(self.meta_weighter.trainable_variables)
        self._built = True
        return self

    @property
    def meta_input_size(self) -> int:
        rssm = self.world_model.rssm
        return rssm.deter + 2 * rssm.stats_size + 2

    def initial_state(self, batch_size: int) -> State:
        """Zero RSSM states for `batch_size` sequences (this worker's share of the
        global batch under a strategy, split over its replicas)."""
        return self.distribute(self.world_model.rssm.initial(batch_size))

    def worker_batch_size(self, batch_size: int) -> int:
        """This worker's share of a global batch of `batch_size` sequences."""
        if self.strategy is None:
            return batch_size
        replicas_total = self.strategy.num_replicas_in_sync
        if batch_size % replicas_total:
            raise ValueError(
                f"The batch of {batch_size} sequences does not split over "
                f"{replicas_total} replicas; use a multiple of {replicas_total}."
            )
        return batch_size // replicas_total * len(self.strategy.extended.worker_devices)

    def distribute(self, values):
        """Splits a batch (a nest of [B, ...] arrays) into equal per-replica shards,
        replica r taking rows [r B/R, (r+1) B/R) of this worker's rows; the
        batch itself with one device."""
        if self.strategy is None:
            return values
        local = len(self.strategy.extended.worker_devices)
        size = int(tf.nest.flatten(values)[0].shape[0])
        if size % local:
            raise ValueError(f"Batch of {size} does not split over {local} local replicas.")
        rows = size // local

        def shard(ctx):
            index = ctx.replica_id_in_sync_group % local
            return tf.nest.map_structure(lambda x: x[index * rows : (index + 1) * rows], values)

        return self.strategy.experimental_distribute_values_from_function(shard)

    def parameter_counts(self) -> dict[str, int]:
        """All variables (batch-norm statistics included) per network."""
        count = lambda m: int(sum(v.shape.num_elements() for v in m.variables))
        return {
            "world_model": count(self.world_model),
            "meta_weighter": count(self.meta_weighter),
            "actor": count(self.behavior.actor),
            "critic": count(self.behavior.critic),
        }

    # ----- the update -------------------------------------------------------------
    def train(self, data: dict[str, tf.Tensor], state: State) -> tuple[State, dict]:
        """One compiled update on a [B, T] batch; returns the last posterior state
        (to carry into the next batch of the same sequences) and scalar metrics.

        Under a strategy `data` is this worker's batch (split here over its
        replicas) or an already distributed one, `state` the per-replica state
        that `initial_state` or the previous update returned, and the metrics
        are those of the global batch."""
        if not self._built:
            self.build()
        if self.strategy is not None and not _is_distributed(data):
            data = self.distribute(data)
        return self._compiled(data, state)

    def _run(self, fn, *args):
        """`fn` on every replica (under a strategy) or once."""
        return fn(*args) if self.strategy is None else self.strategy.run(fn, args=args)

    def _first(self, values):
        """This worker's first replica's copy of values that all replicas agree on."""
        if self.strategy is None:
            return values
        return tf.nest.map_structure(
            lambda v: self.strategy.experimental_local_results(v)[0], values
        )

    def _train_step(self, data: dict, state: State) -> tuple[State, dict]:
        # Seeds are drawn once, outside the replicas, so that all share them.
        model_seed, behavior_seed = split_seed(self.rng.make_seeds(1)[:, 0], 2)
        g_low, h, metrics, post, is_terminal = self._run(
            self._model_gradients, data, state, model_seed
        )
        finite = self._first(self._run(self._finite, g_low, h, metrics))
        metrics = dict(self._first(metrics))
        dtype = metrics["model_loss"].dtype

        def steps():  # 5 and 6
            return self._first(self._run(self._model_and_meta_steps, g_low, h))

        def skip():
            nan = tf.constant(float("nan"), dtype)
            return {"model_grad_norm": nan, **({"meta_grad_norm": nan} if self.meta else {})}

        metrics.update(tf.cond(finite, steps, skip))
        self.nonfinite_streak.assign(
            tf.where(finite, tf.zeros_like(self.nonfinite_streak), self.nonfinite_streak + 1)
        )
        metrics["update_skipped"] = 1.0 - tf.cast(finite, tf.float32)
        metrics["nonfinite_streak"] = self.nonfinite_streak
        metrics.update(self._behavior_step(post, is_terminal, behavior_seed, finite))
        if self.loss_scale is not None:
            metrics["loss_scale"] = self.loss_scale.scale
            both = tf.logical_and(finite, tf.equal(metrics["behavior_skipped"], 0.0))
            self.loss_scale.update(both)
        self.step.assign_add(1)
        # A non-finite batch must not poison the state carried into the next one.
        last = self._run(_last_state, post, finite)
        return last, {k: tf.cast(v, tf.float32) for k, v in metrics.items()}

    def _model_gradients(self, data: dict, state: State, seed):
        """Steps 1-4 and the gradients of steps 5 and 6 on this replica's shard,
        averaged over replicas (the losses are means over equal shards)."""
        data = self.world_model.preprocess(data)
        model_vars = self.world_model.trainable_variables
        scale = None if self.loss_scale is None else self.loss_scale.scale
        losses = lambda: _scaled(self.losses(data, state, seed), scale)
        if self.meta:
            reduce_up = None
            if scale is not None or replicas.context():
                # The contraction needs the unscaled, global g_up.
                reduce_up = lambda g: replicas.all_mean(_unscaled(g, scale))
            g_low, _, h, aux = bilevel_gradients(
                losses,
                model_vars,
                self.world_model.rep_variables,
                self.meta_weighter.trainable_variables,
                reduce_up=reduce_up,
            )
        else:
            with tf.GradientTape() as tape:
                lower, _, aux = losses()
            g_low, h = tape.gradient(lower, model_vars), []
        g_low, h = _unscaled(g_low, scale), _unscaled(h, scale)
        g_low, h, metrics = replicas.all_mean((list(g_low), list(h), dict(aux["metrics"])))
        post = {k: tf.stop_gradient(v) for k, v in aux["post"].items()}
        return g_low, h, metrics, post, data["is_terminal"]

    @staticmethod
    def _finite(g_low, h, metrics) -> tf.Tensor:
        """From all-reduced values, so every replica takes the same branch."""
        return all_finite([metrics["model_loss"], *g_low, *h])

    def _model_and_meta_steps(self, g_low, h) -> dict:
        norms = {"model_grad_norm": self.model_step(g_low)}
        if self.meta:
            norms["meta_grad_norm"] = self.meta_step(h)
        return norms

    def _behavior_step(self, post: State, is_terminal, seed, allowed) -> dict:
        """Step 7 with the updated world model; skipped with the model step."""
        behavior = self.behavior
        scale = None if self.loss_scale is None else self.loss_scale.scale
        # XLA cannot compile the heads' one-hot gather: the dense product then.
        gather = not self.jit_compile
        actor_grads, critic_grads, metrics = self._run(
            behavior.gradients, self.world_model, post, is_terminal, seed, scale, gather
        )
        finite = self._first(self._run(behavior.finite, actor_grads, critic_grads, metrics))
        finite = tf.logical_and(finite, allowed)
        metrics = dict(self._first(metrics))
        dtype = metrics["actor_loss"].dtype

        def steps():
            return self._first(self._run(behavior.apply, actor_grads, critic_grads))

        metrics.update(tf.cond(finite, steps, lambda: behavior.skip(dtype)))
        return behavior.finish(metrics, finite)

    def losses(self, data: dict, state: State, seed=None) -> tuple[tf.Tensor, tf.Tensor, dict]:
        """Steps 1-4 on a preprocessed batch: returns (lower loss, upper loss, aux)
        with aux holding the lower loss's post and prior, and the metrics.

        With `posterior_passes = 2` (the released code) the upper loss and the
        values come from one RSSM pass and the weights and the lower loss from
        a second pass with independent posterior samples (the embedding, which
        is deterministic, is computed once); with 1 both share one pass. The
        lower loss's pass always samples with `seed`, as DreamerV2's does."""
        wm = self.world_model
        metrics = {}
        if self.meta:
            value_post, value_prior, post, prior = self.posterior_passes_of(data, state, seed)
            upper, v_post_n, v_prior_n = self.task_aware_loss(value_post, value_prior)
            weights = self.meta_weights(post, prior, v_post_n, v_prior_n)
            metrics.update(meta_metrics(weights, upper, self.value_norm))
        else:
            _, post, prior = wm.infer(data, state, seed)
            upper, weights = tf.zeros([], tf.float32), None
        likes = wm.log_likelihoods(data, post)
        lower, model_metrics = wm.weighted_loss(likes, wm.kl_terms(post, prior), weights)
        metrics.update(model_metrics)
        metrics.update(wm.latent_entropies(post, prior))
        return lower, upper, {"post": post, "prior": prior, "metrics": metrics}

    def posterior_passes_of(
        self, data: dict, state: State, seed=None
    ) -> tuple[State, State, State, State]:
        """Step 1 as TEMPO runs it: (post, prior) of the pass that gives the values
        and the upper loss, then of the pass that gives the weights and the lower
        loss (the same pass with `posterior_passes = 1`). One method, so that an
        analysis of the weights draws exactly the update's samples for a seed."""
        wm = self.world_model
        if self.posterior_passes == 1:
            _, post, prior = wm.infer(data, state, seed)
            return post, prior, post, prior
        embed, value_post, value_prior = wm.infer(data, state, split_seed(seed, 1)[0])
        _, post, prior = wm.infer(data, state, seed, embed=embed)
        return value_post, value_prior, post, prior

    def task_aware_loss(self, post: State, prior: State) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Step 2: L_up = mean((v_post_n - v_prior_n)^2) under V_slow, with the two
        value sets normalized together by batch statistics."""
        v_post_n, v_prior_n = self.normalize_values(*self.slow_values(post, prior))
        return tf.reduce_mean(tf.square(v_post_n - v_prior_n)), v_post_n, v_prior_n

    def slow_values(self, post: State, prior: State) -> tuple[tf.Tensor, tf.Tensor]:
        """V_slow of the posterior and of the prior features, [B, T] each."""
        rssm, critic = self.world_model.rssm, self.behavior.slow_critic
        return critic(rssm.get_feat(post)).mode(), critic(rssm.get_feat(prior)).mode()

    def normalize_values(
        self, v_post: tf.Tensor, v_prior: tf.Tensor, training: bool = True
    ) -> tuple:
        """The two value sets standardized together (batch statistics; the moving
        ones with `training=False`, which only an analysis asks for)."""
        return self.value_norm.normalize(v_post, v_prior, training=training)

    def meta_weights(
        self, post: State, prior: State, v_post_n, v_prior_n, training: bool = True
    ) -> tf.Tensor:
        """Step 3: w = N(sg(deter, post stats, prior stats, normalized values)), [B, T]
        (N's batch norm on batch statistics; the moving ones with `training=False`)."""
        rssm = self.world_model.rssm
        dtype = self.meta_weighter.compute_dtype
        parts = [
            post["deter"],
            rssm.get_stats(post),
            rssm.get_stats(prior),
            v_post_n[..., None],
            v_prior_n[..., None],
        ]
        inputs = tf.concat([tf.cast(p, dtype) for p in parts], -1)
        return self.meta_weighter(tf.stop_gradient(inputs), training=training)

    def model_step(self, grads) -> tf.Tensor:
        """Step 5: Adam on theta with the lower-loss gradient."""
        return self.model_opt.apply(grads, self.world_model.trainable_variables)

    def meta_step(self, h) -> tf.Tensor:
        """Step 6: Adam on alpha with the hypergradient in the configured sign."""
        grads = meta_gradient(h, self.hypergrad_sign, self.lookahead_lr)
        return self.meta_opt.apply(grads, self.meta_weighter.trainable_variables)

    def meta_gradient(self, data: dict, state: State, seed) -> list[tf.Tensor]:
        """The gradient the meta step would apply on this batch (nothing updated);
        `seed` is a stateless seed. For tests and diagnostics."""
        data = self.world_model.preprocess(data)
        _, _, h, _ = bilevel_gradients(
            lambda: self.losses(data, state, seed),
            self.world_model.trainable_variables,
            self.world_model.rep_variables,
            self.meta_weighter.trainable_variables,
        )
        return meta_gradient(h, self.hypergrad_sign, self.lookahead_lr)


def _scaled(losses, scale):
    """(lower, upper, aux) with both losses times the loss scale (if any)."""
    if scale is None:
        return losses
    lower, upper, aux = losses
    return lower * scale, upper * scale, aux


def _unscaled(grads, scale) -> list:
    return list(grads) if scale is None else [g / scale for g in grads]


def _is_distributed(values) -> bool:
    return any(isinstance(v, tf.distribute.DistributedValues) for v in tf.nest.flatten(values))


def _last_state(post: State, finite) -> State:
    return {k: tf.where(finite, v[:, -1], tf.zeros_like(v[:, -1])) for k, v in post.items()}


def meta_metrics(weights: tf.Tensor, upper: tf.Tensor, norm: ValueNormalizer) -> dict:
    """Statistics of the global batch's weights (equal on every replica)."""
    mean, var = replicas.moments(tf.reshape(weights, [-1]), [0])
    return {
        "upper_loss": upper,
        "meta_weight_mean": mean,
        "meta_weight_std": tf.sqrt(var),
        "meta_weight_min": replicas.global_min(weights),
        "meta_weight_max": replicas.global_max(weights),
        "value_norm_mean": norm.moving_mean[0],
        "value_norm_std": tf.sqrt(norm.moving_variance[0]),
    }
