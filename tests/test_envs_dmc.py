"""DeepMind Control: pixels and proprio observations, action repeat, time limits, seeding."""

import gymnasium
import numpy as np
import pytest
from support import run_until_last

from tempo.envs import make_env
from tempo.envs.dmc import resolve_task
from tempo.envs.wrappers import FLAG_KEYS


def check_obs(env, obs):
    assert set(obs) == set(env.obs_space)
    for key, space in env.obs_space.items():
        assert obs[key].shape == space.shape and obs[key].dtype == space.dtype, key
        assert space.contains(obs[key]), key


def test_task_names_with_underscores():
    assert resolve_task("walker_walk") == ("walker", "walk")
    assert resolve_task("ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert resolve_task("cartpole_balance_sparse") == ("cartpole", "balance_sparse")
    assert resolve_task("point_mass_easy") == ("point_mass", "easy")


def test_released_alias_cup_for_ball_in_cup():
    assert resolve_task("cup_catch") == ("ball_in_cup", "catch")
    with pytest.raises(ValueError, match="'throw'.*'ball_in_cup'.*catch"):
        resolve_task("cup_throw")
    env = make_env("dmc_cup_catch", obs_type="proprio", seed=1)
    assert (env.unwrapped.domain, env.unwrapped.task) == ("ball_in_cup", "catch")
    twin = make_env("dmc_ball_in_cup_catch", obs_type="proprio", seed=1)
    np.testing.assert_array_equal(env.reset()["position"], twin.reset()["position"])


def test_cartpole_pixels_action_repeat_and_time_limit():
    env = make_env("dmc_cartpole_swingup", seed=0, action_repeat=2, time_limit=3)
    physics = env.unwrapped.physics
    control_dt = env.unwrapped.dm_env.control_timestep()
    assert set(env.obs_space) == {"image", "reward", "is_first", "is_last", "is_terminal"}
    assert env.obs_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert not env.discrete and env.act_space == gymnasium.spaces.Box(-1, 1, (1,), np.float32)
    obs = env.reset()
    check_obs(env, obs)
    assert obs["is_first"] and obs["reward"] == 0 and obs["image"].std() > 0
    start = physics.data.time
    flags = []
    for step in range(1, 4):
        obs = env.step(np.array([0.5], np.float32))
        check_obs(env, obs)
        # Two control steps of the simulator per agent step.
        assert physics.data.time - start == pytest.approx(2 * step * control_dt)
        flags.append((bool(obs["is_first"]), bool(obs["is_last"]), bool(obs["is_terminal"])))
    assert flags == [(False, False, False)] * 2 + [(False, True, False)]
    assert 0.0 <= obs["reward"] <= 2.0  # two rewards in [0, 1] summed
    env.close()


def test_walker_proprio_keys_and_builtin_time_limit():
    env = make_env("dmc_walker_walk", obs_type="proprio", action_repeat=8)
    # The released model's inputs: rank-1 observations only (the scalar height is dropped).
    assert list(env.obs_space)[:2] == ["orientations", "velocity"]
    assert "image" not in env.obs_space and "height" not in env.obs_space
    assert env.obs_space["orientations"].shape == (14,)
    assert env.obs_space["velocity"].shape == (9,)
    assert env.act_space == gymnasium.spaces.Box(-1, 1, (6,), np.float32)
    check_obs(env, env.reset())
    action = np.zeros(6, np.float32)
    step, obs = run_until_last(env, action, 200)
    check_obs(env, obs)
    # The suite's own limit: 1000 control steps = 125 agent steps, discount 1 -> no terminal.
    assert step == 125 and obs["is_last"] and not obs["is_terminal"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(action)
    assert env.reset()["is_first"]


def test_actions_reach_the_simulator():
    env = make_env("dmc_cartpole_balance", obs_type="proprio", action_repeat=1)
    physics = env.unwrapped.physics
    env.reset()
    env.step(np.array([0.75], np.float32))
    np.testing.assert_allclose(physics.data.ctrl, [0.75])
    env.step(np.array([-4.0], np.float32))  # clipped to the bound
    np.testing.assert_allclose(physics.data.ctrl, [-1.0])


def test_both_obs_and_cameras():
    env = make_env("dmc_ball_in_cup_catch", obs_type="both", size=(32, 40))
    assert {"position", "velocity", "image"} <= set(env.obs_space)
    obs = env.reset()
    check_obs(env, obs)
    assert obs["image"].shape == (32, 40, 3)
    assert env.unwrapped.camera == 0
    assert make_env("dmc_quadruped_walk", obs_type="proprio").unwrapped.camera == 2


def test_seeding_reproducible():
    def rollout(seed):
        env = make_env("dmc_walker_walk", obs_type="proprio", seed=seed)
        out = []
        for _ in range(2):
            out.append(env.reset()["orientations"])
            out.append(env.step(np.full(6, 0.3, np.float32))["orientations"])
        return np.stack(out)

    np.testing.assert_array_equal(rollout(4), rollout(4))
    assert not np.array_equal(rollout(4), rollout(5))


def test_proprio_keys_vectors_by_default_or_all_flattened():
    sensors = lambda env: {k: v.shape for k, v in env.obs_space.items() if k not in FLAG_KEYS}
    # Scalars (dist_to_target) and matrices (arm_pos (8, 2)) never reach the released model.
    finger = make_env("dmc_finger_turn_easy", obs_type="proprio")
    assert sensors(finger) == {
        "position": (4,),
        "velocity": (3,),
        "touch": (2,),
        "target_position": (2,),
    }
    manipulator = make_env("dmc_manipulator_bring_ball", obs_type="proprio")
    assert "arm_pos" not in manipulator.obs_space and "arm_vel" in manipulator.obs_space
    check_obs(manipulator, manipulator.reset())
    # 'all' keeps every key, flattened (the previous behaviour).
    every = make_env("dmc_manipulator_bring_ball", obs_type="proprio", proprio_keys="all")
    assert every.obs_space["arm_pos"].shape == (16,)
    obs = every.reset()
    check_obs(every, obs)
    raw = every.unwrapped._time_step.observation
    np.testing.assert_array_equal(obs["arm_pos"], raw["arm_pos"].astype(np.float32).ravel())
    walker = make_env("dmc_walker_walk", obs_type="both", proprio_keys="all")
    assert walker.obs_space["height"].shape == (1,) and "image" in walker.obs_space
    assert "height" not in make_env("dmc_walker_walk", obs_type="both").obs_space
    with pytest.raises(ValueError, match="proprio_keys must be one of.*'vectors', 'all'"):
        make_env("dmc_walker_walk", obs_type="proprio", proprio_keys="scalars")
