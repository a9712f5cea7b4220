"""The meta-weighter's choices in TensorBoard, as a training run logs them.

Every call analyses a fresh batch of replay windows (`weight_analysis`) drawn
with a generator of its own, so the update's stream and its random numbers are
untouched, and records on the run's `Logger`: a histogram of the weights, the
Spearman correlations of the weights with reward, value, KL, reconstruction and
position (`weights/spearman_*` scalars), a table of the k highest and k lowest
weighted steps, and for image inputs those steps' frames side by side.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tempo.agent.bilevel import BilevelTrainer
from tempo.weight_analysis import QUANTITIES, analyse_batch, correlations, extremes, sample_windows


class WeightSummaries:
    """Analyses `batch_size` windows of `length` steps per call and records them.

    `seed` seeds the window and posterior-sample draws (a stream of its own);
    `image_keys` are the observations shown as frames; `k` steps are shown at
    each end of the weight range."""

    def __init__(
        self,
        trainer: BilevelTrainer,
        batch_size: int,
        length: int,
        seed: int,
        image_keys: Sequence[str] = (),
        k: int = 4,
    ) -> None:
        self.batch_size, self.length, self.k = batch_size, length, k
        self.image_keys = tuple(image_keys)
        self.rng = np.random.default_rng([seed, 0x7E1647])
        self.initial = trainer.world_model.rssm.initial(batch_size)
        self._analyse = tf.function(functools.partial(analyse_batch, trainer), autograph=False)

    def analyse(
        self, episodes: Sequence[Mapping[str, np.ndarray]]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(table, batch): per-step `weight` and `QUANTITIES` [B, T] of a new batch
        of windows, and the batch itself."""
        data, positions = sample_windows(episodes, self.batch_size, self.length, self.rng)
        seed = tf.constant(self.rng.integers(0, 2**31 - 1, size=2), tf.int32)
        out = self._analyse(data, self.initial, seed)
        table = {key: out[key].numpy() for key in ("weight", *QUANTITIES) if key in out}
        table["position"] = positions
        return table, data

    def __call__(self, episodes: Sequence[Mapping[str, np.ndarray]], logger) -> dict[str, float]:
        """Analyses a batch and records it on `logger`; returns the correlations."""
        table, data = self.analyse(episodes)
        return record(logger, table, data, self.image_keys, self.k)


def record(
    logger,
    table: Mapping[str, np.ndarray],
    data: Mapping[str, np.ndarray],
    image_keys: Sequence[str] = (),
    k: int = 4,
) -> dict[str, float]:
    """Records one analysed batch on a `tempo.logging.Logger` under `weights/`."""
    rho = correlations(table)
    # An undefined correlation (a constant reward, early on) is left out, not NaN.
    defined = {f"spearman_{q}": value for q, value in rho.items() if np.isfinite(value)}
    logger.scalars(defined, prefix="weights")
    logger.histogram("weights/meta_weight", table["weight"])
    logger.text("weights/extremes", extremes_table(table, k))
    top, bottom = extremes(table["weight"], k)
    for key in image_keys:
        logger.image(f"weights/highest_lowest_{key}", extremes_strip(data[key], top, bottom))
    return rho


def extremes_table(table: Mapping[str, np.ndarray], k: int) -> str:
    """Markdown: the k highest then the k lowest weighted steps, one row each,
    with every quantity and the step's place (b, t) in the batch."""
    weights = np.asarray(table["weight"])
    top, bottom = extremes(weights, k)
    columns = [q for q in QUANTITIES if q in table]
    lines = [
        "| | weight | " + " | ".join(columns) + " | (b, t) |",
        "|---|---|" + "---|" * len(columns) + "---|",
    ]
    for name, indices in (("high", top), ("low", bottom)):
        for rank, flat in enumerate(indices, 1):
            where = np.unravel_index(flat, weights.shape)
            cells = [_cell(np.asarray(table[q]).ravel()[flat]) for q in columns]
            place = ", ".join(str(int(i)) for i in where)
            lines.append(
                f"| {name} {rank} | {_cell(weights.ravel()[flat])} | "
                + " | ".join(cells)
                + f" | ({place}) |"
            )
    return "\n".join(lines)


def extremes_strip(frames: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Frames [B, T, H, W, C] of the highest weighted steps side by side (top
    row, highest first) above those of the lowest (bottom row, lowest first)."""
    frames = np.asarray(frames)
    flat = frames.reshape(-1, *frames.shape[2:])
    row = lambda indices: np.concatenate(list(flat[indices]), axis=1)
    return np.concatenate([row(top), row(bottom)], axis=0)


def _cell(value) -> str:
    value = float(value)
    return f"{value:.0f}" if value.is_integer() and abs(value) < 1e6 else f"{value:.4g}"
