"""Shapes, dtypes and value ranges through every network."""

import numpy as np
import pytest
import tensorflow as tf
from support import random_batch

import tempo  # noqa: F401
from tempo.networks.decoder import Decoder, UpConv
from tempo.networks.distributions import OneHotDist
from tempo.networks.encoder import Encoder, select_keys
from tempo.networks.heads import Actor, DistHead
from tempo.networks.meta_weighter import MetaWeighter
from tempo.networks.rssm import RSSM
from tempo.networks.value_normalizer import ValueNormalizer

OBS = {
    "image": {"image": (64, 64, 3)},
    "vector": {"position": (4,), "velocity": (3,)},
    "mixed": {"image": (64, 64, 1), "position": (4,)},
}
B, T, A = 2, 3, 5


@pytest.mark.parametrize("obs", sorted(OBS))
@pytest.mark.parametrize("classes", [0, 4])
def test_world_model_networks_shapes(obs, classes):
    shapes = OBS[obs]
    data = random_batch(shapes, A, True, batch=B, length=T)
    inputs = {
        k: tf.cast(data[k], tf.float32) / 255.0 - 0.5 if v.dtype == np.uint8 else tf.constant(v)
        for k, v in data.items()
        if k in shapes
    }
    encoder = Encoder(shapes, cnn_depth=2, mlp_layers=(8, 8))
    embed = encoder(inputs)
    cnn_size = (
        2 * 2 * 8 * 2 if encoder.cnn_keys else 0
    )  # 64 -> 31 -> 14 -> 6 -> 2 pixels, 8 * depth
    assert embed.shape == (B, T, cnn_size + (8 if encoder.mlp_keys else 0))
    assert embed.dtype == tf.float32

    rssm = RSSM(A, stoch=3, discrete=classes, deter=6, hidden=7)
    post, prior = rssm.observe(embed, tf.constant(data["action"]), tf.constant(data["is_first"]))
    stoch_shape = (B, T, 3, classes) if classes else (B, T, 3)
    for state in (post, prior):
        assert state["stoch"].shape == stoch_shape
        assert state["deter"].shape == (B, T, 6)
        assert set(state) == (
            {"stoch", "deter", "logit"} if classes else {"stoch", "deter", "mean", "std"}
        )
    if classes:  # one-hot samples
        np.testing.assert_allclose(tf.reduce_sum(post["stoch"], -1), np.ones((B, T, 3)))
    else:
        assert float(tf.reduce_min(post["std"])) >= 0.1  # min_std
    feat = rssm.get_feat(post)
    assert feat.shape == (B, T, rssm.feat_size) == (B, T, 6 + 3 * (classes or 1))
    assert rssm.get_stats(prior).shape == (B, T, rssm.stats_size)
    kl = rssm.get_dist(post).kl_divergence(rssm.get_dist(prior))
    assert kl.shape == (B, T) and float(tf.reduce_min(kl)) >= -1e-5

    imagined = rssm.imagine(tf.zeros([B, 4, A]), {k: v[:, -1] for k, v in post.items()})
    assert imagined["deter"].shape == (B, 4, 6)

    decoder = Decoder(shapes, cnn_depth=2, mlp_layers=(8, 8))
    dists = decoder(feat)
    assert set(dists) == set(shapes)
    for key, shape in shapes.items():
        assert dists[key].mode().shape == (B, T, *shape)
        assert dists[key].log_prob(inputs[key]).shape == (B, T)

    reward = DistHead((), "mse", layers=2, units=8)(feat)
    assert reward.mode().shape == (B, T)
    discount = DistHead((), "binary", layers=2, units=8)(feat)
    mean = discount.mean()
    assert (
        mean.shape == (B, T) and float(tf.reduce_min(mean)) >= 0 and float(tf.reduce_max(mean)) <= 1
    )


def test_is_first_resets_the_state():
    rssm = RSSM(2, stoch=3, discrete=4, deter=5, hidden=5)
    embed = tf.random.normal([1, 2, 7])
    is_first = tf.constant([[True, True]])
    action = tf.random.normal([1, 2, 2])
    carried = {k: v + 3.0 for k, v in rssm.initial(1).items()}
    post, _ = rssm.observe(embed, action, is_first, carried, seed=tf.constant([1, 2]))
    fresh, _ = rssm.observe(embed, action, is_first, None, seed=tf.constant([1, 2]))
    # With is_first everywhere, the carried state and actions are ignored.
    for key in post:
        np.testing.assert_allclose(post[key], fresh[key], rtol=1e-6)


