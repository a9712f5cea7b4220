"""Golden tests: tempo computes what the released TEMPO code computes.

`tests/reference/make_golden.py` ran the released code (deng-ai-lab/TEMPO at
ea83919, on TensorFlow 2.15) at small sizes and saved its weights, a batch,
the noise of every random draw, and what it computed: each network's forward
pass, the losses and per-sample terms, the gradients, and every variable and
Adam slot after one TEMPO update (`Agent.train`) and one DreamerV2 update
(`Agent.train_without_meta`). Here tempo is built from the shipped gin suite
files (at the same small sizes), loaded with the same weights, replays the
same noise, and must compute the same numbers.

Configurations: `proprio` (vectors, 4x4 categorical latents, continuous
actions), `vision` (pixels, Gaussian latents), `atari` (grayscale pixels,
categorical latents, one-hot actions with REINFORCE, a discount head, and
atari's loss scales).

Tolerances: float32 rounding of two programs that order their floating-point
operations differently (graph rewrites, a MultivariateNormalDiag against an
Independent Normal, fused Keras kernels): forward values agree to a relative
1e-5, gradients and the values after the update to 1e-4 of each array's largest
magnitude. The update is what users train with: a sign error, a factor of 2 or
a missing term moves whole arrays far outside these bounds.
"""

from __future__ import annotations

import json
import pathlib

import gin
import numpy as np
import pytest
import tensorflow as tf
from reference.noise import NoiseTape, replaced_samplers

from tempo import configurables
from tempo.agent import bilevel

HERE = pathlib.Path(__file__).resolve().parent / "reference"
CONFIGS = {
    "proprio": ("dmc_proprio", {"orientations": (5,), "velocity": (3,)}, 3, False),
    "vision": ("dmc_vision", {"image": (64, 64, 3)}, 2, False),
    "atari": ("atari", {"image": (64, 64, 1)}, 3, True),
}
# Release variables with no counterpart here: a batch normalization of the
# per-sample upper losses whose output the release never uses, and the
# reward normalizer that its configuration (momentum 1) keeps at exactly 1.
UNUSED_IN_RELEASE = ("weight_norm/", "reward_norm/")
# Metrics both sides log: release name -> tempo name.
METRICS = {
    "model_loss": "model_loss",
    "kl": "kl",
    "kl_loss": "kl_loss",
    "meta_loss": "upper_loss",
    "weights_mean": "meta_weight_mean",
    "model_grad_norm": "model_grad_norm",
    "meta_grad_norm": "meta_grad_norm",
    "actor_loss": "actor_loss",
    "critic_loss": "critic_loss",
    "actor_ent": "actor_entropy",
    "critic_target": "imag_return_mean",
    "reward_mean": "imag_reward_mean",
    "actor_grad_norm": "actor_grad_norm",
    "critic_grad_norm": "critic_grad_norm",
    "prior_ent": "prior_entropy",
    "post_ent": "post_entropy",
    "critic_slow": "imag_slow_value_mean",
}


def small_bindings(config: dict) -> list[str]:
    width = config["rssm.deter"]
    heads = ["reward/DistHead", "discount/DistHead", "Actor", "critic/DistHead", "MetaWeighter"]
    bindings = [
        f"RSSM.hidden = {config['rssm.hidden']}",
        f"RSSM.deter = {width}",
        f"RSSM.stoch = {config['rssm.stoch']}",
        f"Encoder.cnn_depth = {config['encoder.cnn_depth']}",
        f"Decoder.cnn_depth = {config['decoder.cnn_depth']}",
        f"Encoder.mlp_layers = {tuple(config['encoder.mlp_layers'])}",
        f"Decoder.mlp_layers = {tuple(config['decoder.mlp_layers'])}",
        f"ActorCritic.horizon = {config['imag_horizon']}",
        "BilevelTrainer.posterior_passes = 2",
    ]
    bindings += [f"{h}.layers = {config['meta.layers']}" for h in heads]
    bindings += [f"{h}.units = {config['meta.units']}" for h in heads]
    if "rssm.discrete" in config:
        bindings.append(f"RSSM.discrete = {config['rssm.discrete']}")
    if "kl.free" in config:
        bindings.append(f"WorldModel.kl_free = {config['kl.free']}")
    return bindings


# ----- tempo's variables under the release's paths -----
def layer_pairs(layer, path: str):
    names = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
    return [
        (getattr(layer, n), f"{path}/{n}") for n in names if getattr(layer, n, None) is not None
    ]


