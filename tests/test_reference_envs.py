"""Golden tests: our DeepMind Control envs give the released code's model what its envs do.

`tests/reference/make_env_golden.py` built each task with the release's own
`common/envs.py` the way its `train.py` does (`DMC(task, 2, (64, 64), -1,
seed)`, `NormalizeAction`, `TimeLimit(env, 0)`), applied a fixed float32
action sequence, reset after `is_last` as its `Driver` does, and recorded what
its model and replay receive: the rank-1 observations its Encoder keeps (proprio)
or the image (pixels), as float32, the reward and flags, and the controls the
simulator applied. Here `tempo.envs.make_env` builds the same task with the same
seed and must produce the same keys, in the same order, with the same values.

The one difference is the action rescaling. The release's `NormalizeAction`
computes `(a + 1) / 2 * (high - low) + low` in float32 arithmetic, which moves
about 30-55% of the controls by up to 2**-24 (1.3e-7 on quadruped's wider
bounds); ours computes in float64 and rounds once to float32 (for the suite's
usual [-1, 1] bounds: exactly `a`). Walker is chaotic, so that alone makes a
whole episode diverge (a different trajectory by step 500), so the replays below
step our env below its rescaling (`NormalizeAction.env`, native units) with the
controls the release's simulator applied, and `test_action_rescaling_*` pins the
rescaling of both programs.

Tolerances: none. Both sides run the same MuJoCo build on the same physics with
the same controls, cast float64 observations to float32 and sum the two rewards
of an action repeat in float64, so everything is compared exactly; that includes
the images, rendered here by the same renderer that wrote the file. (A different
OpenGL implementation, e.g. a GPU's EGL driver instead of Mesa llvmpipe, may
rasterize edges differently; then regenerate the file on that machine.)
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import pytest

from tempo.envs import NormalizeAction, make_env

GOLDEN = pathlib.Path(__file__).resolve().parent / "reference" / "golden_envs_dmc.npz"
FLAGS = ("is_first", "is_last", "is_terminal")
CASES = ["walker_walk", "cup_catch", "finger_turn_easy", "cartpole_swingup", "quadruped_walk"]


@functools.cache
def golden() -> dict[str, dict[str, np.ndarray]]:
    cases: dict[str, dict[str, np.ndarray]] = {}
    with np.load(GOLDEN, allow_pickle=False) as data:
        for key in data.files:
            case, name = key.split("/", 1)
            cases.setdefault(case, {})[name] = data[key]
    return cases


def rollout(ref: dict[str, np.ndarray], actions: np.ndarray, native=False, obs_type=None, **kw):
    """Our env through the release's Driver protocol: reset, step, reset after is_last.

    ``native``: step below our NormalizeAction, in the simulator's units. Returns the
    env, the observations and the simulator's controls after each step."""
    obs_type = str(ref["obs_type"]) if obs_type is None else obs_type
    env = make_env(f"dmc_{ref['task']}", seed=int(ref["seed"]), obs_type=obs_type, **kw)
    assert isinstance(env, NormalizeAction)
    step = env.env.step if native else env.step
    physics = env.unwrapped.physics
    rows, controls = [env.reset()], []
    for action in actions:
        rows.append(step(action))
        controls.append(physics.data.ctrl.copy())
        if rows[-1]["is_last"]:
            rows.append(env.reset())
    env.close()
    return env, rows, np.array(controls)


def released_controls(ref: dict[str, np.ndarray]) -> np.ndarray:
    """What the release's simulator applied, as the float32 actions they exactly are."""
    control = ref["control"].astype(np.float32)
    np.testing.assert_array_equal(control, ref["control"])
    return control


def compare(ref: dict[str, np.ndarray], env, rows: list[dict[str, np.ndarray]]) -> None:
    keys = [str(k) for k in ref["keys"]]
    # The model's inputs: the release's Encoder keeps rank-1 keys (proprio) or the image.
    sensors = [k for k in env.obs_space if k not in ("reward", *FLAGS)]
    assert sensors == keys, f"observation keys {sensors}, the release's model sees {keys}"
    assert len(rows) == len(ref["reward"]), (len(rows), len(ref["reward"]))
    for key in keys:
        ours = np.stack([row[key] for row in rows])
        theirs = ref[f"obs/{key}"]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, key
        for t in range(len(rows)):
            np.testing.assert_array_equal(ours[t], theirs[t], err_msg=f"{key} at row {t}")
    rewards = np.array([row["reward"] for row in rows])
    assert rewards.dtype == np.float32
    # The release sums the action repeat's rewards in float; its Driver casts to float32.
    np.testing.assert_array_equal(rewards, ref["reward"].astype(np.float32), err_msg="reward")
    for flag in FLAGS:
        ours = np.array([bool(row[flag]) for row in rows])
        np.testing.assert_array_equal(ours, ref[flag], err_msg=flag)


