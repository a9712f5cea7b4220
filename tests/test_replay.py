"""Replay: durable episode files, capacity, restart, corrupt files, chunk streams."""

import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tempo  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tempo import replay as replay_lib
from tempo.episode_store import _NAME_RE as NAME_RE
from tempo.replay import Replay, ReplayWriteError


def make_episode(length: int, epid: int, terminal: bool = True) -> dict:
    """An episode whose every step says which episode it is and where it sits.

    ``obs`` is (episode id, step counter); reward and image repeat that, so a test
    can check any sampled step against the stored episode.
    """
    t = np.arange(length)
    action = np.stack([np.full(length, epid, np.float32), t.astype(np.float32)], -1)
    action[0] = 0.0
    return {
        "image": np.broadcast_to(
            ((epid * 7 + t) % 256).astype(np.uint8)[:, None, None, None], (length, 4, 4, 1)
        ).copy(),
        "obs": np.stack([np.full(length, epid), t], -1).astype(np.float32),
        "action": action,
        "reward": (epid * 1000 + t).astype(np.float32),
        "is_first": t == 0,
        "is_last": t == length - 1,
        "is_terminal": (t == length - 1) & terminal,
    }


def episode_steps(episode: dict) -> list[dict]:
    length = len(episode["reward"])
    return [{key: value[i] for key, value in episode.items()} for i in range(length)]


def check_stream(stream: dict, episodes: dict, cap: int, min_length: int) -> list[tuple]:
    """Assert a (concatenated) stream is made of contiguous episode segments.

    Returns the segments as (episode id, start, length). Every step must equal the
    stored step (except is_first, set on each segment's first step); between
    is_first markers the counter rises by one and the episode id stays fixed.
    """
    ids = stream["obs"][:, 0].astype(int)
    counter = stream["obs"][:, 1].astype(int)
    assert stream["is_first"][0], "a stream starts with a segment start"
    segments = []
    for pos in range(len(ids)):
        episode = episodes[ids[pos]]
        t = counter[pos]
        assert 0 <= t < len(episode["reward"])
        for key, value in stream.items():
            if key != "is_first":
                np.testing.assert_array_equal(value[pos], episode[key][t], err_msg=key)
        if stream["is_first"][pos]:
            segments.append([ids[pos], t, 1])
        else:
            assert ids[pos] == ids[pos - 1], f"episode changed without is_first at {pos}"
            assert t == counter[pos - 1] + 1, f"counter jumped at {pos}"
            assert not episode["is_first"][t]
            segments[-1][2] += 1
    # The last segment may be cut by the end of the stream; the others are complete.
    for epid, _, seg_len in segments[:-1]:
        total = len(episodes[epid]["reward"])
        assert min(min_length, total, cap) <= seg_len <= min(total, cap)
    return [tuple(s) for s in segments]


def concat_rows(chunks: list[dict], row: int) -> dict:
    return {key: np.concatenate([c[key][row] for c in chunks]) for key in chunks[0]}


def npz_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npz"))


# --------------------------------------------------------------------------- disk


def test_round_trip_through_disk(tmp_path):
    episode = make_episode(7, epid=3)
    replay = Replay(tmp_path / "new" / "dir", capacity=100)
    path = replay.add_episode(episode)
    assert path.parent == tmp_path / "new" / "dir"
    match = NAME_RE.match(path.name)
    assert match and int(match.group(4)) == 7 and len(match.group(3)) == 32
    with np.load(path) as data:
        assert sorted(data.files) == sorted(episode)
        for key, value in episode.items():
            assert data[key].dtype == value.dtype, key
            np.testing.assert_array_equal(data[key], value)
    (loaded,) = Replay(tmp_path / "new" / "dir", capacity=100).episodes()
    for key, value in episode.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_names_sort_in_time_order_and_no_temp_files(tmp_path):
    replay = Replay(tmp_path, capacity=1000)
    paths = [replay.add_episode(make_episode(2 + i % 3, epid=i)) for i in range(20)]
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    assert len({p.name for p in paths}) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