def mlp_pairs(mlp, path: str, norms: bool = False):
    pairs = []
    for i, dense in enumerate(mlp._dense):
        pairs += layer_pairs(dense, f"{path}/dense{i}")
        if norms and mlp._norms[i] is not None:
            pairs += layer_pairs(mlp._norms[i], f"{path}/norm{i}")
    return pairs


def head_pairs(head, path: str):
    pairs = mlp_pairs(head.mlp, path) + layer_pairs(head.dist._out, f"{path}/out/out")
    if head.dist._std is not None:
        pairs += layer_pairs(head.dist._std, f"{path}/out/std")
    return pairs


def variable_paths(trainer) -> list[tuple[tf.Variable, str]]:
    """Every variable of tempo's networks with the path of its release counterpart."""
    wm, ac, meta = trainer.world_model, trainer.behavior, trainer.meta_weighter
    enc, rssm, dec = wm.encoder, wm.rssm, wm.decoder
    pairs = []
    for i, conv in enumerate(enc._convs if enc.cnn_keys else []):
        pairs += layer_pairs(conv, f"encoder/conv{i}")
    if enc.mlp_keys:
        pairs += mlp_pairs(enc._mlp, "encoder")
    for name, layer in [
        ("img_in", rssm._img_in),
        ("img_out_0", rssm._img_out),
        ("img_dist_0", rssm._img_dist),
        ("obs_out", rssm._obs_out),
        ("obs_dist", rssm._obs_dist),
        ("cell/dense", rssm._cell._layer),
        ("cell/norm", rssm._cell._norm),
    ]:
        pairs += layer_pairs(layer, f"rssm/{name}")
    if dec.cnn_keys:
        pairs += layer_pairs(dec._convin, "decoder/convin")
        for i, deconv in enumerate(dec._deconvs):
            pairs += layer_pairs(deconv, f"decoder/conv{i}")
    if dec.mlp_keys:
        pairs += mlp_pairs(dec._mlp, "decoder")
        for key, layer in dec._mlp_out.items():
            pairs += layer_pairs(layer._out, f"decoder/dense_{key}/out")
    pairs += head_pairs(wm.reward_head, "reward")
    if wm.discount_head is not None:
        pairs += head_pairs(wm.discount_head, "discount")
    pairs += mlp_pairs(meta.mlp, "meta", norms=True)
    pairs += layer_pairs(meta.out, "meta/dense_out")
    if getattr(meta, "out_norm", None) is not None:
        pairs += layer_pairs(meta.out_norm, "meta/norm_out")
    pairs += layer_pairs(trainer.value_norm, "value_norm")
    pairs += head_pairs(ac.actor, "actor")
    pairs += head_pairs(ac.critic, "critic")
    pairs += head_pairs(ac.slow_critic, "slow_critic")
    return pairs


def adam_slot(optimizer, var, name: str) -> np.ndarray:
    adam = optimizer.adam
    index = adam._index_dict[adam._var_key(var)]
    return (adam._momentums if name == "m" else adam._velocities)[index].numpy()


# ----- fixtures -----
class Reference:
    def __init__(self, name: str):
        self.name = name
        self.arrays = dict(np.load(HERE / f"golden_{name}.npz"))
        self.config = json.loads(str(self.arrays["config"]))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def batch(self) -> dict[str, np.ndarray]:
        return self.group("batch/")

    def state(self) -> dict[str, tf.Tensor]:
        return {k: tf.constant(v) for k, v in self.group("state/").items()}


def build(name: str):
    """tempo's trainer from the suite's gin file at the golden sizes, loaded with
    the release's `before` weights."""
    suite, shapes, actions, discrete = CONFIGS[name]
    ref = Reference(name)
    gin.clear_config()
    configurables.parse_config([f"gin_configs/{suite}.gin"], small_bindings(ref.config))
    trainer = configurables.build_trainer(shapes, actions, discrete)
    gin.clear_config()
    pairs = variable_paths(trainer)
    before = ref.group("before/")
    mapped = {p for _, p in pairs}
    release_only = {p for p in before if p not in mapped and not p.startswith(UNUSED_IN_RELEASE)}
    assert not release_only, f"release variables with no tempo counterpart: {sorted(release_only)}"
    for var, path in pairs:
        assert var.shape == before[path].shape, (path, var.shape, before[path].shape)
        var.assign(before[path])
    return trainer, ref, pairs


@pytest.fixture(params=list(CONFIGS))
def golden(request):
    trainer, ref, pairs = build(request.param)
    yield trainer, ref, pairs


