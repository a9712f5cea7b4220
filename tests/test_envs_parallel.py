"""Batched envs: worker processes in lockstep, matching serial runs, and loud failures."""

import functools
import os
import signal
import time

import numpy as np
import pytest

from tempo.envs import EnvWorkerError, ParallelEnv, SerialEnv, make_batch_env, make_env


def ctors(task, count, **kwargs):
    return [functools.partial(make_env, task, seed=i, **kwargs) for i in range(count)]


def actions_for(step):
    # Different actions per env so a mix-up between workers would show.
    return np.eye(2, dtype=np.float32)[[step % 2, (step // 3) % 2]]


def test_parallel_matches_serial_in_lockstep():
    serial = SerialEnv(ctors("gym_CartPole-v1", 2, time_limit=8))
    with ParallelEnv(ctors("gym_CartPole-v1", 2, time_limit=8), timeout=30) as parallel:
        assert parallel.num_envs == 2 and len(set(parallel.pids)) == 2
        assert parallel.pids[0] != os.getpid()
        assert parallel.obs_space == serial.obs_space
        assert parallel.act_space == serial.act_space and parallel.discrete
        a, b = serial.reset(), parallel.reset()
        assert a["vector"].shape == (2, 4) and a["is_first"].all()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["vector"][0], a["vector"][1])  # seeds 0 and 1 differ
        for step in range(8):
            a, b = serial.step(actions_for(step)), parallel.step(actions_for(step))
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a["is_last"].all() == (step == 7)
        # Reset a subset, then continue the whole batch.
        a, b = serial.reset([1]), parallel.reset([1])
        assert b["vector"].shape == (1, 4)
        np.testing.assert_array_equal(a["vector"], b["vector"])
    serial.close()


def test_make_batch_env_picks_serial_or_parallel():
    with make_batch_env("gym_Pendulum-v1", 1, seed=3) as single:
        assert isinstance(single, SerialEnv)
        obs = single.reset()
        assert obs["vector"].shape == (1, 3)
        assert single.step(np.zeros((1, 1), np.float32))["reward"].shape == (1,)
    with pytest.raises(ValueError, match="2 actions"):
        SerialEnv(ctors("gym_CartPole-v1", 2)).step(np.zeros((1, 2)))


def test_worker_exception_names_index_and_traceback():
    env = ParallelEnv(ctors("gym_CartPole-v1", 2), timeout=30)
    env.reset([0])  # env 1 never reset: stepping it raises inside its worker
    with pytest.raises(EnvWorkerError, match="environment 1") as info:
        env.step(actions_for(0))
    assert info.value.index == 1
    assert "RuntimeError" in str(info.value) and "call reset() first" in str(info.value)
    assert "Traceback" in info.value.worker_traceback
    with pytest.raises(RuntimeError, match="closed"):
        env.step(actions_for(0))
    assert all(not p.is_alive() for p in env._procs)


def test_construction_error_names_index():
    fns = [
        functools.partial(make_env, "gym_CartPole-v1"),
        functools.partial(make_env, "gym_NoSuchEnv-v0"),
    ]
    with pytest.raises(EnvWorkerError, match=r"environment 1: construction raised.*NoSuchEnv"):
        ParallelEnv(fns, timeout=30)
    with pytest.raises(EnvWorkerError, match="environment 1"):
        SerialEnv(fns)


def test_unpicklable_constructor_is_rejected():
    with pytest.raises(ValueError, match="pickled"):
        ParallelEnv([lambda: make_env("gym_CartPole-v1")])


def test_killed_worker_is_reported():
    env = ParallelEnv(ctors("gym_CartPole-v1", 2), timeout=30)
    env.reset()
    os.kill(env.pids[0], signal.SIGKILL)
    env._procs[0].join(5)
    with pytest.raises(EnvWorkerError, match=r"environment 0: worker process died") as info:
        env.step(actions_for(0))
    assert info.value.index == 0
    assert "exit code -9" in str(info.value)


def test_hung_worker_times_out():
    env = ParallelEnv(ctors("gym_CartPole-v1", 2), timeout=1.0)
    env.reset()
    os.kill(env.pids[1], signal.SIGSTOP)  # alive but never answers
    start = time.monotonic()
    with pytest.raises(EnvWorkerError, match=r"environment 1: no reply to step within 1.0 s"):
        env.step(actions_for(0))
    assert time.monotonic() - start < 10
    assert all(not p.is_alive() for p in env._procs)


def test_parallel_pixels_in_workers_match_serial():
    # Rendering (EGL) and ALE must work in spawned workers, not only in the parent.
    for task, action in (
        ("dmc_cartpole_swingup", np.full((2, 1), 0.3, np.float32)),
        ("atari_pong", np.eye(6, dtype=np.float32)[[2, 3]]),
    ):
        fns = ctors(task, 2, time_limit=3)
        serial = SerialEnv(fns)
        with ParallelEnv(fns, timeout=60) as parallel:
            a, b = serial.reset(), parallel.reset()
            np.testing.assert_array_equal(a["image"], b["image"])
            for _ in range(3):
                a, b = serial.step(action), parallel.step(action)
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{task} {key}")
            assert b["is_last"].all() and not b["is_terminal"].any()
        serial.close()


def test_restart_policy_replaces_killed_hung_and_raising_workers(caplog):
    env = ParallelEnv(
        ctors("gym_CartPole-v1", 2), timeout=2.0, on_failure="restart", max_restarts=4
    )
    try:
        env.reset()
        first = env.step(actions_for(0))
        assert not first["is_first"].any()
        # Killed: env 0 comes back as a new episode, env 1 goes on with its own.
        old = env.pids[0]
        os.kill(old, signal.SIGKILL)
        env._procs[0].join(5)
        with caplog.at_level("WARNING", logger="tempo.envs.parallel"):
            obs = env.step(actions_for(1))
        assert obs["is_first"].tolist() == [True, False]
        assert obs["reward"][0] == 0 and obs["reward"][1] == 1
        assert env.pids[0] != old and env.restarts == 1
        assert "Restarting environment worker 0 (restart 1 of 4)" in caplog.text
        assert "worker process died" in caplog.text
        # Hung: SIGSTOP, then the step times out and the worker is replaced.
        os.kill(env.pids[1], signal.SIGSTOP)
        start = time.monotonic()
        obs = env.step(actions_for(2))
        assert time.monotonic() - start < 20
        assert obs["is_first"].tolist() == [False, True] and env.restarts == 2
        # Raising inside the worker (stepping an env after its episode ended).
        for step in range(600):
            obs = env.step(actions_for(step))
            if obs["is_last"].any():
                break
        done = obs["is_last"].copy()
        assert done.any()
        obs = env.step(actions_for(0))  # finished envs raise when stepped, and are replaced
        np.testing.assert_array_equal(obs["is_first"], done)
        assert env.restarts == 2 + done.sum()
        # The budget is spent: the next failure stops the batch and says so.
        env.max_restarts = env.restarts
        os.kill(env.pids[0], signal.SIGKILL)
        env._procs[0].join(5)
        with pytest.raises(EnvWorkerError, match=r"environment 0: .*no restart left: all \d spent"):
            env.step(actions_for(0))
        assert all(not p.is_alive() for p in env._procs)
    finally:
        env.close()


def test_restart_policy_is_validated():
    with pytest.raises(ValueError, match="on_failure 'retry'.*'raise', 'restart'"):
        make_batch_env("gym_CartPole-v1", 1, on_failure="retry")


def test_driver_records_only_complete_episodes_across_a_worker_restart(tmp_path, caplog):
    from tempo.driver import Driver
    from tempo.replay import Replay

    env = ParallelEnv(ctors("gym_CartPole-v1", 2, time_limit=12), timeout=10, on_failure="restart")
    replay = Replay(tmp_path, capacity=10_000, length=4, min_length=1)
    driver = Driver(env, 2, action_size=2)
    driver.on_step.append(replay.add_step)
    seen = []
    driver.on_step.append(lambda tran, i: seen.append((i, bool(tran["is_first"]), tran["action"])))
    policy = lambda obs, state: (np.eye(2, dtype=np.float32)[[0, 1]], None)
    try:
        driver.run(policy, steps=2 * 3)
        os.kill(env.pids[0], signal.SIGKILL)
        env._procs[0].join(5)
        with caplog.at_level("WARNING"):
            driver.run(policy, steps=2 * 30)
    finally:
        env.close()
    assert env.restarts == 1
    assert "dropping its 4 unfinished steps" in caplog.text  # env 0: reset + 3 steps
    # Every new episode starts with a zero action, the restarted one included.
    firsts = [action for i, first, action in seen if first]
    assert len(firsts) >= 5 and all(not a.any() for a in firsts)
    assert replay.num_episodes >= 4
    for path in sorted(tmp_path.glob("*.npz")):
        with np.load(path) as data:
            assert data["is_first"][0] and data["is_last"][-1]
            assert data["is_first"].sum() == 1 and data["is_last"].sum() == 1
