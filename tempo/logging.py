"""Metrics sinks of the training loop: terminal, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PRIORITY = ("train/return", "eval/return", "train/length", "fps", "eta_s")


def to_float(value: Any) -> float:
    """Python number, numpy scalar or scalar tensor -> float."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    return float(np.asarray(value))


def format_duration(seconds: float) -> str:
    """Seconds -> 'H:MM:SS' ('?' when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def eta_seconds(step: int, total_steps: int, steps_per_second: float) -> float:
    """Time left at the current rate (inf when nothing moves)."""
    if steps_per_second <= 0:
        return math.inf
    return max(total_steps - step, 0) / steps_per_second


class FPS:
    """Steps per second between successive `rate()` calls (monotonic clock)."""

    def __init__(self):
        self._steps = 0
        self._since = time.monotonic()

    def update(self, steps: int) -> None:
        self._steps += steps

    def rate(self) -> float:
        now = time.monotonic()
        rate = self._steps / max(now - self._since, 1e-9)
        self._steps, self._since = 0, now
        return rate


class MetricsAccumulator:
    """Averages per-update metrics between two log writes."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + to_float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums}

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()


class JSONLOutput:
    """Appends one JSON line per write and flushes it, so a killed run keeps every
    line written and a resumed run continues the same file."""

    def __init__(self, logdir: str | os.PathLike, filename: str = "metrics.jsonl"):
        self.path = pathlib.Path(logdir) / filename

    def write(self, step: int, scalars: dict[str, float], images: dict) -> None:
        if not scalars:
            return
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        nonfinite = []
        for key, value in scalars.items():
            if math.isfinite(value):
                record[key] = value
            else:
                record[key] = None
                nonfinite.append(key)
        if nonfinite:
            record["nonfinite"] = nonfinite
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def close(self) -> None:
        pass


class TensorBoardOutput:
    """Scalars and images as TensorBoard summaries; the writer is created on the
    first write so that building a Logger stays cheap."""

    def __init__(self, logdir: str | os.PathLike):
        self._logdir = str(logdir)
        self._writer = None

    def write(self, step: int, scalars: dict[str, float], images: dict) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._logdir)
        with self._writer.as_default(step=int(step)):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
            for key, image in images.items():
                tf.summary.image(key, image[None], max_outputs=1)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class TerminalOutput:
    """One progress line per write: step, returns, FPS and ETA first."""

    def __init__(self, keys: Sequence[str] | None = None, stream=None):
        self._keys = tuple(keys) if keys else None
        self._stream = stream

    def write(self, step: int, scalars: dict[str, float], images: dict) -> None:
        if not scalars:
            return
        parts = []
        first = [k for k in PRIORITY if k in scalars]
        rest = [k for k in sorted(scalars) if k not in first]
        if self._keys is not None:
            rest = [k for k in rest if k in self._keys]
        for key in first + rest:
            value = scalars[key]
            if key == "eta_s":
                parts.append(f"eta {format_duration(value)}")
            else:
                parts.append(f"{key.split('/')[-1] if key in PRIORITY else key} {value:.4g}")
        stream = self._stream or sys.stdout
        stream.write(f"[step {int(step):,}] " + " | ".join(parts) + "\n")
        stream.flush()

    def close(self) -> None:
        pass


class Logger:
    """Collects scalars and images, then writes them to every output at a step."""

    def __init__(self, logdir: str | os.PathLike, outputs: Sequence[Any] | None = None):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        if outputs is None:
            outputs = [TerminalOutput(), JSONLOutput(logdir), TensorBoardOutput(logdir)]
        self.outputs = list(outputs)
        self._scalars: dict[str, float] = {}
        self._images: dict[str, np.ndarray] = {}

    def scalar(self, name: str, value: Any) -> None:
        self._scalars[name] = to_float(value)

    def scalars(self, mapping: Mapping[str, Any], prefix: str = "") -> None:
        for key, value in mapping.items():
            self.scalar(f"{prefix}/{key}" if prefix else key, value)

    def image(self, name: str, array: np.ndarray) -> None:
        """HxWxC uint8, or float in [0, 1]."""
        array = np.asarray(array)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
        self._images[name] = array

    def video(self, name: str, array: np.ndarray) -> None:
        """TxHxWxC frames as one image strip, frames side by side."""
        array = np.asarray(array)
        frames, height, width, channels = array.shape
        self.image(name, array.transpose(1, 0, 2, 3).reshape(height, frames * width, channels))

    def write(self, step: int) -> None:
        for output in self.outputs:
            output.write(step, self._scalars, self._images)
        self._scalars, self._images = {}, {}

    def close(self) -> None:
        for output in self.outputs:
            output.close()
