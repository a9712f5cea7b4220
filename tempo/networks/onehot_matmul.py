"""A dense layer's matrix product for inputs that start with one-hot groups.

DreamerV2's features are [stoch, deter] with `stoch` a sample of 32 one-hot
categoricals of 32 classes, flattened: 1024 of the 1224 inputs of every head's
first layer hold 32 ones and 992 zeros. Multiplying them by the kernel is a sum
of 32 kernel rows, which a gather does in less than half the time of the dense
product on a CPU. The behaviour step runs four heads on 12,000 imagined states
per update, so this is the one large saving that leaves the arithmetic as it is.

The gradient is the dense product's: the input's (needed by dynamics
backpropagation, which reaches the latent's probabilities through the
straight-through sample) and the kernel's are both dense products, because the
gather's own gradient (a scatter) is slower than the product on a CPU. Reverse
mode of any order works; forward mode (`tf.autodiff.ForwardAccumulator`) does
not (TensorFlow has no second derivative of the gather), so only the behaviour
step, which differentiates once, uses it.
"""

from __future__ import annotations

import tensorflow as tf


def onehot_prefix_matmul(x: tf.Tensor, kernel: tf.Tensor, groups: int, classes: int) -> tf.Tensor:
    """`x @ kernel` for a [N, D] `x` whose first `groups * classes` columns are
    `groups` one-hot vectors of `classes` entries (a straight-through sample's
    value, one plus or minus a rounding error, counts as one) or all zeros (the
    RSSM's initial state).

    Precondition, not checked: every group is one of those two; a group of
    probabilities gives a wrong product. XLA cannot compile the gather: under
    `jit_compile` use the dense product.
    """
    prefix = groups * classes
    if x.shape[-1] is not None and x.shape[-1] < prefix:
        raise ValueError(
            f"Input of size {x.shape[-1]} cannot start with {groups} one-hot groups of "
            f"{classes} classes; pass the layout of the features the network receives."
        )

    @tf.custom_gradient
    def product(x, kernel):
        rows = tf.shape(x)[0]
        hot = tf.reshape(x[:, :prefix], [-1, groups, classes])
        index = tf.argmax(hot, -1, output_type=tf.int32)
        # A group of zeros reads an appended zero row instead of row 0.
        is_hot = tf.gather(hot, index, batch_dims=2) > 0.5
        index = tf.where(is_hot, index + tf.range(groups)[None] * classes, prefix)
        table = tf.concat([kernel[:prefix], tf.zeros_like(kernel[:1])], 0)
        segments = tf.repeat(tf.range(rows), groups)  # sorted, as segment_sum needs
        onehot_part = tf.sparse.segment_sum(table, tf.reshape(index, [-1]), segments)
        y = onehot_part + tf.matmul(x[:, prefix:], kernel[prefix:])

        def grad(dy):
            return tf.matmul(dy, kernel, transpose_b=True), tf.matmul(x, dy, transpose_a=True)

        return y, grad

    return product(x, kernel)
