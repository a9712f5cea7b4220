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

import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

from launch.common import CONFIGS

MODES = ("tempo", "dreamerv2")

flags.DEFINE_list("configs", ["debug", "dmc_proprio", "dmc_vision", "atari"], "Configs to run.")
flags.DEFINE_list("modes", list(MODES), "tempo and/or dreamerv2.")
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
flags.DEFINE_string("_case", None, "Internal: run one 'config:mode' case and print JSON.")
FLAGS = flags.FLAGS


def run_case(config: str, mode: str) -> dict:
    import numpy as np

    import tempo  # noqa: F401
    from tempo import configurables
    from tempo.synthetic import random_batch

    files, shapes, action_size, discrete = CONFIGS[config]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = [f"BilevelTrainer.meta = {mode == 'tempo'}", *FLAGS.gin_param]
    configurables.parse_config(
        [os.path.join(root, "gin_configs", f"{f}.gin") for f in files], params
    )
    trainer = configurables.build_trainer(shapes, action_size, discrete)
    batch = random_batch(shapes, action_size, discrete, FLAGS.batch, FLAGS.length)
    state = trainer.initial_state(FLAGS.batch)

    start = time.perf_counter()
    state, metrics = trainer.train(batch, state)
    float(metrics["model_loss"])
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = trainer.train(batch, state)
    float(metrics["model_loss"])
    second_s = time.perf_counter() - start
    times = []
    for _ in range(FLAGS.iters):
        start = time.perf_counter()
        state, metrics = trainer.train(batch, state)
        float(metrics["model_loss"])  # waits for the update to finish
        times.append(time.perf_counter() - start)
    gflop = count_gflop(trainer, batch, state)
    median = float(np.median(times))
    policy = policy_latency(trainer, shapes, action_size, discrete)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = time_parts(trainer, batch, state) if FLAGS.parts else None
    if FLAGS.profile_dir:
        import tensorflow as tf  # after tempo, which sets TensorFlow's environment

        tf.profiler.experimental.start(profile_path("ours", config, mode))
        for _ in range(PROFILED_UPDATES):
            state, metrics = trainer.train(batch, state)
            float(metrics["model_loss"])
        tf.profiler.experimental.stop()
    return {
        "config": config,
        "mode": mode,
        "batch": FLAGS.batch,
        "length": FLAGS.length,
        "compile_s": round(compile_s, 2),
        "second_call_s": round(second_s, 3),
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "updates_per_s": round(1 / median, 3),
        "gflop": None if gflop is None else round(gflop, 2),
        "gflop_per_s": None if gflop is None else round(gflop / median, 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "policy_ms": policy,
        "params": trainer.parameter_counts(),
        **({"parts_s": parts} if parts else {}),
    }


def time_parts(trainer, batch, state) -> dict[str, float]:
    """Median seconds of the update's parts, each compiled on its own (nothing is
    applied): where an update's time goes, and what TEMPO adds to DreamerV2."""
    import numpy as np
    import tensorflow as tf

    seed = tf.constant([3, 4], tf.int64)
    batch = tf.nest.map_structure(tf.convert_to_tensor, batch)  # inputs, not constants
    data = trainer.world_model.preprocess(batch)
    post = trainer.losses(data, state, seed)[2]["post"]
    post = {k: tf.stop_gradient(v) for k, v in post.items()}
    # Every output is returned: TensorFlow prunes what no output needs (the
    # hypergradient, say, if only the model gradient were returned).
    parts = {
        "model_forward": lambda: trainer.losses(data, state, seed),
        "model_gradients": lambda: trainer._model_gradients(batch, state, seed),
        "behavior_gradients": lambda: trainer.behavior.gradients(
            trainer.world_model, post, data["is_terminal"], seed
        ),
    }
    medians = {}
    for name, fn in parts.items():
        compiled = tf.function(fn)
        compiled()  # trace and compile
        times = []
        for _ in range(FLAGS.iters):
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), compiled())
            times.append(time.perf_counter() - start)
        medians[name] = round(float(np.median(times)), 4)
    return medians