@pytest.mark.parametrize("failure", ["savez", "replace"])
def test_failing_writer_keeps_earlier_files(tmp_path, monkeypatch, failure):
    replay = Replay(tmp_path, capacity=100)
    first = make_episode(5, epid=1)
    first_path = replay.add_episode(first)
    before = first_path.read_bytes()

    if failure == "savez":

        def broken(file, **arrays):
            file.write(b"PK\x03\x04 half an archive")
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(np, "savez_compressed", broken)
    else:

        def broken(src, dst):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(replay_lib.os, "replace", broken)

    with pytest.raises(ReplayWriteError, match="could not write replay episode") as info:
        replay.add_episode(make_episode(4, epid=2))
    assert isinstance(info.value, OSError)
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == [first_path.name], "no temp file left"
    assert first_path.read_bytes() == before
    assert (replay.num_episodes, replay.num_steps) == (1, 5)
    assert (replay.total_episodes, replay.total_steps) == (1, 5)
    replay.add_episode(make_episode(4, epid=3))  # the replay still works afterwards
    assert replay.num_episodes == 2


def test_eviction_keeps_newest_within_capacity(tmp_path):
    replay = Replay(tmp_path, capacity=10)
    for epid, length in enumerate([4, 4, 4]):
        replay.add_episode(make_episode(length, epid))
    assert [int(e["obs"][0, 0]) for e in replay.episodes()] == [1, 2]
    assert (replay.num_episodes, replay.num_steps) == (2, 8)
    replay.add_episode(make_episode(3, epid=3))
    assert [int(e["obs"][0, 0]) for e in replay.episodes()] == [2, 3]
    assert (replay.num_steps, replay.total_steps, replay.total_episodes) == (7, 15, 4)
    assert len(npz_files(tmp_path)) == 4, "disk keeps every episode"
    sampled = {int(i) for i in replay.sample(8, 20)["obs"][..., 0].ravel()}
    assert sampled <= {2, 3}
    # An episode longer than the whole capacity is still kept, alone.
    replay.add_episode(make_episode(25, epid=4))
    assert [int(e["obs"][0, 0]) for e in replay.episodes()] == [4]
    assert replay.num_steps == 25


def test_restart_reloads_episodes_and_counts(tmp_path):
    replay = Replay(tmp_path, capacity=12)
    for epid, length in enumerate([5, 1, 6, 3, 2]):
        replay.add_episode(make_episode(length, epid))
    restarted = Replay(tmp_path, capacity=12)
    for attr in ("num_episodes", "num_steps", "total_episodes", "total_steps"):
        assert getattr(restarted, attr) == getattr(replay, attr), attr
    assert (restarted.total_episodes, restarted.total_steps) == (5, 17)
    assert len(restarted.episodes()) == len(replay.episodes()) == 4  # 1 + 6 + 3 + 2
    for old, new in zip(replay.episodes(), restarted.episodes(), strict=True):
        for key in old:
            np.testing.assert_array_equal(old[key], new[key])
    # New episodes sort after the reloaded ones and the counts keep growing.
    path = restarted.add_episode(make_episode(2, epid=9))
    assert npz_files(tmp_path)[-1] == path
    assert (restarted.total_episodes, restarted.total_steps) == (6, 19)
    # A smaller capacity loads fewer episodes but still counts everything on disk.
    small = Replay(tmp_path, capacity=4)
    assert [int(e["obs"][0, 0]) for e in small.episodes()] == [4, 9]
    assert (small.total_episodes, small.total_steps) == (6, 19)


