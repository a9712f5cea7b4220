"""Shared launcher set-up."""

from __future__ import annotations

# The benchmark configurations at their reference sizes (DESIGN.md section 3):
CONFIGS = {
    # name: (gin files, observation shapes, action size, discrete actions)
    "debug": (["dmc_vision", "debug"], {"image": (64, 64, 3)}, 6, False),
    "dmc_proprio": (
        ["dmc_proprio"],
        {"orientations": (14,), "velocity": (9,)},  # walker, as the release's model sees it
        6,
        False,
    ),
    "cpu": (["dmc_proprio", "cpu"], {"position": (3,), "velocity": (2,)}, 1, False),
    "dmc_vision": (["dmc_vision"], {"image": (64, 64, 3)}, 6, False),
    "atari": (["atari"], {"image": (64, 64, 1)}, 6, True),
}


def quiet_logs() -> None:
    """Warnings and errors only: dm_control and TensorFlow log a lot at INFO."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
