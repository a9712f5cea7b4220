"""Atari through ale-py: DreamerV2 preprocessing, flags, life loss, seeding."""

import gymnasium
import numpy as np
import pytest

from tempo.envs import make_env
from tempo.envs.atari import Atari, resolve_game


def one_hot(index, n):
    return np.eye(n, dtype=np.float32)[index]


def test_game_names():
    assert resolve_game("pong") == "Pong"
    assert resolve_game("bank_heist") == "BankHeist"
    assert resolve_game("montezuma_revenge") == "MontezumaRevenge"
    assert resolve_game("SpaceInvaders") == "SpaceInvaders"


def test_pong_spaces_and_frame_counts():
    env = make_env("atari_pong", seed=0, noops=0)
    ale = env.unwrapped.ale
    assert env.discrete and env.act_space == gymnasium.spaces.Box(0, 1, (6,), np.float32)
    assert env.obs_space["image"] == gymnasium.spaces.Box(0, 255, (64, 64, 1), np.uint8)
    obs = env.reset()
    assert ale.getEpisodeFrameNumber() == 0
    assert obs["is_first"] and obs["reward"] == 0 and not obs["is_last"]
    for step in range(1, 6):
        obs = env.step(one_hot(step % 6, 6))
        assert set(obs) == set(env.obs_space)
        for key, space in env.obs_space.items():
            assert space.contains(obs[key]), key
        assert not obs["is_first"] and not obs["is_last"]
        assert ale.getEpisodeFrameNumber() == 4 * step  # action repeat 4
    assert obs["image"].std() > 0  # a real frame, not a blank
    env.close()


def test_rgb_and_custom_repeat_and_size():
    env = make_env("atari_pong", grayscale=False, action_repeat=2, size=(32, 48), noops=0)
    assert env.obs_space["image"].shape == (32, 48, 3)
    env.reset()
    obs = env.step(one_hot(0, 6))
    assert obs["image"].shape == (32, 48, 3) and obs["image"].dtype == np.uint8
    assert env.unwrapped.ale.getEpisodeFrameNumber() == 2


def test_max_pool_over_last_two_frames():
    env = Atari("pong", noops=0, sticky=0.0, seed=0)
    frames = []
    original = env.gym_env.step
    env.gym_env.step = lambda a: (lambda out: (frames.append(out[0]), out)[1])(original(a))
    env.reset()
    for _ in range(30):
        obs = env.step(2)
    assert len(frames) == 120
    expected = np.maximum(frames[-2], frames[-1])[:, :, None]
    np.testing.assert_array_equal(obs["image"], expected)
    assert not np.array_equal(frames[-2], frames[-1])  # the ball moved: pooling matters


def record_frames(env):
    """Collect every frame the ALE env returns (reset and steps) into a list."""
    frames = []
    step, reset = env.gym_env.step, env.gym_env.reset
    env.gym_env.step = lambda a: (lambda out: (frames.append(out[0]), out)[1])(step(a))
    env.gym_env.reset = lambda **k: (lambda out: (frames.append(out[0]), out)[1])(reset(**k))
    return frames


def test_reset_observation_is_last_noop_frame():
    # As gym's AtariPreprocessing (the release's): its reset zero-fills the second
    # pooling buffer, so the first observation is the last no-op frame, not a max.
    # Ms. Pac-Man's start animates, so the two rules give different images.
    env = Atari("ms_pacman", noops=30, sticky=0.0, seed=3)
    frames = record_frames(env)
    for _ in range(3):
        frames.clear()
        obs = env.reset()
        assert 2 <= len(frames) <= 31  # the reset frame and 1..30 no-ops
        np.testing.assert_array_equal(obs["image"][:, :, 0], frames[-1])
        assert not np.array_equal(frames[-2], frames[-1])
        # The first step pools its own two last frames, nothing from the reset.
        frames.clear()
        obs = env.step(0)
        np.testing.assert_array_equal(obs["image"][:, :, 0], np.maximum(frames[-2], frames[-1]))


