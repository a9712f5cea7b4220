"""One compiled update: what it changes, what it reports, and that it is reproducible."""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
from support import functions_run_eagerly, random_batch, tiny_trainer

SHAPES = {"image": (64, 64, 1), "vector": (3,)}


def _snapshot(module):
    return [v.numpy().copy() for v in module.trainable_variables]


def _changed(before, module):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, module.trainable_variables)]


def _networks(trainer):
    return {
        "world_model": trainer.world_model,
        "actor": trainer.behavior.actor,
        "critic": trainer.behavior.critic,
        "meta": trainer.meta_weighter,
    }


@pytest.fixture(scope="module", params=[True, False], ids=["tempo", "dreamerv2"])
def updates(request):
    """Three trainers of one kind (TEMPO or DreamerV2), seeds 7, 7 and 8, two
    updates each on the same batch (one with an episode boundary inside): the
    weights before and after the first update of the first, and every update's
    metrics and carried state. Compiling an update is most of each test's time,
    so the tests of one update, of reproducibility and of a non-finite batch
    share these three (the last continues the seed-8 trainer)."""
    meta = request.param
    data = random_batch(SHAPES, 3, True, batch=2, length=4, terminal_at=2)
    out = {"meta": meta, "data": data, "trainers": [], "metrics": [], "states": []}
    for index, seed in enumerate((7, 7, 8)):
        trainer = tiny_trainer(SHAPES, discrete=True, meta=meta, seed=seed)
        state, metrics = trainer.initial_state(2), []
        if index == 0:
            out["before"] = {k: _snapshot(n) for k, n in _networks(trainer).items()}
        for update in range(2):
            state, step_metrics = trainer.train(data, state)
            metrics.append({k: v.numpy() for k, v in step_metrics.items()})
            if index == 0 and update == 0:
                out["after"] = {k: _snapshot(n) for k, n in _networks(trainer).items()}
                out["step_after_one"], out["state_after_one"] = int(trainer.step), state
        out["trainers"].append(trainer)
        out["metrics"].append(metrics)
        out["states"].append(state)
    return out


def test_one_compiled_update(updates):
    meta, metrics, state = updates["meta"], updates["metrics"][0][0], updates["state_after_one"]
    trainer = updates["trainers"][0]

    def changed(name):
        return [
            not np.array_equal(b, a)
            for b, a in zip(updates["before"][name], updates["after"][name])
        ]

    for name in ("world_model", "actor", "critic"):
        assert all(changed(name)), f"{name}: {changed(name).count(False)} variables unchanged"
    if meta:
        assert all(changed("meta"))
        for key in ("upper_loss", "meta_weight_mean", "meta_weight_std", "meta_grad_norm"):
            assert key in metrics
        assert 0.75 <= float(metrics["meta_weight_mean"]) <= 1.25
        assert float(metrics["meta_weight_std"]) > 0
    else:
        assert not any(changed("meta"))
        assert "upper_loss" not in metrics and "meta_weight_mean" not in metrics
    for key in (
        "model_loss",
        "kl",
        "image_loss",
        "vector_loss",
        "reward_loss",
        "discount_loss",
        "actor_loss",
        "critic_loss",
        "model_grad_norm",
        "actor_entropy",
    ):
        assert key in metrics, key
    for key, value in metrics.items():
        assert np.isfinite(value), key
    assert updates["step_after_one"] == 1
    assert state["deter"].shape == (2, trainer.world_model.rssm.deter)


def test_carried_state_and_second_update_reuse_the_compiled_graph():
    trainer = tiny_trainer(SHAPES, discrete=False, pred_discount=False)
    data = random_batch(SHAPES, 3, False, batch=2, length=4)
    state, _ = trainer.train(data, trainer.initial_state(2))
    state, metrics = trainer.train(random_batch(SHAPES, 3, False, batch=2, length=4, seed=1), state)
    assert trainer._compiled.experimental_get_tracing_count() == 1
    assert "discount_loss" not in metrics
    assert int(trainer.behavior.updates) == 2


