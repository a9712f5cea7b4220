"""KL balancing with free bits and per-sample weights (DreamerV2 + TEMPO)."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def balanced_kl(
    kl_train_prior: tf.Tensor,
    kl_train_post: tf.Tensor,
    weights: tf.Tensor | None = None,
    balance: float = 0.8,
    free: float = 0.0,
    free_avg: bool = True,
    mean: Callable[[tf.Tensor], tf.Tensor] = tf.reduce_mean,
) -> tf.Tensor:
    """balance * max(mean(w * KL(sg(post) || prior)), free)
       + (1 - balance) * max(mean(w * KL(post || sg(prior))), free).

    Args:
      kl_train_prior: per-sample KL(sg(post) || prior): its gradient moves the prior.
      kl_train_post: per-sample KL(post || sg(prior)): its gradient moves the posterior.
        Both have the same value; only their gradients differ.
      weights: per-sample meta weights (None = all ones, plain DreamerV2).
      balance: share of the loss that trains the prior toward the posterior.
      free: free nats; the KL is not pushed below this.
      free_avg: apply the free-bits bound to the batch mean (True, DreamerV2's
        default) or to every sample before averaging (False).
      mean: the batch mean under the free-bits max. The max is not linear, so
        under data parallelism this must be the mean over the global batch
        (`tempo.replicas.global_mean`), not a replica's own mean.
    """
    if weights is not None:
        weights = tf.cast(weights, kl_train_prior.dtype)
        kl_train_prior = weights * kl_train_prior
        kl_train_post = weights * kl_train_post
    free = tf.cast(free, kl_train_prior.dtype)
    if free_avg:
        prior_term = tf.maximum(mean(kl_train_prior), free)
        post_term = tf.maximum(mean(kl_train_post), free)
    else:
        prior_term = tf.reduce_mean(tf.maximum(kl_train_prior, free))
        post_term = tf.reduce_mean(tf.maximum(kl_train_post, free))
    return balance * prior_term + (1 - balance) * post_term
