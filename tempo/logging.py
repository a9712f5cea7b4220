"""Metrics sinks of the training loop: terminal, metrics.jsonl and TensorBoard.

The loop collects scalars, images and videos on a `Logger` and calls
`write(step)` every so often; each output then receives the same snapshot. The
JSONL file is the durable record (append-only, flushed per line, strict JSON),
TensorBoard is for looking at curves and open-loop videos (and histograms and
markdown texts, which only it receives), and the terminal line is for a human
watching the run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TextIO

import numpy as np

# Shown first on the terminal line, in this order; everything else follows sorted.
PRIORITY = (
    "train/return",
    "eval/return",
    "train/length",
    "eval/length",
    "fps",
    "eta_s",
    "eta",
)
# Keys whose value is a duration in seconds, printed as H:MM:SS under a short label.
_DURATION_LABELS = {"eta_s": "eta", "eta": "eta"}


class Output(Protocol):
    """What a `Logger` writes to: one call per `Logger.write`, then `close`."""

    def write(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Receives every scalar and image collected since the previous write."""

    def close(self) -> None:
        """Releases files; called once at the end of the run."""


# ----- small pure helpers ------------------------------------------------------


def to_float(value: Any) -> float:
    """Python number, numpy scalar or scalar tensor -> float, so every output
    sees plain floats. Size-1 arrays are accepted; larger ones are an error
    because averaging them silently would hide a bug in the caller."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"expected a scalar, got an array of shape {array.shape}")
    try:
        return float(array.reshape(()))
    except (TypeError, ValueError) as error:
        raise ValueError(f"expected a number, got {value!r}") from error


def format_duration(seconds: float | None) -> str:
    """Seconds -> 'H:MM:SS' (hours not wrapped at 24); '?' when unknown, so an
    ETA before the first FPS measurement still prints."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def eta_seconds(step: int, total_steps: int, steps_per_second: float) -> float:
    """Seconds left to reach `total_steps` at the current rate; inf when the rate
    is zero or unknown, 0 once the goal is reached."""
    remaining = max(total_steps - step, 0)
    if remaining == 0:
        return 0.0
    if not steps_per_second > 0:  # also catches NaN
        return math.inf
    return remaining / steps_per_second


def format_value(value: float) -> str:
    """Compact number for the terminal: 4 significant digits, thousands separators
    for large values (so 12000 reads '12,000', not '1.2e+04')."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1000 and abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:.4g}"


class FPS:
    """Steps per second between successive `rate()` calls (monotonic clock, so
    wall-clock adjustments do not produce negative or huge rates)."""

    def __init__(self) -> None:
        self._steps = 0
        self._since = time.monotonic()

    def update(self, steps: int) -> None:
        """Counts `steps` more steps taken since the last `rate()`."""
        self._steps += int(steps)

    @property
    def pending(self) -> int:
        """Steps counted since the last `rate()` call."""
        return self._steps

    def rate(self) -> float:
        """Steps per second since the previous call (or construction); restarts
        the count so each log line reports the recent rate, not a lifetime one."""
        now = time.monotonic()
        rate = self._steps / max(now - self._since, 1e-9)
        self._steps, self._since = 0, now
        return rate


class MetricsAccumulator:
    """Averages per-update metrics between two log writes, so a log line reports
    the mean over all updates since the previous line rather than the last one.
    Each key is averaged over the updates that reported it; a non-finite value
    makes its mean non-finite (on purpose: NaNs must be seen, not averaged away)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        """Adds one update's metrics (numbers, numpy scalars or scalar tensors)."""
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + to_float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def result(self) -> dict[str, float]:
        """Mean of every key added since the last `reset`."""
        return {key: self._sums[key] / self._counts[key] for key in self._sums}

    def reset(self) -> None:
        """Starts a new averaging window."""
        self._sums.clear()
        self._counts.clear()


