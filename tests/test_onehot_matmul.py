"""The one-hot gather in the heads' first layer against the dense product."""

import numpy as np
import pytest
import tensorflow as tf

import tempo  # noqa: F401
from tempo.networks.distributions import OneHotDist
from tempo.networks.heads import DistHead
from tempo.networks.mlp import MLP
from tempo.networks.onehot_matmul import onehot_prefix_matmul
from tempo.networks.rssm import RSSM

GROUPS, CLASSES, REST, UNITS, N = 4, 5, 3, 6, 7


def close(ours, dense) -> None:
    """Equal up to float32 rounding of sums in another order (the straight-through
    ones are 1 +- 1e-7 in the dense product, exactly 1 in the gather)."""
    dense = np.asarray(dense)
    np.testing.assert_allclose(ours, dense, rtol=1e-5, atol=1e-5 * np.abs(dense).max())


def straight_through_features(seed: int) -> tf.Tensor:
    """[N, GROUPS * CLASSES + REST]: a straight-through one-hot sample (its value is
    one-hot up to rounding, its gradient the probabilities') and dense extras."""
    rng = np.random.default_rng(seed)
    logits = tf.constant(rng.normal(size=(N, GROUPS, CLASSES)), tf.float32)
    sample = OneHotDist(logits).sample(seed=[seed, 1])
    rest = tf.constant(rng.normal(size=(N, REST)), tf.float32)
    # Row 0 is an initial state (all groups zero), row 1 has one zero group.
    keep = np.ones((N, GROUPS, 1), np.float32)
    keep[0], keep[1, 2] = 0.0, 0.0
    return tf.concat([tf.reshape(sample * keep, [N, -1]), rest], -1)


def test_product_equals_the_dense_one_with_both_gradients():
    x = straight_through_features(0)
    kernel = tf.constant(np.random.default_rng(1).normal(size=(x.shape[-1], UNITS)), tf.float32)
    dy = tf.constant(np.random.default_rng(2).normal(size=(N, UNITS)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, kernel])
        ours = onehot_prefix_matmul(x, kernel, GROUPS, CLASSES)
        dense = tf.matmul(x, kernel)
        ours_loss, dense_loss = tf.reduce_sum(ours * dy), tf.reduce_sum(dense * dy)
    np.testing.assert_allclose(ours, dense, rtol=1e-6, atol=1e-6)
    # The exact product, by hand: the sum of the kernel rows of the ones.
    groups = x.numpy()[:, : GROUPS * CLASSES].reshape(N, GROUPS, CLASSES)
    rows = np.argmax(groups, -1) + np.arange(GROUPS) * CLASSES
    present = groups.max(-1, keepdims=True) > 0.5  # zero groups add nothing
    rest = x.numpy()[:, GROUPS * CLASSES :]
    by_hand = (kernel.numpy()[rows] * present).sum(1) + rest @ kernel.numpy()[-REST:]
    np.testing.assert_allclose(ours, by_hand, rtol=1e-6, atol=1e-6)
    for a, b in zip(tape.gradient(ours_loss, [x, kernel]), tape.gradient(dense_loss, [x, kernel])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_second_order_matches_the_dense_product():
    """A gradient of the gradient (reverse over reverse) goes through the custom
    gradient's dense products, as it would through the dense product itself."""
    x = straight_through_features(3)
    kernel = np.random.default_rng(4).normal(size=(x.shape[-1], UNITS))
    kernel = tf.Variable(kernel, dtype=tf.float32)

    def grads(product):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.tanh(product(x, kernel)) ** 2)
            g = inner.gradient(loss, x)
            second = tf.reduce_sum(g**2)
        return g, outer.gradient(second, kernel)

    ours = grads(lambda x, k: onehot_prefix_matmul(x, k, GROUPS, CLASSES))
    dense = grads(tf.matmul)
    for a, b in zip(ours, dense):
        close(a, b)


def test_too_small_an_input_names_the_layout():
    with pytest.raises(ValueError, match="one-hot groups"):
        onehot_prefix_matmul(tf.zeros([2, 10]), tf.zeros([10, 3]), GROUPS, CLASSES)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_mlp_and_head_with_the_layout_equal_them_without(norm):
    x = tf.reshape(straight_through_features(6), [1, N, -1])  # a leading batch dim
    mlp, head = MLP(3, UNITS, norm=norm), DistHead((), "mse", layers=2, units=UNITS)
    mlp(x), head(x)  # build
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outs = [mlp(x), mlp(x, onehot=(GROUPS, CLASSES))]
        outs += [head(x).mode(), head(x, onehot=(GROUPS, CLASSES)).mode()]
        losses = [tf.reduce_sum(tf.sin(o)) for o in outs]
    close(outs[1], outs[0])
    close(outs[3], outs[2])
    for (plain, gathered), net in zip([losses[:2], losses[2:]], [mlp, head]):
        sources = [x, *net.trainable_variables]
        for a, b in zip(tape.gradient(plain, sources), tape.gradient(gathered, sources)):
            close(b, a)


def test_rssm_features_start_with_its_onehot_layout():
    rssm = RSSM(action_size=2, stoch=GROUPS, discrete=CLASSES, deter=REST, hidden=4)
    assert rssm.onehot_layout == (GROUPS, CLASSES)
    assert RSSM(action_size=2, stoch=GROUPS, discrete=0, deter=REST, hidden=4).onehot_layout is None
    state = rssm.img_step(rssm.initial(N), tf.zeros([N, 2]), seed=[7, 8])
    prefix = rssm.get_feat(state)[:, : GROUPS * CLASSES].numpy().reshape(N, GROUPS, CLASSES)
    np.testing.assert_allclose(np.sort(prefix, -1)[..., :-1], 0.0)
    np.testing.assert_allclose(prefix.max(-1), 1.0, atol=1e-6)
