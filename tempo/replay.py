"""Episode replay: durable episodes on disk, fixed-length chunks for training.

Episodes are the unit of storage: each finished episode is written once, as a
compressed ``.npz`` file, so a killed run loses at most the episodes still in
progress and a restarted run reloads its replay from the directory. Memory holds
the newest episodes within a capacity in steps; disk keeps everything.

Training reads fixed-length chunks, DreamerV2 style. Each batch row is an
endless *stream*: random segments of random episodes laid end to end, the first
step of every segment marked ``is_first``. A segment that does not fit into the
current chunk continues in the next chunk of the same stream, so consecutive
chunks of one row are contiguous and a trainer may carry its recurrent state
from one batch to the next (``is_first`` tells it where to reset).

Numpy only at import time: ``Replay.sample`` works without TensorFlow, which is
imported lazily by ``Replay.dataset``.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Episode = dict[str, np.ndarray]

#: Keys every stored episode must have (observation keys come on top of these).
REQUIRED_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")

# 20261124T010203123456-<uuid hex>-<length>.npz; the microseconds are optional so
# that DreamerV2-style names (whole seconds) load too.
_NAME_RE = re.compile(r"^(\d{8}T\d{6})(\d{6})?-([0-9a-fA-F]+)-(\d+)\.npz$")
_STAMP_FORMAT = "%Y%m%dT%H%M%S%f"
_CORRUPT_DIR = "corrupt"


class ReplayWriteError(OSError):
    """An episode could not be written to disk; earlier episode files are untouched."""


class CorruptEpisodeError(ValueError):
    """An episode file cannot be read back as a valid episode."""


def _parse_name(name: str) -> tuple[datetime.datetime, int] | None:
    """Timestamp and length encoded in an episode file name, or None if not ours."""
    match = _NAME_RE.match(name)
    if not match:
        return None
    seconds, micros, _, length = match.groups()
    stamp = datetime.datetime.strptime(seconds + (micros or "000000"), _STAMP_FORMAT)
    return stamp, int(length)


def episode_files_in_order(directory: str | os.PathLike) -> list[tuple[Path, int]]:
    """(path, length) of every episode file in a replay directory, oldest first
    (file names order by time); files not named as episodes are left out."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    named = sorted(
        (path.name, path, parsed[1])
        for path in directory.glob("*.npz")
        if (parsed := _parse_name(path.name)) is not None
    )
    return [(path, length) for _, path, length in named]


def _episode_length(episode: Mapping[str, np.ndarray]) -> int:
    """The common leading length of all arrays; raises ValueError when they disagree."""
    lengths = {key: (value.shape[0] if value.ndim else None) for key, value in episode.items()}
    if any(length is None for length in lengths.values()):
        scalars = sorted(key for key, length in lengths.items() if length is None)
        raise ValueError(f"episode arrays need a leading time axis; scalars: {scalars}")
    distinct = set(lengths.values())
    if len(distinct) != 1:
        raise ValueError(f"episode arrays have inconsistent lengths: {lengths}")
    (length,) = distinct
    if length < 1:
        raise ValueError("episode is empty (length 0)")
    return int(length)


def _validate_episode(episode: Mapping[str, Any]) -> tuple[Episode, int]:
    """Numpy copy of an episode and its length; raises ValueError when malformed."""
    if not isinstance(episode, Mapping):
        raise ValueError(f"an episode is a dict of arrays, got {type(episode).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in episode]
    if missing:
        raise ValueError(f"episode misses required keys {missing}; has {sorted(episode)}")
    arrays = {str(key): np.asarray(value) for key, value in episode.items()}
    for key, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"episode key {key!r} has object dtype; store plain arrays")
    return arrays, _episode_length(arrays)


Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


def _spec_of(episode: Episode) -> Spec:
    """Per-step shape and dtype of every key: what all episodes of one replay share."""
    return {key: (value.shape[1:], value.dtype) for key, value in sorted(episode.items())}