def test_a_carried_state_conditions_the_posterior_unless_an_episode_starts():
    rssm = RSSM(2, stoch=3, discrete=4, deter=5, hidden=5)
    embed = tf.random.normal([2, 3, 7])
    action = tf.random.normal([2, 3, 2])
    carried = {k: v + 0.7 for k, v in rssm.initial(2).items()}
    seed = tf.constant([3, 4])
    fresh, _ = rssm.observe(embed, action, tf.constant([[True] * 3] * 2), None, seed=seed)
    going_on = tf.constant([[False, False, False], [True, False, False]])
    post, _ = rssm.observe(embed, action, going_on, carried, seed=seed)
    # Row 0 continues the carried state: its first deterministic state differs.
    assert not np.allclose(post["deter"][0, 0], fresh["deter"][0, 0])
    # Row 1 starts an episode: the carried state is ignored at t = 0.
    np.testing.assert_allclose(post["deter"][1, 0], fresh["deter"][1, 0], rtol=1e-6)


def test_kl_terms_send_80_percent_of_the_gradient_to_the_prior():
    """KL(sg(post) || prior) moves the prior and KL(post || sg(prior)) the
    posterior: with balance 0.8 the prior's logits get 0.8 of the plain KL's
    gradient, the posterior's 0.2 (swapping the stop-gradients swaps the shares)."""
    from support import tiny_trainer

    wm = tiny_trainer({"vector": (2,)}, meta=False).world_model
    rng = np.random.default_rng(0)
    logits = lambda: tf.Variable(rng.normal(size=(2, 3, 3, 4)).astype(np.float32))
    post_logit, prior_logit = logits(), logits()
    state = lambda logit: {
        "logit": logit,
        "stoch": tf.zeros_like(logit),
        "deter": tf.zeros([2, 3, 12]),
    }
    with tf.GradientTape(persistent=True) as tape:
        kls = wm.kl_terms(state(post_logit), state(prior_logit))
        balanced, _ = wm.weighted_loss({}, kls)
        plain = tf.reduce_mean(
            wm.rssm.get_dist(state(post_logit)).kl_divergence(wm.rssm.get_dist(state(prior_logit)))
        )
    for var, share in ((prior_logit, 0.8), (post_logit, 0.2)):
        np.testing.assert_allclose(
            tape.gradient(balanced, var), share * tape.gradient(plain, var), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("classes", [4, 0])
def test_scanned_observe_equals_the_unrolled_loop_with_gradients(classes):
    """Same samples (seeds), states and gradients, eagerly and compiled."""
    rssm = RSSM(2, stoch=3, discrete=classes, deter=5, hidden=6)
    embed = tf.random.normal([3, 6, 7], seed=1)
    action = tf.random.normal([3, 6, 2], seed=2)
    is_first = tf.constant([[True, False, False, True, False, False]] * 3)
    carried = {k: v + 0.5 for k, v in rssm.initial(3).items()}

    def run(unroll):
        rssm.unroll = unroll
        with tf.GradientTape() as tape:
            post, prior = rssm.observe(embed, action, is_first, carried, tf.constant([4, 5]))
            loss = tf.reduce_sum(rssm.get_feat(post) ** 2) + tf.reduce_sum(prior["deter"])
        return post, prior, tape.gradient(loss, rssm.trainable_variables)

    run(True)  # builds the variables
    for fn in (run, tf.function(run)):
        want, got = fn(True), fn(False)
        # A variable the loss does not reach: None unrolled, zeros through the scan.
        zero = lambda g, v: tf.zeros_like(v) if g is None else g
        want, got = [
            (*r[:2], [zero(g, v) for g, v in zip(r[2], rssm.variables)]) for r in (want, got)
        ]
        for a, b in zip(tf.nest.flatten(want), tf.nest.flatten(got)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert want[0]["stoch"].shape == ((3, 6, 3, classes) if classes else (3, 6, 3))


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_samples_follow_the_action_convention(discrete):
    actor = Actor(4, discrete, layers=2, units=8)
    dist = actor(tf.random.normal([6, 10]))
    sample = dist.sample(seed=tf.constant([0, 1]))
    mode = dist.mode()
    assert sample.shape == mode.shape == (6, 4)
    if discrete:
        np.testing.assert_allclose(tf.reduce_sum(sample, -1), np.ones(6))
        assert set(np.unique(mode.numpy())) <= {0.0, 1.0}
    else:
        assert float(tf.reduce_max(tf.abs(sample))) < 1.0
        assert float(tf.reduce_max(tf.abs(mode))) <= 1.0
    assert dist.entropy().shape == (6,)
    assert np.isfinite(dist.log_prob(sample).numpy()).all()


def test_onehot_sample_has_straight_through_gradient():
    logits = tf.Variable([[0.3, -0.2, 1.0]])
    target = tf.constant([[1.0, 2.0, 3.0]])
    with tf.GradientTape() as tape:
        sample = OneHotDist(logits).sample(seed=tf.constant([4, 2]))
        loss = tf.reduce_sum(sample * target)
    grad = tape.gradient(loss, logits)
    probs = tf.nn.softmax(logits)
    # d/dlogits of sum(probs * target), the straight-through estimator.
    expected = probs * (target - tf.reduce_sum(probs * target, -1, keepdims=True))
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    assert float(tf.reduce_sum(sample)) == pytest.approx(1.0, abs=1e-6)


def test_meta_weighter_standardizes_its_logits_before_the_squash():
    """The released `norm_out`: with its initial scale 1 and offset 0 the logits
    have batch mean 0 and variance 1 (up to the 1e-3 epsilon) whatever the
    inputs, so the weights centre on 1 instead of drifting to a bound."""
    meta = MetaWeighter(layers=2, units=8)
    weights = meta(100.0 * tf.random.normal([2, 5, 9]) + 30.0, training=True).numpy()
    assert weights.shape == (2, 5)
    assert weights.min() >= 0.75 and weights.max() <= 1.25
    logits = np.log((weights - 0.75) / (1.25 - weights))  # inverse of 0.75 + sigmoid / 2
    assert abs(logits.mean()) < 1e-3
    assert logits.var() == pytest.approx(1.0, abs=0.02)
    without = MetaWeighter(layers=2, units=8, norm="none")
    assert without.out_norm is None


def test_value_normalizer_uses_the_joint_statistics():
    norm = ValueNormalizer()
    v_post, v_prior = tf.random.normal([2, 5]) * 3 + 1, tf.random.normal([2, 5])
    post_n, prior_n = norm.normalize(v_post, v_prior, training=True)
    both = np.concatenate([post_n.numpy().ravel(), prior_n.numpy().ravel()])
    raw = np.concatenate([v_post.numpy().ravel(), v_prior.numpy().ravel()])
    np.testing.assert_allclose(
        both, (raw - raw.mean()) / np.sqrt(raw.var() + 1e-3), rtol=1e-4, atol=1e-5
    )
    # Running statistics move toward the batch's with momentum 0.9.
    np.testing.assert_allclose(norm.moving_mean.numpy(), [0.1 * raw.mean()], rtol=1e-4)
    assert not norm.trainable_variables  # no scale, no offset


def test_key_selection_errors_name_the_keys():
    assert select_keys({"image": (8, 8, 3), "pos": (2,)}, "image", "$^") == (["image"], [])
    with pytest.raises(ValueError, match="available keys"):
        select_keys({"pos": (2,)}, "image", "$^")


def test_mlp_widths_must_be_uniform():
    from tempo.networks.mlp import mlp_from_widths

    assert len(mlp_from_widths((8, 8, 8), "elu", "none")._dense) == 3
    with pytest.raises(ValueError, match="one width"):
        Encoder({"pos": (2,)}, mlp_layers=(8, 16))


def test_mse_and_image_log_likelihoods_are_unit_variance_normals_by_hand():
    """DreamerV2's 'mse' heads and image decoder: log N(x; mean, 1) summed over
    the event dimensions, -(x - mean)^2 / 2 - log(2 pi) / 2 per element."""
    from tempo.networks.distributions import MSEDist

    half_log_2pi = 0.5 * np.log(2 * np.pi)
    dist = MSEDist(tf.constant([[1.0, 2.0], [0.0, -1.0]]), event_dims=1)
    got = dist.log_prob(tf.constant([[0.0, 4.0], [0.0, -1.0]])).numpy()
    np.testing.assert_allclose(got, [-0.5 * (1 + 4) - 2 * half_log_2pi, -2 * half_log_2pi])
    scalar = MSEDist(tf.constant([3.0]))
    np.testing.assert_allclose(scalar.log_prob(tf.constant([1.0])), [-2.0 - half_log_2pi])

    decoder = Decoder({"image": (64, 64, 1)}, cnn_keys="image", mlp_keys="$^", cnn_depth=2)
    feat = tf.zeros([1, 2, 6])
    decoder(feat)
    for var in decoder.variables:  # every mean pixel is exactly 0
        var.assign(tf.zeros_like(var))
    image = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 2, 64, 64, 1)).astype(np.float32)
    got = decoder(feat)["image"].log_prob(image).numpy()
    want = (-0.5 * image**2 - half_log_2pi).sum(axis=(2, 3, 4))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("size", [1, 3])
def test_upconv_equals_keras_transposed_convolution_with_gradients(size):
    """The decoder's matrix-product path for a 1x1 input (and the plain path
    otherwise) against Keras' Conv2DTranspose with the same weights."""
    x = tf.constant(np.random.default_rng(size).normal(size=(5, size, size, 12)), tf.float32)
    ours, keras = UpConv(7, 5, 2), tf.keras.layers.Conv2DTranspose(7, 5, 2)
    ours.build(x.shape), keras.build(x.shape)
    keras.set_weights([w + 0.1 * i for i, w in enumerate(ours.get_weights())])
    ours.set_weights(keras.get_weights())
    results = []
    for layer in (ours, keras):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.sin(y))
        results.append([y, *tape.gradient(loss, [x, *layer.trainable_variables])])
    assert results[0][0].shape == (5, 2 * size + 3, 2 * size + 3, 7)
    for a, b in zip(*results):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
