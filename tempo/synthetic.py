"""Random replay-like batches: what benchmarks and tests feed the trainer.

An update's cost does not depend on the data's values, and its correctness
tests need data that exercises every key and flag.
"""

from __future__ import annotations

import numpy as np


def random_batch(
    shapes: dict[str, tuple[int, ...]],
    action_size: int,
    discrete: bool,
    batch: int = 2,
    length: int = 5,
    seed: int = 0,
    terminal_at: int | None = None,
) -> dict[str, np.ndarray]:
    """A replay-like batch of random data: uint8 images, float vectors, one-hot or
    [-1, 1] actions, is_first at t=0 (and after `terminal_at`)."""
    rng = np.random.default_rng(seed)
    data = {}
    for key, shape in shapes.items():
        if len(shape) == 3:
            data[key] = rng.integers(0, 256, (batch, length, *shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(batch, length, *shape)).astype(np.float32)
    if discrete:
        data["action"] = np.eye(action_size, dtype=np.float32)[
            rng.integers(0, action_size, (batch, length))
        ]
    else:
        data["action"] = rng.uniform(-1, 1, (batch, length, action_size)).astype(np.float32)
    data["reward"] = rng.normal(size=(batch, length)).astype(np.float32)
    data["is_first"] = np.zeros((batch, length), bool)
    data["is_first"][:, 0] = True
    data["is_last"] = np.zeros((batch, length), bool)
    data["is_terminal"] = np.zeros((batch, length), bool)
    if terminal_at is not None:
        data["is_last"][:, terminal_at] = True
        data["is_terminal"][:, terminal_at] = True
        if terminal_at + 1 < length:
            data["is_first"][:, terminal_at + 1] = True
    return data