def test_corrupt_files_are_moved_aside(tmp_path, caplog):
    replay = Replay(tmp_path, capacity=100)
    good = [replay.add_episode(make_episode(3, epid)) for epid in range(2)]
    stamp = "20991231T235959000000"
    bad = {
        "empty": tmp_path / f"{stamp}-{'a' * 32}-3.npz",
        "garbage": tmp_path / f"{stamp}-{'b' * 32}-3.npz",
        "missing": tmp_path / f"{stamp}-{'c' * 32}-3.npz",
        "ragged": tmp_path / f"{stamp}-{'d' * 32}-3.npz",
        "wrong_length": tmp_path / f"{stamp}-{'e' * 32}-9.npz",
        "truncated": tmp_path / f"{stamp}-{'f' * 32}-3.npz",
    }
    bad["empty"].write_bytes(b"")
    bad["garbage"].write_bytes(b"this is not a zip file at all" * 10)
    episode = make_episode(3, epid=5)
    np.savez_compressed(bad["missing"], **{k: v for k, v in episode.items() if k != "reward"})
    np.savez_compressed(bad["ragged"], **{**episode, "reward": np.zeros(2, np.float32)})
    np.savez_compressed(bad["wrong_length"], **episode)
    np.savez_compressed(bad["truncated"], **episode)
    data = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(bad["garbage"])

    with caplog.at_level(logging.WARNING, logger="tempo.replay"):
        reloaded = Replay(tmp_path, capacity=100)

    assert (reloaded.num_episodes, reloaded.total_episodes, reloaded.total_steps) == (2, 2, 6)
    assert npz_files(tmp_path) == good
    moved = sorted(p.name for p in (tmp_path / "corrupt").iterdir())
    assert moved == sorted(p.name for p in bad.values()), "moved aside, never deleted"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for path in bad.values():
        assert any(path.name in m and "corrupt" in m for m in messages), path.name
    assert any("empty file" in m for m in messages)
    assert any("'reward'" in m for m in messages)
    assert any("inconsistent lengths" in m for m in messages)
    assert any("name says 9" in m for m in messages)
    # A second restart finds nothing left to complain about.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tempo.replay"):
        assert Replay(tmp_path, capacity=100).num_episodes == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_add_episode_rejects_malformed_episodes(tmp_path):
    replay = Replay(tmp_path, capacity=100)
    episode = make_episode(4, epid=0)
    with pytest.raises(ValueError, match="required keys"):
        replay.add_episode({k: v for k, v in episode.items() if k != "is_last"})
    with pytest.raises(ValueError, match="inconsistent lengths"):
        replay.add_episode({**episode, "reward": episode["reward"][:3]})
    with pytest.raises(ValueError, match="empty"):
        replay.add_episode({k: v[:0] for k, v in episode.items()})
    replay.add_episode(episode)
    with pytest.raises(ValueError, match="does not match"):
        replay.add_episode({**episode, "image": episode["image"].astype(np.float32)})
    assert npz_files(tmp_path) and len(npz_files(tmp_path)) == 1
    with pytest.raises(ValueError, match="capacity"):
        Replay(tmp_path, capacity=0)


def test_add_step_per_worker(tmp_path, caplog):
    replay = Replay(tmp_path, capacity=100)
    a, b = make_episode(4, epid=1), make_episode(6, epid=2)
    steps_a, steps_b = episode_steps(a), episode_steps(b)
    # Interleave two workers; a third one starts, then restarts without finishing.
    for i in range(6):
        if i < 4:
            replay.add_step(steps_a[i], worker=0)
        replay.add_step(steps_b[i], worker=1)
        if i == 1:
            assert replay.num_episodes == 0
    with caplog.at_level(logging.WARNING, logger="tempo.replay"):
        for step in episode_steps(make_episode(5, epid=3))[:2]:
            replay.add_step(step, worker=2)
        for step in episode_steps(make_episode(2, epid=4)):
            replay.add_step(step, worker=2)
    assert any("dropping its 2 unfinished steps" in r.getMessage() for r in caplog.records)
    stored = replay.episodes()
    assert [int(e["obs"][0, 0]) for e in stored] == [1, 2, 4]
    for got, want in zip(stored, [a, b, make_episode(2, epid=4)], strict=True):
        for key in want:
            assert got[key].dtype == want[key].dtype
            np.testing.assert_array_equal(got[key], want[key])
    assert replay.total_steps == 12


# --------------------------------------------------------------------------- sampling


def test_sample_shapes_and_dtypes(tmp_path):
    replay = Replay(tmp_path, capacity=100, length=6)
    with pytest.raises(ValueError, match="empty"):
        replay.sample(2)
    episode = make_episode(9, epid=0)
    replay.add_episode(episode)
    chunk = replay.sample(3)
    assert sorted(chunk) == sorted(episode)
    for key, value in episode.items():
        assert chunk[key].shape == (3, 6, *value.shape[1:]), key
        assert chunk[key].dtype == value.dtype, key
    assert replay.sample(2, length=11)["image"].shape == (2, 11, 4, 4, 1)


def test_chunks_are_contiguous_and_streams_continue(tmp_path):
    replay = Replay(tmp_path, capacity=1000, length=8, seed=3)
    episodes = {epid: make_episode(length, epid) for epid, length in enumerate([30, 5, 17, 2])}
    for episode in episodes.values():
        replay.add_episode(episode)
    chunks = [replay.sample(4) for _ in range(12)]
    continued = 0
    for row in range(4):
        for chunk in chunks:  # each chunk on its own
            single = {key: value[row] for key, value in chunk.items()}
            if not single["is_first"][0]:
                continued += 1
                single = {**single, "is_first": single["is_first"].copy()}
                single["is_first"][0] = True  # a continued chunk starts mid-segment
            check_stream(single, episodes, cap=8, min_length=1)
        check_stream(concat_rows(chunks, row), episodes, cap=8, min_length=1)
    assert continued > 0, "some segments must straddle chunk boundaries"


