"""Replay sampling against the RELEASED replay (tests/reference/golden_replay.json).

The golden file comes from the release's own ``common/replay.py`` (run by hand:
``tests/reference/make_replay_golden.py``); these tests need only that file. For
chunk length L in (50, 32) and ``prioritize_ends`` off and on, with the release's
training settings (``minlen = maxlen = L``; ours: ``length = min_length = L``, as
``tempo.run.train`` builds its replay), it holds, per case, which episodes the
release keeps, 200,000 of its sampled (episode, start) pairs, the exact
distribution of its ``_sample_sequence()`` (enumerated over every outcome of its
random draws) and some of its chunks. Here we check that

- the release's distribution is the closed form written down in `release_closed_form`
  (exactly, and its sampled counts fit it);
- ours, enumerated the same way over every outcome of its generator's draws, is
  exactly the same distribution: the same episodes, starts and lengths with the
  same probabilities (no off-by-one, `prioritize_ends` honoured);
- ours, sampled for real through ``Replay.sample`` (the streams the trainer's
  dataset reads), gives the same (episode, start) table as the release's sampled
  one (chi-square test of homogeneity), fits the closed form, reaches no pair the
  release cannot and misses none it reaches, and lays out each chunk as the
  release does: one segment, ``is_first`` on its first entry only.

"Length" means entries in both programs (``len(action)``, the reset entry
included): a chunk of L holds L entries. The release's ``minlen`` filter, though,
compares *steps* (``eplen`` = entries - 1) with L, so it drops even an episode of
exactly L entries; see `test_short_episodes_are_kept_unlike_the_release`.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from reference.draw_tree import DrawTree

from tempo.replay import Replay

scipy_stats = pytest.importorskip("scipy.stats")

GOLDEN = json.loads((Path(__file__).parent / "reference" / "golden_replay.json").read_text())
ENTRIES = GOLDEN["episode_entries"]  # entries (agent steps + 1) of episode i
CASES = sorted(GOLDEN["cases"])
NUM_OURS = 20_000  # our sampled chunks per case (the release drew 200,000)
BATCH = 1_000
ALPHA = 1e-4  # a correct sampler fails one of these tests with chance < 1e-4 per test


def make_episode(epid: int, entries: int) -> dict[str, np.ndarray]:
    """As the generator's: ``obs`` entry t is (episode id, t)."""
    t = np.arange(entries)
    action = np.stack([np.full(entries, epid, np.float32), t.astype(np.float32)], -1)
    action[0] = 0.0
    return {
        "obs": np.stack([np.full(entries, epid), t], -1).astype(np.int32),
        "action": action,
        "reward": np.where(t == 0, 0.0, epid + t / 1000).astype(np.float32),
        "is_first": t == 0,
        "is_last": t == entries - 1,
        "is_terminal": t == entries - 1,
    }


def our_replay(directory: Path, length: int, prioritize_ends: bool, episodes, seed: int = 0):
    """Our replay as tempo.run.train builds it, holding `episodes` (ids into ENTRIES)."""
    replay = Replay(
        directory,
        capacity=2_000_000,
        length=length,
        min_length=length,
        prioritize_ends=prioritize_ends,
        seed=seed,
    )
    for epid in episodes:
        replay.add_episode(make_episode(epid, ENTRIES[epid]))
    return replay


def release_closed_form(episodes, length: int, prioritize_ends: bool) -> dict:
    """{(episode, start, length): probability} of the release's ``_sample_sequence``.

    With ``minlen = maxlen = L`` its sequence length is always L (the random
    shortening is undone by ``max(minlen, .)``); the episode is uniform over the
    kept ones; the start is ``min(randint(upper), total - L)`` with ``upper = total
    - L + 1``, plus ``minlen`` when prioritizing ends, which piles the clipped mass
    onto the last start.
    """
    table = {}
    for epid in episodes:
        total = ENTRIES[epid]
        last = total - length
        upper = last + 1 + (length if prioritize_ends else 0)
        for start in range(last + 1):
            mass = Fraction(1 if start < last else upper - last, upper)
            table[(epid, start, length)] = mass / len(episodes)
    return table