# ----- outputs -------------------------------------------------------------------


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file, oldest first; an undecodable line (the
    torn last line of a killed write) is skipped, a missing file is no records."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class JSONLOutput:
    """Appends one JSON line per write and flushes it, so a killed run keeps every
    line written and a resumed run continues the same file. Non-finite values are
    written as null (strict JSON that every parser reads) and their keys listed
    under "nonfinite"."""

    def __init__(self, logdir: str | os.PathLike, filename: str = "metrics.jsonl") -> None:
        self.path = pathlib.Path(logdir) / filename

    def write(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Appends {"step", "time", name: value, ...}; images are not recorded here."""
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
        line = json.dumps(record, allow_nan=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Reopened per write: appends survive a crash and never clobber a resumed file.
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def close(self) -> None:
        """Nothing held open between writes."""


class TensorBoardOutput:
    """Scalars and images as TensorBoard summaries. The writer (and TensorFlow
    itself) is only touched on the first write, so building a Logger is cheap."""

    def __init__(self, logdir: str | os.PathLike) -> None:
        self._logdir = str(logdir)
        self._writer = None

    def write(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Writes every value at `step` and flushes the event file."""
        if not scalars and not images:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._logdir)
        with self._writer.as_default(step=int(step)):
            for key, value in scalars.items():
                tf.summary.scalar(key, value)
            for key, image in images.items():
                tf.summary.image(key, image[None], max_outputs=1)
        self._writer.flush()

    def write_histograms_and_texts(
        self, step: int, histograms: dict[str, np.ndarray], texts: dict[str, str]
    ) -> None:
        """Distributions and markdown at `step`: what only TensorBoard can show."""
        if not histograms and not texts:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._logdir)
        with self._writer.as_default(step=int(step)):
            for key, values in histograms.items():
                tf.summary.histogram(key, values)
            for key, text in texts.items():
                tf.summary.text(key, text)
        self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file if one was opened."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TerminalOutput:
    """One progress line per write: `[step 12,000] train/return 123.4 | fps 850 |
    eta 0:42:13 | model_loss 1.23 ...`.

    `keys` are shown first, in order (default `PRIORITY`: returns, lengths, fps,
    eta). With `show_rest` the remaining scalars follow, sorted, with their
    'train/' style prefix dropped where that stays unambiguous; without it
    `keys` acts as a whitelist. The stream is looked up at write time (stdout by
    default) so redirected or captured output works."""

    def __init__(
        self,
        keys: Sequence[str] | None = None,
        show_rest: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self._keys = tuple(keys) if keys is not None else PRIORITY
        self._show_rest = show_rest
        self._stream = stream

    def format(self, step: int, scalars: Mapping[str, float]) -> str:
        """The progress line for `scalars` at `step` (no newline)."""
        parts = []
        first = [key for key in self._keys if key in scalars]
        for key in first:
            value = scalars[key]
            if key in _DURATION_LABELS:
                parts.append(f"{_DURATION_LABELS[key]} {format_duration(value)}")
            else:
                parts.append(f"{key} {format_value(value)}")
        if self._show_rest:
            rest = sorted(key for key in scalars if key not in first)
            short = [key.rsplit("/", 1)[-1] for key in rest]
            for key, name in zip(rest, short):
                label = name if short.count(name) == 1 else key
                parts.append(f"{label} {format_value(scalars[key])}")
        return f"[step {int(step):,}] " + " | ".join(parts)

    def write(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Prints the progress line and flushes, so it shows up under `tee` or nohup."""
        if not scalars:
            return
        stream = self._stream or sys.stdout
        stream.write(self.format(step, scalars) + "\n")
        stream.flush()

    def close(self) -> None:
        """The stream belongs to the caller; nothing to close."""


# ----- the sink the training loop talks to -----------------------------------------


def _as_uint8_image(array: Any) -> np.ndarray:
    """HxW or HxWxC, uint8 or float in [0, 1] -> HxWxC uint8 (what
    `tf.summary.image` encodes); NaNs become 0 rather than undefined bytes."""
    if hasattr(array, "numpy"):
        array = array.numpy()
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected an HxWxC image with C in 1..4, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.nan_to_num(array.astype(np.float64), nan=0.0)
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return array


class Logger:
    """Collects scalars and images, then writes them all to every output at one
    step, so the JSONL file, TensorBoard and the terminal always agree."""

    def __init__(self, logdir: str | os.PathLike, outputs: Sequence[Output] | None = None) -> None:
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        if outputs is None:
            outputs = [TerminalOutput(), JSONLOutput(logdir), TensorBoardOutput(logdir)]
        self.outputs = list(outputs)
        self._scalars: dict[str, float] = {}
        self._images: dict[str, np.ndarray] = {}
        self._histograms: dict[str, np.ndarray] = {}
        self._texts: dict[str, str] = {}

    def scalar(self, name: str, value: Any) -> None:
        """Records a number for the next write (a later value of the same name
        replaces it; average with `MetricsAccumulator` first if needed)."""
        try:
            self._scalars[name] = to_float(value)
        except ValueError as error:
            raise ValueError(f"scalar {name!r}: {error}") from None

    def scalars(self, mapping: Mapping[str, Any], prefix: str = "") -> None:
        """Records several numbers, named `prefix/name` when a prefix is given."""
        for key, value in mapping.items():
            self.scalar(f"{prefix}/{key}" if prefix else key, value)

    def image(self, name: str, array: Any) -> None:
        """Records an HxWxC (or HxW) image, uint8 or float in [0, 1]."""
        try:
            self._images[name] = _as_uint8_image(array)
        except ValueError as error:
            raise ValueError(f"image {name!r}: {error}") from None

    def histogram(self, name: str, values: Any) -> None:
        """Records the distribution of an array's finite values (TensorBoard only:
        outputs with a `write_histograms_and_texts` method receive it)."""
        values = np.asarray(values.numpy() if hasattr(values, "numpy") else values, np.float64)
        self._histograms[name] = values[np.isfinite(values)].ravel()

    def text(self, name: str, markdown: str) -> None:
        """Records a markdown text, e.g. a table (TensorBoard only, as `histogram`)."""
        self._texts[name] = str(markdown)

    def video(self, name: str, array: Any) -> None:
        """Records TxHxWxC (or TxHxW) frames as one image strip, frames side by
        side: the DreamerV2 open-loop format, viewable in TensorBoard's image tab
        (run it with `--samples_per_plugin images=1000` to keep every step)."""
        if hasattr(array, "numpy"):
            array = array.numpy()
        array = np.asarray(array)
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4 or array.shape[0] == 0:
            raise ValueError(f"video {name!r}: expected TxHxWxC frames, got shape {array.shape}")
        frames, height, width, channels = array.shape
        strip = array.transpose(1, 0, 2, 3).reshape(height, frames * width, channels)
        self.image(name, strip)

    def write(self, step: int) -> None:
        """Sends everything recorded since the last write to every output at
        `step`, then starts collecting afresh."""
        scalars, images = self._scalars, self._images
        histograms, texts = self._histograms, self._texts
        self._scalars, self._images, self._histograms, self._texts = {}, {}, {}, {}
        for output in self.outputs:
            output.write(int(step), dict(scalars), dict(images))
            if hasattr(output, "write_histograms_and_texts"):
                output.write_histograms_and_texts(int(step), dict(histograms), dict(texts))

    def close(self) -> None:
        """Closes every output; anything recorded but not written is dropped."""
        for output in self.outputs:
            output.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