def test_slow_critic_copies_the_critic_every_n_updates():
    """As released: after the critic's step of update 0 V_slow becomes a copy of
    the critic; every `slow_target_update` updates after that it mixes in
    `slow_target_fraction` of the critic; in between it stays frozen."""
    trainer = tiny_trainer(SHAPES, discrete=True, meta=False)
    behavior = trainer.behavior
    behavior.slow_target_update, behavior.slow_target_fraction = 2, 0.25
    data = random_batch(SHAPES, 3, True, batch=2, length=4)
    critic, slow = behavior.critic, behavior.slow_critic
    values = lambda net: [v.numpy().copy() for v in net.variables]
    # build() gave V_slow its own weights: the first copy is what makes them equal.
    slow.variables[0].assign_add(tf.ones_like(slow.variables[0]))
    state, _ = trainer.train(data, trainer.initial_state(2))  # update 0: step, then copy
    for a, b in zip(values(critic), values(slow)):
        np.testing.assert_array_equal(a, b)
    frozen = values(slow)
    state, _ = trainer.train(data, state)  # update 1: no copy
    for a, b in zip(values(slow), frozen):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(values(slow), values(critic)))
    state, _ = trainer.train(data, state)  # update 2: V_slow <- 0.25 V + 0.75 V_slow
    for got, before, fast in zip(values(slow), frozen, values(critic)):
        np.testing.assert_allclose(got, 0.25 * fast + 0.75 * before, rtol=1e-6, atol=1e-7)
    assert int(behavior.updates) == 3


def test_same_seed_same_batch_same_metrics(updates):
    """Seeds 7, 7 and 8: the second update's metrics equal for the first two
    trainers (every random draw comes from the seed), and differ for the third."""
    runs = [{k: float(v) for k, v in metrics[1].items()} for metrics in updates["metrics"]]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_scanned_loops_give_the_same_updates():
    """tf.scan for observe and imagination against the unrolled loops: metrics
    and every variable after two TEMPO updates, the hypergradient and the
    dynamics backpropagation of continuous actions included."""
    meta, discrete = True, False
    data = random_batch(SHAPES, 3, discrete, batch=2, length=5)
    results = []
    for unroll in (True, False):
        trainer = tiny_trainer(SHAPES, discrete=discrete, meta=meta, seed=3, unroll=unroll)
        state = trainer.initial_state(2)
        # The unrolled reference runs eagerly (the same ops, without tracing);
        # the scanned update is the compiled one under test.
        with functions_run_eagerly() if unroll else contextlib.nullcontext():
            for _ in range(2):
                state, metrics = trainer.train(data, state)
        results.append((metrics, [v.numpy() for v in trainer.variables]))
    (want, want_vars), (got, got_vars) = results
    assert sorted(want) == sorted(got)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for a, b in zip(want_vars, got_vars):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_scanned_imagination_without_a_seed_samples_statefully():
    """seed=None (TensorFlow's stateful sampling) through the scan: the same
    shapes as the unrolled rollout, and actions that differ between calls."""
    trainer = tiny_trainer(SHAPES, discrete=False, unroll=False).build()
    wm = trainer.world_model
    start = {k: v[:, None] for k, v in wm.rssm.initial(4).items()}
    terminal = tf.zeros([4, 1])
    first = wm.imagine(trainer.behavior.actor, start, terminal, horizon=3)
    second = wm.imagine(trainer.behavior.actor, start, terminal, horizon=3)
    assert first["feat"].shape == (4, 4, wm.rssm.feat_size)
    assert first["action"].shape == (4, 4, 3)
    np.testing.assert_array_equal(first["action"][0], 0.0)  # the start has no action
    assert not np.allclose(first["action"][1:], second["action"][1:])


def test_nonsense_settings_are_rejected():
    with pytest.raises(ValueError, match="hypergrad_sign"):
        tiny_trainer(SHAPES, sign="backwards")
    with pytest.raises(ValueError, match="action_size"):
        tiny_trainer(SHAPES, action_size=0)
    with pytest.raises(ValueError, match="No observation key"):
        tiny_trainer({"other": (2, 2)})


