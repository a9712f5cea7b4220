"""The benchmark configurations at their reference sizes (docs/design.md, section 3).

Timing and gradient-variance tools build the trainer of one suite without an
environment: its gin files, plus the observation shapes and action space that
the suite's tasks would give it.
"""

from __future__ import annotations

import os

#: name: (gin files, observation shapes, action size, discrete actions)
CONFIGS = {
    "debug": (["dmc_vision", "debug"], {"image": (64, 64, 3)}, 6, False),
    "dmc_proprio": (
        ["dmc_proprio"],
        {"orientations": (14,), "velocity": (9,)},  # walker, as the release's model sees it
        6,
        False,
    ),
    "cpu": (["dmc_proprio", "cpu"], {"position": (3,), "velocity": (2,)}, 1, False),
    "dmc_vision": (["dmc_vision"], {"image": (64, 64, 3)}, 6, False),
    "cpu_vision": (["dmc_vision", "cpu_vision"], {"image": (64, 64, 3)}, 1, False),
    "atari": (["atari"], {"image": (64, 64, 1)}, 6, True),
}

#: The repository checkout, which holds gin_configs/.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gin_files(names: list[str]) -> list[str]:
    """Paths of the repository's gin_configs/<name>.gin files."""
    return [os.path.join(REPOSITORY, "gin_configs", f"{name}.gin") for name in names]


def parse_benchmark_config(
    name: str, gin_params: list[str]
) -> tuple[dict[str, tuple[int, ...]], int, bool]:
    """Parses config `name`'s gin files and `gin_params`; returns what
    `configurables.build_trainer` needs besides them: observation shapes,
    action size and whether actions are discrete."""
    from tempo import configurables

    files, shapes, action_size, discrete = CONFIGS[name]
    configurables.parse_config(gin_files(files), gin_params)
    return shapes, action_size, discrete