def policy_latency(trainer, shapes, action_size, discrete, calls: int = 50) -> float:
    """Median milliseconds of one acting-policy step (batch 1, exploring), the
    latency an environment waits for per step."""
    import numpy as np

    from tempo.agent.agent import Agent
    from tempo.synthetic import random_batch

    agent = Agent(trainer)
    one = random_batch(shapes, action_size, discrete, 1, 1)
    obs = {k: v[:, 0] for k, v in one.items()}
    _, state = agent.policy(obs, None)  # traces and compiles
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        _, state = agent.policy(obs, state)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def run_loop_case(workers: int) -> dict:
    """The whole loop (env workers, policy, replay, updates at debug sizes) for
    --loop_frames frames; frames/s over the part after prefill and compilation."""
    import json as json_lib
    import tempfile

    import tempo  # noqa: F401
    from tempo import configurables

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    params = [
        f"train.task = {FLAGS.loop_task!r}",
        f"train.num_envs = {workers}",
        f"train.parallel_envs = {workers > 1}",
        f"train.steps = {FLAGS.loop_frames}",
        "train.time_limit = 100",  # short episodes: prefill needs one finished per worker
        "train.log_every = 200",
        "train.eval_every = 0",
        "train.video_every = 0",
        "train.checkpoint_every = 1000000",
        "train.export = False",
        *FLAGS.gin_param,
    ]
    files = [os.path.join(root, "gin_configs", f"{f}.gin") for f in ("dmc_vision", "debug")]
    configurables.parse_config(files, params)
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        configurables.train(logdir)
        wall = time.perf_counter() - start
        lines = [json_lib.loads(x) for x in open(os.path.join(logdir, "metrics.jsonl"))]
    # Log intervals of equal frames (and updates): the overall rate is the harmonic
    # mean of the interval rates. The first interval holds the compilation.
    timed = [x for x in lines if x.get("fps") is not None][1:]
    harmonic = lambda rates: len(rates) / sum(1 / r for r in rates) if rates else float("nan")
    return {
        "config": "loop",
        "mode": f"{workers}_workers",
        "task": FLAGS.loop_task,
        "workers": workers,
        "frames": FLAGS.loop_frames,
        "wall_s": round(wall, 1),
        "frames_per_s": round(harmonic([x["fps"] for x in timed]), 1),
        "updates_per_s": round(harmonic([x["updates_per_s"] for x in timed]), 2),
    }


def count_gflop(trainer, batch, state) -> float | None:
    """Floating-point operations of one update that run (ops with registered FLOP
    statistics: matmuls, convolutions, elementwise; `tempo.profiling.live_flops`)."""
    from tempo.profiling import live_flops

    try:
        concrete = trainer._compiled.get_concrete_function(batch, state)
        return live_flops(concrete.graph) / 1e9
    except Exception:  # noqa: BLE001 - the count is best-effort
        return None


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    header = f"{'config':<12}{'mode':<11}{'median s':>9}{'min s':>8}{'max s':>8}{'upd/s':>7}"
    header += f"{'compile s':>10}{'GFLOP':>8}{'GFLOP/s':>9}{'RSS MB':>8}{'policy ms':>10}"
    print(header)
    by_round: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_round.setdefault(r["config"], {}).setdefault(r.get("round", 0), {})[r["mode"]] = r
        print(
            f"{r['config']:<12}{r['mode']:<11}{r['median_s']:>9.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}"
            f"{r['updates_per_s']:>7.2f}{r['compile_s']:>10.1f}{r['gflop'] or float('nan'):>8.1f}"
            f"{r['gflop_per_s'] or float('nan'):>9.1f}{r['peak_rss_mb']:>8.0f}"
            f"{r['policy_ms']:>10.2f}"
        )
    for config, rounds in by_round.items():
        ratios = [
            modes["tempo"]["median_s"] / modes["dreamerv2"]["median_s"]
            for modes in rounds.values()
            if {"tempo", "dreamerv2"} <= set(modes)
        ]
        if ratios:
            line = (
                f"{config}: TEMPO / DreamerV2 seconds per update = {statistics.median(ratios):.2f}"
            )
            if len(ratios) > 1:
                line += " (median of rounds: " + " ".join(f"{v:.2f}" for v in ratios) + ")"
            print(line)
    for r in rows:
        if "parts_s" in r:
            parts = ", ".join(f"{k} {v:.3f} s" for k, v in r["parts_s"].items())
            print(f"{r['config']} {r['mode']} parts: {parts}")
    for r in rows:
        if r.get("round", 0) == 0 and (
            r["mode"] == "tempo"
            or len({x["mode"] for x in rows if x["config"] == r["config"]}) == 1
        ):
            print(f"{r['config']} parameters: {r['params']}")


