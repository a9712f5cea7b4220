"""gymnasium adapter: CartPole (discrete, terminations), Pendulum (continuous, truncation)."""

import gymnasium
import numpy as np
import pytest
from support import run_until_last

from tempo.envs import make_env

ONE_HOT = np.eye(2, dtype=np.float32)


def check_obs(env, obs, first=False):
    assert set(obs) == set(env.obs_space)
    for key, space in env.obs_space.items():
        assert obs[key].shape == space.shape and obs[key].dtype == space.dtype, key
        assert space.contains(obs[key]), key
    assert bool(obs["is_first"]) == first
    if first:
        assert obs["reward"] == 0 and not obs["is_last"] and not obs["is_terminal"]


def test_cartpole_spaces_one_hot_and_termination():
    env = make_env("gym_CartPole-v1", seed=3)
    assert env.discrete
    assert env.act_space == gymnasium.spaces.Box(0, 1, (2,), np.float32)
    assert env.obs_space["vector"].shape == (4,) and env.obs_space["vector"].dtype == np.float32
    check_obs(env, env.reset(), first=True)
    # Always pushing right topples the pole within a few dozen steps: a true termination.
    step, obs = run_until_last(env, ONE_HOT[1], 100, check=lambda o: check_obs(env, o))
    assert obs["is_last"] and obs["is_terminal"] and step < 60
    with pytest.raises(ValueError, match="one-hot"):
        env.step(np.array([1, 1], np.float32))
    env.close()


def test_cartpole_one_hot_maps_to_native_index():
    env = make_env("gym_CartPole-v1")
    native = env.unwrapped.gym_env
    seen = []
    original = native.step
    native.step = lambda action: (seen.append(action), original(action))[1]
    env.reset()
    env.step(ONE_HOT[1])
    env.step(ONE_HOT[0])
    assert seen == [1, 0]


def test_cartpole_seeding_reproducible():
    def rollout(seed):
        env = make_env("gym_CartPole-v1", seed=seed)
        out = []
        for _ in range(3):  # several resets: later ones continue the seeded RNG
            out.append(env.reset()["vector"])
            out.append(env.step(ONE_HOT[0])["vector"])
        return np.stack(out)

    np.testing.assert_array_equal(rollout(1), rollout(1))
    assert not np.array_equal(rollout(1), rollout(2))


def test_cartpole_action_repeat_counts_native_steps():
    env = make_env("gym_CartPole-v1", action_repeat=3)
    native = env.unwrapped.gym_env
    calls = []
    original = native.step
    native.step = lambda action: (calls.append(action), original(action))[1]
    env.reset()
    obs = env.step(ONE_HOT[0])
    assert len(calls) == 3 and obs["reward"] == 3.0


def test_cartpole_small_time_limit_is_not_terminal():
    env = make_env("gym_CartPole-v1", time_limit=4)
    env.reset()
    flags = []
    for action in (0, 1, 0, 1):
        obs = env.step(ONE_HOT[action])
        flags.append((bool(obs["is_first"]), bool(obs["is_last"]), bool(obs["is_terminal"])))
    assert flags == [(False, False, False)] * 3 + [(False, True, False)]
    assert env.reset()["is_first"]


def test_pendulum_normalized_actions_rescaled_to_true_bounds():
    env = make_env("gym_Pendulum-v1")
    native = env.unwrapped.gym_env
    assert not env.discrete
    assert env.act_space == gymnasium.spaces.Box(-1, 1, (1,), np.float32)
    high = native.action_space.high  # Pendulum's torque bound is 2
    assert high[0] == 2.0
    seen = []
    original = native.step
    native.step = lambda action: (seen.append(np.array(action)), original(action))[1]
    check_obs(env, env.reset(), first=True)
    for action in ([1.0], [-1.0], [0.25], [3.0]):
        check_obs(env, env.step(np.array(action, np.float32)))
    np.testing.assert_allclose(np.concatenate(seen), [2.0, -2.0, 0.5, 2.0])


def test_pendulum_truncation_is_last_not_terminal():
    env = make_env("gym_Pendulum-v1", action_repeat=2)
    env.reset()
    zero = np.zeros(1, np.float32)
    step, obs = run_until_last(env, zero, 200)
    # gymnasium truncates Pendulum after 200 native steps = 100 agent steps at repeat 2.
    assert step == 100
    assert obs["is_last"] and not obs["is_terminal"]


class Painter(gymnasium.Env):
    """Test env with a Dict observation and an rgb_array render (no pygame needed)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gymnasium.spaces.Dict(
            {
                "pos": gymnasium.spaces.Box(-1, 1, (2, 2), np.float64),
                "mode": gymnasium.spaces.Discrete(3),
            }
        )
        self.action_space = gymnasium.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return {"pos": np.full((2, 2), self.t / 10), "mode": self.t % 3}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, self.t >= 5, {}

    def render(self):
        return np.full((100, 150, 3), 10 * self.t, np.uint8)


gymnasium.register("TempoTestPainter-v0", entry_point=Painter)


def test_dict_observations_and_rendered_image():
    env = make_env("gym_TempoTestPainter-v0", obs_type="both", size=(32, 48))
    assert env.obs_space["pos"].shape == (4,) and env.obs_space["mode"].shape == (3,)
    assert env.obs_space["image"].shape == (32, 48, 3)
    check_obs(env, env.reset(), first=True)
    obs = env.step(ONE_HOT[0])
    check_obs(env, obs)
    np.testing.assert_allclose(obs["pos"], 0.1)
    np.testing.assert_array_equal(obs["mode"], [0, 1, 0])
    assert (obs["image"] == 10).all()
    for _ in range(4):
        obs = env.step(ONE_HOT[1])
    assert obs["is_last"] and not obs["is_terminal"]

    pixels = make_env("gym_TempoTestPainter-v0", obs_type="pixels")
    assert set(pixels.obs_space) == {"image", "reward", "is_first", "is_last", "is_terminal"}
    assert pixels.reset()["image"].shape == (64, 64, 3)
