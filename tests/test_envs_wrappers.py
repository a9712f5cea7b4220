"""Shared env wrappers and make_env dispatch, on a tiny fake env (no simulators)."""

import gymnasium
import numpy as np
import pytest

from tempo.envs import (
    ActionRepeat,
    BaseEnv,
    NormalizeAction,
    OneHotAction,
    ResizeImage,
    TimeLimit,
    make_env,
    resize_area,
)
from tempo.envs.wrappers import flag_spaces, image_space, vector_space


class Counter(BaseEnv):
    """Reward 1 per native step, terminates after ``end`` steps; counts observations."""

    def __init__(self, end=100, action_space=None):
        super().__init__()
        self.end = end
        self.steps = 0
        self.observations = 0
        self.actions = []
        self.obs_space = {
            "vector": vector_space(1),
            "image": image_space((10, 20, 3)),
            **flag_spaces(),
        }
        self.act_space = action_space or gymnasium.spaces.Discrete(3)

    def _reset(self):
        self.steps = 0

    def _advance(self, action):
        self.actions.append(action)
        self.steps += 1
        return 1.0, self.steps >= self.end, False

    def _observe(self):
        self.observations += 1
        image = np.full((10, 20, 3), self.steps, np.uint8)
        return {"vector": np.array([self.steps], np.float32), "image": image}