def test_sampling_is_reproducible(tmp_path):
    a = Replay(tmp_path / "a", capacity=100, seed=7)
    b = Replay(tmp_path / "b", capacity=100, seed=7)
    c = Replay(tmp_path / "c", capacity=100, seed=8)
    for replay in (a, b, c):
        for epid, length in enumerate([10, 20, 7]):
            replay.add_episode(make_episode(length, epid))
    sa, sb, sc = (r.sample(4, 9)["obs"] for r in (a, b, c))
    np.testing.assert_array_equal(sa, sb)
    assert not np.array_equal(sa, sc)


def test_chunks_longer_than_any_episode(tmp_path):
    replay = Replay(tmp_path, capacity=100, length=10)
    episodes = {0: make_episode(1, 0), 1: make_episode(3, 1)}
    for episode in episodes.values():
        replay.add_episode(episode)
    chunks = [replay.sample(5) for _ in range(4)]
    for row in range(5):
        segments = check_stream(concat_rows(chunks, row), episodes, cap=10, min_length=1)
        assert len(segments) >= 4  # 40 steps from segments of at most 3
        assert all(seg_len <= 3 for _, _, seg_len in segments)
    assert chunks[0]["is_first"].sum(axis=1).min() >= 4


def test_min_length_gives_full_segments(tmp_path):
    replay = Replay(tmp_path, capacity=1000, length=10, min_length=10)
    episodes = {0: make_episode(40, 0), 1: make_episode(4, 1)}
    for episode in episodes.values():
        replay.add_episode(episode)
    stream = concat_rows([replay.sample(2) for _ in range(20)], 0)
    segments = check_stream(stream, episodes, cap=10, min_length=10)
    assert {seg_len for epid, _, seg_len in segments[:-1]} <= {10, 4}
    assert all(seg_len == (10 if epid == 0 else 4) for epid, _, seg_len in segments[:-1])


def test_prioritize_ends_favours_final_steps(tmp_path):
    def final_step_rate(prioritize: bool) -> float:
        replay = Replay(
            tmp_path / str(prioritize),
            capacity=1000,
            length=10,
            min_length=10,
            prioritize_ends=prioritize,
            seed=0,
        )
        for epid in range(3):
            replay.add_episode(make_episode(100, epid))
        chunks = replay.sample(200, 10)
        # Segments are exactly the chunk (length 10), so each chunk is one segment.
        assert chunks["is_first"][:, 0].all() and chunks["is_first"].sum() == 200
        return float(chunks["is_last"].any(axis=1).mean())

    uniform, prioritized = final_step_rate(False), final_step_rate(True)
    # Uniform starts hit the last step with p = 1/91; prioritized with p = 11/101.
    assert uniform < 0.04
    assert prioritized > 0.06
    assert prioritized > 3 * uniform


def test_dataset_structure_dtypes_and_continuity(tmp_path):
    import tensorflow as tf

    replay = Replay(tmp_path, capacity=1000, length=6, seed=1)
    with pytest.raises(ValueError, match="empty"):
        replay.dataset(batch=2)
    episodes = {epid: make_episode(length, epid) for epid, length in enumerate([9, 3, 14])}
    for episode in episodes.values():
        replay.add_episode(episode)
    dataset = replay.dataset(batch=3, prefetch=2)
    assert isinstance(dataset, tf.data.Dataset)
    spec = dataset.element_spec
    assert sorted(spec) == sorted(episodes[0])
    for key, value in episodes[0].items():
        assert spec[key].shape == (3, 6, *value.shape[1:])
        assert spec[key].dtype == tf.as_dtype(value.dtype)
    batches = [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(5)]
    for batch in batches:
        for key, value in episodes[0].items():
            assert batch[key].shape == (3, 6, *value.shape[1:])
            assert batch[key].dtype == value.dtype
    for row in range(3):
        check_stream(concat_rows(batches, row), episodes, cap=6, min_length=1)
    longer = next(iter(replay.dataset(batch=2, length=20)))
    assert longer["reward"].shape == (2, 20) and longer["is_first"].dtype == tf.bool


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lengths=st.lists(st.integers(1, 25), min_size=1, max_size=5),
    chunk=st.integers(1, 30),
    min_length=st.integers(1, 30),
    prioritize=st.booleans(),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_property_streams_are_valid(lengths, chunk, min_length, prioritize, batch, seed):
    with tempfile.TemporaryDirectory() as directory:
        replay = Replay(
            directory,
            capacity=sum(lengths),
            length=chunk,
            min_length=min_length,
            prioritize_ends=prioritize,
            seed=seed,
        )
        episodes = {epid: make_episode(length, epid) for epid, length in enumerate(lengths)}
        for episode in episodes.values():
            replay.add_episode(episode)
        assert (replay.num_episodes, replay.num_steps) == (len(lengths), sum(lengths))
        chunks = [replay.sample(batch) for _ in range(3)]
        for chunk_batch in chunks:
            assert chunk_batch["obs"].shape == (batch, chunk, 2)
            assert chunk_batch["is_first"].dtype == np.bool_
        for row in range(batch):
            check_stream(concat_rows(chunks, row), episodes, cap=chunk, min_length=min_length)


