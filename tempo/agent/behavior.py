"""DreamerV2's actor-critic, trained on imagined rollouts (docs/design.md, "One update", step 7)."""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas
from tempo.agent.numerics import all_finite
from tempo.agent.optimizer import Optimizer
from tempo.agent.returns import lambda_return
from tempo.agent.world_model import WorldModel
from tempo.networks.heads import Actor, DistHead
from tempo.networks.rssm import State

ACTOR_GRADS = ("auto", "dynamics", "reinforce", "both")


class ActorCritic(tf.Module):
    """Actor, critic and the slowly updated critic copy V_slow.

    The actor maximizes lambda-returns by backpropagating through the learned
    dynamics ('dynamics', continuous actions) or by REINFORCE with V_slow as
    baseline ('reinforce', discrete actions), plus an entropy bonus; the critic
    regresses the returns weighted by the cumulative discount.

    One step is three phases so that a trainer can run the gradient phase on
    every replica and the variable updates once: `gradients` (+ `finite`),
    `apply` (or `skip`), and `finish`, which updates V_slow after the critic's
    step, as the released code does.
    """

    def __init__(
        self,
        actor: Actor,
        critic: DistHead,
        slow_critic: DistHead,
        actor_opt: Optimizer,
        critic_opt: Optimizer,
        horizon: int = 15,
        lambda_: float = 0.95,
        actor_grad: str = "auto",
        actor_grad_mix: float = 0.1,
        actor_ent: float = 2e-3,
        slow_target_update: int = 100,
        slow_target_fraction: float = 1.0,
        name: str = "behavior",
    ):
        super().__init__(name=name)
        if actor_grad not in ACTOR_GRADS:
            raise ValueError(f"Unknown actor_grad {actor_grad!r}; choose one of {ACTOR_GRADS}.")
        if actor_grad == "auto":
            actor_grad = "reinforce" if actor.discrete else "dynamics"
        self.actor, self.critic, self.slow_critic = actor, critic, slow_critic
        self.actor_opt, self.critic_opt = actor_opt, critic_opt
        self.horizon = horizon
        self.lambda_ = lambda_
        self.actor_grad = actor_grad
        self.actor_grad_mix = actor_grad_mix
        self.actor_ent = actor_ent
        self.slow_target_update = slow_target_update
        self.slow_target_fraction = slow_target_fraction
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")

    def build(self, feat_size: int) -> None:
        feat = tf.zeros([1, feat_size])
        for net in (self.actor, self.critic, self.slow_critic):
            net(feat)
        self.slow_critic.set_weights(self.critic.get_weights())
        self.actor_opt.build(self.actor.trainable_variables)
        self.critic_opt.build(self.critic.trainable_variables)

    def gradients(
        self,
        world_model: WorldModel,
        start: State,
        is_terminal: tf.Tensor,
        seed=None,
        loss_scale: tf.Tensor | None = None,
        onehot_gather: bool = True,
    ) -> tuple[list, list, dict]:
        """Actor and critic gradients and metrics of the whole batch (averaged over
        replicas under `tf.distribute`: every loss here is a mean over B x T).
        `loss_scale` (float16) multiplies the losses and divides the gradients.
        `onehot_gather`: the heads gather the kernel rows of one-hot latents
        (`onehot_prefix_matmul`); False keeps the dense product, which XLA needs."""
        scale = (lambda x: x) if loss_scale is None else (lambda x: x * loss_scale)
        with tf.GradientTape() as actor_tape:
            # Imagined features start with sampled one-hot latents.
            layout = world_model.rssm.onehot_layout if onehot_gather else None
            seq = world_model.imagine(self.actor, start, is_terminal, self.horizon, seed, layout)
            reward = world_model.reward_head(seq["feat"], onehot=layout).mode()
            value = self.slow_critic(seq["feat"], onehot=layout).mode()
            target = self.target(reward, value, seq)
            actor_loss, metrics = self.actor_loss(seq, target, value)
            scaled_actor_loss = scale(actor_loss)
        with tf.GradientTape() as critic_tape:
            critic_loss = self.critic_loss(seq, target, layout)
            scaled_critic_loss = scale(critic_loss)
        actor_grads = actor_tape.gradient(scaled_actor_loss, self.actor.trainable_variables)
        critic_grads = critic_tape.gradient(scaled_critic_loss, self.critic.trainable_variables)
        if loss_scale is not None:
            actor_grads = [g / loss_scale for g in actor_grads]
            critic_grads = [g / loss_scale for g in critic_grads]
        metrics.update(
            actor_loss=actor_loss,
            critic_loss=critic_loss,
            imag_reward_mean=tf.reduce_mean(reward),
            imag_return_mean=tf.reduce_mean(target),
            imag_slow_value_mean=tf.reduce_mean(value),
        )
        return replicas.all_mean((list(actor_grads), list(critic_grads), metrics))

    @staticmethod
    def finite(actor_grads, critic_grads, metrics) -> tf.Tensor:
        """Computed from all-reduced values, so every replica agrees."""
        losses = [metrics["actor_loss"], metrics["critic_loss"]]
        return all_finite([*losses, *actor_grads, *critic_grads])

    def apply(self, actor_grads, critic_grads) -> dict[str, tf.Tensor]:
        actor, critic = self.actor.trainable_variables, self.critic.trainable_variables
        return {
            "actor_grad_norm": self.actor_opt.apply(actor_grads, actor),
            "critic_grad_norm": self.critic_opt.apply(critic_grads, critic),
        }

    @staticmethod
    def skip(dtype: tf.DType = tf.float32) -> dict[str, tf.Tensor]:
        nan = tf.constant(float("nan"), dtype)
        return {"actor_grad_norm": nan, "critic_grad_norm": nan}

    def finish(self, metrics: dict, finite: tf.Tensor) -> dict[str, tf.Tensor]:
        metrics = dict(metrics)
        metrics["behavior_skipped"] = 1.0 - tf.cast(finite, tf.float32)
        self.update_slow_critic()
        self.updates.assign_add(1)
        return metrics

    def target(self, reward: tf.Tensor, value: tf.Tensor, seq: dict) -> tf.Tensor:
        """Lambda-returns of the imagined sequence from the V_slow values of its
        states, bootstrapped with the last one: [H, N]."""
        disc = tf.cast(seq["discount"], value.dtype)
        reward = tf.cast(reward, value.dtype)
        return lambda_return(reward[:-1], value[:-1], disc[:-1], value[-1], self.lambda_)

    def actor_loss(self, seq: dict, target: tf.Tensor, value: tf.Tensor) -> tuple[tf.Tensor, dict]:
        """The policy at states 0..H-2 (from imagination's own forward pass) and
        the actions 1..H-1 it chose; `value` is V_slow of states 0..H ([H + 1, N]),
        the REINFORCE baseline."""
        policy = self.actor.distribution(tuple(p[:-1] for p in seq["policy"]))
        metrics = {}
        if self.actor_grad == "dynamics":
            objective = target[1:]
        else:
            baseline = value[:-2]
            advantage = tf.stop_gradient(target[1:] - baseline)
            action = tf.stop_gradient(seq["action"][1:-1])
            objective = policy.log_prob(tf.cast(action, advantage.dtype)) * advantage
            if self.actor_grad == "both":
                mix = self.actor_grad_mix
                objective = mix * target[1:] + (1 - mix) * objective
        entropy = policy.entropy()
        objective += self.actor_ent * entropy
        weight = tf.stop_gradient(tf.cast(seq["weight"], objective.dtype))
        metrics["actor_entropy"] = tf.reduce_mean(entropy)
        return -tf.reduce_mean(weight[:-2] * objective), metrics

    def critic_loss(
        self, seq: dict, target: tf.Tensor, onehot: tuple[int, int] | None = None
    ) -> tf.Tensor:
        dist = self.critic(tf.stop_gradient(seq["feat"][:-1]), onehot=onehot)
        weight = tf.stop_gradient(tf.cast(seq["weight"], target.dtype))
        return -tf.reduce_mean(dist.log_prob(tf.stop_gradient(target)) * weight[:-1])

    def update_slow_critic(self) -> None:
        """Every `slow_target_update` updates (counting from the first, after its
        critic step): V_slow <- mix * V + (1 - mix) * V_slow, where mix is
        `slow_target_fraction` except at the first update, which copies V."""

        def update():
            mix = tf.where(tf.equal(self.updates, 0), 1.0, float(self.slow_target_fraction))
            for slow, fast in zip(self.slow_critic.variables, self.critic.variables):
                share = tf.cast(mix, slow.dtype)
                slow.assign(share * fast + (1 - share) * slow)
            return tf.constant(True)

        due = tf.equal(self.updates % self.slow_target_update, 0)
        tf.cond(due, update, lambda: tf.constant(False))
