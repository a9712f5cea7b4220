"""Fixed-length training chunks from stored episodes, DreamerV2 style.

Each batch row is an endless *stream*: random segments of random episodes laid
end to end, the first step of every segment marked ``is_first``. A segment that
does not fit into the current chunk continues in the next chunk of the same
stream, so consecutive chunks of one row are contiguous and a trainer may carry
its recurrent state from one batch to the next (``is_first`` tells it where to
reset).

Numpy only at import time: `ChunkSampler.sample` works without TensorFlow, which
is imported lazily by `ChunkSampler.dataset`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from tempo.episode_store import Episode, EpisodeStore, Spec


def check_positive_ints(**values: Any) -> None:
    """Raise ValueError naming the first value that is not a positive integer."""
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _Stream:
    """One batch row: random episode segments laid end to end, carried across chunks."""

    def __init__(self, sampler: ChunkSampler, rng: np.random.Generator, length: int) -> None:
        self._sampler = sampler
        self._rng = rng
        self._length = length  # chunk length, also the cap on segment length
        self._episode: Episode | None = None
        self._next = 0  # next index into the episode to emit
        self._end = 0  # one past the last index of the current segment

    def fill(self, out: dict[str, np.ndarray], row: int) -> None:
        """Write the next ``length`` steps of this stream into ``out[key][row]``."""
        pos = 0
        while pos < self._length:
            if self._episode is None or self._next >= self._end:
                self._episode, self._next, self._end = self._sampler.sample_segment(
                    self._rng, self._length
                )
                starts_segment = True
            else:
                starts_segment = False
            count = min(self._length - pos, self._end - self._next)
            for key, array in out.items():
                array[row, pos : pos + count] = self._episode[key][self._next : self._next + count]
            if starts_segment:
                out["is_first"][row, pos] = True
            pos += count
            self._next += count


class ChunkSampler:
    """Chunk streams over the in-memory episodes of an `EpisodeStore`.

    Args:
      store: the episodes to sample; those added later are sampled too.
      length: default chunk length of `sample` and `dataset`; also caps segments.
      prioritize_ends: bias segment starts toward episode ends (DreamerV2), so that
        terminal steps are seen more often.
      min_length: shortest random segment; set it to `length` to always use
        segments as long as possible (DreamerV2's ``minlen == maxlen`` setting).
      seed: seeds the sampling generators, for reproducible chunks.
    """

    def __init__(
        self,
        store: EpisodeStore,
        length: int = 50,
        prioritize_ends: bool = False,
        min_length: int = 1,
        seed: int = 0,
    ) -> None:
        check_positive_ints(length=length, min_length=min_length)
        self.store = store
        self.length = int(length)
        self.prioritize_ends = bool(prioritize_ends)
        self.min_length = int(min_length)
        self.seed = int(seed)
        self._lock = threading.Lock()
        self._rng = np.random.default_rng([self.seed, 0])
        self._sample_streams: dict[int, list[_Stream]] = {}
        self._num_generators = 0

    def sample_segment(self, rng: np.random.Generator, cap: int) -> tuple[Episode, int, int]:
        """A uniformly chosen episode and a random ``[start, end)`` segment of it.

        The segment length is uniform in ``[min_length, min(episode length, cap)]``
        (shorter episodes give their whole length). With `prioritize_ends` the
        start draw's upper bound is extended by `cap` and clipped to the last
        valid start, which piles extra mass onto segments ending at the last step.
        """
        episode, total = self.store.random_episode(rng)
        longest = min(total, cap)
        shortest = min(self.min_length, longest)
        seg_len = int(rng.integers(shortest, longest + 1))
        last_start = total - seg_len
        upper = last_start + 1
        if self.prioritize_ends:
            upper += cap
        start = min(int(rng.integers(upper)), last_start)
        return episode, start, start + seg_len

    def sample(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """Next chunks of `batch` persistent streams, as numpy arrays ``[batch, length, ...]``.

        Row b of one call continues row b of the previous call with the same
        `length`, like `dataset`; handy for tests and TF-free tools.
        """
        length = self.length if length is None else int(length)
        check_positive_ints(batch=batch, length=length)
        out = self._empty_batch(batch, length)
        streams = self._sample_streams.setdefault(length, [])
        while len(streams) < batch:
            streams.append(_Stream(self, self._rng, length))
        for row in range(batch):
            streams[row].fill(out, row)
        return out

    def dataset(self, batch: int, length: int | None = None, prefetch: int = 4) -> Any:
        """A `tf.data.Dataset` of chunk batches ``{key: [batch, length, ...]}``, prefetched.

        Row b of each batch continues row b of the previous one, so the trainer
        can carry its recurrent state. Shapes and dtypes come from the stored
        episodes, so the store must not be empty when this is called.
        """
        length = self.length if length is None else int(length)
        check_positive_ints(batch=batch, length=length)
        spec = self._require_spec()

        import tensorflow as tf  # lazy: the rest of this module works without TF

        signature = {
            key: tf.TensorSpec((batch, length, *shape), tf.as_dtype(dtype))
            for key, (shape, dtype) in spec.items()
        }
        dataset = tf.data.Dataset.from_generator(
            lambda: self._generate(batch, length), output_signature=signature
        )
        # No autotuning (the buffer's size is fixed): its model thread sleeps up
        # to a minute between rounds, and freeing an iterator waits for it while
        # holding the interpreter lock, which stalled whole processes.
        options = tf.data.Options()
        options.autotune.enabled = False
        return dataset.prefetch(prefetch).with_options(options)

    def _generate(self, batch: int, length: int) -> Iterator[dict[str, np.ndarray]]:
        """Endless batches from fresh streams with their own seeded generator."""
        with self._lock:
            self._num_generators += 1
            rng = np.random.default_rng([self.seed, 1, self._num_generators])
        streams = [_Stream(self, rng, length) for _ in range(batch)]
        while True:
            out = self._empty_batch(batch, length)
            for row, stream in enumerate(streams):
                stream.fill(out, row)
            yield out

    def _empty_batch(self, batch: int, length: int) -> dict[str, np.ndarray]:
        spec = self._require_spec()
        return {
            key: np.zeros((batch, length, *shape), dtype) for key, (shape, dtype) in spec.items()
        }

    def _require_spec(self) -> Spec:
        spec = self.store.spec
        if spec is None or self.store.num_episodes == 0:
            raise ValueError(
                f"replay in {self.store.directory} is empty: add or load episodes before sampling"
            )
        return spec
