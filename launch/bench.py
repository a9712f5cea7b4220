r"""Seconds per update of the compiled trainer, TEMPO vs DreamerV2, per config.

  python -m launch.bench --configs dmc_vision,atari --modes tempo,dreamerv2 --iters 10

Each (config, mode) runs in its own subprocess so that compile time and peak
memory are its own. Batches are synthetic (random pixels/vectors of the
config's observation shapes, batch x length from the flags): the update's cost
does not depend on the data's values. Each case also reports the latency of
one acting-policy step at batch 1.

  python -m launch.bench --configs= --loop_workers 1,2,4

runs the whole training loop (env worker processes, policy, replay, updates)
at debug sizes on a pixel task and reports env frames/s per worker count.

  python -m launch.bench --configs dmc_proprio,dmc_vision,atari --iters 5 \
      --released_python $REF/venv/bin/python --released_src $REF/src

also times the released TEMPO code (tests/reference/released_bench.py, in its
own TensorFlow 2.15 environment: tests/reference/README.md) right after each
case of ours, same batch and protocol, and prints the two side by side;
`--rounds 3` repeats the whole list three times and adds the median and range
of the per-round ratios.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_list("configs", ["debug", "dmc_proprio", "dmc_vision", "atari"], "Configs to run.")
flags.DEFINE_list("modes", ["tempo", "dreamerv2"], "tempo and/or dreamerv2.")
flags.DEFINE_integer("iters", 10, "Timed updates after two warm-up updates.")
flags.DEFINE_integer(
    "rounds",
    1,
    "Run the whole list of cases this many times, alternating (with "
    "--released_python, each of ours right before the release's): the side-by-side "
    "table then gives the median and range of the per-round ratios, which a noisy "
    "machine moves less than one round's.",
)
flags.DEFINE_integer("batch", 16, "Sequences per batch.")
flags.DEFINE_integer("length", 50, "Steps per sequence.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for every case.")
flags.DEFINE_string("json", None, "Append one JSON object per (config, mode) to this file.")
flags.DEFINE_list(
    "loop_workers",
    [],
    "Also run the whole training loop (debug sizes) with these numbers of env worker "
    "processes, e.g. 1,2,4, and report env frames/s.",
)
flags.DEFINE_string("loop_task", "dmc_cartpole_swingup", "Task of the whole-loop runs (pixels).")
flags.DEFINE_integer("loop_frames", 3000, "Env frames per whole-loop run.")
flags.DEFINE_bool(
    "parts",
    False,
    "Also time the parts of an update separately (median of --iters each): the "
    "world-model losses forward, the model gradients (TEMPO: lower and upper "
    "gradients and hypergradient) and the behaviour gradients.",
)
flags.DEFINE_string(
    "released_python",
    None,
    "Also time the released TEMPO code (tests/reference/released_bench.py) with this "
    "Python of its TensorFlow 2.15 environment, case by case after ours, and print "
    "both side by side with the ratio.",
)
flags.DEFINE_string("released_src", None, "The released code's checkout (TEMPO_REF_SRC).")
flags.DEFINE_string(
    "profile_dir",
    None,
    "Also trace 2 updates of each case (and of the released code's, with "
    "--released_python) with TensorFlow's profiler under this directory, and print "
    "where the time goes: kernel self-time per update by op type and by layer scope.",
)
flags.DEFINE_integer("profile_top", 15, "Rows of each --profile_dir table.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # The released code runs in the environment we were started with: importing
    # tempo sets TensorFlow defaults (oneDNN among them) in os.environ.
    environ = dict(os.environ)
    from tempo import benchmark

    settings = benchmark.BenchSettings(
        configs=FLAGS.configs,
        modes=FLAGS.modes,
        iters=FLAGS.iters,
        rounds=FLAGS.rounds,
        batch=FLAGS.batch,
        length=FLAGS.length,
        gin_params=FLAGS.gin_param,
        json_path=FLAGS.json,
        loop_workers=FLAGS.loop_workers,
        loop_task=FLAGS.loop_task,
        loop_frames=FLAGS.loop_frames,
        parts=FLAGS.parts,
        released_python=FLAGS.released_python,
        released_src=FLAGS.released_src,
        profile_dir=FLAGS.profile_dir,
        profile_top=FLAGS.profile_top,
    )
    try:
        benchmark.check_settings(settings)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    try:
        benchmark.run_benchmark(settings, released_environ=environ)
    except benchmark.CaseFailed as error:
        sys.exit(str(error))
    print("\nReproduce: python -m launch.bench " + shlex.join(sys.argv[1:]))


if __name__ == "__main__":
    run_main(main)
