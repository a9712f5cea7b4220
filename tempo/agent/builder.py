"""Assembles a `BilevelTrainer` from an environment's observation and action spaces.

Every network and optimizer comes from a factory argument, so a gin file can
bind each constructor (`build_trainer.rssm = @RSSM`, `RSSM.deter = 200`) while
this module stays free of gin.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import tensorflow as tf

from tempo.agent.behavior import ActorCritic
from tempo.agent.bilevel import BilevelTrainer
from tempo.agent.loss_scale import LossScale
from tempo.agent.optimizer import Optimizer
from tempo.agent.world_model import WorldModel
from tempo.networks.decoder import Decoder
from tempo.networks.encoder import Encoder
from tempo.networks.heads import Actor, DistHead
from tempo.networks.meta_weighter import MetaWeighter
from tempo.networks.rssm import RSSM

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def build_trainer(
    obs_shapes: dict[str, tuple[int, ...]],
    action_size: int,
    discrete: bool,
    seed: int = 0,
    pred_discount: bool = True,
    encoder: Callable[..., Encoder] = Encoder,
    decoder: Callable[..., Decoder] = Decoder,
    rssm: Callable[..., RSSM] = RSSM,
    reward_head: Callable[..., DistHead] = DistHead,
    discount_head: Callable[..., DistHead] = DistHead,
    actor: Callable[..., Actor] = Actor,
    critic: Callable[..., DistHead] = DistHead,
    meta_weighter: Callable[..., MetaWeighter] = MetaWeighter,
    world_model: Callable[..., WorldModel] = WorldModel,
    behavior: Callable[..., ActorCritic] = ActorCritic,
    trainer: Callable[..., BilevelTrainer] = BilevelTrainer,
    model_opt: Callable[..., Optimizer] = Optimizer,
    meta_opt: Callable[..., Optimizer] = Optimizer,
    actor_opt: Callable[..., Optimizer] = Optimizer,
    critic_opt: Callable[..., Optimizer] = Optimizer,
    build: bool = True,
    strategy: tf.distribute.Strategy | None = None,
    precision: str = "float32",
) -> BilevelTrainer:
    """Builds (and by default creates the variables of) a TEMPO/DreamerV2 trainer.

    Args:
      obs_shapes: observation key -> shape, without the reserved keys (reward,
        is_first, ...). Images are rank 3 uint8, vectors rank 1.
      action_size: one-hot size (discrete) or action dimensions (continuous).
      discrete: whether actions are one-hot categorical.
      seed: seeds the weight initializers (through Keras' global seed) and the
        trainer's own random generator, so equal seeds give equal runs.
      pred_discount: learn a discount head (episodes that terminate) or use the
        constant discount in imagination.
      strategy: a `tf.distribute` strategy for data-parallel updates (every
        variable is created in its scope; see `tempo.strategy`), or None for
        one device.
      precision: the Keras dtype policy of every network: 'float32',
        'mixed_bfloat16' or 'mixed_float16' (16-bit compute, float32 variables;
        distributions, losses and the value normalizer stay float32, and float16
        gets a dynamic loss scale). Passed to the constructors, never set globally.
    """
    if action_size < 1:
        raise ValueError(f"action_size must be positive, got {action_size}.")
    shapes = {k: tuple(int(d) for d in s) for k, s in obs_shapes.items()}
    tf.keras.utils.set_random_seed(seed)
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    dt = {} if precision == "float32" else {"dtype": tf.keras.mixed_precision.Policy(precision)}
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        wm = world_model(
            encoder=encoder(shapes, **dt),
            rssm=rssm(action_size, **dt),
            decoder=decoder(shapes, **dt),
            reward_head=reward_head(shape=(), dist="mse", name="reward", **dt),
            discount_head=discount_head(shape=(), dist="binary", name="discount", **dt)
            if pred_discount
            else None,
            **dt,
        )
        ac = behavior(
            actor=actor(action_size, discrete, **dt),
            critic=critic(shape=(), dist="mse", name="critic", **dt),
            slow_critic=critic(shape=(), dist="mse", name="slow_critic", **dt),
            actor_opt=actor_opt(name="actor_opt"),
            critic_opt=critic_opt(name="critic_opt"),
        )
        result = trainer(
            world_model=wm,
            behavior=ac,
            meta_weighter=meta_weighter(**dt),
            model_opt=model_opt(name="model_opt"),
            meta_opt=meta_opt(name="meta_opt"),
            seed=seed,
            strategy=strategy,
            loss_scale=LossScale() if precision == "mixed_float16" else None,
        )
        return result.build() if build else result
