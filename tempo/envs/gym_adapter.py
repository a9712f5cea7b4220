"""Any gymnasium environment in the tempo convention (tasks ``gym_<id>``).

Observations become named float32 vectors (``vector`` for a single Box, the dict keys
for a Dict space) or a uint8 ``image``; optionally the ``rgb_array`` render is added as
``image``. gymnasium's ``terminated`` is a true end (is_terminal), ``truncated`` only
an episode boundary (is_last), so time-outs are not mistaken for deaths.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium
import numpy as np

from tempo.envs.wrappers import FLAG_KEYS, BaseEnv, flag_spaces, image_space, vector_space

OBS_TYPES = ("proprio", "pixels", "both")


def _is_image(space: gymnasium.spaces.Space) -> bool:
    return (
        isinstance(space, gymnasium.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and space.shape[2] in (1, 3, 4)
    )


def _convert_space(key: str, space: gymnasium.spaces.Space) -> gymnasium.spaces.Box:
    """Our Box for one native observation entry (image kept, everything else a vector)."""
    if _is_image(space):
        return image_space(space.shape)
    if isinstance(space, gymnasium.spaces.Box | gymnasium.spaces.MultiBinary):
        return vector_space(int(np.prod(space.shape)))
    if isinstance(space, gymnasium.spaces.Discrete):
        return vector_space(int(space.n))
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        return vector_space(int(np.sum(space.nvec)))
    raise ValueError(
        f"observation entry {key!r} has unsupported space {space}; supported: Box, Discrete, "
        "MultiBinary, MultiDiscrete (optionally inside one Dict)"
    )


def _convert_value(space: gymnasium.spaces.Space, value: Any) -> np.ndarray:
    if _is_image(space):
        return np.asarray(value, np.uint8)
    if isinstance(space, gymnasium.spaces.Discrete):
        out = np.zeros(int(space.n), np.float32)
        out[int(value) - int(space.start)] = 1.0
        return out
    if isinstance(space, gymnasium.spaces.MultiDiscrete):
        parts = []
        for n, start, v in zip(
            space.nvec.ravel(), np.ravel(space.start), np.ravel(value), strict=True
        ):
            part = np.zeros(int(n), np.float32)
            part[int(v) - int(start)] = 1.0
            parts.append(part)
        return np.concatenate(parts)
    return np.asarray(value, np.float32).ravel()


def resolve_gym_id(env_id: str) -> str:
    """Check ``env_id`` against gymnasium's registry, registering ALE ids on demand."""
    if env_id not in gymnasium.envs.registry and env_id.startswith("ALE/"):
        import ale_py

        gymnasium.register_envs(ale_py)
    if env_id in gymnasium.envs.registry:
        return env_id
    known = sorted(gymnasium.envs.registry)
    close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.5)
    hint = close or known[:10]
    raise ValueError(
        f"unknown gymnasium id {env_id!r} (task 'gym_{env_id}'); "
        f"{'close matches' if close else 'some valid ids'}: {', '.join(hint)}"
    )


class GymEnv(BaseEnv):
    """A gymnasium env with native actions (Discrete or Box); see ``make_env`` for wrapping.

    Args:
        env: a gymnasium id or an already made ``gymnasium.Env``.
        seed: seeds the first reset (and the action space); later resets continue the
            env's RNG, so a run is reproducible from its seed.
        obs_type: 'proprio' (native observation), 'pixels' (render only) or 'both'.
        **make_kwargs: passed to ``gymnasium.make``.
    """

    def __init__(
        self,
        env: str | gymnasium.Env,
        *,
        seed: int = 0,
        obs_type: str = "proprio",
        **make_kwargs: Any,
    ) -> None:
        super().__init__()
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        self._render = obs_type in ("pixels", "both")
        self._native = obs_type in ("proprio", "both")
        if isinstance(env, str):
            env_id = resolve_gym_id(env)
            if self._render:
                make_kwargs.setdefault("render_mode", "rgb_array")
            env = gymnasium.make(env_id, **make_kwargs)
        elif self._render and env.render_mode != "rgb_array":
            raise ValueError("rendering needs a gymnasium env made with render_mode='rgb_array'")
        self.gym_env = env
        self._seed = int(seed)
        self._seeded = False
        env.action_space.seed(self._seed)

        native = env.observation_space
        if isinstance(native, gymnasium.spaces.Dict):
            self._native_spaces = dict(native.spaces)
        elif _is_image(native):
            self._native_spaces = {"image": native}
        else:
            self._native_spaces = {"vector": native}
        spaces: dict[str, gymnasium.spaces.Box] = {}
        if self._native:
            for key, space in self._native_spaces.items():
                if key in FLAG_KEYS:
                    raise ValueError(f"observation key {key!r} clashes with a tempo flag key")
                spaces[key] = _convert_space(key, space)
        if self._render:
            if "image" in spaces:
                raise ValueError("the env already observes an 'image'; use obs_type='proprio'")
            # The render size is only known from a frame; probe once (the first real
            # reset reseeds, so this does not change the episodes).
            env.reset(seed=self._seed)
            spaces["image"] = image_space(self._frame().shape)
        self.obs_space = {**spaces, **flag_spaces()}

        action = env.action_space
        if isinstance(action, gymnasium.spaces.Discrete | gymnasium.spaces.Box):
            self.act_space = action
        else:
            raise ValueError(f"unsupported gymnasium action space {action}; need Discrete or Box")
        self._last_obs: Any = None

    def _frame(self) -> np.ndarray:
        frame = np.asarray(self.gym_env.render(), np.uint8)
        if frame.ndim == 2:
            frame = frame[:, :, None]
        if frame.ndim != 3:
            raise ValueError(f"render() returned shape {frame.shape}, expected HxW or HxWxC")
        return frame

    def _reset(self) -> None:
        if self._seeded:
            self._last_obs, _ = self.gym_env.reset()
        else:
            self._last_obs, _ = self.gym_env.reset(seed=self._seed)
            self._seeded = True

    def _advance(self, action: Any) -> tuple[float, bool, bool]:
        if isinstance(self.act_space, gymnasium.spaces.Discrete):
            action = int(action)
        self._last_obs, reward, terminated, truncated, _ = self.gym_env.step(action)
        return float(reward), bool(terminated), bool(truncated)

    def _observe(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if self._native:
            if len(self._native_spaces) == 1 and not isinstance(
                self.gym_env.observation_space, gymnasium.spaces.Dict
            ):
                ((key, space),) = self._native_spaces.items()
                out[key] = _convert_value(space, self._last_obs)
            else:
                for key, space in self._native_spaces.items():
                    out[key] = _convert_value(space, self._last_obs[key])
        if self._render:
            out["image"] = self._frame()
        return out

    def close(self) -> None:
        self.gym_env.close()
