"""Run by tests/test_distribute.py in a fresh process (the CPU must be split into
two logical devices before TensorFlow initializes them).

For each mode, builds a single-device trainer and one under MirroredStrategy
over the two logical CPUs, gives both the same variables (a checkpoint of the
first restored into the second), runs updates on the same global batches and
prints, as one JSON line, the largest differences |a - b| / max(1, |a|) of the
metrics, of the carried states and of every checkpointed value (networks,
batch-norm statistics, optimizer slots, counters, random generator) after
restoring the mirrored checkpoint into a fresh single-device trainer.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # tests/support.py, and this checkout's tempo

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
# Without Grappler, as the in-process tests (tests/conftest.py): both sides of
# each comparison run the same graphs, and the check takes a third less time.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

from support import functions_run_eagerly, random_batch, tiny_trainer  # noqa: E402

SHAPES = {"image": (64, 64, 1), "vector": (3,)}
BATCH, LENGTH = 4, 5
MODES = {
    # TEMPO: categorical latents and actions, free bits active in the KL.
    "tempo": dict(meta=True, discrete=True, latent_classes=4, kl_free=1.0),
    # DreamerV2: Gaussian latents, truncated-normal actions (dynamics backprop).
    "dreamerv2": dict(meta=False, discrete=False, latent_classes=0, kl_free=0.0),
}


def checkpoint_values(trainer, directory: str) -> dict[str, np.ndarray]:
    path = tf.train.Checkpoint(trainer=trainer).write(os.path.join(directory, "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path) if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    return {name: tf.train.load_variable(path, name) for name in names}


def max_diff(a, b) -> float:
    """Largest |a - b| / max(1, |a|): absolute for values up to 1, relative above
    (Adam's second moments of pixel-loss gradients reach 1e4). NaN in both at the
    same place counts as equal, NaN in one as infinitely different."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b) / np.maximum(1.0, np.abs(a))
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)
    return float(np.max(np.nan_to_num(diff, nan=np.inf))) if a.size else 0.0


def run_mode(mode: str, updates: int, tmp: str, strategy: tf.distribute.Strategy) -> list:
    """One dict of differences per update (the second one also covers the
    carried per-replica state)."""
    kwargs = dict(MODES[mode], pred_discount=True)
    discrete = kwargs["discrete"]
    single = tiny_trainer(SHAPES, seed=3, **kwargs)
    mirrored = tiny_trainer(SHAPES, seed=4, strategy=strategy, **kwargs)
    restored = tiny_trainer(SHAPES, seed=5, **kwargs)
    start = tf.train.Checkpoint(trainer=single).write(os.path.join(tmp, f"{mode}_start"))
    tf.train.Checkpoint(trainer=mirrored).read(start).assert_existing_objects_matched()

    results = []
    state_single, state_mirrored = single.initial_state(BATCH), mirrored.initial_state(BATCH)
    for step in range(updates):
        clock = time.perf_counter()
        data = random_batch(SHAPES, 3, discrete, BATCH, LENGTH, seed=step, terminal_at=2)
        # The single-device reference runs eagerly: the same ops, without the
        # seconds of tracing a second update (Grappler is off on both sides).
        with functions_run_eagerly():
            state_single, metrics_single = single.train(data, state_single)
        state_mirrored, metrics_mirrored = mirrored.train(data, state_mirrored)
        result = {"keys_equal": sorted(metrics_single) == sorted(metrics_mirrored)}
        result["skipped"] = float(
            metrics_single["update_skipped"] + metrics_single["behavior_skipped"]
        )
        diffs = {k: max_diff(v, metrics_mirrored[k]) for k, v in metrics_single.items()}
        result["worst_metric"] = max(diffs, key=diffs.get)
        result["metrics"] = diffs[result["worst_metric"]]
        result["state"] = max(
            max_diff(v, tf.concat(strategy.experimental_local_results(state_mirrored[k]), 0))
            for k, v in state_single.items()
        )
        # The mirrored run's checkpoint restores into a single-device trainer (how
        # evaluation and export load it), and every value equals the single run's.
        path = tf.train.Checkpoint(trainer=mirrored).write(os.path.join(tmp, f"{mode}_m{step}"))
        tf.train.Checkpoint(trainer=restored).read(path).assert_existing_objects_matched()
        want = checkpoint_values(single, os.path.join(tmp, f"{mode}_a{step}"))
        got = checkpoint_values(restored, os.path.join(tmp, f"{mode}_b{step}"))
        result["variables_equal_names"] = sorted(want) == sorted(got)
        result["num_values"] = len(want)
        diffs = {k: max_diff(v, got[k]) for k, v in want.items()}
        result["worst_variable"] = max(diffs, key=diffs.get)
        result["variables"] = diffs[result["worst_variable"]]
        result["moving_stats_checked"] = sum("moving" in k for k in want)
        result["seconds"] = time.perf_counter() - clock
        results.append(result)
    return results