PROFILED_UPDATES = 2  # released_bench.py --profile traces as many


def profile_path(program: str, config: str, mode: str) -> str:
    return os.path.join(FLAGS.profile_dir, f"{program}_{config}_{mode}")


def print_profiles(cases: list[tuple[str, str]]) -> None:
    """Per case: the op types and layer scopes that take the most kernel time,
    ours beside the release's where it was traced too."""
    from tempo.profiling import find_trace, read_trace

    for config, mode in cases:
        if config == "loop":
            continue
        traces = {}
        for program in ("ours", "released"):
            path = profile_path(program, config, mode)
            if os.path.isdir(path):
                traces[program] = read_trace(find_trace(path), PROFILED_UPDATES)
        programs = list(traces)
        for table in ("by_type", "by_scope"):
            rows = collections.Counter()
            for times in traces.values():
                rows.update(getattr(times, table))
            top = [k for k, _ in rows.most_common(FLAGS.profile_top)]
            title = "op type" if table == "by_type" else "scope"
            print(f"\n{config} {mode}: kernel ms per update by {title} (self time, all threads)")
            print(f"{title:<44}" + "".join(f"{p:>11}" for p in programs))
            for key in top:
                cells = "".join(
                    f"{getattr(traces[p], table).get(key, 0.0):>11.1f}" for p in programs
                )
                print(f"{key[:43]:<44}{cells}")
            print(f"{'total':<44}" + "".join(f"{traces[p].total_ms:>11.1f}" for p in programs))


def run_in_subprocess(config: str, mode: str) -> dict:
    """One case in a fresh process, so compile time and peak memory are its own."""
    cmd = [sys.executable, "-m", "launch.bench", f"--_case={config}:{mode}"]
    cmd += [f"--iters={FLAGS.iters}", f"--batch={FLAGS.batch}", f"--length={FLAGS.length}"]
    cmd += [f"--loop_task={FLAGS.loop_task}", f"--loop_frames={FLAGS.loop_frames}"]
    cmd += [f"--gin_param={p}" for p in FLAGS.gin_param] + [f"--parts={FLAGS.parts}"]
    if FLAGS.profile_dir:
        cmd += [f"--profile_dir={FLAGS.profile_dir}"]
    return run_json_case(cmd, "BENCH_JSON ", f"{config}:{mode}")


def run_json_case(cmd: list[str], tag: str, label: str, env: dict | None = None) -> dict:
    """Runs a case's process and returns the JSON row it printed after `tag`
    (appended to --json too); exits with its stderr if it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith(tag)]
    if out.returncode or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"bench case {label} failed (exit {out.returncode}).")
    row = json.loads(lines[-1][len(tag) :])
    print(f"done {label}", flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def run_released(config: str, mode: str) -> dict:
    """One case of the released code, in its own environment's Python."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "tests", "reference", "released_bench.py")
    cmd = [FLAGS.released_python, script, f"--config={config}", f"--mode={mode}"]
    cmd += [f"--iters={FLAGS.iters}", f"--batch={FLAGS.batch}", f"--length={FLAGS.length}"]
    if FLAGS.profile_dir:
        cmd += [f"--profile={profile_path('released', config, mode)}"]
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)  # its environment has Keras 2 in TensorFlow itself
    if FLAGS.released_src:
        env["TEMPO_REF_SRC"] = FLAGS.released_src
    return run_json_case(cmd, "RELEASED_JSON ", f"released {config}:{mode}", env)


def round_ratios(ours: list[dict], released: list[dict]) -> dict[tuple[str, str], list[float]]:
    """Per (config, mode): ours / released median seconds in each round that ran
    both (rows carry `round`; rows without one are round 0)."""
    theirs = {(r["config"], r["mode"], r.get("round", 0)): r for r in released}
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in ours:
        other = theirs.get((r["config"], r["mode"], r.get("round", 0)))
        if other is not None:
            ratios.setdefault((r["config"], r["mode"]), []).append(
                r["median_s"] / other["median_s"]
            )
    return ratios


