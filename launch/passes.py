r"""One RSSM pass or two per TEMPO update: does the hypergradient change?

  python -m launch.passes --config cpu --seeds 32

The released code runs the RSSM over the batch twice per TEMPO update (the
upper loss and the values from one pass, the weights and the lower loss from a
second one with independent posterior samples); `BilevelTrainer.posterior_passes
= 1` shares one pass. Both are estimates of the same hypergradient from random
posterior samples, so they can only be compared in expectation: on one batch and
one set of weights this draws h with `--seeds` sampling seeds per setting and
reports how far apart the two means are in units of their sampling noise (about 1
when they agree: the split-half line shows that scale for two halves of one
setting), their cosine, and the time of one compiled update in each setting.
"""

from __future__ import annotations

import json
import time

from absl import flags

from launch.common import run_main
from tempo.benchmark_configs import CONFIGS, parse_benchmark_config

flags.DEFINE_string("config", "cpu", f"One of {sorted(CONFIGS)}.")
flags.DEFINE_integer("seeds", 32, "Sampling seeds per setting.")
flags.DEFINE_integer("batch", 16, "Sequences per batch.")
flags.DEFINE_integer("length", 32, "Steps per sequence.")
flags.DEFINE_integer("iters", 5, "Timed updates per setting (after two warm-up updates).")
flags.DEFINE_multi_string("gin_param", [], "Extra gin bindings.")
FLAGS = flags.FLAGS


def mean_distance(a, b) -> float:
    """||mean(a) - mean(b)|| over the norm sampling noise alone would give it."""
    import numpy as np

    noise = a.var(0, ddof=1).sum() / len(a) + b.var(0, ddof=1).sum() / len(b)
    return float(np.linalg.norm(a.mean(0) - b.mean(0)) / np.sqrt(noise))


def cosine(a, b) -> float:
    import numpy as np

    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    import tempo  # noqa: F401
    from tempo import configurables
    from tempo.synthetic import random_batch

    shapes, action_size, discrete = parse_benchmark_config(FLAGS.config, FLAGS.gin_param)
    trainers = {}
    for passes in (1, 2):  # equal initial weights: same seed, same construction
        trainers[passes] = configurables.build_trainer(shapes, action_size, discrete)
        trainers[passes].posterior_passes = passes
    batch = random_batch(shapes, action_size, discrete, FLAGS.batch, FLAGS.length)
    state = trainers[1].initial_state(FLAGS.batch)

    hypergrads = {}
    for passes, trainer in trainers.items():
        fn = tf.function(
            lambda seed, t=trainer: t.meta_gradient(batch, state, seed), autograph=False
        )
        draws = []
        for seed in range(FLAGS.seeds):
            h = fn(tf.constant([seed, 1], tf.int32))
            draws.append(np.concatenate([g.numpy().ravel() for g in h]))
        hypergrads[passes] = np.stack(draws)
    one, two = hypergrads[1], hypergrads[2]
    half = FLAGS.seeds // 2

    seconds = {}
    for passes, trainer in trainers.items():
        s = trainer.initial_state(FLAGS.batch)
        for _ in range(2):
            s, m = trainer.train(batch, s)
        times = []
        for _ in range(FLAGS.iters):
            start = time.perf_counter()
            s, m = trainer.train(batch, s)
            float(m["model_loss"])
            times.append(time.perf_counter() - start)
        seconds[passes] = float(np.median(times))

    result = {
        "config": FLAGS.config,
        "seeds": FLAGS.seeds,
        "distance_one_vs_two": round(mean_distance(one, two), 3),
        "distance_split_half_one": round(mean_distance(one[:half], one[half:]), 3),
        "distance_split_half_two": round(mean_distance(two[:half], two[half:]), 3),
        "cosine_of_means": round(cosine(one.mean(0), two.mean(0)), 4),
        "mean_cosine_within_one": round(
            float(np.mean([cosine(one[i], one[i + 1]) for i in range(len(one) - 1)])), 4
        ),
        "norm_of_mean_one": float(np.linalg.norm(one.mean(0))),
        "norm_of_mean_two": float(np.linalg.norm(two.mean(0))),
        "seconds_per_update_one": round(seconds[1], 4),
        "seconds_per_update_two": round(seconds[2], 4),
        "two_over_one": round(seconds[2] / seconds[1], 3),
    }
    print(json.dumps(result))
    args = f"--config {FLAGS.config} --seeds {FLAGS.seeds} --batch {FLAGS.batch} "
    print(f"reproduce: python -m launch.passes {args}--length {FLAGS.length}")


if __name__ == "__main__":
    run_main(main)
