"""Test support: tiny trainers built with plain keyword arguments (no gin), and
random replay-like batches (re-exported from tempo.synthetic)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pathlib
from collections.abc import Callable, Iterator

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
from tempo.synthetic import random_batch  # noqa: F401  (re-exported for tests)

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
    strategy=None,
    precision="float32",
    unroll=True,
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
        rssm=P(RSSM, stoch=3, discrete=latent_classes, deter=width, hidden=width, unroll=unroll),
        reward_head=P(DistHead, **head),
        discount_head=P(DistHead, **head),
        actor=P(Actor, **head),
        critic=P(DistHead, **head),
        meta_weighter=P(MetaWeighter, layers=2, units=width),
        world_model=P(WorldModel, kl_free=kl_free, unroll_imagination=unroll),
        behavior=P(ActorCritic, horizon=3),
        strategy=strategy,
        precision=precision,
        trainer=P(
            BilevelTrainer,
            meta=meta,
            hypergrad_sign=sign,
            lookahead_lr=lookahead_lr,
            jit_compile=jit_compile,
        ),
    )


def run_until_last(env, action, max_steps, check=None):
    """Repeats `action` until is_last; returns (agent steps taken, last observation).
    `check(obs)`, when given, runs on every observation."""
    for step in range(1, max_steps + 1):
        obs = env.step(action)
        if check is not None:
            check(obs)
        if obs["is_last"]:
            return step, obs
    raise AssertionError(f"episode did not end within {max_steps} steps")


def once_per_session(tmp_path_factory, name: str, make: Callable[[pathlib.Path], None]):
    """The path of file `name`, written by `make(path)` once per test session: the
    pytest-xdist workers share the session's temporary directory, and a worker
    that needs a file another is making waits on its lock, then reads it. `make`
    writes a temporary name (same suffix), renamed when it returns."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            partial = path.with_name(f".partial-{name}")
            make(partial)
            partial.rename(path)
    return path


@contextlib.contextmanager
def functions_run_eagerly() -> Iterator[None]:
    """tf.functions run eagerly inside the block: for tests of arithmetic, which
    the traced update computes with the same ops (tracing a tiny update costs
    seconds, running it eagerly a fraction of one), and for wrappers that keep
    intermediate values."""
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)
