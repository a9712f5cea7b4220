"""The compact progress line a person watches: one terminal row per log.

A run logs some thirty metrics; the terminal shows what tells whether it is
moving and healthy: the frame against the budget, the speed and the time left,
the latest training and evaluation returns, the model loss and (TEMPO) the
spread of the meta-weights, and anything abnormal (skipped updates, a
non-finite streak, restarted environment workers) only while it is not zero.
Everything stays in metrics.jsonl and TensorBoard; `tempo.logging.TerminalOutput`
prints it all (`train.verbose = True`).

On a terminal the line is redrawn in place (a carriage return, no dependency:
TensorFlow and absl write to the same terminal without asking any progress
library, so none could keep its display intact anyway) and each evaluation
leaves its line behind; elsewhere (a log file, CI) every log is a plain line.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from tempo.logging import format_duration, format_value

# Shown only when not zero, as "<name> <value>": metric name -> how to show it.
ALERTS = {
    "train/update_skipped": ("update_skipped", lambda v: f"{v:.0%}"),
    "train/behavior_skipped": ("behavior_skipped", lambda v: f"{v:.0%}"),
    "train/nonfinite_streak": ("nonfinite_streak", lambda v: f"{v:.0f}"),
    "env_restarts": ("env_restarts", lambda v: f"{v:.0f}"),
}
# Health figures, shown when the run reports them (meta_std: TEMPO only).
HEALTH = {"train/model_loss": "model_loss", "train/meta_weight_std": "meta_std"}
# Kept from write to write: a line shows the latest value of each, however old.
CARRIED = ("fps", "eta_s", "train/return", "eval/return", *HEALTH, *ALERTS)
# Taken over from the records of a resumed run's earlier processes.
RESUMED = ("train/return", "eval/return")


def format_progress(frame: int, total_frames: int, latest: Mapping[str, float]) -> str:
    """The line for env frame `frame` of `total_frames`, from the latest values
    of the keys in CARRIED; a return not reported yet shows as '-'."""

    def value(key: str) -> str:
        return format_value(latest[key]) if key in latest else "-"

    parts = [
        f"frame {int(frame):,}/{int(total_frames):,}",
        f"{value('fps')} fps",
        f"eta {format_duration(0 if frame >= total_frames else latest.get('eta_s'))}",
        f"return {value('train/return')}",
        f"eval {value('eval/return')}",
    ]
    for key, (name, show) in ALERTS.items():
        amount = latest.get(key, 0.0)
        if amount != 0.0:  # NaN too: it is not normal either
            parts.append(f"{name} {show(amount)}")
    parts += [f"{name} {format_value(latest[k])}" for k, name in HEALTH.items() if k in latest]
    return "  ".join(parts)


class ProgressOutput:
    """A `tempo.logging.Logger` output printing `format_progress` at every write.

    The first speed a run reports is left out: it spans the first step of the
    loop, which includes TensorFlow tracing the policy and the update. The
    stream is looked up at write time (stdout by default), so redirected or
    captured output works; whether it is a terminal decides the redraw."""

    def __init__(
        self,
        total_frames: int,
        stream: TextIO | None = None,
        earlier: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """`earlier`: the records (metrics.jsonl) of a resumed run, whose latest
        returns show until this process has its own."""
        self.total_frames = total_frames
        self._stream = stream
        self.latest: dict[str, float] = {
            key: record[key] for record in earlier for key in RESUMED if record.get(key) is not None
        }
        self._live = False  # a redrawn line without its newline is on screen
        self._shown = ""
        self._rates = 0  # writes with a rate so far

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def write(self, step: int, scalars: dict[str, float], images: dict[str, np.ndarray]) -> None:
        """Updates the latest values and shows the line: redrawn in place on a
        terminal (an evaluation's line is kept), a new line elsewhere; the same
        line twice in a row (the last logs of a run) shows once."""
        if not scalars:
            return
        self._rates += "fps" in scalars
        # A process's first rate spans its first step, TensorFlow's tracing included.
        skip = ("fps", "eta_s") if self._rates == 1 and "fps" in scalars else ()
        self.latest.update({k: v for k, v in scalars.items() if k in CARRIED and k not in skip})
        line = format_progress(step, self.total_frames, self.latest)
        if line == self._shown:
            return
        self._shown = line
        stream = self.stream
        if not _is_terminal(stream):
            stream.write(line + "\n")
        else:
            width = shutil.get_terminal_size((120, 40)).columns
            # Cut to the width: a wrapped line could not be redrawn in place.
            stream.write("\r" + line[: max(width - 1, 1)] + "\x1b[K")
            self._live = "eval/return" not in scalars
            if not self._live:
                stream.write("\n")
        stream.flush()

    def close(self) -> None:
        """Ends a redrawn line, so what is printed next starts on its own row."""
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
