#!/usr/bin/env python
"""Env frames per second of the RELEASED TEMPO code's whole training loop.

Run under the release's environment with dm_control (tests/reference/README.md):

    TEMPO_REF_SRC=$REF/src $REF/venv/bin/python tests/reference/released_train.py --mode tempo
    TEMPO_REF_SRC=$REF/src $REF/venv/bin/python tests/reference/released_train.py --mode dreamerv2

It calls the release's own `train.main()` (env stepping, policy, replay,
updates, logging; its code unmodified) with its `defaults` and `dmc_proprio`
blocks at the sizes of our gin_configs/cpu.gin, on dmc_cartpole_swingup, and
with evaluation effectively off, so that the figure sits beside our "A whole
run" measurement (README.md), which is taken with `launch.train ... --gin_file
gin_configs/dmc_proprio.gin --gin_file gin_configs/cpu.gin --steps 15000
--meta=false --gin_param 'train.eval_every = 0'`.

Unit: env frames, as in our launch.train: agent steps (the release's step
counter, transitions the policy acted in) times the action repeat, 2 here.
--prefill (like cpu.gin's train.prefill) is in agent steps in both programs.
The clock reads when the release's counter reaches --from_frame and --steps;
the run stops at --steps. Prints one line `RELEASED_JSON {...}`.

The loop is the release's as it is: its DMC wrapper renders a 64x64 image
(MuJoCo, EGL) after every agent step even with proprioceptive inputs, and the
image goes into its replay and batches though no network reads it; before the
clock starts it runs one evaluation episode (the first pass of its loop) and
logs the first episodes as videos.

The release has no switch between TEMPO and DreamerV2: its train.py trains
with `Agent.train` and leaves `Agent.train_without_meta` (its DreamerV2)
commented out, so `--mode dreamerv2` points `Agent.train` at the latter.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# gin_configs/cpu.gin (after dmc_proprio.gin) in the release's config keys.
CPU_SIZES = {
    "rssm.hidden": 128,
    "rssm.deter": 128,
    "rssm.stoch": 16,
    "rssm.discrete": 16,
    "encoder.mlp_layers": (128, 128),
    "decoder.mlp_layers": (128, 128),
    "reward_head.layers": 2,
    "reward_head.units": 128,
    "discount_head.layers": 2,
    "discount_head.units": 128,
    "actor.layers": 2,
    "actor.units": 128,
    "critic.layers": 2,
    "critic.units": 128,
    "meta.layers": 2,
    "meta.units": 128,
    "dataset.batch": 16,
    "dataset.length": 32,
    # Our replay cuts segments of exactly the batch length; the release's does so
    # when its minlen and maxlen equal it (its defaults: 50, 50, dataset.length 50).
    "replay.minlen": 32,
    "replay.maxlen": 32,
}


class WindowDone(Exception):
    """Raised by the step counter at the last frame: stops the release's loop."""


def yaml_shims() -> None:
    """train.py and Config.save call ruamel.yaml's module-level safe_load and
    safe_dump, which ruamel.yaml 0.18 removed."""
    import ruamel.yaml

    def plain(value):  # the safe dumper has no representer for tuples
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    def safe_load(text):
        return ruamel.yaml.YAML(typ="safe", pure=True).load(text)

    def safe_dump(data, stream) -> None:
        ruamel.yaml.YAML(typ="safe", pure=True).dump(plain(data), stream)

    ruamel.yaml.safe_load, ruamel.yaml.safe_dump = safe_load, safe_dump


def cpu_as_gpu(tf) -> None:
    """train.py asserts that a GPU exists and pins it; without one, its GPU
    queries get the CPU and the pinning calls do nothing."""
    exp = tf.config.experimental
    if exp.list_physical_devices("GPU"):
        return
    real = exp.list_physical_devices

    def list_devices(device_type=None):
        return real("CPU") if device_type == "GPU" else real(device_type)

    exp.list_physical_devices = list_devices
    exp.set_visible_devices = lambda devices, device_type=None: None
    exp.set_memory_growth = lambda device, enable: None


