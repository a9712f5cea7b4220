"""Test support: random replay-like batches and tiny trainers built with plain
keyword arguments (no gin)."""

from __future__ import annotations

import functools

import numpy as np

import tempo  # noqa: F401
from tempo.agent.behavior import ActorCritic
from tempo.agent.bilevel import BilevelTrainer
from tempo.agent.builder import build_trainer
from tempo.agent.world_model import WorldModel
from tempo.networks.decoder import Decoder
from tempo.networks.encoder import Encoder
from tempo.networks.heads import Actor, DistHead
from tempo.networks.meta_weighter import MetaWeighter
from tempo.networks.rssm import RSSM

P = functools.partial


def tiny_trainer(
    shapes,
    action_size=3,
    discrete=True,
    latent_classes=4,
    meta=True,
    sign="released",
    seed=0,
    kl_free=0.0,
    lookahead_lr=None,
    pred_discount=True,
    jit_compile=False,
    width=12,
):
    head = dict(layers=1, units=width)
    return build_trainer(
        shapes,
        action_size,
        discrete,
        seed=seed,
        pred_discount=pred_discount,
        encoder=P(Encoder, cnn_depth=2, mlp_layers=(width, width)),
        decoder=P(Decoder, cnn_depth=2, mlp_layers=(width, width)),
        rssm=P(RSSM, stoch=3, discrete=latent_classes, deter=width, hidden=width),
        reward_head=P(DistHead, **head),
        discount_head=P(DistHead, **head),
        actor=P(Actor, **head),
        critic=P(DistHead, **head),
        meta_weighter=P(MetaWeighter, layers=2, units=width),
        world_model=P(WorldModel, kl_free=kl_free),
        behavior=P(ActorCritic, horizon=3),
        trainer=P(
            BilevelTrainer,
            meta=meta,
            hypergrad_sign=sign,
            lookahead_lr=lookahead_lr,
            jit_compile=jit_compile,
        ),
    )


def random_batch(shapes, action_size, discrete, batch=2, length=5, seed=0, terminal_at=None):
    """A replay-like batch of random data: uint8 images, float vectors, one-hot or
    [-1, 1] actions, is_first at t=0 (and after `terminal_at`)."""
    rng = np.random.default_rng(seed)
    data = {}
    for key, shape in shapes.items():
        if len(shape) == 3:
            data[key] = rng.integers(0, 256, (batch, length, *shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(batch, length, *shape)).astype(np.float32)
    if discrete:
        data["action"] = np.eye(action_size, dtype=np.float32)[
            rng.integers(0, action_size, (batch, length))
        ]
    else:
        data["action"] = rng.uniform(-1, 1, (batch, length, action_size)).astype(np.float32)
    data["reward"] = rng.normal(size=(batch, length)).astype(np.float32)
    data["is_first"] = np.zeros((batch, length), bool)
    data["is_first"][:, 0] = True
    data["is_last"] = np.zeros((batch, length), bool)
    data["is_terminal"] = np.zeros((batch, length), bool)
    if terminal_at is not None:
        data["is_last"][:, terminal_at] = True
        data["is_terminal"][:, terminal_at] = True
        if terminal_at + 1 < length:
            data["is_first"][:, terminal_at + 1] = True
    return data
