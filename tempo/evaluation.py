"""Evaluation episodes with the deterministic (mode) policy."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable

from tempo.driver import Driver
from tempo.envs import make_batch_env
from tempo.errors import ConfigError

RESERVED = ("reward", "is_first", "is_last", "is_terminal")


def run_episodes(env, policy, episodes: int, action_size: int) -> tuple[list[float], list[int]]:
    """Returns and lengths of `episodes` episodes of `policy(obs, state)` in `env`."""
    returns, lengths = [], []
    driver = Driver(env, 1, action_size)
    driver.on_episode.append(
        lambda s, w: (returns.append(s["return"]), lengths.append(s["length"]))
    )
    driver.run(policy, episodes=episodes)
    return returns, lengths


def restore_agent(
    logdir: str | os.PathLike, env, trainer_fn: Callable, eval_state_mean: bool = False
):
    """Rebuilds a run's agent for `env` with `trainer_fn` and restores its latest
    checkpoint (raises ConfigError when there is none)."""
    import tensorflow as tf

    from tempo.agent.agent import Agent

    checkpoints = pathlib.Path(logdir) / "checkpoints"
    latest = tf.train.latest_checkpoint(str(checkpoints))
    if latest is None:
        raise ConfigError(f"No checkpoint in {checkpoints}.")
    shapes = {k: tuple(s.shape) for k, s in env.obs_space.items() if k not in RESERVED}
    trainer = trainer_fn(shapes, int(env.act_space.shape[0]), env.discrete)
    agent = Agent(trainer, eval_state_mean=eval_state_mean)
    tf.train.Checkpoint(trainer=trainer, agent=agent).restore(latest).expect_partial()
    return agent


def evaluate_checkpoint(
    logdir: str | os.PathLike,
    episodes: int,
    seed: int,
    env_config: dict,
    trainer_fn: Callable,
    eval_state_mean: bool = False,
) -> list[float]:
    """Runs `episodes` episodes with mode actions of a run's latest checkpoint
    (on sampled latents, or their mode with `eval_state_mean`)."""
    env = make_env_batch(env_config, seed)
    try:
        agent = restore_agent(logdir, env, trainer_fn, eval_state_mean)
        policy = lambda obs, state: agent.policy(obs, state, explore=False)
        returns, _ = run_episodes(env, policy, episodes, agent.action_size)
    finally:
        env.close()
    return returns


def evaluate_saved_model(
    path: str | os.PathLike, episodes: int, seed: int, env_config: dict | None = None
) -> list[float]:
    """Runs an exported policy (no tempo code involved in acting) in its task."""
    import tensorflow as tf

    spec_path = pathlib.Path(path) / "policy_spec.json"
    if not spec_path.exists():
        raise ConfigError(f"{spec_path} not found: is {path!r} a tempo SavedModel export?")
    spec = json.loads(spec_path.read_text())
    env_config = {**spec.get("env", {}), **(env_config or {})}
    if "task" not in env_config:
        raise ConfigError("The export names no task; pass one.")
    policy_module = tf.saved_model.load(str(path))
    env = make_env_batch(env_config, seed)
    try:
        keys = list(spec["observation"])

        def policy(obs, state):
            if state is None:
                state = policy_module.initial_state(tf.constant(1))
            batch = {k: tf.convert_to_tensor(obs[k]) for k in keys}
            action, state = policy_module.step(batch, state)
            return action.numpy(), state

        returns, _ = run_episodes(env, policy, episodes, int(spec["action_size"]))
    finally:
        env.close()
    return returns


ENV_KEYS = ("action_repeat", "obs_type", "time_limit")


def make_env_batch(env_config: dict, seed: int):
    """One in-process environment from a {task, action_repeat, ...} dict."""
    kwargs = {k: env_config[k] for k in ENV_KEYS if env_config.get(k) is not None}
    return make_batch_env(env_config["task"], 1, seed=seed, parallel=False, **kwargs)
