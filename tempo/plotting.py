"""Learning curves from run directories: eval return vs env frames, grouped by
task and method: the mean over seeds with a min-max band and each seed's own
curve, per-seed final and area-under-curve returns (mean and standard
deviation over seeds), each TEMPO method minus DreamerV2 with a bootstrap
interval over seeds, and when each run first met reward and how often after."""

from __future__ import annotations

import ast
import csv
import os
import pathlib
import re
import zlib
from collections import defaultdict

import numpy as np

from tempo.logging import read_records

_BINDING = re.compile(r"^\s*([\w./]+)\s*=\s*(.+?)\s*$")


def read_bindings(config_path: str | os.PathLike) -> dict[str, object]:
    """The simple `name = literal` lines of a saved config.gin."""
    bindings = {}
    for line in pathlib.Path(config_path).read_text().splitlines():
        match = _BINDING.match(line)
        if match:
            try:
                bindings[match.group(1)] = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                continue
    return bindings


# Adam moves a parameter by at most about its learning rate per update, so
# below this a meta-weighter keeps its initial weights over any run we make
# (1e4 updates): a placebo run, weights a fixed random function of the state.
PLACEBO_META_LR = 1e-7


def method_name(bindings: dict) -> str:
    """'dreamerv2', 'tempo-released', 'tempo-lookahead' or 'tempo-placebo' (a
    meta learning rate of at most PLACEBO_META_LR) from a run's bindings."""
    if not bindings.get("BilevelTrainer.meta", True):
        return "dreamerv2"
    meta_lr = bindings.get("meta/Optimizer.lr")
    if isinstance(meta_lr, (int, float)) and meta_lr <= PLACEBO_META_LR:
        return "tempo-placebo"
    return f"tempo-{bindings.get('BilevelTrainer.hypergrad_sign', 'released')}"


def load_run(
    logdir: str | os.PathLike,
    metric: str = "eval/return",
    max_frames: int | None = None,
    min_frames: int = 0,
) -> dict:
    """{task, method, seed, steps, values, wall_s, timed_frames, frames,
    first_reward, rewarded} of one run directory (wall_s: `training_seconds`,
    over timed_frames env frames; frames: the last env frame logged;
    first_reward and rewarded, the latter as (rewarded, episodes):
    `rewarded_episodes`). `max_frames` drops what came later, so that runs of
    different lengths compare at one budget; `min_frames` what came earlier, so
    that runs continued from one checkpoint compare over what they did apart."""
    logdir = pathlib.Path(logdir)
    config, metrics = logdir / "config.gin", logdir / "metrics.jsonl"
    if (logdir / RELEASED_MARKER).exists() and metrics.exists():
        bindings, records = released_run(logdir)
    elif not config.exists() or not metrics.exists():
        raise ValueError(
            f"{logdir} is not a tempo run directory (config.gin and metrics.jsonl needed) "
            f"nor a run of the released code ({RELEASED_MARKER} and metrics.jsonl)."
        )
    else:
        bindings, records = read_bindings(config), read_records(metrics)
    records = [r for r in records if int(r["step"]) >= min_frames]
    if max_frames is not None:
        records = [r for r in records if int(r["step"]) <= max_frames]
    steps, values = [], []
    for record in records:
        if record.get(metric) is not None:
            steps.append(int(record["step"]))
            values.append(float(record[metric]))
    first_reward, rewarded, episodes = rewarded_episodes(logdir, bindings, max_frames, min_frames)
    return {
        "logdir": str(logdir),
        "task": bindings.get("train.task", "unknown"),
        "method": bindings.get("method") or method_name(bindings),
        "seed": int(bindings.get("train.seed", 0)),
        "steps": np.asarray(steps),
        "values": np.asarray(values),
        "wall_s": training_seconds(records),
        "timed_frames": timed_frames(records),
        "frames": max((int(r["step"]) for r in records), default=0),
        "first_reward": first_reward,
        "rewarded": (rewarded, episodes),
    }


