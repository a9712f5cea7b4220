"""tempo/weight_analysis.py and tempo/weight_summaries.py: the weights an analysis
reports are the update's, it changes nothing in the trainer, and its statistics
(ranks, correlations, windows, extremes) against hand and scipy computations."""

import functools
import math

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from support import random_batch, tiny_trainer

from tempo.agent.bilevel import BilevelTrainer
from tempo.logging import JSONLOutput, Logger, TensorBoardOutput, read_records
from tempo.networks.rssm import split_seed
from tempo.weight_analysis import (
    analyse_batch,
    analyse_episode,
    average_ranks,
    correlations,
    extremes,
    moving_statistics_kept,
    positions_since_first,
    sample_windows,
    spearman,
)
from tempo.weight_summaries import extremes_strip, record

VECTORS = {"vector": (3,), "other": (2,)}


# ----- pure statistics ---------------------------------------------------------------


def test_spearman_against_hand_values_and_scipy():
    # No ties: 1 - 6 sum(d^2) / (n (n^2 - 1)) with d = (-1, 1, -1, 1, 0).
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    # Ties averaged: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): rho = 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.integers(0, 5, 60).astype(float)  # many ties
        y = x * rng.choice([-1, 1]) + rng.integers(0, 4, 60)
        np.testing.assert_allclose(average_ranks(x), scipy.stats.rankdata(x))
        assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman([3, 3, 3], [1, 2, 3]))  # a constant is uncorrelated: undefined
    assert spearman([1, 2, np.nan, 3], [1, 2, 0, 3]) == pytest.approx(1.0)  # NaN pairs dropped
    table = {"weight": np.array([1.0, 2, 3, 4]), "reward": np.array([4.0, 3, 2, 1])}
    table["value"] = np.array([1.0, 3, 2, 4])
    assert correlations(table) == pytest.approx({"reward": -1.0, "value": 0.8})