def test_open_loop_video_strips():
    shapes = {"image": (64, 64, 3), "vector": (3,)}
    trainer = tiny_trainer(shapes)
    data = random_batch(shapes, 3, True, batch=7, length=9)
    video = trainer.world_model.video_prediction(data, "image", context=5, num=6)
    assert video.shape == (9, 3 * 64, 6 * 64, 3) and video.dtype == tf.uint8
    # Top strip: the true frames, sequence n in columns [64 n, 64 (n + 1)).
    truth = video.numpy()[:, :64].reshape(9, 64, 6, 64, 3).transpose(2, 0, 1, 3, 4)
    assert np.abs(truth.astype(int) - data["image"][:6].astype(int)).max() <= 1


def test_non_finite_batch_skips_the_update_and_is_counted(updates):
    """On a trainer that has made two updates (the seed-8 one): a batch with a NaN
    reward changes no weight and is counted; the next finite batch updates."""
    trainer, state, good = updates["trainers"][2], updates["states"][2], updates["data"]
    bad = {k: v.copy() for k, v in good.items()}
    bad["reward"][1, 2] = np.nan
    nets = [
        trainer.world_model,
        trainer.meta_weighter,
        trainer.behavior.actor,
        trainer.behavior.critic,
    ]
    before = [_snapshot(n) for n in nets]
    state, metrics = trainer.train(bad, state)
    for snapshot, net in zip(before, nets):
        assert not any(_changed(snapshot, net)), net.name
    assert float(metrics["update_skipped"]) == 1.0 and float(metrics["nonfinite_streak"]) == 1.0
    assert all(np.isfinite(v.numpy()).all() for v in state.values())
    _, metrics = trainer.train(good, state)
    assert float(metrics["update_skipped"]) == 0.0 and int(trainer.nonfinite_streak) == 0
    assert all(_changed(before[0], trainer.world_model))


def test_tempo_with_weights_of_one_updates_like_dreamerv2(eagerly):
    """TEMPO differs from DreamerV2 only through the sample weights: with the
    weighter's output layer zeroed and its range [0.5, 1.5] every weight is
    exactly 1, and one update moves the world model, actor and critic as the
    DreamerV2 update from the same initial variables and seed does (the nested
    tapes of the hypergradient change only float rounding). Eagerly: this is
    arithmetic, computed by the ops the traced update runs (tracing both took
    four fifths of the test's time)."""
    shapes = {"vector": (3,)}
    data = random_batch(shapes, 3, False, batch=2, length=5)
    tempo = tiny_trainer(shapes, discrete=False, meta=True, seed=5).build()
    dreamer = tiny_trainer(shapes, discrete=False, meta=False, seed=5).build()
    nets = lambda t: [t.world_model, t.behavior.actor, t.behavior.critic, t.behavior.slow_critic]
    for mine, theirs in zip(nets(tempo), nets(dreamer)):
        theirs.set_weights(mine.get_weights())
    weighter = tempo.meta_weighter
    weighter.low, weighter.high = 0.5, 1.5
    for variable in weighter.out.trainable_variables:
        variable.assign(tf.zeros_like(variable))

    _, got = tempo.train(data, tempo.initial_state(2))
    _, want = dreamer.train(data, dreamer.initial_state(2))

    assert float(got["meta_weight_mean"]) == 1.0 and float(got["meta_weight_std"]) == 0.0
    assert float(got["meta_grad_norm"]) > 0  # the weighter itself still learns
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for mine, theirs in zip(nets(tempo), nets(dreamer)):
        for a, b in zip(mine.variables, theirs.variables):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)


