r"""Learning curves (eval return vs env frames) from run directories.

  python -m launch.plot --logdirs 'logdir/*' --out docs/curves

Writes <out>.png (one panel per task; per method the mean over seeds, each
seed's curve and the min-max band), <out>.csv (the numbers plotted) and <out>.md
(per task and method: final and area-under-curve returns as mean and standard
deviation over seeds, frames, training wall-clock, each run's first rewarded
frame and its rewarded episodes after prefill; and each method minus DreamerV2
with a 95% bootstrap interval over seeds), and prints the tables. `--max_frames`
compares runs at one budget; `--min_frames` compares runs continued from one
checkpoint over the frames after it. `--from_csv` adds the per-seed curves of
an earlier <out>.csv, for runs whose directories are gone (a run directory of
the same task, method and seed replaces its curve there):

  python -m launch.plot --from_csv docs/against_released.csv \
      --logdirs 'runs/against/*/*/seed[0-9]' --out docs/against_released
"""

from __future__ import annotations

import glob
import os
import sys

from absl import app, flags

from launch.common import run_main

flags.DEFINE_list("logdirs", [], "Run directories or glob patterns (comma separated).")
flags.DEFINE_list(
    "from_csv",
    [],
    "CSVs an earlier launch.plot wrote: their per-seed curves join the runs (no times or "
    "rewarded episodes); a run directory of the same task, method and seed wins.",
)
flags.DEFINE_string("out", "curves", "Output path without extension.")
flags.DEFINE_string("metric", "eval/return", "metrics.jsonl key to plot.")
flags.DEFINE_integer("max_frames", None, "Ignore everything logged after this env frame.")
flags.DEFINE_integer("min_frames", 0, "Ignore everything logged before this env frame.")
flags.DEFINE_string(
    "baseline",
    "dreamerv2",
    "Method the others are set against (e.g. released-dreamerv2: the released code's runs).",
)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.logdirs and not FLAGS.from_csv:
        raise app.UsageError("Give --logdirs (run directories) and/or --from_csv.")
    from tempo import plotting

    paths = sorted({p for pattern in FLAGS.logdirs for p in glob.glob(pattern)})
    runs = []
    for path in paths:
        try:
            runs.append(plotting.load_run(path, FLAGS.metric, FLAGS.max_frames, FLAGS.min_frames))
        except ValueError as error:
            print(f"skipping: {error}", file=sys.stderr)
    earlier = []
    for path in FLAGS.from_csv:
        try:
            earlier += plotting.runs_from_csv(path, FLAGS.max_frames, FLAGS.min_frames)
        except (OSError, ValueError) as error:
            sys.exit(f"error: {error}")
    runs = plotting.replace_runs(earlier, runs)
    if not runs:
        sys.exit(f"error: no tempo run directory matches {FLAGS.logdirs}")
    curves = plotting.aggregate(runs)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    plotting.write_csv(curves, FLAGS.out + ".csv")
    plotting.plot_curves(curves, FLAGS.out + ".png", FLAGS.metric)
    table = plotting.summary_table(curves, FLAGS.baseline)
    with open(FLAGS.out + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {FLAGS.out}.png, {FLAGS.out}.csv and {FLAGS.out}.md")


if __name__ == "__main__":
    run_main(main)
