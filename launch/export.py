r"""Export a run's latest checkpoint as a SavedModel policy.

  python -m launch.export --logdir logs/walker [--out logs/walker/saved_model]

The result loads with plain `tf.saved_model.load` (no tempo import): see
tempo/export.py for its `initial_state` and `step` functions.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_string("logdir", None, "Run directory with config.gin and checkpoints/.")
flags.DEFINE_string("out", None, "Output directory (default <logdir>/saved_model).")
flags.mark_flag_as_required("logdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from launch.common import import_tensorflow_quietly, quiet_logs

    import_tensorflow_quietly()
    from tempo import configurables
    from tempo.errors import ConfigError
    from tempo.evaluation import make_env_batch, restore_agent
    from tempo.export import export_policy

    quiet_logs()
    try:
        env_config = configurables.run_env_config(FLAGS.logdir, [])
        env = make_env_batch(env_config, seed=0)
        try:
            agent = restore_agent(FLAGS.logdir, env, configurables.build_trainer)
            out = FLAGS.out or os.path.join(FLAGS.logdir, "saved_model")
            export_policy(agent, env.obs_space, out, env_config)
        finally:
            env.close()
    except ConfigError as error:
        sys.exit(f"error: {error}")
    print(f"Exported the policy to {out}")


if __name__ == "__main__":
    run_main(main)
