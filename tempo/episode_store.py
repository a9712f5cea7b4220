"""Durable episode storage: every finished episode is one file, the newest ones in memory.

Each finished episode is written once, atomically, as a compressed ``.npz``
file, so a killed run loses at most the episodes still in progress and a
restarted run reloads its episodes from the directory. Memory holds the newest
episodes within a capacity in steps; disk keeps everything, and files that
cannot be read back are moved aside rather than deleted. Sampling them is
`tempo.chunk_sampler`'s job.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import threading
import uuid
import zipfile
from collections.abc import Mapping
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


class EpisodeStore:
    """Episode files in `directory` plus the newest episodes in memory, with counters.

    Args:
      directory: where episode files live; created if missing, reloaded if present.
      capacity: steps kept in memory (newest episodes whose lengths fit; the newest
        episode is always kept, even when it alone exceeds the capacity).
    """

    def __init__(self, directory: str | os.PathLike, capacity: int) -> None:
        if int(capacity) != capacity or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = int(capacity)

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

    def random_episode(self, rng: np.random.Generator) -> tuple[Episode, int]:
        """A uniformly chosen in-memory episode and its length (one draw from `rng`).

        Under the lock, so that samplers on other threads never see an episode
        half evicted.
        """
        with self._lock:
            count = len(self._episodes) - self._head
            if count == 0:
                raise ValueError(f"replay in {self.directory} is empty: add episodes first")
            index = self._head + int(rng.integers(count))
            episode, length = self._episodes[index], self._lengths[index]
        assert episode is not None
        return episode, length

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