def test_positions_windows_and_extremes():
    is_first = np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0]], bool)
    np.testing.assert_array_equal(
        positions_since_first(is_first), [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    )

    # Episode e's reward at step t is 1000 e + t: a window's rewards name their steps.
    def episode(e, length):
        first = np.arange(length) == 0
        return {
            "reward": 1000.0 * e + np.arange(length),
            "is_first": first,
            "obs": np.full((length, 2), e, np.float32),
        }

    episodes = [episode(0, 3), episode(1, 10), episode(2, 12)]
    data, positions = sample_windows(episodes, 50, 5, np.random.default_rng(1))
    assert data["reward"].shape == (50, 5) and data["obs"].shape == (50, 5, 2)
    np.testing.assert_array_equal(data["reward"] % 1000, positions)
    chosen = data["reward"][:, 0] // 1000
    assert set(chosen) == {1, 2}  # the episode shorter than a window is never chosen
    assert positions.min() >= 0 and positions.max() <= 11
    assert (positions[chosen == 1] <= 9).all()
    assert data["is_first"][:, 0].all() and not data["is_first"][:, 1:][positions[:, 1:] > 0].any()
    assert episodes[1]["is_first"].sum() == 1  # the stored episodes are not modified
    data, positions = sample_windows(episodes, 4, 20, np.random.default_rng(2))
    assert positions.shape == (4, 12) and (data["reward"][:, 0] == 2000).all()

    top, bottom = extremes(np.array([[0.9, 1.1], [1.1, 0.8]]), 2)
    np.testing.assert_array_equal(top, [1, 2])  # highest first, ties in index order
    np.testing.assert_array_equal(bottom, [3, 0])


def test_the_summaries_record_correlations_histogram_table_and_frames(tmp_path):
    weight = np.array([[1.0, 1.2, 0.8], [0.9, 1.1, 1.05]])
    table = {
        "weight": weight,
        "reward": 2 * weight,  # rho +1
        "value": -weight,  # rho -1
        "kl": np.ones_like(weight),  # constant: undefined, left out
        "recon": np.array([[3.0, 2, 1], [6, 5, 4]]),
        "position": np.array([[0, 1, 2], [7, 8, 9]]),
    }
    frames = np.zeros((2, 3, 2, 2, 1), np.uint8)
    frames[..., 0] = (10 * np.arange(6)).reshape(2, 3, 1, 1)  # frame of flat step i: 10 i
    logger = Logger(tmp_path, [JSONLOutput(tmp_path), TensorBoardOutput(tmp_path)])
    rho = record(logger, table, {"image": frames}, ["image"], k=2)
    logger.write(5)
    logger.close()
    (line,) = read_records(tmp_path / "metrics.jsonl")
    assert line["weights/spearman_reward"] == pytest.approx(1.0)
    assert line["weights/spearman_value"] == pytest.approx(-1.0)
    assert "weights/spearman_kl" not in line and math.isnan(rho["kl"])
    expected_recon = scipy.stats.spearmanr(weight.ravel(), table["recon"].ravel()).statistic
    assert line["weights/spearman_recon"] == pytest.approx(expected_recon)
    summaries = {}
    for path in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                summaries[value.tag] = tf.make_ndarray(value.tensor)
    counts = summaries["weights/meta_weight"][:, 2]  # histogram buckets: left, right, count
    assert counts.sum() == 6
    text = summaries["weights/extremes"].item().decode()
    rows = text.splitlines()
    assert rows[2].startswith("| high 1 | 1.2 | 2.4 | -1.2 | 1 | 2 | 1 | (0, 1) |")
    assert rows[-1].startswith("| low 2 | 0.9 |") and rows[-1].endswith("| (1, 0) |")
    strip = extremes_strip(frames, *extremes(weight, 2))
    # Top row: steps 1 (w 1.2) and 4 (w 1.1); bottom row: steps 2 (w 0.8) and 3 (w 0.9).
    np.testing.assert_array_equal(strip[::2, ::2, 0], [[10, 40], [20, 30]])


# ----- against the trainer ---------------------------------------------------------------


def snapshot(trainer):
    return [v.numpy().copy() for v in trainer.variables]


def assert_unchanged(trainer, before):
    after = snapshot(trainer)
    changed = [
        v.name for v, a, b in zip(trainer.variables, before, after) if not np.array_equal(a, b)
    ]
    assert not changed, changed


class Stop(Exception):
    """Ends an update once it has computed what a test needs."""


def test_the_analysis_changes_no_trainer_variable_and_reports_the_update_weights():
    trainer = tiny_trainer(VECTORS, discrete=True, seed=3).build()
    batch = random_batch(VECTORS, 3, True, batch=2, length=6, seed=1)
    state = trainer.initial_state(2)
    # The update draws its model seed from the trainer's generator: a copy draws it here.
    copy = tf.random.Generator.from_state(trainer.rng.state.numpy(), trainer.rng.algorithm)
    seed = split_seed(copy.make_seeds(1)[:, 0], 2)[0]

    before = snapshot(trainer)
    ours = analyse_batch(trainer, batch, state, seed)
    assert_unchanged(trainer, before)  # batch norms, generator, counters, optimizers
    weights = ours["weight"].numpy()
    assert weights.shape == (2, 6) and weights.std() > 0.01
    for key in ("reward", "value", "kl", "recon"):
        assert ours[key].shape == (2, 6), key
    np.testing.assert_array_equal(ours["reward"], batch["reward"])
    other = analyse_batch(trainer, batch, state, tf.constant([7, 8]))["weight"]
    assert not np.allclose(other, weights, atol=1e-3)  # the seed matters

    # The update's own weights (run eagerly, stopped once they are computed).
    seen = []

    def meta_weights(*args, **kwargs):
        seen.append(BilevelTrainer.meta_weights(trainer, *args, **kwargs))
        raise Stop

    trainer.meta_weights = meta_weights
    tf.config.run_functions_eagerly(True)
    try:
        with pytest.raises(Stop):
            trainer.train(batch, state)
    finally:
        tf.config.run_functions_eagerly(False)
        del trainer.meta_weights
    np.testing.assert_array_equal(seen[0], weights)
    # The update moved the meta-weighter's moving statistics: what the analysis undoes.
    with pytest.raises(AssertionError, match="meta_weighter"):
        assert_unchanged(trainer, before)


def test_moving_statistics_are_restored_in_a_compiled_function():
    module = tf.Module()
    module.norm = tf.keras.layers.BatchNormalization()
    x = tf.constant([[1.0, 5.0], [3.0, 9.0]])
    module.norm(x, training=False)  # builds
    stats = lambda: [module.norm.moving_mean.numpy(), module.norm.moving_variance.numpy()]
    before = stats()

    @tf.function
    def normalized(x, keep):
        if keep:
            with moving_statistics_kept(module):
                return module.norm(x, training=True)
        return module.norm(x, training=True)

    np.testing.assert_allclose(normalized(x, True), [[-1, -1], [1, 1]], atol=1e-2)  # batch stats
    for a, b in zip(stats(), before):
        np.testing.assert_array_equal(a, b)
    normalized(x, False)
    assert not np.array_equal(stats()[0], before[0])  # unguarded, training mode moves them


@pytest.fixture(scope="module")
def dreamer():
    """A DreamerV2 trainer (meta=False): its weighter untrained, its losses one pass."""
    return tiny_trainer(VECTORS, discrete=True, meta=False, seed=4).build()


def test_per_sample_kl_and_reconstruction_average_to_the_model_losses(dreamer):
    """DreamerV2's one pass samples with the update's seed, as the analysis's
    weight pass does: the per-sample terms average to the logged losses."""
    batch = random_batch(VECTORS, 3, True, batch=2, length=5, seed=2)
    state, seed = dreamer.initial_state(2), tf.constant([11, 12])
    ours = analyse_batch(dreamer, batch, state, seed)
    metrics = dreamer.losses(dreamer.world_model.preprocess(batch), state, seed)[2]["metrics"]
    recon_loss = float(metrics["vector_loss"]) + float(metrics["other_loss"])
    assert float(np.mean(ours["recon"])) == pytest.approx(-recon_loss, rel=1e-5)
    assert float(np.mean(ours["kl"])) == pytest.approx(float(metrics["kl"]), rel=1e-5)
    assert (ours["kl"].numpy() >= 0).all()


def test_moving_statistics_make_a_weight_independent_of_its_batch(dreamer):
    batch = random_batch(VECTORS, 3, True, batch=3, length=4, seed=3)
    first = {k: v[:1] for k, v in batch.items()}
    seed = tf.constant([1, 2])
    weights = {}
    for training in (True, False):
        full = analyse_batch(dreamer, batch, dreamer.initial_state(3), seed, training)
        alone = analyse_batch(dreamer, first, dreamer.initial_state(1), seed, training)
        weights[training] = (full["weight"].numpy()[0], alone["weight"].numpy()[0])
    np.testing.assert_allclose(*weights[False], rtol=1e-5)
    assert not np.allclose(*weights[True], atol=1e-3)  # batch statistics: the batch matters


def test_an_episode_is_analysed_causally_in_chunks_that_carry_the_state(dreamer):
    episode = {k: v[0] for k, v in random_batch(VECTORS, 3, True, batch=1, length=7).items()}
    analyse = functools.partial(analyse_batch, dreamer, training=False)
    initial = dreamer.world_model.rssm.initial(1)
    longer = analyse_episode(analyse, initial, episode, chunk=3, seed=9)
    shorter = analyse_episode(
        analyse, initial, {k: v[:5] for k, v in episode.items()}, chunk=3, seed=9
    )
    assert shorter["weight"].shape == (5,) and longer["weight"].shape == (7,)
    np.testing.assert_array_equal(shorter["position"], np.arange(5))
    for key in ("weight", "value", "kl", "recon"):  # padding changes no earlier step
        np.testing.assert_allclose(shorter[key], longer[key][:5], rtol=1e-5, err_msg=key)
    # Steps 3-5 continue from step 2's posterior, not from a fresh start.
    second = {k: v[None, 3:6] for k, v in episode.items()}
    fresh = analyse(second, initial, tf.constant([9, 1], tf.int32))
    assert not np.allclose(fresh["kl"][0], longer["kl"][3:6], rtol=1e-3)
