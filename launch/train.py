r"""Train TEMPO (or DreamerV2 with --meta=false) on Atari, DMC or a gymnasium env.

  python -m launch.train --logdir logdir/walker --gin_file gin_configs/dmc_vision.gin \
      --task dmc_walker_walk

The convenience flags override the gin files and --gin_param bindings. The
configuration is written to <logdir>/config.gin and operative_config.gin. Re-running with the
same --logdir resumes from the latest checkpoint and the replay on disk.

The terminal shows one compact progress line per log (--verbose: every metric),
and the run ends with one line: finished (frames, final evaluation, where the
outputs are), stopped by a signal (the checkpoint, the command to resume) or
`error: ...` (exit code 1).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_string("logdir", None, "Run directory (checkpoints, replay, logs, SavedModel).")
flags.DEFINE_multi_string(
    "gin_file",
    ["gin_configs/dmc_proprio.gin", "gin_configs/cpu.gin"],
    "Gin files, later ones override earlier ones.",
)
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'RSSM.deter = 200'.")
flags.DEFINE_string("task", None, "e.g. dmc_walker_walk, atari_pong, gym_CartPole-v1.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_integer("steps", None, "Environment frames to train for.")
flags.DEFINE_bool("meta", None, "True: TEMPO; false: DreamerV2 (same code, no meta-weighting).")
flags.DEFINE_bool("verbose", None, "Print every metric at each log, not the compact line.")
flags.mark_flag_as_required("logdir")
FLAGS = flags.FLAGS


def overrides() -> list[str]:
    """gin bindings for the convenience flags that were given."""
    bindings = []
    if FLAGS.task is not None:
        bindings.append(f"train.task = {FLAGS.task!r}")
    if FLAGS.seed is not None:
        bindings.append(f"train.seed = {FLAGS.seed}")
    if FLAGS.steps is not None:
        bindings.append(f"train.steps = {FLAGS.steps}")
    if FLAGS.meta is not None:
        bindings.append(f"BilevelTrainer.meta = {FLAGS.meta}")
    if FLAGS.verbose is not None:
        bindings.append(f"train.verbose = {FLAGS.verbose}")
    return bindings


def write_config(logdir: str) -> None:
    """Saves the gin configuration beside the run once the agent is built:
    config.gin (every parsed binding; what evaluate and export rebuild from) and
    operative_config.gin (every parameter the run actually used, defaults too)."""
    import gin

    with open(os.path.join(logdir, "config.gin"), "w") as f:
        f.write(gin.config_str())
    with open(os.path.join(logdir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from launch.common import import_tensorflow_quietly, quiet_logs

    import_tensorflow_quietly()
    from launch.ending import end_line, python_command
    from tempo import configurables
    from tempo.envs import EnvWorkerError
    from tempo.errors import CheckpointWriteError, ConfigError, NonFiniteError, PeerLostError
    from tempo.replay import ReplayWriteError
    from tempo.run import first_line

    quiet_logs()
    try:
        configurables.parse_config(FLAGS.gin_file, [*FLAGS.gin_param, *overrides()])
    except ValueError as error:
        sys.exit(f"error: {first_line(error)}")
    stops = (ConfigError, NonFiniteError, CheckpointWriteError, ReplayWriteError)
    this_command = python_command("launch.train", sys.argv[1:])
    try:
        summary = configurables.train(FLAGS.logdir, on_start=write_config)
    except EnvWorkerError as error:  # keeps the worker's traceback
        sys.exit(f"error: {error}")
    except stops as error:
        sys.exit(f"error: {first_line(error)}")
    except PeerLostError as error:
        print(f"error: {first_line(error)} This worker's command: {this_command}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything of ours is written; TensorFlow's own shutdown would wait 30-60 s
        # for the lost worker.
        os._exit(1)
    except KeyboardInterrupt:  # outside the loop, which stops at a signal by itself
        sys.stderr.write(
            "Interrupted; the latest checkpoint, if any, and the replay's finished episodes "
            f"are kept. Run the same command to go on: {this_command}\n"
        )
        sys.exit(130)
    print(end_line(summary, this_command))


if __name__ == "__main__":
    run_main(main)
