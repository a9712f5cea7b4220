#!/usr/bin/env python
"""Writes tests/reference/golden_replay.json from the RELEASED replay sampler.

Run by hand, never by the test suite; tempo's own environment is enough (the
release's ``common/replay.py`` needs only numpy and TensorFlow):

    TF_USE_LEGACY_KERAS=1 TEMPO_REF_SRC=/work/ref/src \
        .venv/bin/python tests/reference/make_replay_golden.py          # ~1-2 minutes

It imports the release's ``common/replay.py`` by file path (not its package, whose
``__init__`` pulls in the agent's dependencies) and, for every case of chunk
length ``L`` in (50, 32) and ``prioritize_ends`` in (False, True), builds the
release's ``Replay`` as its train.py does (``capacity=2e6, ongoing=False,
minlen=L, maxlen=L``; configs.yaml uses L = 50, tempo's cpu.gin uses 32), in a
fresh temporary directory, adds the fixed `EPISODE_ENTRIES` episodes with the
release's own ``add_episode`` (its minlen filter and file writing included) and
records:

- ``kept`` / ``skipped``: which episodes the release holds, and what it printed
  for the ones it dropped ("Skipping short episode of length N.": it compares
  ``eplen`` = entries - 1, the agent steps, with ``minlen``);
- ``counts``: ``[episode, start, count]`` of `NUM_DRAWS` calls of
  ``_sample_sequence()`` (``replay._random`` and the global ``np.random`` seeded);
  every sequence is checked here to be one contiguous run of one episode, ``L``
  entries long, ``is_first`` set on its first entry only;
- ``exact``: ``[episode, start, length, numerator, denominator]``, the exact
  distribution of ``_sample_sequence()``, found by running it once for every
  outcome of every random draw it makes (``_random.choice``, ``_random.randint``
  and the global ``np.random.randint`` are replaced by an enumerator for this
  part only; the release's code itself is not modified);
- ``chunks``: 16 consecutive chunks of the release's ``_generate_chunks(L)``
  (episode, index and ``is_first`` of every entry), and ``dataset_batch``: one
  batch of the release's ``dataset(16, L)``, the object its train loop reads.

The output is deterministic: rerunning it gives the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import sys
import tempfile
from fractions import Fraction

import numpy as np
from draw_tree import DrawTree

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(os.environ.get("TEMPO_REF_SRC", "/work/ref/src"))
OUT = HERE / "golden_replay.json"

#: Entries per episode (len(action) = agent steps + 1: the first entry is the reset
#: observation). Episode i is EPISODE_ENTRIES[i] entries long; the last one is
#: shorter than every chunk length, and the first is exactly 50 entries (49 steps).
EPISODE_ENTRIES = (50, 51, 64, 90, 137, 20)
LENGTHS = (50, 32)
NUM_DRAWS = 200_000
NUM_CHUNKS = 16
SEED = 20240611


def make_episode(epid: int, entries: int) -> dict[str, np.ndarray]:
    """An episode whose ``obs`` entry t is (episode id, t), as the release stores it."""
    t = np.arange(entries)
    action = np.stack([np.full(entries, epid, np.float32), t.astype(np.float32)], -1)
    action[0] = 0.0  # the reset entry has no action
    return {
        "obs": np.stack([np.full(entries, epid), t], -1).astype(np.int32),
        "action": action,
        "reward": np.where(t == 0, 0.0, epid + t / 1000).astype(np.float32),
        "is_first": t == 0,
        "is_last": t == entries - 1,
        "is_terminal": t == entries - 1,
    }


def load_release_replay():
    path = SRC / "common" / "replay.py"
    if not path.exists():
        sys.exit(f"no released replay at {path}: set TEMPO_REF_SRC to the release's src")
    if not hasattr(np, "bool"):  # the release uses np.bool (removed in numpy 1.24, back in 2.0)
        np.bool = bool
    spec = importlib.util.spec_from_file_location("released_replay", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_sequence(seq: dict, length: int) -> tuple[int, int]:
    """(episode, start) of a released sequence, after checking it is one clean run."""
    obs = np.asarray(seq["obs"])
    assert len(seq["action"]) == length == len(obs), (len(seq["action"]), length)
    assert (obs[:, 0] == obs[0, 0]).all(), "a sequence mixes episodes"
    assert (np.diff(obs[:, 1]) == 1).all(), "a sequence is not contiguous"
    is_first = np.asarray(seq["is_first"])
    assert is_first[0] and not is_first[1:].any(), is_first
    return int(obs[0, 0]), int(obs[0, 1])


def exact_distribution(module, replay, length: int) -> list[list[int]]:
    enumerator = DrawTree()
    saved_random, saved_randint = replay._random, np.random.randint
    replay._random = enumerator
    np.random.randint = enumerator.randint  # the release draws its length jitter here
    try:
        table: dict[tuple[int, int, int], Fraction] = {}
        for seq, probability in enumerator.runs(lambda _: replay._sample_sequence()):
            episode, start = check_sequence(seq, length)
            key = (episode, start, len(seq["action"]))
            table[key] = table.get(key, Fraction(0)) + probability
    finally:
        replay._random, np.random.randint = saved_random, saved_randint
    assert sum(table.values()) == 1
    return [[*key, p.numerator, p.denominator] for key, p in sorted(table.items())]


def chunk_record(chunk: dict) -> dict:
    obs = np.asarray(chunk["obs"])
    return {
        "episode": obs[..., 0].tolist(),
        "index": obs[..., 1].tolist(),
        "is_first": np.asarray(chunk["is_first"]).astype(int).tolist(),
    }


def run_case(module, length: int, prioritize_ends: bool) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        # As train.py builds its train replay from configs.yaml.
        replay = module.Replay(
            pathlib.Path(directory) / "train_episodes",
            capacity=int(2e6),
            ongoing=False,
            minlen=length,
            maxlen=length,
            prioritize_ends=prioritize_ends,
        )
        kept, skipped = [], {}
        for epid, entries in enumerate(EPISODE_ENTRIES):
            before = len(replay._complete_eps)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                replay.add_episode(make_episode(epid, entries))
            if len(replay._complete_eps) > before:
                kept.append(epid)
            else:
                skipped[str(epid)] = printed.getvalue().strip()
        files = sorted(p.name for p in replay._directory.glob("*.npz"))
        assert len(files) == len(kept), files
        assert [int(ep["obs"][0, 0]) for ep in replay._complete_eps.values()] == kept

        replay._random = np.random.RandomState(SEED + length + prioritize_ends)
        np.random.seed(SEED + 1 + length + prioritize_ends)
        counts: dict[tuple[int, int], int] = {}
        for _ in range(NUM_DRAWS):
            key = check_sequence(replay._sample_sequence(), length)
            counts[key] = counts.get(key, 0) + 1

        chunks = []
        generator = replay._generate_chunks(length)
        for _ in range(NUM_CHUNKS):
            chunks.append(chunk_record(next(generator)))

        import tensorflow as tf

        try:
            batch = next(iter(replay.dataset(batch=16, length=length)))
            dataset_batch = chunk_record({k: v.numpy() for k, v in batch.items()})
        except Exception as error:  # noqa: BLE001 (recorded, not hidden)
            dataset_batch = {"error": f"{type(error).__name__}: {error}"}
        del tf

        exact = exact_distribution(module, replay, length)
    return {
        "length": length,
        "prioritize_ends": prioritize_ends,
        "kept": kept,
        "skipped": skipped,
        "num_draws": NUM_DRAWS,
        "counts": [[ep, start, n] for (ep, start), n in sorted(counts.items())],
        "exact": exact,
        "chunks": chunks,
        "dataset_batch": dataset_batch,
    }


def main() -> None:
    module = load_release_replay()
    cases = {}
    for length in LENGTHS:
        for prioritize_ends in (False, True):
            name = f"L{length}_{'prio' if prioritize_ends else 'uniform'}"
            print(f"{name}: sampling {NUM_DRAWS} sequences from the release ...", flush=True)
            cases[name] = run_case(module, length, prioritize_ends)
            print(
                f"  kept {cases[name]['kept']}, skipped {cases[name]['skipped']}, "
                f"{len(cases[name]['counts'])} (episode, start) pairs seen, "
                f"{len(cases[name]['exact'])} possible"
            )
    golden = {
        "source": "the release's common/replay.py (github deng-ai-lab/TEMPO at ea83919)",
        "source_sha256": hashlib.sha256((SRC / "common" / "replay.py").read_bytes()).hexdigest(),
        "generator": "tests/reference/make_replay_golden.py",
        "episode_entries": list(EPISODE_ENTRIES),
        "seed": SEED,
        "cases": cases,
    }
    text = json.dumps(golden, separators=(",", ":"))
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({len(text) / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