# Written by tests/reference/released_run.py into a run of the released code.
RELEASED_MARKER = "released_run.json"


def released_run(logdir: pathlib.Path) -> tuple[dict, list[dict]]:
    """(bindings, records) of a run of the released code, in our run's terms.

    Its metrics.jsonl logs each evaluation episode as its own `eval_return`
    record; the first one is the random-action episode of its prefill, which
    is left out, and the others are averaged per env frame into `eval/return`.
    Its replay (`train_episodes`) names episodes by their agent steps."""
    import json

    marker = json.loads((logdir / RELEASED_MARKER).read_text())
    bindings = {
        "train.task": marker["task"],
        "train.seed": marker["seed"],
        "train.prefill": marker["prefill"],
        "train.action_repeat": marker["action_repeat"],
        "method": marker["method"],
        "replay": "train_episodes",
        "names_count_steps": True,
    }
    records, returns = [], defaultdict(list)
    logged = read_records(logdir / "metrics.jsonl")
    evals = [r for r in logged if "eval_return" in r]
    for record in logged:
        if "eval_return" in record:
            if record is not evals[0]:
                returns[int(record["step"])].append(float(record["eval_return"]))
        else:
            records.append(record)
    records += [{"step": step, "eval/return": float(np.mean(v))} for step, v in returns.items()]
    records.sort(key=lambda r: int(r["step"]))
    return bindings, records


def rewarded_episodes(
    logdir: str | os.PathLike,
    bindings: dict,
    max_frames: int | None = None,
    min_frames: int = 0,
) -> tuple[int | None, int, int]:
    """(first, rewarded, episodes) over the episodes the agent collected after the
    random prefill that ended after `min_frames` (and by `max_frames`), from the
    run's replay (episode files in time order; a file holds the reset
    observation, which the step counter skips, then one entry per agent step):
    the env frame at the end of the first one with a positive return (None if
    none), how many had a positive return and how many there were. On a sparse
    task this says when the agent found reward and how often it came back."""
    from tempo.envs import DEFAULT_ACTION_REPEAT
    from tempo.replay import episode_files_in_order

    task = str(bindings.get("train.task", ""))
    repeat = bindings.get("train.action_repeat") or DEFAULT_ACTION_REPEAT.get(task.split("_")[0], 1)
    prefill = int(bindings.get("train.prefill", 0))
    # Our episode files are named by their entries (the reset observation too),
    # the release's by their agent steps.
    reset_entry = 0 if bindings.get("names_count_steps") else 1
    first, rewarded, episodes, steps = None, 0, 0, 0
    replay = pathlib.Path(logdir) / str(bindings.get("replay", "replay"))
    for path, length in episode_files_in_order(replay):
        start, steps = steps, steps + length - reset_entry
        if max_frames is not None and steps * repeat > max_frames:
            break
        if start < prefill or steps * repeat <= min_frames:
            continue
        episodes += 1
        with np.load(path) as episode:
            if float(np.sum(episode["reward"])) > 0:
                rewarded += 1
                first = int(steps * repeat) if first is None else first
    return first, rewarded, episodes


def training_seconds(records: list[dict]) -> float:
    """Seconds the run spent training: the sum over log intervals of frames / fps.
    Pauses between the sittings of a resumed run are not counted (the time stamps
    would count them), nor is the run's first interval (random prefill,
    pretraining, compilation), whose fps covers the loop's frames only."""
    total, previous = 0.0, None
    for record in records:
        fps = record.get("fps")
        if not fps:
            continue
        if previous is not None and record["step"] > previous:
            total += (record["step"] - previous) / fps
        previous = record["step"]
    return total


def timed_frames(records: list[dict]) -> int:
    """The env frames `training_seconds` times: from the first log interval's end
    to the last one's (steps only grow, also across the sittings of a run)."""
    steps = [int(r["step"]) for r in records if r.get("fps")]
    return steps[-1] - steps[0] if steps else 0