def golden_exact(case: dict) -> dict:
    return {(ep, s, n): Fraction(num, den) for ep, s, n, num, den in case["exact"]}


def golden_counts(case: dict) -> dict:
    return {(ep, s): n for ep, s, n in case["counts"]}


def our_exact(replay: Replay, cap: int) -> dict:
    """{(episode, start, length): probability} of our `Replay._sample_segment`."""
    table: dict = {}
    draws = DrawTree().runs(lambda rng: replay._sample_segment(rng, cap))
    for (episode, start, end), p in draws:
        key = (int(episode["obs"][0, 0]), start, end - start)
        table[key] = table.get(key, Fraction(0)) + p
    assert sum(table.values()) == 1
    return table


def check_single_segment_chunks(episode: np.ndarray, index: np.ndarray, is_first: np.ndarray):
    """Every row is one contiguous run of one episode with ``is_first`` on entry 0 only;
    returns the rows' (episode, start)."""
    assert is_first[:, 0].all() and not is_first[:, 1:].any()
    assert (episode == episode[:, :1]).all()
    assert (np.diff(index, axis=1) == 1).all()
    return episode[:, 0], index[:, 0]


@pytest.mark.parametrize("name", CASES)
def test_release_golden_is_the_closed_form(name):
    case = GOLDEN["cases"][name]
    length, prioritize = case["length"], case["prioritize_ends"]
    # The release keeps an episode when its steps (entries - 1) reach minlen.
    assert case["kept"] == [i for i, n in enumerate(ENTRIES) if n - 1 >= length]
    expected = release_closed_form(case["kept"], length, prioritize)
    assert golden_exact(case) == expected
    counts = golden_counts(case)
    assert set(counts) <= {(ep, s) for ep, s, _ in expected}
    keys = sorted(expected)
    observed = [counts.get(key[:2], 0) for key in keys]
    assert sum(observed) == case["num_draws"]
    fit = scipy_stats.chisquare(observed, [float(expected[k]) * sum(observed) for k in keys])
    assert fit.pvalue > ALPHA, f"{name}: the release's counts do not fit the closed form"


@pytest.mark.parametrize("name", CASES)
def test_exact_distribution_equals_the_release(name, tmp_path):
    case = GOLDEN["cases"][name]
    length, prioritize = case["length"], case["prioritize_ends"]
    replay = our_replay(tmp_path, length, prioritize, case["kept"])
    ours, release = our_exact(replay, length), golden_exact(case)
    assert set(ours) == set(release), (
        f"{name}: pairs only ours can sample {sorted(set(ours) - set(release))[:5]}, "
        f"only the release {sorted(set(release) - set(ours))[:5]}"
    )
    wrong = [(key, ours[key], release[key]) for key in sorted(ours) if ours[key] != release[key]]
    assert not wrong, f"{name}: (episode, start, length), ours, release: {wrong[:5]}"


