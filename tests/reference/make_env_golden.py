#!/usr/bin/env python
"""Writes tests/reference/golden_envs_dmc.npz from the RELEASED code's DeepMind Control env.

Run by hand (never by the test suite), in tempo's own venv: the release's
`common/envs.py` needs no TensorFlow, and a stub stands in for gym (its DMC
only uses `gym.spaces.Box`):

    MUJOCO_GL=egl TEMPO_REF_SRC=$REF/src .venv/bin/python tests/reference/make_env_golden.py
    ... make_env_golden.py --check    # regenerate in memory, compare with the file

`TEMPO_REF_SRC` (default /work/ref/src) is a checkout of the release (see README.md).
The release's `common/envs.py` is loaded by file path, unmodified, and each
environment is built as its `train.py` builds a dmc task for the reference
configurations (dmc_proprio, dmc_vision: action_repeat 2, render_size 64x64,
dmc_camera -1, time_limit 0):

    env = common.DMC(task, 2, (64, 64), -1, seed)
    env = common.NormalizeAction(env)
    env = common.TimeLimit(env, 0)

Each case applies a fixed action sequence (float32, as the release's policy
outputs, from `numpy.random.default_rng(123).uniform(-1, 1)`) the way the
release's `common.Driver` does: reset, step, and reset again after `is_last`.
Each row (the reset observations included) records what the release's model and
replay see after `Driver._convert` (floats as float32): for proprio cases the
rank-1 observation keys (`common.nets.Encoder` with `mlp_keys: '.*'` keeps only
`len(shape) == 1`), for pixel cases `image`; and `reward` (the env's float sum
over the action repeat, kept in float64 here), `is_first`, `is_last`,
`is_terminal`. Images come from this machine's OpenGL (MUJOCO_GL=egl; Mesa
llvmpipe on a CPU machine), which the tests compare against exactly.

Arrays, per case `<case>/...`: `task` (the release's name), `seed`, `obs_type`,
`keys` (the model's keys, in order), `action` (one row per `step` call),
`control` (the simulator's `data.ctrl` after each step: the action as the
release's `NormalizeAction` rescaled it, in float32 arithmetic), `obs/<key>`,
`reward`, `is_first`, `is_last`, `is_terminal` (one row per observation). The
file is byte-for-byte reproducible (fixed zip timestamps).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import pathlib
import re
import sys
import types
import zipfile

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
from release_shims import install_gym_stub  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(os.environ.get("TEMPO_REF_SRC", "/work/ref/src"))
OUT = HERE / "golden_envs_dmc.npz"
ACTION_SEED = 123

# name: (release task name, obs_type, seed, number of step calls)
CASES = {
    # 500 agent steps reach the suite's 1000-step limit; then the reset and 3 steps.
    "walker_walk": ("walker_walk", "proprio", 0, 503),
    "cup_catch": ("cup_catch", "proprio", 1, 20),
    "finger_turn_easy": ("finger_turn_easy", "proprio", 0, 20),
    "cartpole_swingup": ("cartpole_swingup", "pixels", 0, 7),
    "quadruped_walk": ("quadruped_walk", "pixels", 0, 3),
}
# The reference configurations' model inputs (configs.yaml dmc_proprio / dmc_vision).
KEYS = {
    "proprio": dict(cnn_keys="$^", mlp_keys=".*"),
    "pixels": dict(cnn_keys="image", mlp_keys="$^"),
}


def load_release_envs() -> types.ModuleType:
    install_gym_stub()
    path = SRC / "common" / "envs.py"
    if not path.exists():
        sys.exit(f"{path} not found: set TEMPO_REF_SRC to a checkout of the release")
    spec = importlib.util.spec_from_file_location("release_common_envs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert(value):
    """The release's `Driver._convert`: what its replay and model receive."""
    value = np.array(value)
    if np.issubdtype(value.dtype, np.floating):
        return value.astype(np.float32)
    if np.issubdtype(value.dtype, np.signedinteger):
        return value.astype(np.int32)
    return value


def model_keys(obs_space: dict, obs_type: str) -> list[str]:
    """The keys `common.nets.Encoder`/`Decoder` keep, in their order."""
    shapes = {k: tuple(v.shape) for k, v in obs_space.items()}
    keys = KEYS[obs_type]
    cnn = [k for k, s in shapes.items() if re.match(keys["cnn_keys"], k) and len(s) == 3]
    mlp = [k for k, s in shapes.items() if re.match(keys["mlp_keys"], k) and len(s) == 1]
    return cnn + mlp


def run_case(envs, task: str, obs_type: str, seed: int, steps: int) -> dict[str, np.ndarray]:
    dmc = envs.DMC(task, action_repeat=2, size=(64, 64), camera=-1, seed=seed)
    env = envs.NormalizeAction(dmc)
    env = envs.TimeLimit(env, 0)
    keys = model_keys(env.obs_space, obs_type)
    size = env.act_space["action"].shape[0]
    actions = np.random.default_rng(ACTION_SEED).uniform(-1, 1, (steps, size)).astype(np.float32)
    rows, controls = [env.reset()], []
    for action in actions:
        rows.append(env.step({"action": action}))
        # What the simulator applied: the action after the release's NormalizeAction.
        controls.append(dmc._env.physics.data.ctrl.copy())
        if rows[-1]["is_last"]:
            rows.append(env.reset())
    out = {
        "task": np.array(task),
        "obs_type": np.array(obs_type),
        "seed": np.array(seed),
        "keys": np.array(keys),
        "action": actions,
        "control": np.array(controls, np.float64),
        "reward": np.array([float(r["reward"]) for r in rows], np.float64),
    }
    for flag in ("is_first", "is_last", "is_terminal"):
        out[flag] = np.array([bool(r[flag]) for r in rows])
    for key in keys:
        out[f"obs/{key}"] = np.stack([convert(r[key]) for r in rows])
    return out


def generate() -> dict[str, np.ndarray]:
    envs = load_release_envs()
    out = {}
    for name, case in CASES.items():
        for key, value in run_case(envs, *case).items():
            out[f"{name}/{key}"] = value
    return out


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz `np.load` reads, without the write time `np.savez` stamps on each entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            array = io.BytesIO()
            np.lib.format.write_array(array, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, array.getvalue(), compresslevel=9)
    return buffer.getvalue()


def summary(arrays: dict[str, np.ndarray]) -> None:
    for name in CASES:
        case = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(name + "/")}
        shapes = ", ".join(f"{k} {case['obs/' + k].shape[1:]}" for k in case["keys"])
        last = np.flatnonzero(case["is_last"]).tolist()
        terminal = np.flatnonzero(case["is_terminal"]).tolist()
        print(
            f"{case['task']} {case['obs_type']} seed {case['seed']}: {len(case['reward'])} rows "
            f"({len(case['action'])} steps), keys [{shapes}], return "
            f"{case['reward'].sum():.4f}, is_last at rows {last}, is_terminal at {terminal}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the file, write nothing")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    arrays = generate()
    summary(arrays)
    data = npz_bytes(arrays)
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'identical' if same else 'DIFFERS from a fresh run'}")
        sys.exit(0 if same else 1)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(arrays)} arrays, {len(data) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