def print_side_by_side(ours: list[dict], released: list[dict]) -> None:
    """Ours against the release per (config, mode): medians, mins, ratios, memory
    (of the first round), and with several rounds the per-round ratios."""
    if not released:
        return
    ratios = round_ratios(ours, released)
    theirs = {(r["config"], r["mode"]): r for r in released if r.get("round", 0) == 0}
    print("\nside by side, this machine, one sitting (released: TensorFlow 2.15, its own code)")
    print(
        f"{'config':<12}{'mode':<11}{'released s':>11}{'ours s':>8}{'ours/rel':>9}"
        f"{'min ratio':>10}{'compile rel/ours s':>20}{'RSS rel/ours MB':>17}"
    )
    for r in ours:
        other = theirs.get((r["config"], r["mode"]))
        if other is None or r.get("round", 0) != 0:
            continue
        print(
            f"{r['config']:<12}{r['mode']:<11}{other['median_s']:>11.3f}{r['median_s']:>8.3f}"
            f"{r['median_s'] / other['median_s']:>9.2f}{r['min_s'] / other['min_s']:>10.2f}"
            f"{other['compile_s']:>12.1f} /{r['compile_s']:>6.1f}"
            f"{other['peak_rss_mb']:>10.0f} /{r['peak_rss_mb']:>5.0f}"
        )
    if any(len(v) > 1 for v in ratios.values()):
        print("\nours / released per round (median seconds of each round's pair)")
        print(f"{'config':<12}{'mode':<11}{'median':>8}{'min':>7}{'max':>7}  rounds")
        for (config, mode), values in ratios.items():
            each = " ".join(f"{v:.2f}" for v in values)
            print(
                f"{config:<12}{mode:<11}{statistics.median(values):>8.2f}"
                f"{min(values):>7.2f}{max(values):>7.2f}  {each}"
            )


def print_loop_table(rows: list[dict]) -> None:
    if not rows:
        return
    print(
        f"\nwhole loop, {rows[0]['task']} (100-step episodes), debug sizes, "
        f"{rows[0]['frames']} frames per run"
    )
    print(f"{'workers':>8}{'frames/s':>10}{'updates/s':>11}{'wall s':>8}")
    for r in rows:
        print(
            f"{r['workers']:>8}{r['frames_per_s']:>10.1f}{r['updates_per_s']:>11.2f}{r['wall_s']:>8.1f}"
        )


def main(argv):
    del argv
    if FLAGS._case:
        config, mode = FLAGS._case.split(":")
        row = run_loop_case(int(mode)) if config == "loop" else run_case(config, mode)
        print("BENCH_JSON " + json.dumps(row), flush=True)
        return
    for name in FLAGS.configs:
        if name not in CONFIGS:
            raise app.UsageError(f"Unknown config {name!r}; choose from {sorted(CONFIGS)}.")
    for mode in FLAGS.modes:
        if mode not in MODES:
            raise app.UsageError(f"Unknown mode {mode!r}; choose from {MODES}.")
    cases = [(config, mode) for config in FLAGS.configs for mode in FLAGS.modes]
    cases += [("loop", str(int(workers))) for workers in FLAGS.loop_workers]
    if FLAGS.rounds < 1:
        raise app.UsageError(f"--rounds must be at least 1, got {FLAGS.rounds}.")
    rows, released = [], []
    for round_ in range(FLAGS.rounds):
        for config, mode in cases:
            rows.append(dict(run_in_subprocess(config, mode), round=round_))
            if FLAGS.released_python and config in ("dmc_proprio", "dmc_vision", "atari"):
                released.append(dict(run_released(config, mode), round=round_))
    print_table([r for r in rows if r["config"] != "loop"])
    print_side_by_side([r for r in rows if r["config"] != "loop"], released)
    print_loop_table([r for r in rows if r["config"] == "loop"])
    if FLAGS.profile_dir:
        print_profiles(cases)
    print("\nReproduce: python -m launch.bench " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    app.run(main)
