"""DeepMind Control Suite tasks (``dmc_<domain>_<task>``) in the tempo convention.

Pixels are rendered by MuJoCo at the agent's resolution (no resize), with the camera
DreamerV2 uses per domain; proprioceptive observations keep their dm_control names as
float32 vectors. By default only the suite's rank-1 observations are kept, as in the
released code, whose encoder and decoder drop every other key: scalars such as walker
``height`` or quadruped ``torso_upright`` and matrices such as manipulator ``arm_pos``
never reach its model (``proprio_keys='all'`` flattens and keeps them). The suite's
built-in time limit (1000 physics-control steps) ends episodes with discount 1, which
we report as is_last without is_terminal.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from typing import Any

import gymnasium
import numpy as np

from tempo.envs.wrappers import FLAG_KEYS, BaseEnv, flag_spaces, image_space, vector_space

OBS_TYPES = ("pixels", "proprio", "both")
PROPRIO_KEYS = ("vectors", "all")

# dm_control picks its OpenGL backend when first imported and defaults to GLFW, which
# needs a display. Headless machines (clusters, CI, workers) need EGL; an explicit
# MUJOCO_GL always wins.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def _warn_if_renderer_unprotected() -> None:
    """MuJoCo's software renderer (Mesa llvmpipe) crashes in a process where
    TensorFlow was imported before Mesa was loaded (see `tempo/_mesa.py`)."""
    from tempo import _mesa

    if "tensorflow" in sys.modules and not _mesa.PRELOADED:
        logging.warning(
            "TensorFlow was imported before tempo: rendering DeepMind Control pixels in "
            "this process may crash inside Mesa. Import tempo first, or step the "
            "environments in worker processes (ParallelEnv)."
        )


# DreamerV2 views the quadruped from camera 2 (camera 0 loses it when it walks away).
DEFAULT_CAMERAS = {"quadruped": 2}
# The released code's names for domains that contain underscores (``dmc_cup_catch``).
DOMAIN_ALIASES = {"cup": "ball_in_cup"}


def dmc_tasks() -> list[tuple[str, str]]:
    """All (domain, task) pairs of ``dm_control.suite``."""
    from dm_control import suite

    return list(suite.ALL_TASKS)


def resolve_task(name: str) -> tuple[str, str]:
    """Split ``walker_walk`` / ``ball_in_cup_catch`` into (domain, task).

    Domains and tasks both contain underscores, so the split is looked up among the
    suite's known pairs rather than guessed. The released code's alias ``cup_catch``
    (its only multi-word domain, ``cup`` for ``ball_in_cup``) is accepted too.
    """
    tasks = dmc_tasks()
    by_name = {f"{domain}_{task}": (domain, task) for domain, task in tasks}
    if name in by_name:
        return by_name[name]
    alias, _, rest = name.partition("_")
    if alias in DOMAIN_ALIASES:
        return resolve_task(f"{DOMAIN_ALIASES[alias]}_{rest}")
    domains = sorted({domain for domain, _ in tasks}, key=len, reverse=True)
    domain = next((d for d in domains if name.startswith(d + "_") or name == d), None)
    if domain is not None:
        valid = [t for d, t in tasks if d == domain]
        raise ValueError(
            f"unknown task {name[len(domain) + 1 :]!r} for DMC domain {domain!r} "
            f"(task 'dmc_{name}'); valid tasks: {', '.join(valid)}"
        )
    close = difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.5)
    hint = close or sorted(by_name)[:12]
    raise ValueError(
        f"unknown DMC task 'dmc_{name}': no domain matches; domains: "
        f"{', '.join(sorted(set(d for d, _ in tasks)))}; "
        f"{'close matches' if close else 'examples'}: {', '.join('dmc_' + h for h in hint)}"
    )


class DMC(BaseEnv):
    """One dm_control suite task; actions are a Box with the task's true bounds.

    Args:
        domain, task: suite names, e.g. ``('ball_in_cup', 'catch')``.
        obs_type: 'pixels' (``image``), 'proprio' (the named vectors) or 'both'.
        size: (H, W) of the rendered image.
        camera: camera id; defaults to DreamerV2's choice per domain.
        seed: the task's random state, so resets are reproducible from the seed.
        proprio_keys: which dm_control observations 'proprio' and 'both' keep.
            'vectors' (default, the released code's model inputs): only rank-1 ones,
            unchanged, skipping empty ones; scalars (walker ``height``) and matrices
            (manipulator ``arm_pos``) are dropped. 'all': every observation,
            flattened to a vector (a scalar becomes shape (1,)).
        task_kwargs: extra ``suite.load`` task arguments (``random`` is the seed).
    """

    def __init__(
        self,
        domain: str,
        task: str,
        *,
        obs_type: str = "pixels",
        size: tuple[int, int] = (64, 64),
        camera: int | None = None,
        seed: int = 0,
        task_kwargs: dict[str, Any] | None = None,
        proprio_keys: str = "vectors",
    ) -> None:
        super().__init__()
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if proprio_keys not in PROPRIO_KEYS:
            raise ValueError(
                f"proprio_keys must be one of {PROPRIO_KEYS} ('vectors': only rank-1 "
                f"observations, as the released code; 'all': every one, flattened), "
                f"got {proprio_keys!r}"
            )
        if obs_type in ("pixels", "both"):
            _warn_if_renderer_unprotected()
        from dm_control import suite

        if (domain, task) not in suite.ALL_TASKS:
            raise ValueError(f"unknown DMC task {domain}_{task}")
        self.domain, self.task = domain, task
        self.dm_env = suite.load(
            domain, task, task_kwargs={**(task_kwargs or {}), "random": int(seed)}
        )
        self.physics = self.dm_env.physics
        self.size = (int(size[0]), int(size[1]))
        self.camera = DEFAULT_CAMERAS.get(domain, 0) if camera is None else int(camera)
        self._pixels = obs_type in ("pixels", "both")
        self._proprio = obs_type in ("proprio", "both")
        self.proprio_keys = proprio_keys

        spaces: dict[str, gymnasium.spaces.Box] = {}
        self._keys: list[str] = []
        if self._proprio:
            for key, spec in self.dm_env.observation_spec().items():
                if proprio_keys == "vectors" and (len(spec.shape) != 1 or spec.shape[0] == 0):
                    continue
                if key in FLAG_KEYS or key == "image":
                    raise ValueError(f"dm_control observation {key!r} clashes with a tempo key")
                spaces[key] = vector_space(int(np.prod(spec.shape)))
                self._keys.append(key)
        if self._pixels:
            spaces["image"] = image_space((*self.size, 3))
        self.obs_space = {**spaces, **flag_spaces()}
        spec = self.dm_env.action_spec()
        self.act_space = gymnasium.spaces.Box(
            spec.minimum.astype(np.float32),
            spec.maximum.astype(np.float32),
            spec.shape,
            np.float32,
        )
        self._time_step = None

    def _reset(self) -> None:
        self._time_step = self.dm_env.reset()

    def _advance(self, action: Any) -> tuple[float, bool, bool]:
        time_step = self.dm_env.step(np.asarray(action, np.float64))
        self._time_step = time_step
        reward = float(time_step.reward or 0.0)
        if time_step.last():
            # discount 0 is a real termination; the suite's time limit keeps discount 1.
            terminated = float(time_step.discount) == 0.0
            return reward, terminated, not terminated
        return reward, False, False

    def _observe(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        observation = self._time_step.observation
        for key in self._keys:
            out[key] = np.asarray(observation[key], np.float32).ravel()
        if self._pixels:
            out["image"] = self.physics.render(*self.size, camera_id=self.camera)
        return out

    def close(self) -> None:
        try:
            self.dm_env.close()
        except AttributeError:
            pass