@pytest.mark.parametrize("eval_state_mean", [False, True])
def test_evaluation_samples_the_latent_as_released_unless_told_not_to(eval_state_mean):
    """The release's policy in 'eval' mode samples the posterior latent
    (eval_state_mean: False) and takes the actor's mode: two seeds give two
    latents. With eval_state_mean the latent is the mode: seeds do not matter."""
    from tempo.agent.agent import Agent

    trainer = tiny_trainer(SHAPES, discrete=True, meta=False)
    agent = Agent(trainer, eval_state_mean=eval_state_mean)
    obs = {k: v[:, 0] for k, v in random_batch(SHAPES, 3, True, batch=4, length=1).items()}
    state = agent.initial_state(4)
    latents = [
        agent.step(obs, state, False, tf.constant([seed, 0]))[1]["stoch"].numpy() for seed in (1, 2)
    ]
    assert np.array_equal(latents[0], latents[1]) == eval_state_mean
    explored = [
        agent.step(obs, state, True, tf.constant([seed, 0]))[1]["stoch"].numpy() for seed in (1, 2)
    ]
    assert not np.array_equal(*explored)


def test_task_aware_upper_loss_by_hand():
    """L_up = mean((v_post_n - v_prior_n)^2): V_slow's values of the posterior and
    prior features, standardized together (batch mean and variance, epsilon
    1e-3), computed here in numpy."""
    trainer = tiny_trainer(SHAPES, discrete=True, meta=True)
    wm = trainer.world_model
    data = wm.preprocess(random_batch(SHAPES, 3, True, batch=2, length=4))
    _, post, prior = wm.infer(data, wm.rssm.initial(2), tf.constant([5, 6]))
    slow = trainer.behavior.slow_critic
    slow.variables[0].assign_add(tf.ones_like(slow.variables[0]))  # V_slow != V here
    upper, v_post_n, v_prior_n = trainer.task_aware_loss(post, prior)
    v_post = slow(wm.rssm.get_feat(post)).mode().numpy()
    v_prior = slow(wm.rssm.get_feat(prior)).mode().numpy()
    both = np.concatenate([v_post.ravel(), v_prior.ravel()])
    normed = lambda v: (v - both.mean()) / np.sqrt(both.var() + 1e-3)
    np.testing.assert_allclose(v_post_n, normed(v_post), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v_prior_n, normed(v_prior), rtol=1e-4, atol=1e-5)
    want = np.mean((normed(v_post) - normed(v_prior)) ** 2)
    assert float(upper) == pytest.approx(want, rel=1e-4)
    assert v_post.shape == (2, 4)


def test_the_behaviour_step_gathering_one_hot_latents_equals_the_dense_one():
    """The heads' gather (the default) against their dense product
    (`onehot_gather=False`, what XLA compiles): same losses and gradients."""
    trainer = tiny_trainer(SHAPES, discrete=True, meta=False, seed=5).build()
    batch = random_batch(SHAPES, 3, True, batch=2, length=4)
    seed = tf.constant([3, 4], tf.int64)
    data = trainer.world_model.preprocess(tf.nest.map_structure(tf.convert_to_tensor, batch))
    post = trainer.losses(data, trainer.initial_state(2), seed)[2]["post"]
    results = [
        trainer.behavior.gradients(
            trainer.world_model, post, data["is_terminal"], seed, onehot_gather=gather
        )
        for gather in (True, False)
    ]
    (actor, critic, metrics), (actor_d, critic_d, metrics_d) = results
    for key in ("actor_loss", "critic_loss", "imag_return_mean", "imag_reward_mean"):
        np.testing.assert_allclose(metrics[key], metrics_d[key], rtol=1e-5, err_msg=key)
    for a, b in zip(actor + critic, actor_d + critic_d):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_an_xla_compiled_update_with_discrete_latents_runs():
    """XLA cannot compile the heads' one-hot gather; under `jit_compile` the
    trainer keeps their dense product. (Stateless sampling under XLA draws other
    numbers than the plain graph, so the two updates are not compared.)"""
    data = random_batch(SHAPES, 3, True, batch=2, length=4)
    trainer = tiny_trainer(SHAPES, discrete=True, meta=False, seed=5, jit_compile=True)
    _, metrics = trainer.train(data, trainer.initial_state(2))
    assert metrics["update_skipped"] == 0 and metrics["behavior_skipped"] == 0
    assert all(np.isfinite(float(v)) for v in metrics.values())
