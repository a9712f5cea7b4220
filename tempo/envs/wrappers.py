"""The environment convention shared by every suite, and the wrappers that build it.

Every environment the agent sees is an :class:`Env`: observations are dicts of numpy
arrays described by ``obs_space`` (``image`` uint8 HxWxC and/or float32 vectors, plus
``reward``, ``is_first``, ``is_last`` and ``is_terminal`` scalars), and actions are one
float32 vector described by the Box ``act_space`` (one-hot for discrete actions, [-1, 1]
for continuous ones). One convention means the replay, the driver and the networks never
special-case a suite.

Suites implement :class:`BaseEnv` (three small hooks) with their native action space
(``Discrete`` or a ``Box`` with the true bounds); the wrappers here turn that into the
convention: :class:`ActionRepeat`, :class:`TimeLimit`, :class:`ResizeImage`,
:class:`OneHotAction` and :class:`NormalizeAction`.
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any

import gymnasium
import numpy as np

FLAG_KEYS = ("reward", "is_first", "is_last", "is_terminal")


def flag_spaces() -> dict[str, gymnasium.spaces.Box]:
    """The scalar entries every observation dict carries besides the sensors."""
    return {
        "reward": gymnasium.spaces.Box(-np.inf, np.inf, (), np.float32),
        "is_first": gymnasium.spaces.Box(0, 1, (), bool),
        "is_last": gymnasium.spaces.Box(0, 1, (), bool),
        "is_terminal": gymnasium.spaces.Box(0, 1, (), bool),
    }


def image_space(shape: tuple[int, ...]) -> gymnasium.spaces.Box:
    """uint8 image space of ``shape`` (H, W, C)."""
    return gymnasium.spaces.Box(0, 255, tuple(int(x) for x in shape), np.uint8)


def vector_space(size: int) -> gymnasium.spaces.Box:
    """Unbounded float32 1-D space: vector sensors are flattened so encoders can concat them."""
    return gymnasium.spaces.Box(-np.inf, np.inf, (int(size),), np.float32)


def make_flags(reward: float, is_first: bool, is_last: bool, is_terminal: bool) -> dict:
    """The scalar flag entries as 0-d arrays with the dtypes ``flag_spaces`` promises."""
    return {
        "reward": np.array(reward, np.float32),
        "is_first": np.array(bool(is_first)),
        "is_last": np.array(bool(is_last)),
        "is_terminal": np.array(bool(is_terminal)),
    }


class Env(abc.ABC):
    """Interface of every environment: dict observations, one action vector.

    ``reset()`` returns the first observation (``is_first`` True, reward 0). ``step``
    returns the next one; ``is_last`` marks the end of an episode, ``is_terminal`` only a
    true termination (so a time limit gives ``is_last`` without ``is_terminal``, which is
    what lets the world model bootstrap through time-outs).
    """

    obs_space: dict[str, gymnasium.spaces.Box]
    act_space: gymnasium.spaces.Space

    @property
    def discrete(self) -> bool:
        """Whether actions are categorical (one-hot at the outer level)."""
        return isinstance(self.act_space, gymnasium.spaces.Discrete)

    @abc.abstractmethod
    def reset(self) -> dict[str, np.ndarray]:
        """Start an episode and return its first observation."""

    @abc.abstractmethod
    def step(self, action: Any) -> dict[str, np.ndarray]:
        """Apply ``action`` and return the next observation with reward and flags."""

    def close(self) -> None:  # noqa: B027 - optional hook: not every env holds resources
        """Release simulators, renderers and processes."""

    @property
    def unwrapped(self) -> BaseEnv:
        """The innermost suite environment (for tests and diagnostics)."""
        return self  # type: ignore[return-value]

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BaseEnv(Env):
    """A suite environment, split into hooks so expensive observations are made lazily.

    Subclasses implement ``_reset`` (start the simulator), ``_advance`` (one native step,
    returning ``(reward, terminated, truncated)``) and ``_observe`` (the sensor dict of
    the current state). Splitting the step from the observation lets
    :class:`ActionRepeat` skip rendering on the intermediate steps, which dominates the
    cost of pixel environments (a 64x64 MuJoCo render costs ~100 physics steps on CPU).
    """

    def __init__(self) -> None:
        self._episode_over = True

    @abc.abstractmethod
    def _reset(self) -> None:
        """Start a new episode in the underlying simulator."""

    @abc.abstractmethod
    def _advance(self, action: Any) -> tuple[float, bool, bool]:
        """One native step: ``(reward, terminated, truncated)``."""

    @abc.abstractmethod
    def _observe(self) -> dict[str, np.ndarray]:
        """Sensor entries (no flags) of the current state."""

    def advance(self, action: Any) -> tuple[float, bool, bool]:
        """One native step without building an observation; guards against stale episodes."""
        if self._episode_over:
            raise RuntimeError(
                f"{type(self).__name__}.step() called before reset() or after the episode "
                "ended (is_last); call reset() first."
            )
        reward, terminated, truncated = self._advance(action)
        self._episode_over = bool(terminated or truncated)
        return float(reward), bool(terminated), bool(truncated)

    def observe(self) -> dict[str, np.ndarray]:
        """The sensor entries of the current state."""
        return self._observe()

    def reset(self) -> dict[str, np.ndarray]:
        self._reset()
        self._episode_over = False
        return {**self._observe(), **make_flags(0.0, True, False, False)}

    def step(self, action: Any) -> dict[str, np.ndarray]:
        reward, terminated, truncated = self.advance(action)
        return {**self._observe(), **make_flags(reward, False, terminated or truncated, terminated)}


class Wrapper(Env):
    """Forwards everything to the wrapped env; subclasses override what they change."""

    def __init__(self, env: Env) -> None:
        self.env = env

    @property
    def obs_space(self) -> dict[str, gymnasium.spaces.Box]:  # type: ignore[override]
        return self.env.obs_space

    @property
    def act_space(self) -> gymnasium.spaces.Space:  # type: ignore[override]
        return self.env.act_space

    @property
    def unwrapped(self) -> BaseEnv:
        return self.env.unwrapped

    def reset(self) -> dict[str, np.ndarray]:
        return self.env.reset()

    def step(self, action: Any) -> dict[str, np.ndarray]:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally; never forward private names
        # (this also keeps pickling and copying from recursing before ``env`` is set).
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)


class ActionRepeat(Wrapper):
    """Repeat each action ``repeat`` times, summing rewards and stopping at episode end.

    Directly on a :class:`BaseEnv` it observes only once per agent step (no rendering of
    frames the agent never sees); on any other env it falls back to full steps.
    """

    def __init__(self, env: Env, repeat: int) -> None:
        if int(repeat) < 1:
            raise ValueError(f"action repeat must be >= 1, got {repeat}")
        super().__init__(env)
        self.repeat = int(repeat)

    def step(self, action: Any) -> dict[str, np.ndarray]:
        if isinstance(self.env, BaseEnv):
            total, terminated, truncated = 0.0, False, False
            for _ in range(self.repeat):
                reward, terminated, truncated = self.env.advance(action)
                total += reward
                if terminated or truncated:
                    break
            last = terminated or truncated
            return {**self.env.observe(), **make_flags(total, False, last, terminated)}
        total = 0.0
        for _ in range(self.repeat):
            obs = self.env.step(action)
            total += float(obs["reward"])
            if obs["is_last"]:
                break
        return {**obs, "reward": np.array(total, np.float32)}


class TimeLimit(Wrapper):
    """End episodes after ``limit`` steps of this wrapper with is_last but not is_terminal."""

    def __init__(self, env: Env, limit: int) -> None:
        if int(limit) < 1:
            raise ValueError(f"time limit must be >= 1 step, got {limit}")
        super().__init__(env)
        self.limit = int(limit)
        self._steps = 0

    def reset(self) -> dict[str, np.ndarray]:
        self._steps = 0
        return self.env.reset()

    def step(self, action: Any) -> dict[str, np.ndarray]:
        obs = self.env.step(action)
        self._steps += 1
        if self._steps >= self.limit and not obs["is_last"]:
            obs = {**obs, "is_last": np.array(True)}
            # The inner env would accept more steps; mark it over so misuse is caught.
            inner = self.env
            while isinstance(inner, Wrapper):
                inner = inner.env
            if isinstance(inner, BaseEnv):
                inner._episode_over = True
        return obs


@functools.lru_cache(maxsize=64)
def _cell_edges(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Output cell edges in input pixels, as (index of the input cell, fraction into it)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    index = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    frac = edges - index
    index.setflags(write=False)
    frac.setflags(write=False)
    return index, frac


@functools.lru_cache(maxsize=64)
def _area_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA weights along one axis (``computeResizeAreaTab``), n_out <= n_in.

    Row ``d`` lists, in order, the input pixels that output pixel ``d`` overlaps and
    their float32 weights (overlap / cell width); unused slots get weight 0, whose
    products add exactly nothing.
    """
    scale = 1.0 / (n_out / n_in)  # OpenCV: 1 / inv_scale, inv_scale = dsize / ssize
    rows = []
    for d in range(n_out):
        start = d * scale
        end = start + scale
        cell = min(scale, n_in - start)
        last = min(math.floor(end), n_in - 1)
        first = min(math.ceil(start), last)
        row = []
        if first - start > 1e-3:
            row.append((first - 1, (first - start) / cell))
        row += [(i, 1.0 / cell) for i in range(first, last)]
        if end - last > 1e-3:
            row.append((last, min(end - last, 1.0, cell) / cell))
        rows.append(row)
    width = max(len(row) for row in rows)
    index = np.zeros((n_out, width), np.int64)
    weight = np.zeros((n_out, width), np.float32)
    for d, row in enumerate(rows):
        for k, (i, w) in enumerate(row):
            index[d, k], weight[d, k] = i, w  # double -> float32, as OpenCV's (float) cast
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _downscale_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_AREA for output no larger than the input in either axis, to the byte.

    Integer factors take OpenCV's fast path: block sums, then ``(sum + 2) >> 2`` for 2x2
    blocks of 1, 3 or 4 channels, else ``sum * float32(1 / area)`` rounded half to even.
    Other factors accumulate float32 products in OpenCV's order (each row across, then
    the rows down) and round half to even (``saturate_cast<uchar>(float)``).
    """
    in_h, in_w, channels = image.shape
    scale_x, scale_y = 1.0 / (width / in_w), 1.0 / (height / in_h)
    int_x, int_y = round(scale_x), round(scale_y)
    eps = np.finfo(np.float64).eps
    if abs(scale_x - int_x) < eps and abs(scale_y - int_y) < eps:
        blocks = image.reshape(height, int_y, width, int_x, channels)
        sums = blocks.sum((1, 3), dtype=np.int64)
        if int_x == int_y == 2 and channels in (1, 3, 4):
            return ((sums + 2) >> 2).astype(np.uint8)
        out = sums.astype(np.float32) * (np.float32(1) / np.float32(int_x * int_y))
    else:
        cols, col_weight = _area_table(in_w, width)
        rows, row_weight = _area_table(in_h, height)
        src = image.astype(np.float32)
        across = src[:, cols[:, 0]] * col_weight[:, 0, None]
        for k in range(1, cols.shape[1]):
            across += src[:, cols[:, k]] * col_weight[:, k, None]
        out = across[rows[:, 0]] * row_weight[:, 0, None, None]
        for k in range(1, rows.shape[1]):
            out += across[rows[:, k]] * row_weight[:, k, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _upscale_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Mean of the covered input area when an axis grows (not OpenCV's bilinear variant).

    It reads box sums off an integral image interpolated at the cell edges: the
    integral of a piecewise-constant image is bilinear inside each pixel, so linear
    interpolation at fractional edges is exact.
    """
    in_h, in_w = image.shape[:2]
    integral = np.zeros((in_h + 1, in_w + 1, image.shape[2]))
    np.cumsum(np.cumsum(image, 0, dtype=np.float64), 1, out=integral[1:, 1:])
    rows, row_frac = _cell_edges(in_h, height)
    cols, col_frac = _cell_edges(in_w, width)
    row_frac = row_frac[:, None, None]
    at_rows = integral[rows] * (1 - row_frac) + integral[rows + 1] * row_frac
    col_frac = col_frac[None, :, None]
    at = at_rows[:, cols] * (1 - col_frac) + at_rows[:, cols + 1] * col_frac
    sums = at[1:, 1:] - at[:-1, 1:] - at[1:, :-1] + at[:-1, :-1]
    out = sums * (height * width / (in_h * in_w))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-interpolated resize of an HxW or HxWxC uint8 image to ``size`` = (H, W).

    Shrinking (both axes no larger than the input, as Atari's 210x160 -> 64x64) gives
    OpenCV's ``cv2.resize(image, (W, H), interpolation=cv2.INTER_AREA)`` to the byte,
    which is what the released code's gym AtariPreprocessing used: each output pixel is
    the mean of the input area it covers, fractional pixels weighted by overlap, with
    OpenCV's float32 arithmetic and rounding (tests/test_reference_atari.py checks it
    against recorded OpenCV output). Growing an axis keeps a plain area mean, where
    OpenCV would switch to a bilinear variant. Only element-wise numpy, no image
    library: small BLAS products stall on thread wake-ups when interleaved with
    simulator steps.
    """
    height, width = int(size[0]), int(size[1])
    squeeze = image.ndim == 2
    if squeeze:
        image = image[:, :, None]
    if image.shape[:2] == (height, width):
        out = np.asarray(image, np.uint8)
    elif height <= image.shape[0] and width <= image.shape[1]:
        out = _downscale_area(np.asarray(image, np.uint8), height, width)
    else:
        out = _upscale_area(image, height, width)
    return out[:, :, 0] if squeeze else out


class ResizeImage(Wrapper):
    """Resize the ``image`` entry to ``size`` = (H, W) so every suite feeds the same CNN."""

    def __init__(self, env: Env, size: tuple[int, int], key: str = "image") -> None:
        super().__init__(env)
        if key not in env.obs_space:
            raise ValueError(f"ResizeImage: observation has no {key!r} entry")
        self.size = (int(size[0]), int(size[1]))
        self.key = key
        channels = env.obs_space[key].shape[2:]
        self._obs_space = {**env.obs_space, key: image_space((*self.size, *channels))}

    @property
    def obs_space(self) -> dict[str, gymnasium.spaces.Box]:  # type: ignore[override]
        return self._obs_space

    def _resize(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**obs, self.key: resize_area(obs[self.key], self.size)}

    def reset(self) -> dict[str, np.ndarray]:
        return self._resize(self.env.reset())

    def step(self, action: Any) -> dict[str, np.ndarray]:
        return self._resize(self.env.step(action))


class OneHotAction(Wrapper):
    """Turn a ``Discrete(n)`` env into one taking one-hot float32 vectors of length n.

    Categorical policies output one-hot samples, so the agent never handles integers.
    Anything that is not exactly one-hot is rejected: a silently arg-maxed soft vector
    would hide bugs in the policy.
    """

    def __init__(self, env: Env) -> None:
        space = env.act_space
        if not isinstance(space, gymnasium.spaces.Discrete):
            raise ValueError(f"OneHotAction needs a Discrete action space, got {space}")
        super().__init__(env)
        self._n = int(space.n)
        self._start = int(space.start)
        self._act_space = gymnasium.spaces.Box(0.0, 1.0, (self._n,), np.float32)

    @property
    def act_space(self) -> gymnasium.spaces.Box:  # type: ignore[override]
        return self._act_space

    @property
    def discrete(self) -> bool:
        return True

    def step(self, action: Any) -> dict[str, np.ndarray]:
        action = np.asarray(action)
        if action.shape != (self._n,):
            raise ValueError(f"expected a one-hot action of shape ({self._n},), got {action.shape}")
        index = int(np.argmax(action))
        if not (action[index] == 1 and np.count_nonzero(action) == 1):
            raise ValueError(f"action is not one-hot: {action}")
        return self.env.step(self._start + index)


class NormalizeAction(Wrapper):
    """Expose a continuous action space as [-1, 1] and rescale to the true bounds inside.

    Tanh-squashed policies produce [-1, 1]; this maps them onto the env's bounds. Dims
    with an infinite bound cannot be normalized and are passed through unchanged (their
    ``act_space`` bounds stay infinite).
    """

    def __init__(self, env: Env) -> None:
        space = env.act_space
        if not isinstance(space, gymnasium.spaces.Box):
            raise ValueError(f"NormalizeAction needs a Box action space, got {space}")
        super().__init__(env)
        low = space.low.astype(np.float64)
        high = space.high.astype(np.float64)
        self._mask = np.isfinite(low) & np.isfinite(high)
        self._low = np.where(self._mask, low, -1.0)
        self._high = np.where(self._mask, high, 1.0)
        self._dtype = space.dtype
        self._shape = space.shape
        self._act_space = gymnasium.spaces.Box(
            np.where(self._mask, -1.0, low).astype(np.float32),
            np.where(self._mask, 1.0, high).astype(np.float32),
            space.shape,
            np.float32,
        )

    @property
    def act_space(self) -> gymnasium.spaces.Box:  # type: ignore[override]
        return self._act_space

    @property
    def discrete(self) -> bool:
        return False

    def step(self, action: Any) -> dict[str, np.ndarray]:
        action = np.asarray(action, np.float64)
        if action.shape != self._shape:
            raise ValueError(f"expected an action of shape {self._shape}, got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        clipped = np.clip(action, -1.0, 1.0)
        scaled = self._low + (clipped + 1.0) / 2.0 * (self._high - self._low)
        # Rounding can land a hair outside very narrow or lopsided bounds (low=-1,
        # high=-1e-38 maps +1 to 0.0); simulators may reject that, so clip again.
        scaled = np.clip(scaled, self._low, self._high)
        native = np.where(self._mask, scaled, action).astype(self._dtype)
        return self.env.step(native)