def test_no_pooling_without_action_repeat():
    # gym pools only when frame_skip > 1: at repeat 1 the observation is the frame.
    env = Atari("ms_pacman", action_repeat=1, noops=0, sticky=0.0)
    frames = record_frames(env)
    env.reset()
    differ = 0
    for _ in range(12):
        obs = env.step(0)
        np.testing.assert_array_equal(obs["image"][:, :, 0], frames[-1])
        differ += not np.array_equal(frames[-2], frames[-1])
    assert differ > 0


def test_no_ale_frame_cap_by_default():
    # The release's ALE has no per-episode frame cap (only its 27000-step TimeLimit);
    # ale-py's registered 108k frames would end long episodes a few steps early.
    env = Atari("pong", noops=0)
    assert env.ale.getInt("max_num_frames_per_episode") == 0
    env = make_env("atari_pong", max_frames=10, noops=0, sticky=0.0, time_limit=0)
    env.reset()
    flags = [
        (bool(o["is_last"]), bool(o["is_terminal"]))
        for o in (env.step(one_hot(0, 6)) for _ in range(3))
    ]
    assert flags == [(False, False), (False, False), (True, False)]  # frames 4, 8, 10
    assert env.unwrapped.ale.getEpisodeFrameNumber() == 10
    with pytest.raises(ValueError, match="max_frames"):
        Atari("pong", max_frames=-1)


def test_noops_at_reset():
    env = make_env("atari_pong", seed=1, noops=30)
    ale = env.unwrapped.ale
    counts = set()
    for _ in range(4):
        env.reset()
        counts.add(ale.getEpisodeFrameNumber())
    assert all(1 <= c <= 30 for c in counts) and len(counts) > 1


def test_time_limit_is_last_not_terminal():
    env = make_env("atari_pong", time_limit=5, noops=0)
    env.reset()
    flags = [
        (bool(o["is_last"]), bool(o["is_terminal"]))
        for o in (env.step(one_hot(0, 6)) for _ in range(5))
    ]
    assert flags == [(False, False)] * 4 + [(True, False)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(one_hot(0, 6))


def test_seeding_reproducible():
    def rollout(seed):
        env = make_env("atari_pong", seed=seed)
        images = [env.reset()["image"]]
        images += [env.step(one_hot(i % 6, 6))["image"] for i in range(20)]
        return np.stack(images), env.unwrapped.ale.getEpisodeFrameNumber()

    a, frames_a = rollout(5)
    b, frames_b = rollout(5)
    np.testing.assert_array_equal(a, b)
    assert frames_a == frames_b
    # Another seed draws other no-op starts and sticky repeats (a dropped seed
    # would make every rollout the same): frames or pixels differ.
    others = [rollout(seed) for seed in (6, 7)]
    assert all(f != frames_a or not np.array_equal(x, a) for x, f in others)


def test_life_loss_is_terminal_and_game_continues():
    env = make_env("atari_breakout", life_loss=True, sticky=0.0, noops=0)
    ale = env.unwrapped.ale
    env.reset()
    assert ale.lives() == 5
    fire = one_hot(1, 4)
    for _ in range(1000):
        obs = env.step(fire)
        if obs["is_last"]:
            break
    assert obs["is_last"] and obs["is_terminal"] and ale.lives() == 4
    obs = env.reset()  # the same game goes on with the remaining lives
    assert obs["is_first"] and ale.lives() == 4 and ale.getEpisodeFrameNumber() > 0


def test_life_loss_off_by_default():
    env = make_env("atari_breakout", sticky=0.0, noops=0)
    ale = env.unwrapped.ale
    env.reset()
    fire = one_hot(1, 4)
    for _ in range(200):
        obs = env.step(fire)
        assert not obs["is_last"]
        if ale.lives() < 5:
            break
    assert ale.lives() == 4 and not obs["is_terminal"]
