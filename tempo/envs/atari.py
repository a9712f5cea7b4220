"""Atari (ale-py through gymnasium) with the DreamerV2 preprocessing (tasks ``atari_<game>``).

The ALE env runs at frameskip 1 with sticky actions, and this class does the action
repeat itself so it can max-pool the last two frames (Atari sprites flicker between
frames), plus random no-ops at reset and an optional life-loss end. Resizing to 64x64
is left to :class:`tempo.envs.wrappers.ResizeImage`.

It follows the released code's wrapper (gym 0.19's ``AtariPreprocessing`` over
atari-py, checked frame for frame by tests/test_reference_atari.py) except in two
places: the observation that ends a game inside the action repeat pools that step's
last two frames (gym's can repeat the previous step's), and the no-op counts and
sticky actions follow ``seed`` (the release seeds every Atari env with 0).
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Any

import gymnasium
import numpy as np

from tempo.envs.wrappers import BaseEnv, flag_spaces, image_space


@functools.lru_cache(maxsize=1)
def atari_games() -> dict[str, str]:
    """Map snake_case game names (``bank_heist``) to ALE names (``BankHeist``)."""
    import ale_py

    # ALE prints its banner at Info level for every env; keep warnings and errors only
    # (batches of workers would otherwise flood the logs). Callers may set it back.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Warning)
    gymnasium.register_envs(ale_py)
    games = {}
    for env_id in gymnasium.envs.registry:
        match = re.fullmatch(r"ALE/(\w+)-v5", env_id)
        if match:
            name = match.group(1)
            games[re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()] = name
    return games


def resolve_game(game: str) -> str:
    """ALE name for a snake_case (or CamelCase) game name; ValueError listing choices if unknown."""
    games = atari_games()
    if game in games:
        return games[game]
    if game in games.values():
        return game
    squashed = {k.replace("_", ""): v for k, v in games.items()}
    if game.replace("_", "").lower() in squashed:
        return squashed[game.replace("_", "").lower()]
    close = difflib.get_close_matches(game, list(games), n=5, cutoff=0.5)
    hint = close or sorted(games)[:12]
    raise ValueError(
        f"unknown Atari game {game!r} (task 'atari_{game}'); "
        f"{'close matches' if close else 'some valid games'}: {', '.join(hint)} "
        f"({len(games)} games in total)"
    )


class Atari(BaseEnv):
    """One Atari game with DreamerV2 preprocessing; actions are native ``Discrete`` indices.

    Args:
        game: snake_case game name (``pong``, ``bank_heist``) or the ALE name.
        action_repeat: frames per agent step; the observation is the max over the last two.
        grayscale: luminance frames (H, W, 1) instead of RGB (H, W, 3).
        sticky: ALE's repeat_action_probability (0.25 is the standard stochastic setting).
        noops: at reset, take between 1 and ``noops`` no-op frames (0 disables), so the
            start state is not always the same under a deterministic policy.
        life_loss: end the episode (is_last and is_terminal) when a life is lost; the next
            reset continues the same game rather than restarting it, so later lives are
            still seen. A full reset happens once the game is over or after a time-out.
        full_action_space: all 18 actions instead of the game's minimal set.
        seed: seeds ALE (sticky actions) and the no-op counts.
        max_frames: ALE's own cap on frames per episode (ends with is_last, not
            is_terminal); 0, the default, sets none, as in the release, whose episodes
            end only at the game's end or train.py's 27000-step time limit (ale-py's
            registered 108000 frames would end them up to 7 agent steps earlier,
            counting the no-ops, with a short last repeat).

    Observations are the max over the last two frames of the repeat (gym pools only
    when ``action_repeat`` > 1; so does this class). The first observation of an
    episode is the last no-op frame alone, as gym's reset leaves nothing to pool with.
    """

    def __init__(
        self,
        game: str,
        *,
        action_repeat: int = 4,
        grayscale: bool = True,
        sticky: float = 0.25,
        noops: int = 30,
        life_loss: bool = False,
        full_action_space: bool = False,
        seed: int = 0,
        max_frames: int = 0,
    ) -> None:
        super().__init__()
        if int(action_repeat) < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        if not 0.0 <= float(sticky) <= 1.0:
            raise ValueError(f"sticky must be a probability, got {sticky}")
        if int(noops) < 0:
            raise ValueError(f"noops must be >= 0, got {noops}")
        if int(max_frames) < 0:
            raise ValueError(f"max_frames must be >= 0 (0: no cap), got {max_frames}")
        self.game = resolve_game(game)
        self.action_repeat = int(action_repeat)
        self.grayscale = bool(grayscale)
        self.noops = int(noops)
        self.life_loss = bool(life_loss)
        self.gym_env = gymnasium.make(
            f"ALE/{self.game}-v5",
            obs_type="grayscale" if grayscale else "rgb",
            frameskip=1,
            repeat_action_probability=float(sticky),
            full_action_space=bool(full_action_space),
            max_num_frames_per_episode=int(max_frames),
            disable_env_checker=True,
        )
        self.ale = self.gym_env.unwrapped.ale
        self._seed = int(seed)
        self._seeded = False
        self._rng = np.random.default_rng(self._seed)
        self._continue_game = False
        self._lives = 0
        height, width = self.ale.getScreenDims()
        self.obs_space = {
            "image": image_space((height, width, 1 if grayscale else 3)),
            **flag_spaces(),
        }
        self.act_space = self.gym_env.action_space
        self._frames: list[np.ndarray] = []

    def _push(self, frame: np.ndarray) -> None:
        self._frames = [self._frames[-1] if self._frames else frame, frame]

    def _reset(self) -> None:
        if self._continue_game:
            # Episode ended on a life loss but the game goes on: keep playing it.
            self._continue_game = False
            frame, _, terminated, truncated, _ = self.gym_env.step(0)
            if not (terminated or truncated):
                self._frames = [frame, frame]
                self._lives = self.ale.lives()
                return
        if self._seeded:
            frame, _ = self.gym_env.reset()
        else:
            frame, _ = self.gym_env.reset(seed=self._seed)
            self._seeded = True
        count = int(self._rng.integers(1, self.noops + 1)) if self.noops else 0
        for _ in range(count):
            frame, _, terminated, truncated, _ = self.gym_env.step(0)
            if terminated or truncated:
                frame, _ = self.gym_env.reset()
        # The last no-op frame alone: gym's reset zero-fills the other pooling buffer.
        self._frames = [frame, frame]
        self._lives = self.ale.lives()

    def _advance(self, action: Any) -> tuple[float, bool, bool]:
        total, terminated, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            frame, reward, terminated, truncated, _ = self.gym_env.step(int(action))
            self._push(frame)
            total += float(reward)
            if terminated or truncated:
                break
        if self.life_loss and not terminated:
            lives = self.ale.lives()
            if lives < self._lives:
                terminated = True
                self._continue_game = not truncated
            self._lives = lives
        return total, terminated, truncated

    def _observe(self) -> dict[str, np.ndarray]:
        if self.action_repeat > 1:
            image = np.maximum(self._frames[0], self._frames[1])
        else:
            image = self._frames[1]
        if image.ndim == 2:
            image = image[:, :, None]
        return {"image": image}

    def close(self) -> None:
        self.gym_env.close()