def close(ours, ref, name: str, rtol: float = 1e-4, atol_frac: float = 1e-4, scale=None) -> None:
    """Equal up to rtol, or up to atol_frac of the largest magnitude in `ref`
    (or of `scale`: a gradient's largest entry over all its variables)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != release {ref.shape}"
    if scale is None:
        scale = float(np.max(np.abs(ref), initial=0.0))
    atol = atol_frac * max(scale, 1e-6)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, err_msg=name)


def close_forward(ours, ref, name: str) -> None:
    close(ours, ref, name, rtol=1e-5, atol_frac=1e-5)


# ----- forward passes -----
def test_every_variable_has_its_release_counterpart(golden):
    trainer, ref, pairs = golden
    ours = {id(v) for v, _ in pairs}
    nets = [trainer.world_model, trainer.meta_weighter, trainer.behavior.actor]
    nets += [trainer.behavior.critic, trainer.behavior.slow_critic]
    unmapped = [v.name for net in nets for v in net.variables if id(v) not in ours]
    unmapped += [v.name for v in trainer.value_norm.variables if id(v) not in ours]
    assert not unmapped, f"tempo variables with no release counterpart: {unmapped}"


def test_networks_forward_like_the_release(golden):
    trainer, ref, _ = golden
    wm, ac = trainer.world_model, trainer.behavior
    fwd = ref.group("fwd/")
    data = wm.preprocess(ref.batch())
    with replaced_samplers(NoiseTape.from_arrays(ref.arrays, "fwd/noise/")) as tape:
        embed = wm.encoder(data)
        post, prior = wm.rssm.observe(embed, data["action"], data["is_first"], ref.state())
    assert not tape.unused(), tape.unused()
    close_forward(embed, fwd["embed"], "encoder embedding")
    for key in post:
        close_forward(post[key], fwd[f"post/{key}"], f"posterior {key}")
        close_forward(prior[key], fwd[f"prior/{key}"], f"prior {key}")
    feat = wm.rssm.get_feat(post)
    close_forward(feat, fwd["feat"], "features")
    for key, dist in wm.decoder(feat).items():
        close_forward(dist.mode()[:1, :2], fwd[f"decoder/{key}/mean"], f"decoder {key} mean")
        close_forward(
            dist.log_prob(data[key]), fwd[f"decoder/{key}/log_prob"], f"decoder {key} log-prob"
        )
    reward = wm.reward_head(feat)
    close_forward(reward.mode(), fwd["reward/mean"], "reward mean")
    close_forward(reward.log_prob(data["reward"]), fwd["reward/log_prob"], "reward log-prob")
    if wm.discount_head is not None:
        disc = wm.discount_head(feat)
        close_forward(disc.mean(), fwd["discount/mean"], "discount mean")
        close_forward(
            disc.log_prob(data["discount"]), fwd["discount/log_prob"], "discount log-prob"
        )
    for name, net in (("critic", ac.critic), ("slow_critic", ac.slow_critic)):
        dist = net(feat)
        close_forward(dist.mode(), fwd[f"{name}/mean"], f"{name} mean")
        close_forward(dist.log_prob(data["reward"]), fwd[f"{name}/log_prob"], f"{name} log-prob")
    actor = ac.actor(feat)
    if ac.actor.discrete:
        close_forward(actor.logits_parameter(), fwd["actor/logits"], "actor logits")
    else:
        close_forward(actor.distribution.loc, fwd["actor/loc"], "actor mean")
        close_forward(actor.distribution.scale, fwd["actor/scale"], "actor std")
    close_forward(actor.log_prob(data["action"]), fwd["actor/log_prob"], "actor log-prob")
    close_forward(actor.entropy(), fwd["actor/entropy"], "actor entropy")
    close_forward(wm.kl_terms(post, prior)[0], fwd["kl"], "per-sample KL")
    weights = trainer.meta_weighter(tf.constant(fwd["meta/inputs"]), training=True)
    close_forward(weights, fwd["meta/weights"][..., 0], "meta-weighter weights")
    values = fwd["value_norm/inputs"][..., 0]
    half = values.shape[0] // 2
    v_post, v_prior = trainer.normalize_values(values[:half], values[half:])
    close_forward(
        tf.concat([v_post, v_prior], 0), fwd["value_norm/outputs"][..., 0], "value normalizer"
    )


# ----- one update -----
class Recorder:
    """Keeps what wrapped methods return (the update runs eagerly)."""

    def __init__(self):
        self.values: dict[str, list] = {}

    def wrap(self, obj, attr: str, name: str | None = None, keep=lambda out, args: out):
        original = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.values.setdefault(name or attr, []).append(keep(out, args))
            return out

        setattr(obj, attr, wrapped)


def run_update(trainer, ref, mode: str, monkeypatch):
    """One tempo update on the golden batch, replaying the release's noise."""
    trainer.meta = mode == "tempo"
    wm, ac = trainer.world_model, trainer.behavior
    rec = Recorder()
    for obj, attr in [
        (wm, "infer"),
        (wm, "log_likelihoods"),
        (wm, "kl_terms"),
        (wm, "weighted_loss"),
        (wm, "imagine"),
        (trainer, "task_aware_loss"),
        (trainer, "meta_weights"),
        (ac, "target"),
        (ac, "actor_loss"),
        (ac, "critic_loss"),
    ]:
        rec.wrap(obj, attr)
    rec.wrap(trainer, "model_step", keep=lambda out, args: args[0])
    rec.wrap(trainer, "meta_step", keep=lambda out, args: args[0])
    rec.wrap(ac, "apply", keep=lambda out, args: args)
    original = bilevel.bilevel_gradients

    def keep_bilevel(*args, **kwargs):
        out = original(*args, **kwargs)
        rec.values.setdefault("bilevel", []).append(out)
        return out

    monkeypatch.setattr(bilevel, "bilevel_gradients", keep_bilevel)
    tape = NoiseTape.from_arrays(ref.arrays, f"{mode}/noise/")
    with replaced_samplers(tape):
        state, metrics = trainer.train(ref.batch(), ref.state())
    assert not tape.unused(), f"recorded draws this update did not take: {tape.unused()}"
    return rec.values, state, metrics