def sampling_check(strategy: tf.distribute.Strategy) -> dict:
    """Every sampler of the update, drawn per replica: `replicas.sample` must give
    exactly the rows of the whole-batch draw, a naive per-shard draw must not."""
    from tempo import replicas
    from tempo.networks import distributions as dists

    rng = np.random.default_rng(0)
    params = {
        "onehot": rng.normal(size=(8, 3, 4)).astype(np.float32),
        "normal": rng.normal(size=(8, 3)).astype(np.float32),
        "trunc_normal": rng.normal(size=(8, 3)).astype(np.float32),
    }
    make = {
        "onehot": lambda p: dists.independent(dists.OneHotDist(p), 1),
        "normal": lambda p: dists.independent(dists.tfd.Normal(p, tf.exp(p)), 1),
        "trunc_normal": lambda p: dists.independent(
            dists.ClippedTruncatedNormal(tf.tanh(p), tf.exp(p), -1.0, 1.0), 1
        ),
    }
    seed = tf.constant([7, 11], tf.int32)
    out = {}
    for name, value in params.items():
        whole = make[name](tf.constant(value)).sample(seed=seed).numpy()
        shards = strategy.experimental_distribute_values_from_function(
            lambda ctx, v=value: tf.constant(v[4 * ctx.replica_id_in_sync_group :][:4])
        )

        @tf.function
        def draw(x, name=name):
            return strategy.run(
                lambda p: (replicas.sample(make[name](p), seed), make[name](p).sample(seed=seed)),
                args=(x,),
            )

        exact, naive = draw(shards)
        exact = np.concatenate([t.numpy() for t in strategy.experimental_local_results(exact)])
        naive = np.concatenate([t.numpy() for t in strategy.experimental_local_results(naive)])
        out[name] = {"exact": max_diff(whole, exact), "naive": max_diff(whole, naive)}
    return out


def run_loop_check(strategy: tf.distribute.Strategy, tmp: str) -> dict:
    """`tempo.run.train` under the strategy (distributed batches, per-replica
    carried state, checkpoint, export), then its checkpoint restored into a
    single-device agent as `launch.evaluate` does. A DreamerV2 trainer: the loop
    is the same, TEMPO's mirrored update is `run_mode`'s, and it traces faster."""
    from tempo.envs import make_batch_env
    from tempo.evaluation import evaluate_saved_model, restore_agent, run_episodes
    from tempo.run import train

    def mirrored_fn(shapes, action_size, discrete, seed=0):
        return tiny_trainer(shapes, action_size, discrete, seed=seed, strategy=strategy, meta=False)

    logdir = os.path.join(tmp, "run")
    summary = train(
        logdir,
        task="gym_CartPole-v1",
        steps=60,
        batch_size=4,
        batch_length=6,
        prefill=20,
        pretrain=2,
        train_every=20,
        eval_every=0,
        log_every=20,
        checkpoint_every=1000,
        trainer_fn=mirrored_fn,
    )
    lines = [json.loads(x) for x in open(os.path.join(logdir, "metrics.jsonl"))]
    losses = [x["train/model_loss"] for x in lines if "train/model_loss" in x]
    env = make_batch_env("gym_CartPole-v1", 1, seed=0, action_repeat=1)
    try:  # on the latent's mode, as the export acts
        agent = restore_agent(
            logdir, env, lambda *a: tiny_trainer(*a, meta=False), eval_state_mean=True
        )
        policy = lambda obs, state: agent.policy(obs, state, explore=False)
        returns, _ = run_episodes(env, policy, 2, agent.action_size)
    finally:
        env.close()
    saved = os.path.join(logdir, "saved_model")
    exported_returns = evaluate_saved_model(saved, 2, 0, {"action_repeat": 1})
    return {
        "updates": summary["updates"],
        "restored_step": int(agent.trainer.step),
        "finite_losses": bool(losses) and all(np.isfinite(losses)),
        "returns": [float(r) for r in returns],
        "exported_returns": [float(r) for r in exported_returns],
        "exported": os.path.exists(os.path.join(saved, "saved_model.pb")),
    }


def main() -> None:
    modes = sys.argv[1].split(",")
    updates = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    # One strategy per process: two would allocate the same collective keys.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with tempfile.TemporaryDirectory() as tmp:
        result = {}
        if "sampling" in modes:
            result["sampling"] = sampling_check(strategy)
        if "run" in modes:
            result["run"] = run_loop_check(strategy, tmp)
        result.update(
            {mode: run_mode(mode, updates, tmp, strategy) for mode in modes if mode in MODES}
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skips TensorFlow's teardown of the traced functions (seconds)
