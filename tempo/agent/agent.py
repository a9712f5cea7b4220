"""The acting side of an agent: filter observations with the world model, act with the actor."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tempo.agent.bilevel import BilevelTrainer
from tempo.networks.rssm import split_seed

PolicyState = dict[str, tf.Tensor]


class Agent(tf.Module):
    """Wraps a trainer's world model and actor into a recurrent policy.

    The policy state is the posterior RSSM state plus the previous action; an
    observation with `is_first` resets both (inside `RSSM.obs_step`). `explore`
    samples the latent and the action. Otherwise the action is the actor's mode
    and the latent is sampled as in the released code, or is the posterior's
    mode with `eval_state_mean=True` (a deterministic policy).
    """

    def __init__(
        self,
        trainer: BilevelTrainer,
        seed: int = 0,
        eval_state_mean: bool = False,
        name: str = "agent",
    ):
        super().__init__(name=name)
        self.trainer = trainer
        self.eval_state_mean = eval_state_mean
        self.world_model = trainer.world_model
        self.actor = trainer.behavior.actor
        self.rng = tf.random.Generator.from_seed(seed + 1)
        self._compiled_step = tf.function(self.step, autograph=False)

    @property
    def obs_keys(self) -> list[str]:
        return sorted(self.world_model.encoder.shapes)

    @property
    def action_size(self) -> int:
        return self.world_model.rssm.action_size

    @property
    def discrete(self) -> bool:
        return self.actor.discrete

    def initial_state(self, batch_size: int) -> PolicyState:
        state = dict(self.world_model.rssm.initial(batch_size))
        state["action"] = tf.zeros([batch_size, self.action_size], self.world_model.compute_dtype)
        return state

    def policy(
        self, obs: dict, state: PolicyState | None, explore: bool = True
    ) -> tuple[np.ndarray, PolicyState]:
        """Actions (numpy, [N, action_size]) for a batch of observations."""
        keys = [*self.obs_keys, "is_first"]
        obs = {k: tf.convert_to_tensor(obs[k]) for k in keys}
        if state is None:
            state = self.initial_state(int(obs["is_first"].shape[0]))
        seed = tf.cast(self.rng.make_seeds(1)[:, 0], tf.int32)
        action, state = self._compiled_step(obs, state, bool(explore), seed)
        return action.numpy(), state

    def step(
        self,
        obs: dict,
        state: PolicyState,
        explore: bool,
        seed: tf.Tensor,
        sample_latent: bool | None = None,
    ):
        """One uncompiled policy step on tensors (the SavedModel export traces it).

        `sample_latent` (default: when exploring, or when not `eval_state_mean`)
        samples the posterior latent; the export passes False, so that the
        exported policy is a deterministic function of the observations."""
        if sample_latent is None:
            sample_latent = explore or not self.eval_state_mean
        wm = self.world_model
        data = wm.preprocess(obs)
        latent = {k: v for k, v in state.items() if k != "action"}
        embed = wm.encoder(data)
        obs_seed, act_seed = split_seed(seed, 2)
        latent, _ = wm.rssm.obs_step(
            latent, state["action"], embed, obs["is_first"], obs_seed, sample=sample_latent
        )
        dist = self.actor(wm.rssm.get_feat(latent))
        action = dist.sample(seed=act_seed) if explore else dist.mode()
        if self.discrete:  # exact one-hot (the straight-through sample is off by ~1e-7)
            action = tf.one_hot(tf.argmax(action, -1), self.action_size)
        action = tf.cast(action, wm.compute_dtype)
        return action, {**latent, "action": action}


def random_actions(
    rng: np.random.Generator, num: int, action_size: int, discrete: bool
) -> np.ndarray:
    """Uniform random actions in the environment convention (prefill)."""
    if discrete:
        return np.eye(action_size, dtype=np.float32)[rng.integers(0, action_size, num)]
    return rng.uniform(-1.0, 1.0, (num, action_size)).astype(np.float32)