def aggregate(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (task, method): the steps every seed evaluated at, each seed's curve
    there, the mean, min and max over seeds, and per seed the final return and
    the area under its curve (trapezoid, per frame); `final` and `auc` are their
    means over seeds (the AUC of the mean curve), `*_std` their standard
    deviations (ddof 1; 0 for one seed)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"])].append(run)
    curves = {}
    for key, members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r["seed"])
        common = set(members[0]["steps"].tolist())
        for run in members[1:]:
            common &= set(run["steps"].tolist())
        steps = np.array(sorted(common))
        table = np.array([[dict(zip(r["steps"], r["values"]))[s] for s in steps] for r in members])
        table = table.reshape(len(members), len(steps))
        finals, aucs = _seed_final_and_auc(steps, table)
        # Times over the seeds that have them (not those read from a CSV).
        known_walls = [r["wall_s"] for r in members if np.isfinite(r["wall_s"])]
        curves[key] = {
            "steps": steps,
            "per_seed": table,
            "mean": table.mean(0) if len(steps) else np.array([]),
            "min": table.min(0) if len(steps) else np.array([]),
            "max": table.max(0) if len(steps) else np.array([]),
            "seeds": [r["seed"] for r in members],
            "seed_final": finals,
            "seed_auc": aucs,
            "final": float(np.mean(finals)),
            "final_std": _std(finals),
            "auc": float(np.mean(aucs)),
            "auc_std": _std(aucs),
            "first_reward": [r.get("first_reward") for r in members],
            "rewarded": [r.get("rewarded") for r in members],
            "wall_s": float(np.mean(known_walls)) if known_walls else float("nan"),
            "timed_wall_s": float(sum(known_walls)),
            "timed_frames": int(sum(r["timed_frames"] for r in members)),
            "frames": int(min(r["frames"] for r in members)),
            "from_csv": [r["seed"] for r in members if r.get("from_csv")],
        }
    return curves


CSV_COLUMNS = ("task", "method", "step", "seeds", "per_seed")


def runs_from_csv(
    path: str | os.PathLike, max_frames: int | None = None, min_frames: int = 0
) -> list[dict]:
    """Each seed's curve in a CSV that `write_csv` wrote, as `load_run` gives a
    run (cut to [min_frames, max_frames] as it does): for comparing with runs
    whose directories are gone. What only a run directory holds is unknown:
    training time (wall_s NaN, no timed frames) and rewarded episodes
    (first_reward and rewarded None); `from_csv` marks them. The curve holds
    the steps all seeds of its group shared, of the metric the CSV plotted."""
    path = pathlib.Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} is not a curves CSV written by launch.plot (no {', '.join(missing)} "
                f"column); pass the <out>.csv of an earlier `python -m launch.plot`."
            )
        rows = list(reader)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["method"])].append(row)
    runs = []
    for (task, method), members in groups.items():
        seeds = [int(s) for s in members[0]["seeds"].split()]
        steps = np.array([int(row["step"]) for row in members])
        table = np.array([[float(x) for x in row["per_seed"].split()] for row in members])
        if table.shape != (len(steps), len(seeds)):
            raise ValueError(f"{path}: {task}/{method} has a per_seed cell not one per seed.")
        keep = (steps >= min_frames) & (steps <= (max_frames if max_frames is not None else np.inf))
        steps, table = steps[keep], table[keep]
        for i, seed in enumerate(seeds):
            runs.append(
                {
                    "logdir": f"{path}:{task}/{method}/seed{seed}",
                    "task": task,
                    "method": method,
                    "seed": seed,
                    "steps": steps,
                    "values": table[:, i],
                    "wall_s": float("nan"),
                    "timed_frames": 0,
                    "frames": int(steps[-1]) if len(steps) else 0,
                    "first_reward": None,
                    "rewarded": None,
                    "from_csv": True,
                }
            )
    return runs


