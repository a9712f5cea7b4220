"""What the meta-weighter weighs: each sample's weight beside the quantities it
might follow (reward, value, KL, reconstruction, position in the episode), and
their Spearman rank correlations.

`analyse_batch` computes the weights with the very methods the update calls
(`BilevelTrainer.posterior_passes_of`, `slow_values`, `normalize_values`,
`meta_weights`), so for the update's seed they are the update's weights. The
update calls the batch norms in training mode, which moves their moving
statistics; the analysis restores them, so it changes no variable of the
trainer, and it draws its samples from the seed it is given, never from the
trainer's generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tempo.agent.bilevel import BilevelTrainer
from tempo.networks.rssm import State

# What each weight is set against, in the order of tables and plots.
QUANTITIES = ("reward", "value", "kl", "recon", "position")


@contextlib.contextmanager
def moving_statistics_kept(module: tf.Module) -> Iterator[None]:
    """Runs its body with `module`'s batch norms free to update their moving
    statistics (training mode does), then puts the old values back."""
    variables = [
        variable
        for layer in module.submodules
        if isinstance(layer, tf.keras.layers.BatchNormalization)
        for variable in (layer.moving_mean, layer.moving_variance)
    ]
    saved = [tf.identity(variable) for variable in variables]
    yield
    for variable, value in zip(variables, saved):
        variable.assign(value)


def analyse_batch(
    trainer: BilevelTrainer, data: dict, state: State, seed: tf.Tensor, training: bool = True
) -> dict[str, tf.Tensor]:
    """Per sample of a raw replay batch [B, T] (as the dataset yields it): the
    meta weight, the reward, the value V_slow(posterior features) that the
    weighter sees (before normalization), the KL(post || prior) and the
    reconstruction log-likelihood summed over the decoder's keys; and `last`,
    the last posterior state (what the trainer carries into the next chunk).

    `training=True` normalizes with the batch's statistics, as the update does;
    `training=False` with the moving ones, so that a sample's weight does not
    depend on the rest of the batch (for whole episodes, chunk by chunk)."""
    wm = trainer.world_model
    inputs = wm.preprocess(data)
    with moving_statistics_kept(trainer):
        value_post, value_prior, post, prior = trainer.posterior_passes_of(inputs, state, seed)
        v_post, v_prior = trainer.slow_values(value_post, value_prior)
        v_post_n, v_prior_n = trainer.normalize_values(v_post, v_prior, training=training)
        weights = trainer.meta_weights(post, prior, v_post_n, v_prior_n, training=training)
    likes = wm.log_likelihoods(inputs, post)
    keys = [*wm.decoder.cnn_keys, *wm.decoder.mlp_keys]
    as_float = lambda x: tf.cast(x, tf.float32)
    return {
        "weight": as_float(weights),
        "reward": as_float(data["reward"]),
        "value": as_float(v_post),
        "kl": as_float(wm.kl_terms(post, prior)[0]),
        "recon": tf.add_n([as_float(likes[k]) for k in keys]),
        "last": {k: v[:, -1] for k, v in post.items()},
    }


def analyse_episode(
    analyse: Callable[..., dict],
    initial: State,
    episode: Mapping[str, np.ndarray],
    chunk: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Every step of one stored episode [T, ...], from its start with `initial`
    (the trainer's initial state for a batch of 1), in chunks of `chunk` steps
    that carry the posterior state as the trainer does; the last chunk is padded
    (the model is causal: padding changes no earlier step). `analyse(data,
    state, seed)` is `analyse_batch` on moving statistics (compiled once for the
    chunk's shape). Returns [T] arrays of `QUANTITIES` and the weight."""
    length = len(episode["reward"])
    parts: dict[str, list[np.ndarray]] = {}
    state = initial
    for index, start in enumerate(range(0, length, chunk)):
        stop = min(start + chunk, length)
        wanted = np.arange(start, start + chunk)
        steps = np.minimum(wanted, length - 1)  # edge padding
        data = {k: np.asarray(v)[steps][None] for k, v in episode.items()}
        data["is_first"] = data["is_first"] & (wanted < length)
        chunk_seed = tf.constant([seed, index], tf.int32)
        out = analyse(data, state, chunk_seed)
        state = out["last"]
        for key, value in out.items():
            if key != "last":
                parts.setdefault(key, []).append(np.asarray(value)[0, : stop - start])
    result = {key: np.concatenate(values) for key, values in parts.items()}
    result["position"] = positions_since_first(np.asarray(episode["is_first"]))
    return result


def positions_since_first(is_first: np.ndarray) -> np.ndarray:
    """Steps since the last `is_first` along the last axis (0 where it is set);
    steps before any `is_first` count from the start."""
    is_first = np.asarray(is_first, bool)
    index = np.broadcast_to(np.arange(is_first.shape[-1]), is_first.shape)
    last_first = np.maximum.accumulate(np.where(is_first, index, 0), axis=-1)
    return index - last_first


def sample_windows(
    episodes: Sequence[Mapping[str, np.ndarray]],
    batch: int,
    length: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`batch` windows of `length` steps at uniform positions of uniformly chosen
    episodes at least that long (the longest ones when none is): a replay batch
    of the trainer's shape whose every step knows its index in its episode.
    Each window starts with `is_first`, as a replay segment does. Returns the
    batch {key: [B, T, ...]} and the positions [B, T]."""
    lengths = np.array([len(episode["reward"]) for episode in episodes])
    if not len(lengths):
        raise ValueError("no episodes to sample windows from")
    length = min(length, int(lengths.max()))
    eligible = np.flatnonzero(lengths >= length)
    chosen = rng.choice(eligible, size=batch)
    starts = rng.integers(0, lengths[chosen] - length + 1)
    rows = [
        {k: np.asarray(v)[start : start + length] for k, v in episodes[i].items()}
        for i, start in zip(chosen, starts)
    ]
    data = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
    data["is_first"] = data["is_first"].copy()
    data["is_first"][:, 0] = True
    positions = starts[:, None] + np.arange(length)[None]
    return data, positions


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, tied values sharing the mean of their ranks."""
    values = np.asarray(values, np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Runs of equal values: each gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks start+1..end, 1-based
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length arrays (ties averaged):
    the Pearson correlation of their ranks; NaN when either is constant or
    when fewer than two pairs are finite (non-finite pairs are dropped)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 2:
        return float("nan")
    rx, ry = average_ranks(x[keep]), average_ranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
    return float(np.sum(rx * ry) / denominator) if denominator > 0 else float("nan")


def correlations(table: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Spearman correlation of `table['weight']` with each of `QUANTITIES` it holds."""
    return {q: spearman(table["weight"], table[q]) for q in QUANTITIES if q in table}


def extremes(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the k highest weights (highest first) and of the k lowest
    (lowest first); ties in index order."""
    flat = np.asarray(weights, np.float64).ravel()
    return np.argsort(-flat, kind="stable")[:k], np.argsort(flat, kind="stable")[:k]