def load_release():
    """(tf, agent, common, train, action repeat of dmc_proprio): the release's
    modules, importable and quiet here (shims, yaml, its GPU assertion)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger().setLevel("ERROR")
    warnings.filterwarnings("ignore")
    from make_golden import SRC, install_shims, make_config

    tf = install_shims()
    yaml_shims()
    cpu_as_gpu(tf)
    sys.path.insert(0, str(SRC))
    import agent
    import common
    import train

    return tf, agent, common, train, make_config(common, "dmc_proprio", None).action_repeat


def flags_argv(train_module, settings: dict) -> list[str]:
    """`sys.argv` for the release's train.py with `settings` as its flags (its
    own syntax: `--key value`, tuples comma-joined)."""
    argv = [str(pathlib.Path(train_module.__file__))]
    for key, value in settings.items():
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        argv += [f"--{key}", text]
    return argv


def release_argv(args: argparse.Namespace, logdir: pathlib.Path, repeat: int) -> list[str]:
    """The command line the release's train.py parses (its own flag syntax)."""
    settings = {
        "configs": "dmc_proprio",
        "logdir": str(logdir),
        "task": args.task,
        "seed": args.seed,
        "steps": args.steps // repeat,  # agent steps in the release
        "eval_every": int(1e9),  # its evaluation loop never comes round again
        "prefill": args.prefill,
        "pretrain": args.pretrain,
        **CPU_SIZES,
    }
    return flags_argv(sys.modules["train"], settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="tempo", choices=["tempo", "dreamerv2"])
    parser.add_argument("--task", default="dmc_cartpole_swingup")
    parser.add_argument("--steps", type=int, default=15000, help="Env frame the clock stops at.")
    parser.add_argument("--from_frame", type=int, default=7000, help="Env frame it starts at.")
    parser.add_argument("--prefill", type=int, default=2500, help="Agent steps (cpu.gin).")
    parser.add_argument("--pretrain", type=int, default=100, help="Updates (cpu.gin).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", default="", help="Default: a temporary folder, removed.")
    args = parser.parse_args()

    tf, agent, common, train, repeat = load_release()
    if args.from_frame <= args.prefill * repeat or args.steps <= args.from_frame:
        parser.error("need prefill * action repeat < --from_frame < --steps (env frames)")
    if args.logdir and (pathlib.Path(args.logdir) / "train_episodes").exists():
        parser.error(f"{args.logdir} holds a replay; the release would resume and skip prefill")
    logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix="released_train_"))

    marks: dict[str, float] = {}
    updates = [0]

    class FrameClock(common.Counter):
        """The release's agent-step counter, read in env frames at each step."""

        def increment(self, amount: int = 1) -> None:
            super().increment(amount)
            frame = int(self) * repeat
            if frame >= args.from_frame and "start" not in marks:
                marks.update(start=time.perf_counter(), start_frame=frame, start_updates=updates[0])
            if frame >= args.steps:
                marks.update(end=time.perf_counter(), end_frame=frame, end_updates=updates[0])
                raise WindowDone

    class CountingCarry(common.CarryOverState):
        """train.py's update wrapper, counting the updates."""

        def __call__(self, *inputs):
            updates[0] += 1
            return super().__call__(*inputs)

    common.Counter, common.CarryOverState = FrameClock, CountingCarry
    if args.mode == "dreamerv2":
        agent.Agent.train = agent.Agent.train_without_meta
    sys.argv = release_argv(args, logdir, repeat)
    try:
        train.main()
    except WindowDone:
        pass
    finally:
        if not args.logdir:
            shutil.rmtree(logdir, ignore_errors=True)
    seconds = marks["end"] - marks["start"]
    frames = marks["end_frame"] - marks["start_frame"]
    row = {
        "program": "released",
        "mode": args.mode,
        "task": args.task,
        "unit": "env frames",
        "action_repeat": repeat,
        "from_frame": marks["start_frame"],
        "to_frame": marks["end_frame"],
        "seconds": round(seconds, 1),
        "fps": round(frames / seconds, 2),
        "updates": marks["end_updates"] - marks["start_updates"],
        "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
        "tf": tf.__version__,
    }
    print("RELEASED_JSON " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
