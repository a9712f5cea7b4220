"""The last line of a training run: how it ended and where its outputs are, with
the command that resumes or evaluates it (summary.json holds the same facts)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence


def python_command(module: str, args: Sequence[str]) -> str:
    """`<this python> -m <module> <args>`, quoted for a POSIX shell; the
    interpreter relative to the working directory when it lies below it."""
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, "-m", module, *args])


def end_line(summary: dict, resume_command: str) -> str:
    """One line for a run that returned: finished (frames, the final evaluation,
    where the outputs are, how to evaluate) or stopped by a signal (the frame, the
    checkpoint, how to resume)."""
    frame, logdir = summary["step"], summary["logdir"]
    if summary["ended"] == "stopped":
        checkpoint = os.path.basename(summary["checkpoint"])  # in <logdir>/checkpoints
        return (
            f"Stopped by signal at env frame {frame:,}; checkpoint saved ({checkpoint}). "
            f"Resume with the same command: {resume_command}"
        )
    evaluation = summary.get("eval_return")
    parts = [f"Finished {frame:,} env frames"]
    if evaluation is not None:
        parts.append(f"final eval return {evaluation:.4g}")
    outputs = f"outputs in {logdir}"
    if summary.get("saved_model"):
        outputs += f" (policy in {os.path.relpath(summary['saved_model'], logdir)}/)"
    parts.append(outputs)
    evaluate = python_command("launch.evaluate", [f"--logdir={logdir}"])
    return "; ".join(parts) + f". Evaluate: {evaluate}"
