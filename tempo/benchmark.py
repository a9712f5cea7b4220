"""Seconds per update of the compiled trainer, TEMPO vs DreamerV2, per config.

Each (config, mode) case runs in its own process (``python -m tempo.benchmark``,
started by `run_benchmark`) so that compile time and peak memory are its own.
Batches are synthetic (random pixels/vectors of the config's observation
shapes): the update's cost does not depend on the data's values. Each case
also reports its FLOPs, peak RSS and the latency of one acting-policy step at
batch 1; optionally the update's parts, a profiler trace, and the same case of
the released TEMPO code (tests/reference/released_bench.py, in its own
TensorFlow 2.15 environment) right after ours, printed side by side. Loop cases
time the whole training loop (env workers, policy, replay, updates) at debug
sizes. `launch/bench.py` is the command line.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from tempo.benchmark_configs import CONFIGS, REPOSITORY, gin_files, parse_benchmark_config

MODES = ("tempo", "dreamerv2")
PROFILED_UPDATES = 2  # released_bench.py --profile traces as many
RELEASED_CONFIGS = ("dmc_proprio", "dmc_vision", "atari")  # those released_bench.py knows
_CASE_TAG = "BENCH_JSON "
_RELEASED_TAG = "RELEASED_JSON "


class CaseFailed(RuntimeError):
    """A case's process failed; its stderr's tail has been written to our stderr."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """One benchmark run's settings (launch/bench.py's flags describe each)."""

    configs: Sequence[str]
    modes: Sequence[str]
    iters: int
    rounds: int
    batch: int
    length: int
    gin_params: Sequence[str]
    json_path: str | None
    loop_workers: Sequence[str | int]
    loop_task: str
    loop_frames: int
    parts: bool
    released_python: str | None
    released_src: str | None
    profile_dir: str | None
    profile_top: int


def check_settings(settings: BenchSettings) -> None:
    """Raises ValueError for an unknown config or mode or fewer than one round."""
    for name in settings.configs:
        if name not in CONFIGS:
            raise ValueError(f"Unknown config {name!r}; choose from {sorted(CONFIGS)}.")
    for mode in settings.modes:
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose from {MODES}.")
    if settings.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {settings.rounds}.")


def benchmark_cases(settings: BenchSettings) -> list[tuple[str, str]]:
    """(config, mode) of every update case, then ("loop", workers) of every loop case."""
    cases = [(config, mode) for config in settings.configs for mode in settings.modes]
    cases += [("loop", str(int(workers))) for workers in settings.loop_workers]
    return cases


def run_benchmark(settings: BenchSettings, released_environ: Mapping[str, str]) -> None:
    """Runs every case `settings.rounds` times, each in its own process, and prints
    the tables.

    `released_environ` is the environment of the released code's processes: the
    caller's own, taken before importing `tempo` (whose import sets TensorFlow
    defaults, oneDNN among them, that must not leak into the release's timing).
    """
    check_settings(settings)
    cases = benchmark_cases(settings)
    rows, released = [], []
    for round_ in range(settings.rounds):
        for config, mode in cases:
            rows.append(dict(run_in_subprocess(settings, config, mode), round=round_))
            if settings.released_python and config in RELEASED_CONFIGS:
                row = run_released(settings, config, mode, released_environ)
                released.append(dict(row, round=round_))
    print_table([r for r in rows if r["config"] != "loop"])
    print_side_by_side([r for r in rows if r["config"] != "loop"], released)
    print_loop_table([r for r in rows if r["config"] == "loop"])
    if settings.profile_dir:
        print_profiles(cases, settings.profile_dir, settings.profile_top)


# ---------------------------------------------------------------- one case, in its process


def run_case(settings: BenchSettings, config: str, mode: str) -> dict:
    """Times `settings.iters` updates of config's trainer in `mode` after two warm-ups."""
    import numpy as np

    import tempo  # noqa: F401
    from tempo import configurables
    from tempo.synthetic import random_batch

    params = [f"BilevelTrainer.meta = {mode == 'tempo'}", *settings.gin_params]
    shapes, action_size, discrete = parse_benchmark_config(config, params)
    trainer = configurables.build_trainer(shapes, action_size, discrete)
    batch = random_batch(shapes, action_size, discrete, settings.batch, settings.length)
    state = trainer.initial_state(settings.batch)

    start = time.perf_counter()
    state, metrics = trainer.train(batch, state)
    float(metrics["model_loss"])
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, metrics = trainer.train(batch, state)
    float(metrics["model_loss"])
    second_s = time.perf_counter() - start
    times = []
    for _ in range(settings.iters):
        start = time.perf_counter()
        state, metrics = trainer.train(batch, state)
        float(metrics["model_loss"])  # waits for the update to finish
        times.append(time.perf_counter() - start)
    gflop = count_gflop(trainer, batch, state)
    median = float(np.median(times))
    policy = policy_latency(trainer, shapes, action_size, discrete)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = time_parts(trainer, batch, state, settings.iters) if settings.parts else None
    if settings.profile_dir:
        import tensorflow as tf  # after tempo, which sets TensorFlow's environment

        tf.profiler.experimental.start(profile_path(settings.profile_dir, "ours", config, mode))
        for _ in range(PROFILED_UPDATES):
            state, metrics = trainer.train(batch, state)
            float(metrics["model_loss"])
        tf.profiler.experimental.stop()
    return {
        "config": config,
        "mode": mode,
        "batch": settings.batch,
        "length": settings.length,
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


def time_parts(trainer, batch, state, iters: int) -> dict[str, float]:
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
        compiled = tf.function(fn, autograph=False)
        compiled()  # trace and compile
        times = []
        for _ in range(iters):
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


def run_loop_case(settings: BenchSettings, workers: int) -> dict:
    """The whole loop (env workers, policy, replay, updates at debug sizes) for
    `settings.loop_frames` frames; frames/s over the part after prefill and compilation."""
    import tempfile

    import tempo  # noqa: F401
    from tempo import configurables

    params = [
        f"train.task = {settings.loop_task!r}",
        f"train.num_envs = {workers}",
        f"train.parallel_envs = {workers > 1}",
        f"train.steps = {settings.loop_frames}",
        "train.time_limit = 100",  # short episodes: prefill needs one finished per worker
        "train.log_every = 200",
        "train.eval_every = 0",
        "train.video_every = 0",
        "train.checkpoint_every = 1000000",
        "train.export = False",
        *settings.gin_params,
    ]
    configurables.parse_config(gin_files(["dmc_vision", "debug"]), params)
    with tempfile.TemporaryDirectory() as logdir:
        start = time.perf_counter()
        configurables.train(logdir)
        wall = time.perf_counter() - start
        lines = [json.loads(x) for x in open(os.path.join(logdir, "metrics.jsonl"))]
    # Log intervals of equal frames (and updates): the overall rate is the harmonic
    # mean of the interval rates. The first interval holds the compilation.
    timed = [x for x in lines if x.get("fps") is not None][1:]
    harmonic = lambda rates: len(rates) / sum(1 / r for r in rates) if rates else float("nan")
    return {
        "config": "loop",
        "mode": f"{workers}_workers",
        "task": settings.loop_task,
        "workers": workers,
        "frames": settings.loop_frames,
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


def profile_path(profile_dir: str, program: str, config: str, mode: str) -> str:
    """Where the trace of `program` ("ours" or "released") for a case goes."""
    return os.path.join(profile_dir, f"{program}_{config}_{mode}")


def _case_process(argv: list[str]) -> None:
    """``python -m tempo.benchmark CONFIG:MODE SETTINGS_JSON``: runs one case and
    prints its row as JSON after the tag `run_in_subprocess` looks for."""
    case, settings_json = argv
    settings = BenchSettings(**json.loads(settings_json))
    config, mode = case.split(":")
    row = (
        run_loop_case(settings, int(mode)) if config == "loop" else run_case(settings, config, mode)
    )
    print(_CASE_TAG + json.dumps(row), flush=True)


# ---------------------------------------------------------------- cases as processes


def run_in_subprocess(settings: BenchSettings, config: str, mode: str) -> dict:
    """One case in a fresh process, so compile time and peak memory are its own."""
    payload = json.dumps(dataclasses.asdict(settings))
    cmd = [sys.executable, "-m", "tempo.benchmark", f"{config}:{mode}", payload]
    return run_json_case(cmd, _CASE_TAG, f"{config}:{mode}", settings.json_path)


def run_json_case(
    cmd: list[str],
    tag: str,
    label: str,
    json_path: str | None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Runs a case's process and returns the JSON row it printed after `tag`
    (appended to `json_path` too); raises CaseFailed if it failed."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith(tag)]
    if out.returncode or not lines:
        sys.stderr.write(out.stderr[-4000:])
        raise CaseFailed(f"bench case {label} failed (exit {out.returncode}).")
    row = json.loads(lines[-1][len(tag) :])
    print(f"done {label}", flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def run_released(
    settings: BenchSettings, config: str, mode: str, environ: Mapping[str, str]
) -> dict:
    """One case of the released code, in its own environment's Python."""
    script = os.path.join(REPOSITORY, "tests", "reference", "released_bench.py")
    cmd = [settings.released_python, script, f"--config={config}", f"--mode={mode}"]
    cmd += [f"--iters={settings.iters}", f"--batch={settings.batch}"]
    cmd += [f"--length={settings.length}"]
    if settings.profile_dir:
        cmd += [f"--profile={profile_path(settings.profile_dir, 'released', config, mode)}"]
    env = dict(environ)
    env.pop("TF_USE_LEGACY_KERAS", None)  # its environment has Keras 2 in TensorFlow itself
    if settings.released_src:
        env["TEMPO_REF_SRC"] = settings.released_src
    return run_json_case(cmd, _RELEASED_TAG, f"released {config}:{mode}", settings.json_path, env)


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


# ---------------------------------------------------------------- tables


def print_table(rows: list[dict]) -> None:
    """Our update cases, then per config TEMPO / DreamerV2 seconds per update
    (median over rounds), the parts and the parameter counts."""
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
    """Env frames/s and updates/s of the whole-loop cases, per worker count."""
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


def print_profiles(cases: list[tuple[str, str]], profile_dir: str, top: int) -> None:
    """Per case: the `top` op types and layer scopes that take the most kernel time,
    ours beside the release's where it was traced too."""
    from tempo.profiling import find_trace, read_trace

    for config, mode in cases:
        if config == "loop":
            continue
        traces = {}
        for program in ("ours", "released"):
            path = profile_path(profile_dir, program, config, mode)
            if os.path.isdir(path):
                traces[program] = read_trace(find_trace(path), PROFILED_UPDATES)
        programs = list(traces)
        for table in ("by_type", "by_scope"):
            rows = collections.Counter()
            for times in traces.values():
                rows.update(getattr(times, table))
            top_keys = [k for k, _ in rows.most_common(top)]
            title = "op type" if table == "by_type" else "scope"
            print(f"\n{config} {mode}: kernel ms per update by {title} (self time, all threads)")
            print(f"{title:<44}" + "".join(f"{p:>11}" for p in programs))
            for key in top_keys:
                cells = "".join(
                    f"{getattr(traces[p], table).get(key, 0.0):>11.1f}" for p in programs
                )
                print(f"{key[:43]:<44}{cells}")
            print(f"{'total':<44}" + "".join(f"{traces[p].total_ms:>11.1f}" for p in programs))


if __name__ == "__main__":
    _case_process(sys.argv[1:])