@pytest.mark.parametrize("name", CASES)
def test_sampled_chunks_match_the_release(name, tmp_path):
    case = GOLDEN["cases"][name]
    length, prioritize = case["length"], case["prioritize_ends"]
    seed = CASES.index(name) + 1
    replay = our_replay(tmp_path, length, prioritize, case["kept"], seed=seed)

    # The release's own chunks (its generator and one batch of its dataset) are
    # single sequences with is_first on entry 0; so are ours, from `sample`.
    for record in case["chunks"] + [case["dataset_batch"]]:
        check_single_segment_chunks(
            *(np.asarray(record[k]).reshape(-1, length) for k in ("episode", "index", "is_first"))
        )
    ours: dict[tuple[int, int], int] = {}
    for _ in range(NUM_OURS // BATCH):
        chunk = replay.sample(BATCH, length)
        assert chunk["obs"].shape == (BATCH, length, 2)
        episodes, starts = check_single_segment_chunks(
            chunk["obs"][..., 0], chunk["obs"][..., 1], chunk["is_first"]
        )
        pairs, counts = np.unique(np.stack([episodes, starts], 1), axis=0, return_counts=True)
        for (ep, start), n in zip(pairs.tolist(), counts.tolist()):
            ours[(ep, start)] = ours.get((ep, start), 0) + n
    release = golden_counts(case)

    # Support: nothing one reaches that the other cannot, nothing possible unseen.
    possible = {(ep, s) for ep, s, _ in release_closed_form(case["kept"], length, prioritize)}
    assert set(ours) <= possible, f"{name}: ours sampled impossible {sorted(set(ours) - possible)}"
    assert set(ours) == set(release) == possible

    keys = sorted(possible)
    table = np.array([[ours[k] for k in keys], [release[k] for k in keys]])
    homogeneity = scipy_stats.chi2_contingency(table, correction=False)
    assert homogeneity.pvalue > ALPHA, (
        f"{name}: ours and the release sample different (episode, start) tables "
        f"(chi2 {homogeneity.statistic:.1f}, dof {homogeneity.dof}, p {homogeneity.pvalue:.2e})"
    )
    closed = release_closed_form(case["kept"], length, prioritize)
    expected = [float(closed[(*k, length)]) * NUM_OURS for k in keys]
    fit = scipy_stats.chisquare(table[0], expected)
    assert fit.pvalue > ALPHA, (
        f"{name}: ours does not fit the release's closed form (p {fit.pvalue:.2e})"
    )


@pytest.mark.parametrize("length", sorted({c["length"] for c in GOLDEN["cases"].values()}))
def test_short_episodes_are_kept_unlike_the_release(length, tmp_path):
    """Deliberate difference: episodes shorter than the chunk.

    The release's ``add_episode`` drops every episode with fewer than ``minlen``
    steps ("Skipping short episode of length N.", N = entries - 1): at L = 50 that
    is even the 50-entry episode, which would fill a chunk exactly. Ours keeps
    every episode. One of at least L entries still gives segments of exactly L
    entries, each one chunk; a shorter one is sampled whole (as uniformly as any
    other episode), and the stream lays several such segments end to end to fill a
    chunk, ``is_first`` on each segment's first entry, the last segment running on
    into the next chunk of the same row.
    """
    for prioritize in (False, True):
        case = GOLDEN["cases"][f"L{length}_{'prio' if prioritize else 'uniform'}"]
        dropped = [i for i in range(len(ENTRIES)) if i not in case["kept"]]
        assert dropped and all(ENTRIES[i] - 1 < length for i in dropped)
        for i in dropped:
            assert case["skipped"][str(i)] == f"Skipping short episode of length {ENTRIES[i] - 1}."

        everything = range(len(ENTRIES))
        replay = our_replay(tmp_path / f"all{prioritize}", length, prioritize, everything)
        assert replay.num_episodes == len(ENTRIES)
        exact = our_exact(replay, length)
        per_episode: dict[int, Fraction] = {}
        for (ep, start, seg_len), p in exact.items():
            per_episode[ep] = per_episode.get(ep, Fraction(0)) + p
            assert seg_len == min(ENTRIES[ep], length)
            if ENTRIES[ep] <= length:
                assert start == 0  # the whole episode
        assert per_episode == {ep: Fraction(1, len(ENTRIES)) for ep in everything}
        # On the episodes the release keeps, ours conditioned on them is the release's.
        kept_mass = sum(per_episode[ep] for ep in case["kept"])
        conditional = {k: p / kept_mass for k, p in exact.items() if k[0] in case["kept"]}
        assert conditional == golden_exact(case)

    # A replay of only a short episode: chunks made of several whole-episode segments.
    short = min(range(len(ENTRIES)), key=lambda i: ENTRIES[i])
    entries = ENTRIES[short]
    assert entries < length
    replay = our_replay(tmp_path / "short", length, True, [short])
    chunks = [replay.sample(3, length) for _ in range(4)]
    stream = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in ("obs", "is_first")}
    pos = np.arange(4 * length)
    for row in range(3):
        assert (stream["obs"][row, :, 0] == short).all()
        np.testing.assert_array_equal(stream["obs"][row, :, 1], pos % entries)
        np.testing.assert_array_equal(stream["is_first"][row], pos % entries == 0)
    assert chunks[0]["is_first"][:, 0].all()
    assert not chunks[1]["is_first"][:, 0].any()  # the segment carries over the boundary
