"""Numerical guards shared by the compiled update steps."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def all_finite(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """True when every entry of every tensor is finite: the condition under which
    an update is applied (otherwise it is skipped and counted)."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])
