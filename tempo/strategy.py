"""Data-parallel strategies by name, for `build_trainer.strategy` in gin."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(
    name: str = "default", devices: tuple[str, ...] | None = None
) -> tf.distribute.Strategy | None:
    """'default': None (one device, the plain update); 'mirrored': all local GPUs
    (or `devices`); 'multi_worker': every worker's local GPUs, the cluster read
    by TensorFlow from the TF_CONFIG environment variable of each process."""
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(list(devices) if devices else None)
    if name == "multi_worker":
        if devices:
            raise ValueError("multi_worker uses every local GPU; devices cannot be chosen.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")