class _Stream:
    """One batch row: random episode segments laid end to end, carried across chunks."""

    def __init__(self, replay: Replay, rng: np.random.Generator, length: int) -> None:
        self._replay = replay
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
                self._episode, self._next, self._end = self._replay._sample_segment(
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

    def __init__(
        self,
        directory: str | os.PathLike,
        capacity: int,
        length: int = 50,
        prioritize_ends: bool = False,
        min_length: int = 1,
        seed: int = 0,
    ) -> None:
        for name, value in (("capacity", capacity), ("length", length), ("min_length", min_length)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)
        self.length = int(length)
        self.prioritize_ends = bool(prioritize_ends)
        self.min_length = int(min_length)
        self.seed = int(seed)

        self._lock = threading.Lock()
        # In-memory episodes oldest first; entries before _head are evicted (None).
        self._episodes: list[Episode | None] = []
        self._lengths: list[int] = []
        self._head = 0
        self._num_steps = 0
        self._spec: Spec | None = None
        self._total_steps = 0
        self._total_episodes = 0
        self._last_stamp: datetime.datetime | None = None
        self._ongoing: dict[int, list[dict[str, np.ndarray]]] = {}
        self._rng = np.random.default_rng([self.seed, 0])
        self._sample_streams: dict[int, list[_Stream]] = {}
        self._num_generators = 0
        self._load()

    # ------------------------------------------------------------------ counters

    @property
    def num_episodes(self) -> int:
        """Episodes currently in memory (what sampling draws from)."""
        return len(self._episodes) - self._head

    @property
    def num_steps(self) -> int:
        """Steps currently in memory."""
        return self._num_steps

    @property
    def total_episodes(self) -> int:
        """Episodes ever stored in this directory, including ones loaded or evicted."""
        return self._total_episodes

    @property
    def total_steps(self) -> int:
        """Steps ever stored in this directory, including ones loaded or evicted."""
        return self._total_steps

    @property
    def spec(self) -> Spec | None:
        """Per-step ``{key: (shape, dtype)}`` shared by the stored episodes, or None."""
        return None if self._spec is None else dict(self._spec)

    def episodes(self) -> list[Episode]:
        """The in-memory episodes, oldest first (the arrays are shared: do not modify)."""
        with self._lock:
            return [episode for episode in self._episodes[self._head :] if episode is not None]

    def __repr__(self) -> str:
        return (
            f"Replay({str(self.directory)!r}, episodes={self.num_episodes}, "
            f"steps={self.num_steps}/{self.capacity}, total_steps={self.total_steps})"
        )

    # ------------------------------------------------------------------ adding

    def add_step(self, step: Mapping[str, Any], worker: int = 0) -> None:
        """Append one environment step of `worker`; a step with ``is_last`` saves its episode.

        Steps are buffered per worker so that several environments can feed one
        replay with their steps interleaved.
        """
        # Copy: environments may reuse their observation buffers for the next step.
        step = {str(key): np.array(value, copy=True) for key, value in step.items()}
        buffer = self._ongoing.setdefault(worker, [])
        if buffer and bool(step.get("is_first", False)):
            logger.warning(
                "Replay: worker %s started a new episode before finishing the last one; "
                "dropping its %d unfinished steps.",
                worker,
                len(buffer),
            )
            buffer.clear()
        buffer.append(step)
        if bool(step.get("is_last", False)):
            steps = self._ongoing.pop(worker)
            keys = set(steps[0])
            for other in steps[1:]:
                if set(other) != keys:
                    raise ValueError(
                        f"worker {worker}: steps of one episode have different keys: "
                        f"{sorted(keys)} vs {sorted(other)}"
                    )
            self.add_episode({key: np.stack([s[key] for s in steps]) for key in steps[0]})

    def discard_unfinished(self) -> int:
        """Forget the unfinished episodes of every worker (e.g. the one a prefill
        stops inside); returns how many buffered steps were dropped."""
        dropped = sum(len(steps) for steps in self._ongoing.values())
        self._ongoing.clear()
        return dropped

    def add_episode(self, episode: Mapping[str, Any]) -> Path:
        """Save a whole episode to disk, then add it to memory; returns the file path.

        The file is written before memory changes, so a failed write (raised as
        `ReplayWriteError`) leaves the replay exactly as it was.
        """
        arrays, length = _validate_episode(episode)
        spec = _spec_of(arrays)
        if self._spec is not None and spec != self._spec:
            raise ValueError(
                f"episode does not match the replay's stored episodes:\n  got {spec}\n"
                f"  stored {self._spec}"
            )
        path = self.directory / self._new_name(length)
        self._write(path, arrays)
        with self._lock:
            self._spec = spec
            self._append(arrays, length)
            self._evict()
            self._total_episodes += 1
            self._total_steps += length
        return path

    def _new_name(self, length: int) -> str:
        """A file name whose lexical order is time order, even if the clock steps back."""
        stamp = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        with self._lock:
            if self._last_stamp is not None and stamp <= self._last_stamp:
                stamp = self._last_stamp + datetime.timedelta(microseconds=1)
            self._last_stamp = stamp
        return f"{stamp.strftime(_STAMP_FORMAT)}-{uuid.uuid4().hex}-{length}.npz"

    def _write(self, path: Path, episode: Episode) -> None:
        """Write atomically: temp file in the same directory, fsync, then rename."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as file:
                np.savez_compressed(file, **episode)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except Exception as error:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise ReplayWriteError(
                f"could not write replay episode {path}: {error}; episodes saved earlier are intact"
            ) from error
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        """Make the rename itself durable (best effort: not every platform allows it)."""
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _append(self, episode: Episode, length: int) -> None:
        self._episodes.append(episode)
        self._lengths.append(length)
        self._num_steps += length

    def _evict(self) -> None:
        """Drop the oldest episodes from memory until the rest fit the capacity."""
        while self._num_steps > self.capacity and self.num_episodes > 1:
            self._num_steps -= self._lengths[self._head]
            self._episodes[self._head] = None
            self._head += 1
        if self._head > 1024 and 2 * self._head > len(self._episodes):
            del self._episodes[: self._head]
            del self._lengths[: self._head]
            self._head = 0

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        """Reload episodes, newest first until the capacity is full; count the rest by name."""
        named = []
        for path in self.directory.glob("*.npz"):
            if not path.is_file():
                continue
            parsed = _parse_name(path.name)
            if parsed is None:
                logger.warning("Replay: ignoring %s: not an episode file name", path)
                continue
            named.append((path.name, path, parsed))
        named.sort(reverse=True)
        if named:
            self._last_stamp = named[0][2][0]

        loaded: list[tuple[Episode, int]] = []  # newest first
        steps = 0
        full = False
        for _, path, (_, name_length) in named:
            if full:
                # Beyond the capacity: counted from the name, not read (disk may hold far
                # more than memory).
                self._total_episodes += 1
                self._total_steps += name_length
                continue
            if loaded and steps + name_length > self.capacity:
                full = True
                self._total_episodes += 1
                self._total_steps += name_length
                continue
            try:
                episode, length = self._read(path, name_length)
            except CorruptEpisodeError as error:
                self._quarantine(path, error)
                continue
            spec = _spec_of(episode)
            if self._spec is None:
                self._spec = spec
            elif spec != self._spec:
                logger.warning(
                    "Replay: skipping %s: its keys, shapes or dtypes differ from newer "
                    "episodes (%s vs %s)",
                    path,
                    spec,
                    self._spec,
                )
                continue
            loaded.append((episode, length))
            steps += length
            self._total_episodes += 1
            self._total_steps += length
        for episode, length in reversed(loaded):
            self._append(episode, length)
        if loaded:
            logger.info(
                "Replay: loaded %d episodes (%d steps) from %s",
                len(loaded),
                steps,
                self.directory,
            )

    @staticmethod
    def _read(path: Path, name_length: int) -> tuple[Episode, int]:
        """Read and check one episode file; any defect becomes CorruptEpisodeError."""
        if path.stat().st_size == 0:
            raise CorruptEpisodeError("empty file")
        try:
            with np.load(path, allow_pickle=False) as data:
                episode = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            raise CorruptEpisodeError(f"unreadable: {error}") from error
        except Exception as error:  # zlib.error and friends: still a bad file
            raise CorruptEpisodeError(f"unreadable: {type(error).__name__}: {error}") from error
        try:
            episode, length = _validate_episode(episode)
        except ValueError as error:
            raise CorruptEpisodeError(str(error)) from error
        if length != name_length:
            raise CorruptEpisodeError(f"holds {length} steps but its name says {name_length}")
        return episode, length

    def _quarantine(self, path: Path, error: Exception) -> None:
        """Move a bad file into ``corrupt/`` (never delete data) and say so."""
        target_dir = self.directory / _CORRUPT_DIR
        target = target_dir / path.name
        try:
            target_dir.mkdir(exist_ok=True)
            suffix = 1
            while target.exists():
                target = target_dir / f"{path.name}.{suffix}"
                suffix += 1
            os.replace(path, target)
        except OSError as move_error:
            logger.warning(
                "Replay: skipping corrupt episode file %s (%s); could not move it aside: %s",
                path,
                error,
                move_error,
            )
            return
        logger.warning(
            "Replay: skipping corrupt episode file %s (%s); moved to %s", path, error, target
        )

    # ------------------------------------------------------------------ sampling

    def _sample_segment(self, rng: np.random.Generator, cap: int) -> tuple[Episode, int, int]:
        """A uniformly chosen episode and a random ``[start, end)`` segment of it.

        The segment length is uniform in ``[min_length, min(episode length, cap)]``
        (shorter episodes give their whole length). With `prioritize_ends` the
        start draw's upper bound is extended by `cap` and clipped to the last
        valid start, which piles extra mass onto segments ending at the last step.
        """
        with self._lock:
            count = len(self._episodes) - self._head
            if count == 0:
                raise ValueError(f"replay in {self.directory} is empty: add episodes first")
            index = self._head + int(rng.integers(count))
            episode, total = self._episodes[index], self._lengths[index]
        longest = min(total, cap)
        shortest = min(self.min_length, longest)
        seg_len = int(rng.integers(shortest, longest + 1))
        last_start = total - seg_len
        upper = last_start + 1
        if self.prioritize_ends:
            upper += cap
        start = min(int(rng.integers(upper)), last_start)
        assert episode is not None
        return episode, start, start + seg_len

    def _empty_batch(self, batch: int, length: int) -> dict[str, np.ndarray]:
        spec = self._require_spec()
        return {
            key: np.zeros((batch, length, *shape), dtype) for key, (shape, dtype) in spec.items()
        }

    def _require_spec(self) -> Spec:
        if self._spec is None or self.num_episodes == 0:
            raise ValueError(
                f"replay in {self.directory} is empty: add or load episodes before sampling"
            )
        return self._spec

    @staticmethod
    def _check_shape(batch: int, length: int) -> None:
        for name, value in (("batch", batch), ("length", length)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def sample(self, batch: int, length: int | None = None) -> dict[str, np.ndarray]:
        """Next chunks of `batch` persistent streams, as numpy arrays ``[batch, length, ...]``.

        Row b of one call continues row b of the previous call with the same
        `length`, like `dataset`; handy for tests and TF-free tools.
        """
        length = self.length if length is None else int(length)
        self._check_shape(batch, length)
        out = self._empty_batch(batch, length)
        streams = self._sample_streams.setdefault(length, [])
        while len(streams) < batch:
            streams.append(_Stream(self, self._rng, length))
        for row in range(batch):
            streams[row].fill(out, row)
        return out

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

    def dataset(self, batch: int, length: int | None = None, prefetch: int = 4) -> Any:
        """A `tf.data.Dataset` of chunk batches ``{key: [batch, length, ...]}``, prefetched.

        Row b of each batch continues row b of the previous one, so the trainer
        can carry its recurrent state. Shapes and dtypes come from the stored
        episodes, so the replay must not be empty when this is called.
        """
        length = self.length if length is None else int(length)
        self._check_shape(batch, length)
        spec = self._require_spec()

        import tensorflow as tf  # lazy: the rest of this module works without TF

        signature = {
            key: tf.TensorSpec((batch, length, *shape), tf.as_dtype(dtype))
            for key, (shape, dtype) in spec.items()
        }
        dataset = tf.data.Dataset.from_generator(
            lambda: self._generate(batch, length), output_signature=signature
        )
        return dataset.prefetch(prefetch)
