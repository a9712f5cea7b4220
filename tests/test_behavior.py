"""The actor-critic's losses on a hand-made imagined trajectory, against numpy
re-implementations of DreamerV2's definitions (not against tempo's own code):
which states, actions, targets and weights line up, and with which signs."""

import numpy as np
import pytest
import tensorflow as tf
from support import random_batch, tiny_trainer

from tempo.networks.rssm import split_seed

H, N, F, A = 4, 3, 5, 3  # horizon, start states, feature size, actions
LAMBDA = 0.95


def behavior(discrete: bool, actor_grad: str = "auto"):
    trainer = tiny_trainer({"vector": (2,)}, action_size=A, discrete=discrete, meta=False)
    trainer.behavior.horizon = H
    ac = trainer.behavior
    ac.lambda_ = LAMBDA
    if actor_grad != "auto":
        ac.actor_grad = actor_grad
    return trainer, ac


def trajectory(trainer, discrete: bool, seed: int = 0) -> dict:
    """An imagined sequence as WorldModel.imagine returns it: [H + 1, N, ...]."""
    rng = np.random.default_rng(seed)
    feat_size = trainer.world_model.rssm.feat_size
    if discrete:
        action = np.eye(A, dtype=np.float32)[rng.integers(0, A, (H + 1, N))]
    else:
        action = rng.uniform(-0.9, 0.9, (H + 1, N, A)).astype(np.float32)
    feat = tf.constant(rng.normal(size=(H + 1, N, feat_size)).astype(np.float32))
    return {
        "feat": feat,
        "policy": trainer.behavior.actor.params(feat[:-1]),
        "action": tf.constant(action),
        "discount": tf.constant(rng.uniform(0.5, 1.0, (H + 1, N)).astype(np.float32)),
        "weight": tf.constant(rng.uniform(0.2, 1.0, (H + 1, N)).astype(np.float32)),
    }


def numpy_lambda_return(reward, value, disc, lam):
    """R_t = r_t + d_t ((1 - lam) v_{t+1} + lam R_{t+1}) for t < H, R_H = v_H,
    from the trajectory's [H + 1] rewards, values and discounts."""
    horizon = len(reward) - 1
    returns = np.zeros_like(reward[:-1])
    last = value[-1]
    for t in reversed(range(horizon)):
        last = reward[t] + disc[t] * ((1 - lam) * value[t + 1] + lam * last)
        returns[t] = last
    return returns


def test_critic_targets_are_lambda_returns_bootstrapped_with_the_last_value():
    trainer, ac = behavior(discrete=True)
    seq = trajectory(trainer, True)
    rng = np.random.default_rng(1)
    reward = rng.normal(size=(H + 1, N)).astype(np.float32)
    value = rng.normal(size=(H + 1, N)).astype(np.float32)
    got = ac.target(tf.constant(reward), tf.constant(value), seq).numpy()
    want = numpy_lambda_return(reward, value, seq["discount"].numpy(), LAMBDA)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (H, N)


@pytest.mark.parametrize("actor_grad", ["reinforce", "dynamics", "both"])
def test_actor_loss_lines_up_actions_states_targets_and_weights(actor_grad):
    discrete = actor_grad != "dynamics"
    trainer, ac = behavior(discrete, actor_grad)
    ac.actor_ent, ac.actor_grad_mix = 0.3, 0.25
    seq = trajectory(trainer, discrete)
    target = tf.constant(np.random.default_rng(2).normal(size=(H, N)).astype(np.float32))
    value = ac.slow_critic(seq["feat"]).mode()
    loss, metrics = ac.actor_loss(seq, target, value)

    # Independent assembly: the policy at states 0..H-2 chose actions 1..H-1
    # (action[t] is the action that led into state t); its advantage is the
    # target of the state it led to minus V_slow of the state it was taken in.
    feat, action = seq["feat"].numpy(), seq["action"].numpy()
    policy = ac.actor(tf.constant(feat[:-2]))
    log_prob = policy.log_prob(tf.constant(action[1:-1])).numpy()
    entropy = policy.entropy().numpy()
    baseline = ac.slow_critic(tf.constant(feat[:-2])).mode().numpy()
    target = target.numpy()
    reinforce = log_prob * (target[1:] - baseline)
    objective = {
        "reinforce": reinforce,
        "dynamics": target[1:],
        "both": 0.25 * target[1:] + 0.75 * reinforce,
    }[actor_grad]
    objective = objective + 0.3 * entropy  # the entropy bonus is maximized
    want = -np.mean(seq["weight"].numpy()[:-2] * objective)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["actor_entropy"], entropy.mean(), rtol=1e-5)


