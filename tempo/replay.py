"""Episode replay: durable episodes on disk, fixed-length chunks for training.

`Replay` is the one object a training run holds: an `EpisodeStore` (episode
files, the newest episodes in memory, counters; `tempo.episode_store`) and a
`ChunkSampler` over it (persistent chunk streams, the tf.data pipeline;
`tempo.chunk_sampler`), behind a single constructor.

Numpy only at import time: ``Replay.sample`` works without TensorFlow, which is
imported lazily by ``Replay.dataset``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tempo.chunk_sampler import ChunkSampler, check_positive_ints
from tempo.episode_store import (
    REQUIRED_KEYS,
    CorruptEpisodeError,
    Episode,
    EpisodeStore,
    ReplayWriteError,
    Spec,
    episode_files_in_order,
)

__all__ = [
    "REQUIRED_KEYS",
    "CorruptEpisodeError",
    "Episode",
    "Replay",
    "ReplayWriteError",
    "Spec",
    "episode_files_in_order",
]


class _Forwarded:
    """An attribute of `Replay` that lives on one of its parts (read and written there),
    so that changing, say, ``replay.prioritize_ends`` still changes the sampling."""

    def __init__(self, part: str) -> None:
        self._part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, replay: Replay | None, owner: type | None = None) -> Any:
        if replay is None:
            return self
        return getattr(getattr(replay, self._part), self._name)

    def __set__(self, replay: Replay, value: Any) -> None:
        setattr(getattr(replay, self._part), self._name, value)


class Replay:
    """Episodes on disk plus the newest ones in memory, sampled as chunk streams.

    Args:
      directory: where episode files live; created if missing, reloaded if present.
      capacity: steps kept in memory (newest episodes whose lengths fit; the newest
        episode is always kept, even when it alone exceeds the capacity).
      length: default chunk length of `sample` and `dataset`; also caps segments.
      prioritize_ends: bias segment starts toward episode ends (DreamerV2), so that
        terminal steps are seen more often.
      min_length: shortest random segment; set it to `length` to always use
        segments as long as possible (DreamerV2's ``minlen == maxlen`` setting).
      seed: seeds the sampling generators, for reproducible chunks.
    """

    # The constructor's settings, as attributes, kept on the part that uses them.
    directory = _Forwarded("_store")
    capacity = _Forwarded("_store")
    length = _Forwarded("_sampler")
    prioritize_ends = _Forwarded("_sampler")
    min_length = _Forwarded("_sampler")
    seed = _Forwarded("_sampler")

    def __init__(
        self,
        directory: str | os.PathLike,
        capacity: int,
        length: int = 50,
        prioritize_ends: bool = False,
        min_length: int = 1,
        seed: int = 0,
    ) -> None:
        # All arguments are checked before the directory is touched.
        check_positive_ints(capacity=capacity, length=length, min_length=min_length)
        self._store = EpisodeStore(directory, capacity)
        self._sampler = ChunkSampler(self._store, length, prioritize_ends, min_length, seed)

    # ------------------------------------------------------------------ storage

    @property
    def num_episodes(self) -> int:
        """Episodes currently in memory (what sampling draws from)."""
        return self._store.num_episodes

    @property
    def num_steps(self) -> int:
        """Steps currently in memory."""
        return self._store.num_steps

    @property
    def total_episodes(self) -> int:
        """Episodes ever stored in this directory, including ones loaded or evicted."""
        return self._store.total_episodes

    @property
    def total_steps(self) -> int:
        """Steps ever stored in this directory, including ones loaded or evicted."""
        return self._store.total_steps

    @property
    def spec(self) -> Spec | None:
        """Per-step ``{key: (shape, dtype)}`` shared by the stored episodes, or None."""
        return self._store.spec

    def episodes(self) -> list[Episode]:
        """The in-memory episodes, oldest first (the arrays are shared: do not modify)."""
        return self._store.episodes()

    def add_step(self, step: Mapping[str, Any], worker: int = 0) -> None:
        """Append one environment step of `worker`; a step with ``is_last`` saves its episode.

        Steps are buffered per worker so that several environments can feed one
        replay with their steps interleaved.
        """
        self._store.add_step(step, worker)

    def discard_unfinished(self) -> int:
        """Forget the unfinished episodes of every worker (e.g. the one a prefill
        stops inside); returns how many buffered steps were dropped."""
        return self._store.discard_unfinished()

    def add_episode(self, episode: Mapping[str, Any]) -> Path:
        """Save a whole episode to disk, then add it to memory; returns the file path.

        The file is written before memory changes, so a failed write (raised as
        `ReplayWriteError`) leaves the replay exactly as it was.
        """
        return self._store.add_episode(episode)

    def __repr__(self) -> str:
        return (
            f"Replay({str(self.directory)!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}/{self.capacity}, total_steps={self.total_steps})"
        )

    # ------------------------------------------------------------------ sampling

    def sample(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """Next chunks of `batch` persistent streams, as numpy arrays ``[batch, length, ...]``.

        Row b of one call continues row b of the previous call with the same
        `length`, like `dataset`; handy for tests and TF-free tools.
        """
        return self._sampler.sample(batch, length)

    def dataset(self, batch: int, length: int | None = None, prefetch: int = 4) -> Any:
        """A `tf.data.Dataset` of chunk batches ``{key: [batch, length, ...]}``, prefetched.

        Row b of each batch continues row b of the previous one, so the trainer
        can carry its recurrent state. Shapes and dtypes come from the stored
        episodes, so the replay must not be empty when this is called.
        """
        return self._sampler.dataset(batch, length, prefetch)

    def _sample_segment(self, rng: np.random.Generator, cap: int) -> tuple[Episode, int, int]:
        """One random segment, as every stream draws them (`ChunkSampler.sample_segment`);
        the release-comparison tests enumerate its distribution."""
        return self._sampler.sample_segment(rng, cap)