def named(pairs, variables, grads) -> dict[str, np.ndarray]:
    path = {id(v): p for v, p in pairs}
    return {path[id(v)]: np.asarray(g) for v, g in zip(variables, grads)}


def compare_gradients(ours: dict, ref: Reference, prefix: str, what: str) -> None:
    compare_group(ours, ref.group(prefix), what)


def compare_group(ours: dict, expected: dict, what: str) -> None:
    """Arrays by path (a gradient, an Adam slot), every path on both sides."""
    assert sorted(ours) == sorted(expected), (what, sorted(set(ours) ^ set(expected)))
    # Entries that are zero in exact arithmetic (a bias under batch norm) hold
    # rounding noise on both sides: compare at the scale of the whole gradient.
    scale = max(float(np.max(np.abs(g))) for g in expected.values())
    for path, grad in expected.items():
        close(ours[path], grad, f"{what} {path}", scale=scale)


@pytest.mark.parametrize("mode", ["tempo", "dreamerv2"])
def test_one_update_matches_the_release(golden, mode, eagerly, monkeypatch):
    trainer, ref, pairs = golden
    wm, ac = trainer.world_model, trainer.behavior
    values, state, metrics = run_update(trainer, ref, mode, monkeypatch)
    m = f"{mode}/"

    # Infer: every pass of the RSSM over the batch (two for TEMPO, as released).
    passes = values["infer"]
    assert len(passes) == (2 if mode == "tempo" else 1)
    for i, (_, post, prior) in enumerate(passes):
        suffix = str(i) if i else ""
        for key in post:
            close(post[key], ref[f"{m}observe{suffix}/post/{key}"], f"pass {i} posterior {key}")
            close(prior[key], ref[f"{m}observe{suffix}/prior/{key}"], f"pass {i} prior {key}")
    close(passes[-1][0], ref[f"{m}lower/embed"], "embedding")

    # Losses and per-sample terms.
    (likes,) = values["log_likelihoods"]
    for key, like in likes.items():
        close(like, ref[f"{m}lower/like/{key}"], f"log-likelihood {key}")
    assert sorted(likes) == sorted(ref.group(f"{m}lower/like/"))
    close(values["kl_terms"][0][0], ref[f"{m}lower/kl"], "per-sample KL")
    close(values["weighted_loss"][0][0], ref[f"{m}lower/loss"], "lower loss")
    if mode == "tempo":
        upper, v_post, v_prior = values["task_aware_loss"][0]
        close(upper, ref[f"{m}upper/loss"], "upper loss")
        close(v_post, ref[f"{m}upper/value_post"][..., 0], "normalized posterior values")
        close(v_prior, ref[f"{m}upper/value_prior"][..., 0], "normalized prior values")
        close(values["meta_weights"][0], ref[f"{m}lower/weights"], "meta weights")
        g_low, g_up, h, _ = values["bilevel"][0]
        compare_gradients(named(pairs, wm.rep_variables, g_up), ref, f"{m}g_up/", "g_up")
        compare_gradients(
            named(pairs, trainer.meta_weighter.trainable_variables, values["meta_step"][0]),
            ref,
            f"{m}h/",
            "h",
        )
    compare_gradients(
        named(pairs, wm.trainable_variables, values["model_step"][0]),
        ref,
        f"{m}grad_model/",
        "g_low",
    )

    # Behaviour: imagination, lambda-returns, actor and critic losses and gradients.
    (seq,) = values["imagine"]
    for key in ("feat", "action", "discount", "weight"):
        close(seq[key], ref[f"{m}imagine/{key}"], f"imagined {key}")
    close(values["target"][0], ref[f"{m}returns"], "lambda-returns")
    close(values["actor_loss"][0][0], ref[f"{m}actor_loss"], "actor loss")
    close(values["critic_loss"][0], ref[f"{m}critic_loss"], "critic loss")
    actor_grads, critic_grads = values["apply"][0]
    compare_gradients(
        named(pairs, ac.actor.trainable_variables, actor_grads),
        ref,
        f"{m}grad_actor/",
        "actor gradient",
    )
    compare_gradients(
        named(pairs, ac.critic.trainable_variables, critic_grads),
        ref,
        f"{m}grad_critic/",
        "critic gradient",
    )

    # The update: every variable, Adam's moments and step counts, the carried state, the metrics.
    after = ref.group(f"{m}after/")
    optimizers = {
        "model": (trainer.model_opt, wm.trainable_variables),
        "meta": (trainer.meta_opt, trainer.meta_weighter.trainable_variables),
        "actor": (ac.actor_opt, ac.actor.trainable_variables),
        "critic": (ac.critic_opt, ac.critic.trainable_variables),
    }
    path = {id(v): p for v, p in pairs}
    for var, p in pairs:
        close(var, after[p], f"{p} after the update")
    for name, (opt, variables) in optimizers.items():
        steps = int(after[f"{name}_opt/iterations"])
        assert int(opt.adam.iterations) == steps, (name, int(opt.adam.iterations), steps)
        for slot in ("m", "v"):
            ours = {f"{path[id(v)]}/{slot}": adam_slot(opt, v, slot) for v in variables}
            theirs = {k: after[k] for k in ours if k in after}
            assert len(theirs) == (len(ours) if steps else 0), (name, slot)
            if steps:
                compare_group(ours, theirs, f"{name} Adam {slot}")
    for key, value in ref.group(f"{m}new_state/").items():
        close(state[key], value, f"carried state {key}")
    released = ref.group(f"{m}metrics/")
    for theirs, ours in METRICS.items():
        if theirs in released:
            close(metrics[ours], released[theirs], f"metric {ours} (released {theirs})")
    for key in likes:
        close(metrics[f"{key}_loss"], released[f"{key}_loss"], f"metric {key}_loss")