def test_reinforce_raises_the_probability_of_actions_with_positive_advantage():
    """One gradient step on the actor loss (no entropy bonus): the log-probability
    of an action rises where its advantage over V_slow is positive and falls where
    it is negative."""
    trainer, ac = behavior(discrete=True, actor_grad="reinforce")
    ac.actor_ent = 0.0
    seq = trajectory(trainer, True)
    feat, action = seq["feat"][:-2], seq["action"][1:-1]
    baseline = ac.slow_critic(feat).mode()
    advantage = np.where(np.arange(N) % 2 == 0, 1.0, -1.0).astype(np.float32)
    target = tf.concat([tf.zeros([1, N]), baseline + advantage[None]], 0)
    before = ac.actor(feat).log_prob(action).numpy()
    with tf.GradientTape() as tape:
        # Imagination's policy outputs, recorded on the tape as in the update.
        seq["policy"] = ac.actor.params(seq["feat"][:-1])
        loss, _ = ac.actor_loss(seq, target, ac.slow_critic(seq["feat"]).mode())
    grads = tape.gradient(loss, ac.actor.trainable_variables)
    for var, grad in zip(ac.actor.trainable_variables, grads):
        var.assign_sub(1e-3 * grad)
    change = ac.actor(feat).log_prob(action).numpy() - before
    # Summed over the imagined steps, per start state (column).
    assert np.all(change.sum(0)[advantage > 0] > 0)
    assert np.all(change.sum(0)[advantage < 0] < 0)


def test_critic_regresses_the_targets_of_states_0_to_h_minus_1_weighted_by_discount():
    trainer, ac = behavior(discrete=True)
    seq = trajectory(trainer, True)
    target = np.random.default_rng(3).normal(size=(H, N)).astype(np.float32)
    loss = ac.critic_loss(seq, tf.constant(target)).numpy()
    mean = ac.critic(seq["feat"][:-1]).mode().numpy()
    log_prob = -0.5 * (target - mean) ** 2 - 0.5 * np.log(2 * np.pi)  # unit Normal
    want = -np.mean(log_prob * seq["weight"].numpy()[:-1])
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_imagination_takes_its_first_discount_from_the_replay_and_weights_cumulate():
    trainer = tiny_trainer({"vector": (2,)}, action_size=A, discrete=True, meta=False)
    wm = trainer.world_model
    data = wm.preprocess(random_batch({"vector": (2,)}, A, True, batch=2, length=3))
    _, post, _ = wm.infer(data, wm.rssm.initial(2))
    is_terminal = tf.constant([[False, True, False], [False, False, True]])
    seq = wm.imagine(trainer.behavior.actor, post, is_terminal, 4, tf.constant([1, 2]))
    disc = seq["discount"].numpy()
    assert disc.shape == (5, 6)
    # Start states in [batch, time] order: terminal ones get discount 0.
    np.testing.assert_allclose(disc[0], wm.discount * np.array([1, 0, 1, 1, 1, 0]))
    head = wm.discount_head(seq["feat"][1:]).mean().numpy()
    np.testing.assert_allclose(disc[1:], head, rtol=1e-6)
    # weight[t] = prod_{s < t} discount[s]: the first state always counts fully.
    want = np.concatenate([np.ones((1, 6)), np.cumprod(disc[:-1], 0)], 0)
    np.testing.assert_allclose(seq["weight"].numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("unroll", [True, False])
@pytest.mark.parametrize("discrete", [True, False])
def test_imagination_returns_the_policy_outputs_that_chose_each_action(discrete, unroll):
    """seq['policy'][t] is the actor's output at state t (t < H): what the actor
    loss reuses instead of calling the actor again. Checked against fresh actor
    calls on the returned features, and step t's draw from it is action t + 1."""
    shapes = {"vector": (2,)}
    trainer = tiny_trainer(shapes, action_size=A, discrete=discrete, meta=False, unroll=unroll)
    wm, actor = trainer.world_model, trainer.behavior.actor
    data = wm.preprocess(random_batch(shapes, A, discrete, batch=2, length=3))
    _, post, _ = wm.infer(data, wm.rssm.initial(2))
    seq = wm.imagine(actor, post, tf.zeros([2, 3], tf.bool), H, tf.constant([4, 5]))
    want = actor.params(seq["feat"][:-1])
    assert len(seq["policy"]) == len(want) == (1 if discrete else 2)
    for got, expected in zip(seq["policy"], want):
        assert got.shape == (H, 6, A)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    # Alignment: policy[t] drew action[t + 1] with step t's action seed.
    policy = actor.distribution(seq["policy"])
    for t, step_seed in enumerate(split_seed(tf.constant([4, 5]), H)):
        act_seed = split_seed(step_seed, 2)[0]
        step_policy = actor.distribution(tuple(p[t] for p in seq["policy"]))
        np.testing.assert_allclose(
            seq["action"][t + 1].numpy(), step_policy.sample(seed=act_seed).numpy(), atol=1e-6
        )
    # The same outputs as a distribution: the actor's own on those features.
    np.testing.assert_allclose(
        policy.entropy().numpy(), actor(seq["feat"][:-1]).entropy().numpy(), rtol=1e-5
    )
