r"""Evaluate a trained policy for N episodes and print the mean and std return.

  python -m launch.evaluate --logdir logs/walker --episodes 10          # latest checkpoint
  python -m launch.evaluate --saved_model logs/walker/saved_model

A logdir is rebuilt from its config.gin and latest checkpoint (mode actions);
a SavedModel runs through plain `tf.saved_model.load` in the task recorded in
its policy_spec.json (or --task).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_string("logdir", None, "Run directory with config.gin and checkpoints/.")
flags.DEFINE_string("saved_model", None, "Exported policy directory (instead of --logdir).")
flags.DEFINE_string("task", None, "Task; defaults to the run's own.")
flags.DEFINE_integer("episodes", 10, "Episodes to run.")
flags.DEFINE_integer("seed", 12345, "Environment seed.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings for --logdir runs.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if bool(FLAGS.logdir) == bool(FLAGS.saved_model):
        raise app.UsageError("Give exactly one of --logdir or --saved_model.")
    from launch.common import import_tensorflow_quietly, quiet_logs

    import_tensorflow_quietly()
    from tempo import configurables
    from tempo.errors import ConfigError
    from tempo.evaluation import evaluate_checkpoint, evaluate_saved_model

    quiet_logs()
    try:
        if FLAGS.logdir:
            overrides = [f"train.task = {FLAGS.task!r}"] if FLAGS.task else []
            env_config = configurables.run_env_config(FLAGS.logdir, [*FLAGS.gin_param, *overrides])
            returns = evaluate_checkpoint(
                FLAGS.logdir,
                FLAGS.episodes,
                FLAGS.seed,
                env_config,
                configurables.build_trainer,
                eval_state_mean=configurables.run_setting("train.eval_state_mean", False),
            )
        else:
            env_config = {"task": FLAGS.task} if FLAGS.task else None
            returns = evaluate_saved_model(
                FLAGS.saved_model, FLAGS.episodes, FLAGS.seed, env_config
            )
    except ConfigError as error:
        sys.exit(f"error: {error}")
    import numpy as np

    print(
        json.dumps(
            {
                "episodes": len(returns),
                "mean": float(np.mean(returns)),
                "std": float(np.std(returns)),
                "returns": [float(r) for r in returns],
            }
        )
    )


if __name__ == "__main__":
    run_main(main)
