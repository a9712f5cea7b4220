r"""What the meta-weighter weighs, episode by episode, for a run's checkpoint.

  python -m launch.weights --logdir logdir/walker [--episodes 5 | --indices 0,-1] [--out DIR]

Rebuilds the run from its config.gin, restores its latest checkpoint (or
--checkpoint), runs the model over the stored replay episodes (all of them,
the N newest, or the given indices: 0 the oldest, -1 the newest) and writes to
--out (default <logdir>/weights): episode_<index>.png per episode (reward, value
and weight against time; for image inputs the frames at the highest and
lowest weights), steps.csv (every step: episode, t, weight, reward, value, kl,
recon_loglik, position) and summary.md (Spearman correlations of the weight
with each quantity, per episode and over all). A DreamerV2 run (--meta=false)
works too: its meta-weighter is untrained, and the plots say so.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_string("logdir", None, "Run directory with config.gin, checkpoints/ and replay/.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path prefix (default: the latest).")
flags.DEFINE_integer("episodes", None, "Analyse the N newest stored episodes (default: all).")
flags.DEFINE_list("indices", None, "Analyse these stored episodes (0 the oldest, -1 the newest).")
flags.DEFINE_string("out", None, "Output directory (default <logdir>/weights).")
flags.DEFINE_integer("seed", 0, "Seed of the posterior samples.")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings (the run's own by default).")
flags.mark_flag_as_required("logdir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.episodes is not None and FLAGS.indices:
        raise app.UsageError("Give --episodes or --indices, not both.")
    try:
        indices = [int(i) for i in FLAGS.indices or []]
    except ValueError as error:
        raise app.UsageError(f"--indices takes integers: {error}") from None
    from launch.common import import_tensorflow_quietly, quiet_logs

    import_tensorflow_quietly()
    from tempo import configurables
    from tempo.errors import ConfigError
    from tempo.run import first_line
    from tempo.weight_report import report

    quiet_logs()
    try:
        env_config = configurables.run_env_config(FLAGS.logdir, FLAGS.gin_param)
        result = report(
            FLAGS.logdir,
            FLAGS.out or os.path.join(FLAGS.logdir, "weights"),
            env_config,
            configurables.build_trainer,
            checkpoint=FLAGS.checkpoint,
            newest=FLAGS.episodes,
            indices=indices,
            chunk=configurables.run_setting("train.batch_length", 50),
            seed=FLAGS.seed,
        )
    except ConfigError as error:
        # A failed restore warns about its unrestored values when collected: noise here.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        sys.exit(f"error: {first_line(error)}")
    rho = ", ".join(f"{q} {v:+.3f}" for q, v in result["correlations"].items())
    print(f"{result['title']}: {len(result['episodes'])} episodes; Spearman over all steps: {rho}")
    print(f"wrote {len(result['files'])} files to {os.path.dirname(result['files'][-1])}")


if __name__ == "__main__":
    run_main(main)
