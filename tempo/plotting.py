"""Learning curves from run directories: eval return vs env frames, grouped by
task and method, mean with a min-max band over seeds."""

from __future__ import annotations

import ast
import csv
import os
import pathlib
import re
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


def method_name(bindings: dict) -> str:
    """'dreamerv2', 'tempo-released' or 'tempo-lookahead' from a run's bindings."""
    if not bindings.get("BilevelTrainer.meta", True):
        return "dreamerv2"
    return f"tempo-{bindings.get('BilevelTrainer.hypergrad_sign', 'released')}"


def load_run(logdir: str | os.PathLike, metric: str = "eval/return") -> dict:
    """{task, method, seed, steps, values, wall_s, frames} of one run directory
    (wall_s: `training_seconds`; frames: the last env frame logged)."""
    logdir = pathlib.Path(logdir)
    config, metrics = logdir / "config.gin", logdir / "metrics.jsonl"
    if not config.exists() or not metrics.exists():
        raise ValueError(
            f"{logdir} is not a tempo run directory (config.gin and metrics.jsonl needed)."
        )
    bindings = read_bindings(config)
    records = read_records(metrics)
    steps, values = [], []
    for record in records:
        if record.get(metric) is not None:
            steps.append(int(record["step"]))
            values.append(float(record[metric]))
    return {
        "logdir": str(logdir),
        "task": bindings.get("train.task", "unknown"),
        "method": method_name(bindings),
        "seed": int(bindings.get("train.seed", 0)),
        "steps": np.asarray(steps),
        "values": np.asarray(values),
        "wall_s": training_seconds(records),
        "frames": max((int(r["step"]) for r in records), default=0),
    }


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


def aggregate(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (task, method): the steps every seed evaluated at, with the mean, min
    and max over seeds, and the area under the mean curve (trapezoid, per frame)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"])].append(run)
    curves = {}
    for key, members in sorted(groups.items()):
        common = set(members[0]["steps"].tolist())
        for run in members[1:]:
            common &= set(run["steps"].tolist())
        steps = np.array(sorted(common))
        table = np.array([[dict(zip(r["steps"], r["values"]))[s] for s in steps] for r in members])
        mean = table.mean(0) if len(steps) else np.array([])
        span = steps[-1] - steps[0] if len(steps) > 1 else 0
        trapezoid = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(steps))) if span else 0.0
        curves[key] = {
            "steps": steps,
            "mean": mean,
            "min": table.min(0) if len(steps) else mean,
            "max": table.max(0) if len(steps) else mean,
            "seeds": sorted(r["seed"] for r in members),
            "final": float(mean[-1]) if len(steps) else float("nan"),
            "auc": trapezoid / span if span else float("nan"),
            "wall_s": float(np.mean([r["wall_s"] for r in members])),
            "frames": int(min(r["frames"] for r in members)),
        }
    return curves


def summary_table(curves: dict) -> str:
    """A markdown table per (task, method): seeds, frames trained (the fewest of
    any seed), the last and area-under-curve eval returns of the mean curve, and
    the training wall-clock, in all and per 100k frames (mean over seeds)."""
    lines = [
        "| task | method | seeds | frames | final | AUC | training h | h per 100k frames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, method), c in curves.items():
        # No timed interval yet (only the first, which is not counted): no hours.
        hours = c["wall_s"] / 3600 if c["wall_s"] > 0 else float("nan")
        per_100k = hours * 100_000 / c["frames"] if c["frames"] else float("nan")
        seeds = ",".join(str(s) for s in c["seeds"])
        lines.append(
            f"| {task} | {method} | {seeds} | {c['frames']:,} | {_fmt(c['final'], 1)} | "
            f"{_fmt(c['auc'], 1)} | {_fmt(hours, 2)} | {_fmt(per_100k, 2)} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float, digits: int) -> str:
    """A table cell: 'n/a' where a number is undefined (an AUC of one point)."""
    return f"{value:.{digits}f}" if np.isfinite(value) else "n/a"


def write_csv(curves: dict, path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "step", "mean", "min", "max", "seeds"])
        for (task, method), curve in curves.items():
            seeds = " ".join(str(s) for s in curve["seeds"])
            for i, step in enumerate(curve["steps"]):
                row = [curve["mean"][i], curve["min"][i], curve["max"][i]]
                writer.writerow([task, method, int(step), *(f"{x:.3f}" for x in row), seeds])


def plot_curves(curves: dict, path: str | os.PathLike, ylabel: str = "eval return") -> None:
    """One panel per task, one line (mean) and band (min-max over seeds) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for task, _ in curves})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, method), curve in curves.items():
            if t != task or not len(curve["steps"]):
                continue
            label = f"{method} ({len(curve['seeds'])} seed{'s' if len(curve['seeds']) > 1 else ''})"
            (line,) = ax.plot(curve["steps"], curve["mean"], label=label)
            ax.fill_between(
                curve["steps"], curve["min"], curve["max"], color=line.get_color(), alpha=0.2
            )
        ax.set_title(task)
        ax.set_xlabel("env frames")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
