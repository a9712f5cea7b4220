"""Cross-replica helpers that make an update on B/R sequences per replica equal
the single-device update on the whole batch of B.

Each helper reads the replica context that `tf.distribute` sets up inside
`strategy.run`. With one replica (the default strategy, or outside
`strategy.run`) every helper is the plain single-device op, so the
single-device graph is unchanged. All helpers assume equal shards: every
replica holds B/R rows of the global batch, replica r rows [r B/R, (r+1) B/R).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tempo.networks import distributions as dists

MEAN = tf.distribute.ReduceOp.MEAN


def context() -> tf.distribute.ReplicaContext | None:
    """The replica context when it spans several replicas, else None."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def all_mean(values):
    """Mean over replicas of a nest of tensors (one batched all-reduce).

    Differentiable: its gradient is the all-mean of the upstream gradients,
    which is what makes statistics of the global batch exact under autodiff
    (the per-replica gradients are averaged afterwards)."""
    ctx = context()
    return values if ctx is None else ctx.all_reduce(MEAN, values)


def global_mean(x: tf.Tensor) -> tf.Tensor:
    """Mean over every entry of the global batch (a plain mean on one replica)."""
    return all_mean(tf.reduce_mean(x))


def moments(x: tf.Tensor, axes: Sequence[int], keepdims: bool = False):
    """`tf.nn.moments` over the global batch: the global mean, then the global
    mean squared deviation from it (two passes, like `tf.nn.moments`)."""
    ctx = context()
    if ctx is None:
        return tf.nn.moments(x, axes, keepdims=keepdims)
    mean = ctx.all_reduce(MEAN, tf.reduce_mean(x, axes, keepdims=True))
    deviation = tf.math.squared_difference(x, tf.stop_gradient(mean))
    variance = ctx.all_reduce(MEAN, tf.reduce_mean(deviation, axes, keepdims=True))
    if not keepdims:
        mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
    return mean, variance


def global_max(x: tf.Tensor) -> tf.Tensor:
    ctx = context()
    local = tf.reduce_max(x)
    if ctx is None:
        return local
    return tf.reduce_max(ctx.all_gather(tf.stop_gradient(local)[None], 0))


def global_min(x: tf.Tensor) -> tf.Tensor:
    ctx = context()
    if ctx is None:
        return tf.reduce_min(x)
    return -global_max(-x)


def sample(dist, seed):
    """`dist.sample(seed=seed)` whose rows equal the rows of the single-device
    draw for the whole batch.

    A stateless draw for B/R rows is not the slice of the draw for B rows (the
    random stream depends on the position in the whole tensor), so every
    replica gathers the distribution parameters of all replicas, draws for the
    global batch with the shared seed and keeps its own rows. Gradients (the
    straight-through and reparameterized ones) flow to the local parameters
    only, exactly as in the single-device draw.
    """
    ctx = context()
    if ctx is None:
        return dist.sample(seed=seed)
    rows = tf.shape(tf.nest.flatten(_params(dist))[0])[0]
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * rows
    draw = _rebuild(dist, lambda p: _global_rows(ctx, p, start)).sample(seed=seed)
    return draw[start : start + rows]


def _global_rows(ctx, local: tf.Tensor, start) -> tf.Tensor:
    """The [B, ...] tensor of every replica's rows, differentiable in this
    replica's rows only."""
    gathered = tf.stop_gradient(ctx.all_gather(tf.stop_gradient(local), 0))
    total = tf.shape(gathered)[0]
    rows = tf.shape(local)[0]
    pad = [[start, total - start - rows]] + [[0, 0]] * (len(local.shape) - 1)
    padded = tf.pad(local, pad)
    index = tf.range(total)
    mine = tf.logical_and(index >= start, index < start + rows)
    mine = tf.reshape(mine, [-1] + [1] * (len(local.shape) - 1))
    return tf.where(mine, padded, gathered)


def _params(dist):
    if isinstance(dist, dists.tfd.Independent):
        return _params(dist.distribution)
    if isinstance(dist, dists.OneHotDist):
        return [dist.logits]
    if isinstance(dist, (dists.ClippedTruncatedNormal, dists.tfd.Normal)):
        return [dist.loc, dist.scale]
    raise TypeError(f"No cross-replica sampling for {type(dist).__name__}.")


def _rebuild(dist, fn):
    """The same distribution with `fn` applied to its batch-shaped parameters."""
    if isinstance(dist, dists.tfd.Independent):
        inner = _rebuild(dist.distribution, fn)
        return dists.tfd.Independent(inner, dist.reinterpreted_batch_ndims)
    if isinstance(dist, dists.OneHotDist):
        return dists.OneHotDist(logits=fn(dist.logits), dtype=dist.dtype)
    if isinstance(dist, dists.ClippedTruncatedNormal):
        return dists.ClippedTruncatedNormal(
            fn(dist.loc), fn(dist.scale), dist.low, dist.high, clip=dist.clip
        )
    if isinstance(dist, dists.tfd.Normal):
        return dists.tfd.Normal(fn(dist.loc), fn(dist.scale))
    raise TypeError(f"No cross-replica sampling for {type(dist).__name__}.")
