"""Errors that launchers report as one line (the user's input was wrong)."""


class ConfigError(ValueError):
    """A bad task name, setting or gin binding; the message names it and the fix."""


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, I/O error); the earlier
    checkpoints are untouched and the run can resume from the latest of them."""


class PeerLostError(RuntimeError):
    """Another worker of a multi-worker run died or became unreachable, so no
    collective step can complete; every worker must be restarted, and all
    resume from the newest checkpoint that each of them holds."""