def test_dataset_follows_episodes_added_while_iterating(tmp_path):
    replay = Replay(tmp_path, capacity=30, length=5, seed=2)
    episodes = {0: make_episode(10, 0)}
    replay.add_episode(episodes[0])
    iterator = iter(replay.dataset(batch=2, prefetch=1))
    seen = set()
    batches = []
    for epid in range(1, 12):  # capacity 30 forces evictions while the generator runs
        episodes[epid] = make_episode(10, epid)
        replay.add_episode(episodes[epid])
        batch = {k: v.numpy() for k, v in next(iterator).items()}
        batches.append(batch)
        seen |= {int(i) for i in batch["obs"][..., 0].ravel()}
    for row in range(2):
        check_stream(concat_rows(batches, row), episodes, cap=5, min_length=1)
    assert max(seen) >= 6, "new episodes reach the running dataset"


def test_a_dropped_dataset_iterator_is_freed_at_once(tmp_path):
    """The pipeline runs without tf.data's autotuning. Its model thread sleeps
    for up to a minute between rounds, and freeing an iterator waits for that
    thread while holding the interpreter lock: a process that ran `train` (a
    notebook, a test, a sweep) stalled for 5-40 s whenever the garbage collector
    freed an old run's iterator. Our prefetch buffer has a fixed size, so
    autotuning had nothing to tune."""
    import gc
    import time

    replay = Replay(tmp_path, capacity=100, length=4, seed=3)
    replay.add_episode(make_episode(12, 0))
    dataset = replay.dataset(batch=2, prefetch=2)
    assert dataset.options().autotune.enabled is False
    iterator = iter(dataset)
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # long enough for autotuning's rounds to spread
        next(iterator)
        time.sleep(0.01)
    started = time.monotonic()
    del iterator
    gc.collect()
    assert time.monotonic() - started < 1.0


def test_reload_skips_older_episodes_of_another_spec_and_keeps_their_files(tmp_path, caplog):
    """A replay directory holding episodes of two observation specs (a task or
    wrapper changed between runs): the newest spec wins, older episodes of the
    other spec are skipped with a message naming each file, and nothing is
    deleted."""
    old = Replay(tmp_path, capacity=100)
    old_paths = [old.add_episode(make_episode(4, epid)) for epid in (1, 2)]
    elsewhere = Replay(tmp_path / "new", capacity=100)
    for epid in (3, 4):
        episode = make_episode(5, epid)
        episode["obs"] = np.concatenate([episode["obs"], episode["obs"]], -1)  # 4 features
        path = elsewhere.add_episode(episode)
        path.rename(tmp_path / path.name)
    with caplog.at_level("WARNING"):
        reloaded = Replay(tmp_path, capacity=100)
    assert [int(e["obs"][0, 0]) for e in reloaded.episodes()] == [3, 4]
    assert reloaded.spec["obs"][0] == (4,)
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 2 and all("differ from newer episodes" in m for m in skipped)
    for path in old_paths:
        assert any(str(path) in m for m in skipped) and path.exists()


def test_train_passes_prioritize_ends_to_its_replay(monkeypatch, tmp_path):
    from support import tiny_trainer

    import tempo.run

    seen = {}

    class Stop(Exception):
        pass

    def fake_replay(directory, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(tempo.run, "Replay", fake_replay)
    for flag in (True, False):
        with pytest.raises(Stop):
            tempo.run.train(
                str(tmp_path / str(flag)),
                task="gym_CartPole-v1",
                prioritize_ends=flag,
                trainer_fn=tiny_trainer,
            )
        assert seen["prioritize_ends"] is flag