def test_base_env_flags_and_guard():
    env = Counter(end=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    obs = env.reset()
    assert obs["is_first"] and not obs["is_last"] and obs["reward"] == 0
    obs = env.step(0)
    assert not obs["is_first"] and not obs["is_last"]
    obs = env.step(0)
    assert obs["is_last"] and obs["is_terminal"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_action_repeat_counts_steps_and_observes_once():
    inner = Counter(end=7)
    env = ActionRepeat(inner, 3)
    env.reset()
    observed = inner.observations
    obs = env.step(1)
    assert inner.steps == 3 and obs["reward"] == 3.0
    assert inner.observations == observed + 1  # intermediate frames are not rendered
    obs = env.step(1)
    assert inner.steps == 6 and not obs["is_last"]
    obs = env.step(1)  # stops at the termination on native step 7
    assert inner.steps == 7 and obs["reward"] == 1.0
    assert obs["is_last"] and obs["is_terminal"]


def test_action_repeat_over_a_wrapper_uses_full_steps():
    inner = Counter(end=100)
    env = ActionRepeat(TimeLimit(inner, 5), 2)
    env.reset()
    rewards = [float(env.step(0)["reward"]) for _ in range(2)]
    obs = env.step(0)  # time limit after native step 5, in the middle of a repeat
    assert rewards == [2.0, 2.0] and obs["reward"] == 1.0
    assert obs["is_last"] and not obs["is_terminal"] and inner.steps == 5


def test_time_limit_is_last_not_terminal_and_resets():
    inner = Counter(end=100)
    env = TimeLimit(inner, 3)
    for _ in range(2):
        assert env.reset()["is_first"]
        flags = [
            (bool(o["is_last"]), bool(o["is_terminal"])) for o in (env.step(0) for _ in range(3))
        ]
        assert flags == [(False, False), (False, False), (True, False)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_one_hot_action():
    inner = Counter(action_space=gymnasium.spaces.Discrete(3, start=1))
    env = OneHotAction(inner)
    assert env.discrete
    assert env.act_space == gymnasium.spaces.Box(0, 1, (3,), np.float32)
    env.reset()
    env.step(np.array([0, 0, 1], np.float32))
    assert inner.actions == [3]
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([0.5, 0.5, 0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.array([1, 0], np.float32))


def test_normalize_action_rescales_to_bounds():
    space = gymnasium.spaces.Box(
        np.array([-2.0, 0.0, -np.inf], np.float32), np.array([2.0, 10.0, np.inf], np.float32)
    )
    inner = Counter(action_space=space)
    env = NormalizeAction(inner)
    assert not env.discrete
    np.testing.assert_array_equal(env.act_space.low, [-1, -1, -np.inf])
    np.testing.assert_array_equal(env.act_space.high, [1, 1, np.inf])
    env.reset()
    env.step(np.array([1.0, -1.0, 7.0]))
    env.step(np.array([0.5, 0.0, -3.0]))
    env.step(np.array([5.0, -5.0, 0.0]))  # clipped into the bounds
    np.testing.assert_allclose(inner.actions, [[2, 0, 7], [1, 5, -3], [2, 0, 0]])
    assert all(a.dtype == np.float32 for a in inner.actions)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0]))


def test_resize_area():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = resize_area(image, (2, 2))
    np.testing.assert_array_equal(out, [[25, 45], [105, 125]])  # means of 2x2 blocks
    # Non-integer factors keep a constant image constant and preserve the mean.
    rgb = np.random.default_rng(0).integers(0, 256, (210, 160, 3)).astype(np.uint8)
    out = resize_area(rgb, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert abs(out.mean() - rgb.mean()) < 1.0
    flat = resize_area(np.full((210, 160, 1), 77, np.uint8), (64, 64))
    assert (flat == 77).all() and flat.shape == (64, 64, 1)
    assert resize_area(np.zeros((3, 5), np.uint8), (6, 10)).shape == (6, 10)


def overlap_weights(n_in, n_out):
    """Reference: weight of input cell j in output cell i = overlap length / cell length."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        for j in range(n_in):
            weights[i, j] = max(0.0, min((i + 1) * scale, j + 1) - max(i * scale, j)) / scale
    return weights


@pytest.mark.parametrize(
    "shape, size", [((21, 16, 3), (8, 6)), ((7, 9, 1), (3, 4)), ((3, 5, 2), (7, 11))]
)
def test_resize_area_matches_overlap_reference(shape, size):
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    rows, cols = overlap_weights(shape[0], size[0]), overlap_weights(shape[1], size[1])
    expected = np.einsum("oh,hwc,pw->opc", rows, image.astype(np.float64), cols)
    out = resize_area(image, size)
    assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-6


def test_resize_image_wrapper_space_and_values():
    env = ResizeImage(Counter(), (5, 4))
    assert env.obs_space["image"].shape == (5, 4, 3)
    obs = env.reset()
    assert env.obs_space["image"].contains(obs["image"])
    assert env.step(0)["image"].max() == 1


def test_wrappers_forward_attributes_and_unwrapped():
    inner = Counter()
    env = OneHotAction(TimeLimit(ActionRepeat(inner, 2), 10))
    assert env.unwrapped is inner
    assert env.end == 100  # plain attribute forwarding
    assert env.obs_space is inner.obs_space


@pytest.mark.parametrize(
    "task, pattern",
    [
        ("pong", r"'pong'.*atari_, dmc_, gym_"),
        ("mujoco_walker", r"'mujoco_walker'.*atari_, dmc_, gym_"),
        ("atari_pongg", r"'pongg'.*pong"),
        ("atari_xyzzy", r"'xyzzy'.*valid games: .*alien"),
        ("dmc_walker_fly", r"'fly'.*'walker'.*walk"),
        ("dmc_robot_walk", r"dmc_robot_walk.*domains: .*cartpole"),
        ("gym_CartPole-v9", r"'CartPole-v9'.*CartPole-v1"),
        ("gym_", r"names no gym"),
    ],
)
def test_unknown_tasks_raise_value_error(task, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_env(task)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="action_repeat"):
        make_env("gym_CartPole-v1", action_repeat=0)
    with pytest.raises(ValueError, match="size"):
        make_env("gym_CartPole-v1", size=64)
    with pytest.raises(ValueError, match="obs_type"):
        make_env("atari_pong", obs_type="proprio")
    with pytest.raises(ValueError, match="obs_type"):
        make_env("gym_CartPole-v1", obs_type="rgb")
