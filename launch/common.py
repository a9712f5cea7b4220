"""Shared launcher set-up."""

from __future__ import annotations


def quiet_logs() -> None:
    """Warnings and errors only: dm_control and TensorFlow log a lot at INFO."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
