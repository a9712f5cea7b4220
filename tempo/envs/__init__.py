"""Environments for the agents: Atari, DeepMind Control and any gymnasium env, one convention.

``make_env('dmc_walker_walk')`` returns an :class:`Env` whose observations are dicts of
numpy arrays (``image`` and/or vectors, ``reward``, ``is_first``, ``is_last``,
``is_terminal``) and whose actions are float32 vectors (one-hot or in [-1, 1]); see
``tempo.envs.wrappers`` for the convention. Suite modules are imported lazily so that
worker processes and ``import tempo.envs`` stay cheap.
"""

from __future__ import annotations

from typing import Any

from tempo.envs.parallel import EnvWorkerError, ParallelEnv, SerialEnv, make_batch_env
from tempo.envs.wrappers import (
    ActionRepeat,
    BaseEnv,
    Env,
    NormalizeAction,
    OneHotAction,
    ResizeImage,
    TimeLimit,
    Wrapper,
    resize_area,
)

__all__ = [
    "ActionRepeat",
    "BaseEnv",
    "Env",
    "EnvWorkerError",
    "NormalizeAction",
    "OneHotAction",
    "ParallelEnv",
    "ResizeImage",
    "SerialEnv",
    "TimeLimit",
    "Wrapper",
    "make_batch_env",
    "make_env",
    "resize_area",
    "SUITES",
    "DEFAULT_ACTION_REPEAT",
]

SUITES = ("atari_", "dmc_", "gym_")

# Per-suite defaults when ``action_repeat=None`` (docs/design.md, section 3).
DEFAULT_ACTION_REPEAT = {"atari": 4, "dmc": 2, "gym": 1}
ATARI_TIME_LIMIT = 27000  # agent steps, i.e. 108k frames (30 minutes of play)


def _check_size(size: Any) -> tuple[int, int]:
    try:
        height, width = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def _finish(env: Env, time_limit: int | None) -> Env:
    """Common outer wrappers: time limit, then the action convention."""
    if time_limit:
        env = TimeLimit(env, time_limit)
    return OneHotAction(env) if env.discrete else NormalizeAction(env)


def make_env(
    task: str,
    *,
    seed: int = 0,
    action_repeat: int | None = None,
    size: tuple[int, int] = (64, 64),
    obs_type: str | None = None,
    time_limit: int | None = None,
    **kwargs: Any,
) -> Env:
    """Build ``task`` (``atari_<game>``, ``dmc_<domain>_<task>``, ``gym_<id>``).

    Args:
        seed: makes episodes reproducible (same seed, same sequence of resets).
        action_repeat: env steps per agent step; None picks the suite's default
            (atari 4 with max-pooling, dmc 2, gym 1).
        size: (H, W) of the ``image`` observation.
        obs_type: 'pixels', 'proprio' or 'both'. Defaults: dmc 'pixels', gym 'proprio';
            Atari only has pixels.
        time_limit: episode length in agent steps (after action repeat), ending with
            is_last but not is_terminal. None: Atari 27000, DMC the suite's own 1000 env
            steps, gym the id's registered limit. 0 adds no limit of our own.
        **kwargs: suite options: Atari ``grayscale``, ``sticky``, ``noops``,
            ``life_loss``, ``full_action_space``, ``max_frames`` (ALE's
            own cap, 0: none, as released); DMC ``camera``, ``task_kwargs``,
            ``proprio_keys`` ('vectors', the default: only the rank-1 observations
            the released code's model sees; 'all': every one, flattened); gym
            anything ``gymnasium.make`` accepts.
    """
    if not isinstance(task, str) or not task.startswith(SUITES):
        raise ValueError(
            f"unknown task {task!r}: the name must start with one of {', '.join(SUITES)} "
            "(e.g. 'atari_pong', 'dmc_walker_walk', 'gym_CartPole-v1')"
        )
    suite, name = task.split("_", 1)
    if not name:
        raise ValueError(f"task {task!r} names no {suite} environment")
    size = _check_size(size)
    repeat = DEFAULT_ACTION_REPEAT[suite] if action_repeat is None else int(action_repeat)
    if repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")

    env: Env
    if suite == "atari":
        from tempo.envs.atari import Atari

        if obs_type not in (None, "pixels"):
            raise ValueError(f"Atari tasks only have obs_type='pixels', got {obs_type!r}")
        env = Atari(name, action_repeat=repeat, seed=seed, **kwargs)
        env = ResizeImage(env, size)
        limit = ATARI_TIME_LIMIT if time_limit is None else time_limit
        return _finish(env, limit)

    if suite == "dmc":
        from tempo.envs.dmc import DMC, resolve_task

        domain, dmc_task = resolve_task(name)
        env = DMC(domain, dmc_task, obs_type=obs_type or "pixels", size=size, seed=seed, **kwargs)
        if repeat > 1:
            env = ActionRepeat(env, repeat)
        return _finish(env, time_limit)

    from tempo.envs.gym_adapter import GymEnv

    env = GymEnv(name, seed=seed, obs_type=obs_type or "proprio", **kwargs)
    if repeat > 1:
        env = ActionRepeat(env, repeat)
    if "image" in env.obs_space:
        env = ResizeImage(env, size)
    return _finish(env, time_limit)