@pytest.mark.parametrize("case", CASES)
def test_env_matches_the_release(case):
    ref = golden()[case]
    env, rows, controls = rollout(ref, released_controls(ref), native=True)
    np.testing.assert_array_equal(controls, ref["control"], err_msg="applied controls")
    compare(ref, env, rows)


def test_the_golden_file_covers_the_cases_that_matter():
    cases = golden()
    assert sorted(cases) == sorted(CASES)
    walker = cases["walker_walk"]
    # The suite's limit (1000 control steps = 500 agent steps) ends the episode with
    # is_last but not is_terminal; the Driver then resets and the next episode runs.
    assert len(walker["action"]) == 503 and len(walker["reward"]) == 505
    assert np.flatnonzero(walker["is_last"]).tolist() == [500]
    assert np.flatnonzero(walker["is_first"]).tolist() == [0, 501]
    assert not walker["is_terminal"].any()
    assert [str(k) for k in walker["keys"]] == ["orientations", "velocity"]  # no height
    assert str(cases["cup_catch"]["task"]) == "cup_catch"  # the release's alias
    assert "dist_to_target" not in cases["finger_turn_easy"]["keys"]
    for case in ("cartpole_swingup", "quadruped_walk"):
        image = cases[case]["obs/image"]
        assert image.dtype == np.uint8 and image.shape[1:] == (64, 64, 3), case
        assert len({frame.tobytes() for frame in image}) == len(image), case  # it moves


@pytest.mark.parametrize("case", CASES)
def test_action_rescaling_rounds_once_here_and_in_float32_in_the_release(case):
    ref = golden()[case]
    action = ref["action"][:20]
    # Ours: the first 20 steps of our full env (proprio is enough for the controls).
    env, _, ours = rollout(ref, action, obs_type="proprio")
    space = env.unwrapped.act_space
    low, high = space.low, space.high  # the suite's bounds in float32, as the release's Box
    theirs = ref["control"][: len(action)]
    # The release: its NormalizeAction's formula in float32 arithmetic.
    np.testing.assert_array_equal(theirs, (action + 1) / 2 * (high - low) + low)
    # Ours: the same formula in float64, rounded once to float32.
    low64, high64 = low.astype(np.float64), high.astype(np.float64)
    exact = low64 + (action.astype(np.float64) + 1) / 2 * (high64 - low64)
    np.testing.assert_array_equal(ours, exact.astype(np.float32))
    if np.all(low == -1) and np.all(high == 1):
        np.testing.assert_array_equal(ours, action)  # [-1, 1]: the action itself
    assert 0 < np.mean(ours != theirs) < 1
    # A few float32 roundings of numbers below ~2 (5.96e-8 with [-1, 1], 1.27e-7 on quadruped).
    assert np.abs(ours - theirs).max() <= 2.0**-22


def test_one_rounding_of_the_controls_barely_moves_a_short_run():
    ref = golden()["cup_catch"]
    _, rows, _ = rollout(ref, ref["action"])
    for key in ref["keys"]:
        ours = np.stack([row[str(key)] for row in rows])
        np.testing.assert_allclose(ours, ref[f"obs/{key}"], rtol=1e-5, atol=1e-6, err_msg=key)


def test_flattening_every_key_is_not_what_the_release_sees():
    """The previous behaviour (every key, scalars as (1,)) feeds walker `height` in."""
    ref = dict(golden()["walker_walk"])
    ref["control"] = ref["control"][:3]
    for key in ("reward", *FLAGS, "obs/orientations", "obs/velocity"):
        ref[key] = ref[key][:4]
    compare(ref, *rollout(ref, released_controls(ref), native=True)[:2])  # the default passes
    env, rows, _ = rollout(ref, released_controls(ref), native=True, proprio_keys="all")
    assert rows[0]["height"].shape == (1,)
    with pytest.raises(AssertionError, match="height"):
        compare(ref, env, rows)
