"""Errors that launchers report as one line (the user's input was wrong)."""


class ConfigError(ValueError):
    """A bad task name, setting or gin binding; the message names it and the fix."""


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had non-finite losses or gradients."""
