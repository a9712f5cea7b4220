"""Steps a batch of environments with a policy and hands every transition on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Policy = Callable[[dict, Any], tuple[np.ndarray, Any]]
StepCallback = Callable[[dict, int], None]
EpisodeCallback = Callable[[dict, int], None]


class Driver:
    """Runs `num_envs` environments (a `SerialEnv` or `ParallelEnv`) in lockstep.

    A transition is the observation dict of one environment plus `action`, the
    action that led to it (zeros after a reset), which is the replay's
    convention. Environments whose episode ended are reset before the next
    policy call, so the policy always sees `is_first` on a new episode.
    """

    def __init__(self, env, num_envs: int, action_size: int):
        self.env = env
        self.num_envs = num_envs
        self.action_size = action_size
        self.on_step: list[StepCallback] = []
        self.on_episode: list[EpisodeCallback] = []
        self._obs: dict[str, np.ndarray] | None = None
        self._state: Any = None
        self._returns = np.zeros(num_envs, np.float64)
        self._lengths = np.zeros(num_envs, np.int64)

    def reset(self) -> None:
        """Forgets the current episodes (their steps are not recorded further)."""
        self._obs = None
        self._state = None

    def run(self, policy: Policy, steps: int = 0, episodes: int = 0) -> int:
        """Steps until `steps` transitions or `episodes` finished episodes (summed
        over environments); returns the number of transitions taken."""
        taken = finished = 0
        while (steps and taken < steps) or (episodes and finished < episodes):
            self._reset_finished()
            actions, self._state = policy(self._obs, self._state)
            actions = np.asarray(actions, np.float32)
            obs = self.env.step(actions)
            for i in range(self.num_envs):
                transition = {k: v[i] for k, v in obs.items()}
                # A restarted worker answers a step with a new episode's first
                # observation, which by convention carries no action.
                first = transition["is_first"]
                transition["action"] = np.zeros_like(actions[i]) if first else actions[i]
                finished += self._record(transition, i)
            self._obs = obs
            taken += self.num_envs
        return taken

    def _reset_finished(self) -> None:
        if self._obs is None:
            indices = list(range(self.num_envs))
            self._obs = dict(self.env.reset())
        else:
            indices = [i for i in range(self.num_envs) if self._obs["is_last"][i]]
            if not indices:
                return
            fresh = self.env.reset(indices)
            self._obs = {k: v.copy() for k, v in self._obs.items()}
            for key, value in fresh.items():
                self._obs[key][indices] = value
        for i in indices:
            transition = {k: v[i] for k, v in self._obs.items()}
            transition["action"] = np.zeros(self.action_size, np.float32)
            self._record(transition, i)

    def _record(self, transition: dict, index: int) -> int:
        if transition["is_first"]:
            self._returns[index] = 0.0
            self._lengths[index] = 0
        else:
            self._returns[index] += float(transition["reward"])
            self._lengths[index] += 1
        for callback in self.on_step:
            callback(transition, index)
        if transition["is_last"]:
            stats = {"return": self._returns[index], "length": int(self._lengths[index])}
            for callback in self.on_episode:
                callback(stats, index)
            return 1
        return 0