def replace_runs(earlier: list[dict], later: list[dict]) -> list[dict]:
    """`later` and those of `earlier` whose (task, method, seed) it does not hold."""
    held = {(r["task"], r["method"], r["seed"]) for r in later}
    return [r for r in earlier if (r["task"], r["method"], r["seed"]) not in held] + later


def area_under_curve(steps: np.ndarray, values: np.ndarray) -> float:
    """Mean return over the evaluated frames: the trapezoid area over the span
    (NaN with fewer than two evaluations)."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float("nan")
    area = np.sum((values[1:] + values[:-1]) / 2 * np.diff(steps))
    return float(area / (steps[-1] - steps[0]))


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def differences(
    curves: dict, baseline: str = "dreamerv2", resamples: int = 10_000, seed: int = 0
) -> list[dict]:
    """Each other method minus `baseline` per task, in final and AUC return: the
    difference of the means over seeds with a 95% percentile bootstrap interval
    (seeds resampled with replacement, each method on its own). With three seeds
    a side the interval is coarse; it is what the seeds can say, no more. Both
    sides are cut at the fewer frames either evaluated (`frames`), so that a run
    still under way is not set against finished ones."""
    rows = []
    for (task, method), curve in curves.items():
        base = curves.get((task, baseline))
        if method == baseline or base is None:
            continue
        # Each row its own stream: its interval does not depend on what else is plotted.
        rng = np.random.default_rng([seed, zlib.crc32(f"{task}/{method}".encode())])
        row = {"task": task, "method": method, "seeds": len(curve["seeds"])}
        row["baseline_seeds"] = len(base["seeds"])
        row["frames"] = budget = min(_last_step(curve), _last_step(base))
        cut_ours, cut_theirs = _per_seed_upto(curve, budget), _per_seed_upto(base, budget)
        for i, stat in enumerate(("final", "auc")):
            ours, theirs = cut_ours[i], cut_theirs[i]
            diff = float(np.mean(ours) - np.mean(theirs))
            a = rng.choice(ours, (resamples, len(ours)))
            b = rng.choice(theirs, (resamples, len(theirs)))
            low, high = np.percentile(a.mean(1) - b.mean(1), [2.5, 97.5])
            row[stat] = (diff, float(low), float(high))
        rows.append(row)
    return rows


def _last_step(curve: dict) -> int:
    return int(curve["steps"][-1]) if len(curve["steps"]) else 0


def _seed_final_and_auc(steps: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per seed (a row of `table`, evaluated at `steps`): the last return and the
    area under the curve (NaN where there is no evaluation)."""
    finals = table[:, -1] if len(steps) else np.full(len(table), np.nan)
    return finals, np.array([area_under_curve(steps, row) for row in table])