def test_parameter_counts_equal_the_released_ones():
    """At the reference sizes, built for the observation and action spaces of
    the environments a user runs (walker's spec has a scalar `height`, which
    neither program's proprio model sees)."""
    from tempo.envs import make_env
    from tempo.evaluation import RESERVED

    counts = json.loads((HERE / "param_counts.json").read_text())
    envs = {
        "dmc_vision": ("dmc_walker_walk", "pixels"),
        "dmc_proprio": ("dmc_walker_walk", "proprio"),
        "atari": ("atari_pong", None),
    }
    for suite, (task, obs_type) in envs.items():
        env = make_env(task, obs_type=obs_type)
        obs = {k: tuple(s.shape) for k, s in env.obs_space.items() if k not in RESERVED}
        actions, discrete = int(env.act_space.shape[0]), env.discrete
        env.close()
        assert actions == 6, (task, actions)
        gin.clear_config()
        configurables.parse_config([f"gin_configs/{suite}.gin"])
        trainer = configurables.build_trainer(obs, actions, discrete, build=False)
        trainer.build()
        gin.clear_config()
        ours = trainer.parameter_counts()
        wm = trainer.world_model
        size = lambda net: int(sum(v.shape.num_elements() for v in net.variables))
        ours.update(
            encoder=size(wm.encoder),
            rssm=size(wm.rssm),
            decoder=size(wm.decoder),
            reward=size(wm.reward_head),
        )
        if wm.discount_head is not None:
            ours["discount"] = size(wm.discount_head)
        assert ours == counts[suite], suite