def _per_seed_upto(curve: dict, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's final and AUC return over the evaluations at or before `frames`."""
    keep = curve["steps"] <= frames
    return _seed_final_and_auc(curve["steps"][keep], curve["per_seed"][:, keep])


def summary_table(curves: dict, baseline: str = "dreamerv2") -> str:
    """Markdown tables: per (task, method) the seeds, frames trained (the fewest
    of any seed), final and area-under-curve returns (mean and standard
    deviation over seeds), the training wall-clock (mean over seeds) and its
    hours per 100k timed frames (all seeds together), each run's first
    rewarded frame and its rewarded episodes after prefill out of all it
    collected; then each method minus `baseline` with its bootstrap interval."""
    lines = [
        "| task | method | seeds | frames | final | AUC | training h | h per 100k frames "
        "| first rewarded frame per seed | rewarded episodes per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method), c in curves.items():
        # No timed interval yet (only the first, which is not counted): no hours.
        hours = c["wall_s"] / 3600 if c["wall_s"] > 0 else float("nan")
        # Over the frames that were timed: a run's first interval and, with
        # min_frames, what came before are not.
        timed = c["timed_frames"]
        per_100k = c["timed_wall_s"] / 3600 * 100_000 / timed if timed else float("nan")
        seeds = ",".join(str(s) for s in c["seeds"])
        final, auc = _fmt(c["final"], 1), _fmt(c["auc"], 1)
        if len(c["seeds"]) > 1:
            final += f" ± {_fmt(c['final_std'], 1)}" if np.isfinite(c["final"]) else ""
            auc += f" ± {_fmt(c['auc_std'], 1)}" if np.isfinite(c["auc"]) else ""
        first = ", ".join(
            "n/a" if r is None else "none" if f is None else f"{f:,}"
            for f, r in zip(c["first_reward"], c["rewarded"])
        )
        found = ", ".join("n/a" if r is None else f"{r[0]}/{r[1]}" for r in c["rewarded"])
        lines.append(
            f"| {task} | {method} | {seeds} | {c['frames']:,} | {final} | {auc} | "
            f"{_fmt(hours, 2)} | {_fmt(per_100k, 2)} | {first} | {found} |"
        )
    earlier = [
        f"{task} {method} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        for (task, method), c in curves.items()
        if (seeds := c["from_csv"])
    ]
    if earlier:
        lines += [
            "",
            f"Read from a CSV (their run directories are gone): {'; '.join(earlier)}. "
            "Their training time and rewarded episodes are unknown (n/a); the hours "
            "are over the other seeds.",
        ]
    rows = differences(curves, baseline)
    if rows:
        lines += [
            "",
            f"Minus {baseline}: difference of the means over seeds [95% bootstrap interval]",
            "",
            "| task | method | seeds (vs baseline) | frames compared | final | AUC |",
            "|---|---|---|---|---|---|",
        ]
        cell = lambda d: f"{_fmt(d[0], 1)} [{_fmt(d[1], 1)}, {_fmt(d[2], 1)}]"
        for r in rows:
            lines.append(
                f"| {r['task']} | {r['method']} | {r['seeds']} ({r['baseline_seeds']}) | "
                f"{r['frames']:,} | {cell(r['final'])} | {cell(r['auc'])} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int) -> str:
    """A table cell: 'n/a' where a number is undefined (an AUC of one point)."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def write_csv(curves: dict, path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "step", "mean", "min", "max", "seeds", "per_seed"])
        for (task, method), curve in curves.items():
            seeds = " ".join(str(s) for s in curve["seeds"])
            for i, step in enumerate(curve["steps"]):
                row = [curve["mean"][i], curve["min"][i], curve["max"][i]]
                each = " ".join(f"{x:.3f}" for x in curve["per_seed"][:, i])
                writer.writerow([task, method, int(step), *(f"{x:.3f}" for x in row), seeds, each])


def method_colors(curves: dict) -> dict[str, str]:
    """One color per method in every panel (matplotlib's cycle, C0 for the
    first method in sorted order), so a method reads the same across tasks."""
    methods = sorted({method for _, method in curves})
    return {method: f"C{i % 10}" for i, method in enumerate(methods)}


def plot_curves(curves: dict, path: str | os.PathLike, ylabel: str = "eval return") -> None:
    """One panel per task; per method the mean (thick), each seed (thin) and the
    min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for task, _ in curves})
    colors = method_colors(curves)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, method), curve in curves.items():
            if t != task or not len(curve["steps"]):
                continue
            label = f"{method} ({len(curve['seeds'])} seed{'s' if len(curve['seeds']) > 1 else ''})"
            color = colors[method]
            ax.plot(curve["steps"], curve["mean"], label=label, linewidth=2, color=color)
            ax.fill_between(curve["steps"], curve["min"], curve["max"], color=color, alpha=0.15)
            if len(curve["seeds"]) > 1:  # each seed, thin, under the mean
                for row in curve["per_seed"]:
                    ax.plot(curve["steps"], row, color=color, linewidth=0.6, alpha=0.6)
        ax.set_title(task)
        ax.set_xlabel("env frames")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
