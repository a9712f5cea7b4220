#!/usr/bin/env python
"""Writes the golden files of tests/test_reference.py from the RELEASED TEMPO code.

Run by hand, under the release's own environment (TensorFlow 2.15; see
README.md beside this file), never by the test suite:

    TEMPO_REF_SRC=$REF/src $REF/venv/bin/python tests/reference/make_golden.py

For each configuration (proprio vectors with discrete latents and continuous
actions; pixels with Gaussian latents; grayscale pixels with one-hot actions)
it builds the released `agent.Agent` at small sizes, perturbs every weight so
that biases and norm scales are not at their initial values, and writes
`golden_<config>.npz` with:

- `before/<path>`: every variable, by a path that names the released module
  (`rssm/cell/dense/kernel`, `meta/norm_out/gamma`, ...);
- `batch/<key>`, `state/<key>`: the replay batch and the carried RSSM state;
- `fwd/...`: each network's forward pass on that batch, at the `before` weights;
- `<mode>/...` for mode `tempo` (`Agent.train`) and `dreamerv2`
  (`Agent.train_without_meta`): the recorded noise of the update, its losses,
  per-sample terms, gradients (before clipping), lambda-returns, metrics, and
  `after/<path>` (every variable and Adam slot after the update).

It also writes `param_counts.json`: the released networks' variable counts at
the reference sizes of dmc_vision, dmc_proprio and atari.

The release runs eagerly here (`tf.config.run_functions_eagerly`), so that
wrappers around its methods can keep the values they compute; the code that
runs is the release's own, unmodified.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import warnings

import numpy as np
from release_shims import Box
from release_shims import install_tf_shims as install_shims

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(os.environ.get("TEMPO_REF_SRC", HERE / "src"))
sys.path.insert(0, str(HERE))

B, T = 4, 5
SMALL = {
    "rssm.hidden": 16,
    "rssm.deter": 16,
    "rssm.stoch": 4,
    "encoder.cnn_depth": 2,
    "encoder.mlp_layers": [16, 16],
    "decoder.cnn_depth": 2,
    "decoder.mlp_layers": [16, 16],
    "reward_head.layers": 2,
    "reward_head.units": 16,
    "discount_head.layers": 2,
    "discount_head.units": 16,
    "actor.layers": 2,
    "actor.units": 16,
    "critic.layers": 2,
    "critic.units": 16,
    "meta.layers": 2,
    "meta.units": 16,
    "imag_horizon": 4,
    "dataset.batch": B,
    "dataset.length": T,
}
CONFIGS = {
    "proprio": dict(
        suite="dmc_proprio",
        obs={"orientations": (5,), "velocity": (3,)},
        actions=3,
        discrete=False,
        small={"rssm.discrete": 4},
    ),
    # Free nats 0.2 instead of dmc_vision's 1.0: the KL stays above it, so its
    # gradient (Gaussian latents, weighted per sample) is compared too; proprio
    # keeps 1.0 and checks the clamp.
    "vision": dict(
        suite="dmc_vision",
        obs={"image": (64, 64, 3)},
        actions=2,
        discrete=False,
        small={"kl.free": 0.2},
    ),
    "atari": dict(
        suite="atari",
        obs={"image": (64, 64, 1)},
        actions=3,
        discrete=True,
        small={"rssm.discrete": 4},
    ),
}
# The reference sizes, for the parameter counts, with the observation spaces the
# release's environments have (its common/envs.py): walker's dm_control spec
# (`height` is a scalar, which the release's encoder and decoder leave out) with
# its image, and pong's image and RAM (atari's encoder reads the image only).
FULL = {
    "dmc_vision": dict(
        obs={"image": (64, 64, 3), "orientations": (14,), "height": (), "velocity": (9,)},
        actions=6,
        discrete=False,
    ),
    "dmc_proprio": dict(
        obs={"image": (64, 64, 3), "orientations": (14,), "height": (), "velocity": (9,)},
        actions=6,
        discrete=False,
    ),
    "atari": dict(obs={"image": (64, 64, 1), "ram": (128,)}, actions=6, discrete=True),
}


def spaces(obs: dict, actions: int, discrete: bool):
    space = {
        k: Box(0, 255, s, np.uint8) if len(s) == 3 else Box(-np.inf, np.inf, s)
        for k, s in obs.items()
    }
    space["reward"] = Box(-np.inf, np.inf, ())
    for flag in ("is_first", "is_last", "is_terminal"):
        space[flag] = Box(0, 1, (), bool)
    action = Box(0 if discrete else -1, 1, (actions,), np.float32, n=actions if discrete else None)
    return space, {"action": action}


def make_config(common, suite: str, small: dict | None):
    import ruamel.yaml

    configs = ruamel.yaml.YAML(typ="safe", pure=True).load((SRC / "configs.yaml").read_text())
    config = common.Config(configs["defaults"]).update(configs[suite])
    return config if small is None else config.update({**SMALL, **small})


# ----- inputs -----
def make_batch(obs: dict, actions: int, discrete: bool, seed: int) -> dict:
    rng = np.random.RandomState(seed)
    batch = {}
    for key, shape in obs.items():
        if len(shape) == 3:
            batch[key] = rng.randint(0, 256, (B, T, *shape)).astype(np.uint8)
        else:
            batch[key] = rng.randn(B, T, *shape).astype(np.float32)
    if discrete:
        batch["action"] = np.eye(actions, dtype=np.float32)[rng.randint(0, actions, (B, T))]
    else:
        batch["action"] = rng.uniform(-1, 1, (B, T, actions)).astype(np.float32)
    batch["reward"] = rng.randn(B, T).astype(np.float32)
    # Rows 1 and 3 start an episode; row 0 and 2 continue the carried state;
    # row 2 ends an episode at t = 2 and starts the next at t = 3.
    is_first = np.zeros((B, T), bool)
    is_first[1, 0] = is_first[3, 0] = is_first[2, 3] = True
    is_terminal = np.zeros((B, T), bool)
    is_terminal[2, 2] = True
    batch.update(is_first=is_first, is_last=is_terminal.copy(), is_terminal=is_terminal)
    return batch


def make_state(config, seed: int) -> dict:
    rng = np.random.RandomState(seed)
    rssm = config.rssm
    state = {"deter": np.tanh(rng.randn(B, rssm.deter)).astype(np.float32)}
    if rssm.discrete:
        state["logit"] = rng.randn(B, rssm.stoch, rssm.discrete).astype(np.float32)
        index = rng.randint(0, rssm.discrete, (B, rssm.stoch))
        state["stoch"] = np.eye(rssm.discrete, dtype=np.float32)[index]
    else:
        state["mean"] = rng.randn(B, rssm.stoch).astype(np.float32)
        state["std"] = (0.1 + np.log1p(np.exp(rng.randn(B, rssm.stoch)))).astype(np.float32)
        state["stoch"] = (state["mean"] + state["std"] * rng.randn(B, rssm.stoch)).astype(
            np.float32
        )
    return state


# ----- the release's variables by path -----
def layer_variables(layer, prefix: str):
    for var in layer.variables:
        yield f"{prefix}/{var.name.split('/')[-1].split(':')[0]}", var


def module_variables(module, prefix: str):
    """(path, variable) of a release module, walking its lazily created layers."""
    import tensorflow as tf

    for name, child in sorted(getattr(module, "_modules", {}).items()):
        if isinstance(child, tf.keras.layers.Layer):
            yield from layer_variables(child, f"{prefix}/{name}")
        elif getattr(child, "_layer", "unset") is not None and hasattr(child, "_layer"):
            yield from layer_variables(child._layer, f"{prefix}/{name}")  # NormLayer
        elif hasattr(child, "_modules"):
            yield from module_variables(child, f"{prefix}/{name}")  # DistLayer


def agent_variables(agent) -> dict:
    wm, ac = agent.wm, agent._task_behavior
    paths = {}
    for name, module in [
        ("encoder", wm.encoder),
        ("rssm", wm.rssm),
        *[(k, v) for k, v in wm.heads.items()],
        ("meta", wm.meta),
        ("actor", ac.actor),
        ("critic", ac.critic),
        ("slow_critic", ac._target_critic),
    ]:
        paths.update(module_variables(module, name))
    cell = wm.rssm._cell
    paths.update(layer_variables(cell._layer, "rssm/cell/dense"))
    paths.update(layer_variables(cell._norm, "rssm/cell/norm"))
    paths.update(layer_variables(wm.value_norm, "value_norm"))
    paths.update(layer_variables(wm.weight_norm, "weight_norm"))
    paths["reward_norm/mag"] = ac.rewnorm.mag
    return paths


def optimizer_slots(agent, paths: dict) -> dict:
    """Adam's step count and first and second moments of every variable it updates."""
    out = {}
    ac = agent._task_behavior
    for opt in (agent.wm.model_opt, agent.wm.meta_opt, ac.actor_opt, ac.critic_opt):
        adam = opt._opt
        out[f"{opt._name}_opt/iterations"] = adam.iterations.numpy()
        for path, var in paths.items():
            for slot in ("m", "v"):
                try:
                    out[f"{path}/{slot}"] = adam.get_slot(var, slot).numpy()
                except KeyError:  # a variable this optimizer does not update
                    break
    return out


# ----- building -----
def build_agent(tf, common, agent_module, config, obs, actions, discrete, batch, state, tape):
    """The released agent with every network variable created (eagerly, no update)."""
    from noise import replaced_samplers

    obs_space, act_space = spaces(obs, actions, discrete)
    agent = agent_module.Agent(config, obs_space, act_space, common.Counter(0))
    wm, ac = agent.wm, agent._task_behavior
    with replaced_samplers(tape):
        data = wm.preprocess({k: tf.constant(v) for k, v in batch.items()})
        embed = wm.encoder(data)
        post, prior = wm.rssm.observe(embed, data["action"], data["is_first"], to_tf(tf, state))
        feat = wm.rssm.get_feat(post)
        for head in wm.heads.values():
            head(feat)
        for net in (ac.actor, ac.critic, ac._target_critic):
            net(feat)
        wm.meta(tf.zeros(feat.shape[:-1] + [meta_input_size(config)]))
        wm.value_norm(tf.zeros([2 * B, T, 1]), training=True)
        wm.weight_norm(tf.zeros([B, T, 1]), training=True)
    return agent


def meta_input_size(config) -> int:
    rssm = config.rssm
    stats = rssm.stoch * rssm.discrete if rssm.discrete else rssm.stoch
    return rssm.deter + 2 * stats + 2


def to_tf(tf, state: dict) -> dict:
    return {k: tf.constant(v) for k, v in state.items()}


def perturb(paths: dict, seed: int) -> None:
    rng = np.random.RandomState(seed)
    for path in sorted(paths):
        var = paths[path]
        if var.trainable:
            var.assign(var.numpy() + 0.05 * rng.randn(*var.shape).astype(np.float32))


# ----- recording -----
class Recorder:
    """Wraps release methods to keep what they compute (the release runs eagerly)."""

    def __init__(self):
        self.values: dict[str, object] = {}
        self.calls: dict[str, int] = {}
        self._undo = []

    def keep(self, name: str, value) -> None:
        index = self.calls.get(name, 0)
        self.calls[name] = index + 1
        self.values[f"{name}{index}" if index else name] = value

    def wrap(self, owner, attr: str, name: str, keep=lambda out, args: out) -> None:
        original = owner.__dict__[attr]

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            self.keep(name, keep(out, args))
            return out

        setattr(owner, attr, wrapped)
        self._undo.append((owner, attr, original))

    def undo(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo = []


def record_optimizers(recorder: Recorder, common, paths: dict) -> None:
    """Gradients before clipping: g_low and the actor and critic gradients (taken
    by Optimizer.__call__), g_up (meta_opt.get_grads) and h (meta_opt.apply_grads)."""
    by_id = {id(v): p for p, v in paths.items()}
    named = lambda varibs, grads: {by_id[id(v)]: g for v, g in zip(varibs, grads)}
    call, get_grads, apply_grads = (
        common.Optimizer.__dict__[k] for k in ("__call__", "get_grads", "apply_grads")
    )

    def wrapped_call(self, tape, loss, modules):
        gradient = tape.gradient

        def keep_gradient(target, sources, *args, **kwargs):
            grads = gradient(target, sources, *args, **kwargs)
            recorder.keep(f"grad_{self._name}", named(sources, grads))
            return grads

        tape.gradient = keep_gradient
        try:
            return call(self, tape, loss, modules)
        finally:
            del tape.gradient

    def wrapped_get_grads(self, tape, loss, modules):
        grads = get_grads(self, tape, loss, modules)
        if self._name == "meta":  # the upper loss's gradient on encoder + RSSM
            varibs = tf_flatten(modules)
            varibs = [v for v in varibs if v.name[-6:-2] != "mean" and v.name[-10:-2] != "variance"]
            recorder.keep("g_up", named(varibs, grads))
        return grads

    def wrapped_apply_grads(self, grads, modules):
        varibs = [
            v
            for v in tf_flatten(modules)
            if v.name[-6:-2] != "mean" and v.name[-10:-2] != "variance"
        ]
        recorder.keep("h", named(varibs, grads))
        return apply_grads(self, grads, modules)

    for attr, fn in (
        ("__call__", wrapped_call),
        ("get_grads", wrapped_get_grads),
        ("apply_grads", wrapped_apply_grads),
    ):
        recorder._undo.append((common.Optimizer, attr, common.Optimizer.__dict__[attr]))
        setattr(common.Optimizer, attr, fn)


def tf_flatten(modules):
    import tensorflow as tf

    modules = modules if hasattr(modules, "__len__") else (modules,)
    return tf.nest.flatten([m.variables for m in modules])


def run_update(tf, common, agent_module, agent, mode, batch, state, paths, tape):
    """One update of the release, recording along the way."""
    from noise import replaced_samplers

    rec = Recorder()
    wm_cls, ac_cls = agent_module.WorldModel, agent_module.ActorCritic
    rec.wrap(wm_cls, "meta_loss", "meta_loss")
    rec.wrap(wm_cls, "model_loss", "model_loss")
    rec.wrap(wm_cls, "imagine", "imagine")
    rec.wrap(ac_cls, "target", "target")
    rec.wrap(ac_cls, "actor_loss", "actor_loss")
    rec.wrap(ac_cls, "critic_loss", "critic_loss")
    rec.wrap(type(agent.wm.rssm), "observe", "observe")
    record_optimizers(rec, common, paths)
    fn = agent.train if mode == "tempo" else agent.train_without_meta
    data = {k: tf.constant(v) for k, v in batch.items()}
    try:
        with replaced_samplers(tape):
            new_state, metrics = fn(data, to_tf(tf, state))
    finally:
        rec.undo()
    return rec.values, metrics, new_state


def flatten_update(values: dict, metrics: dict, new_state: dict) -> dict:
    out = {}
    put = lambda name, x: out.__setitem__(name, np.asarray(x))
    for name, value in values.items():
        if name.startswith("observe"):
            post, prior = value
            for k in post:
                put(f"{name}/post/{k}", post[k])
                put(f"{name}/prior/{k}", prior[k])
        elif name == "meta_loss":
            loss, vals, _ = value
            put("upper/loss", loss)
            put("upper/value_post", vals["post"])
            put("upper/value_prior", vals["prior"])
        elif name == "model_loss":
            loss, _, outs, _ = value
            put("lower/loss", loss)
            put("lower/kl", outs["kl"])
            put("lower/embed", outs["embed"])
            for k, like in outs["likes"].items():
                put(f"lower/like/{k}", like)
            if "weights" in outs:
                put("lower/weights", outs["weights"])
        elif name == "imagine":
            for k in ("feat", "action", "discount", "weight"):
                put(f"imagine/{k}", value[k])
        elif name == "target":
            put("returns", value[0])
        elif name in ("actor_loss",):
            put("actor_loss", value[0])
        elif name == "critic_loss":
            put("critic_loss", value[0])
        else:  # gradients by path
            for path, grad in value.items():
                put(f"{name}/{path}", grad)
    for k, v in metrics.items():
        put(f"metrics/{k}", v)
    for k, v in new_state.items():
        put(f"new_state/{k}", v)
    return out


# ----- forward passes -----
def forward(tf, agent, config, batch, state, tape) -> dict:
    from noise import replaced_samplers

    wm, ac = agent.wm, agent._task_behavior
    out = {}
    put = lambda name, x: out.__setitem__(f"fwd/{name}", np.asarray(x))
    with replaced_samplers(tape):
        data = wm.preprocess({k: tf.constant(v) for k, v in batch.items()})
        embed = wm.encoder(data)
        post, prior = wm.rssm.observe(embed, data["action"], data["is_first"], to_tf(tf, state))
    put("embed", embed)
    for k in post:
        put(f"post/{k}", post[k])
        put(f"prior/{k}", prior[k])
    feat = wm.rssm.get_feat(post)
    put("feat", feat)
    for key, dist in wm.heads["decoder"](feat).items():
        put(f"decoder/{key}/mean", dist.mode()[:1, :2])  # a slice: images are large
        put(f"decoder/{key}/log_prob", dist.log_prob(data[key]))
    reward = wm.heads["reward"](feat)
    put("reward/mean", reward.mode())
    put("reward/log_prob", reward.log_prob(data["reward"]))
    if "discount" in wm.heads:
        disc = wm.heads["discount"](feat)
        put("discount/mean", disc.mean())
        put("discount/log_prob", disc.log_prob(data["discount"]))
    for name, net in (("critic", ac.critic), ("slow_critic", ac._target_critic)):
        dist = net(feat)
        put(f"{name}/mean", dist.mode())
        put(f"{name}/log_prob", dist.log_prob(data["reward"]))
    actor = ac.actor(feat)
    if hasattr(actor, "distribution"):  # Independent(TruncNormalDist)
        put("actor/loc", actor.distribution.loc)
        put("actor/scale", actor.distribution.scale)
    else:
        put("actor/logits", actor.logits_parameter())
    put("actor/log_prob", actor.log_prob(data["action"]))
    put("actor/entropy", actor.entropy())
    _, kl_value = wm.rssm.kl_loss(post, prior, **config.kl)
    put("kl", kl_value)
    rng = np.random.RandomState(7)
    meta_in = rng.randn(B, T, meta_input_size(config)).astype(np.float32)
    put("meta/inputs", meta_in)
    put("meta/weights", wm.meta(tf.constant(meta_in)))
    values = rng.randn(2 * B, T, 1).astype(np.float32) * 3 + 1
    put("value_norm/inputs", values)
    put("value_norm/outputs", wm.value_norm(tf.constant(values), training=True))
    return out


# ----- main -----
def generate(name: str, spec: dict, tf, common, agent_module) -> dict:
    config = make_config(common, spec["suite"], spec["small"])
    batch = make_batch(spec["obs"], spec["actions"], spec["discrete"], seed=1)
    state = make_state(config, seed=2)
    from noise import NoiseTape

    out = {f"batch/{k}": v for k, v in batch.items()}
    out.update({f"state/{k}": v for k, v in state.items()})
    before = None
    for mode in ("tempo", "dreamerv2"):
        tf.keras.utils.set_random_seed(0)  # Python, numpy and TF: the initializers
        agent = build_agent(
            tf,
            common,
            agent_module,
            config,
            spec["obs"],
            spec["actions"],
            spec["discrete"],
            batch,
            state,
            NoiseTape(seed=3),
        )
        paths = agent_variables(agent)
        perturb(paths, seed=4)
        snapshot = {p: v.numpy() for p, v in paths.items()}
        if before is None:
            before = snapshot
            out.update({f"before/{p}": v for p, v in before.items()})
            fwd_tape = NoiseTape(seed=5)
            out.update(forward(tf, agent, config, batch, state, fwd_tape))
            out.update(fwd_tape.to_arrays("fwd/noise/"))
            for p, v in paths.items():
                v.assign(before[p])
        assert sorted(snapshot) == sorted(before)
        for p, v in paths.items():  # the same start for both modes
            v.assign(before[p])
        tape = NoiseTape(seed=6)
        values, metrics, new_state = run_update(
            tf, common, agent_module, agent, mode, batch, state, paths, tape
        )
        update = flatten_update(values, metrics, new_state)
        update.update({f"after/{p}": v.numpy() for p, v in paths.items()})
        update.update({f"after/{k}": v for k, v in optimizer_slots(agent, paths).items()})
        update.update(tape.to_arrays("noise/"))
        out.update({f"{mode}/{k}": v for k, v in update.items()})
    out["config"] = np.array(
        json.dumps(
            {
                "suite": spec["suite"],
                **SMALL,
                **spec["small"],
                "actions": spec["actions"],
                "discrete_actions": spec["discrete"],
            }
        )
    )
    return out


def parameter_counts(tf, common, agent_module) -> dict:
    from noise import NoiseTape

    counts = {}
    for suite, spec in FULL.items():
        config = make_config(common, suite, None)
        batch = make_batch(spec["obs"], spec["actions"], spec["discrete"], seed=0)
        agent = build_agent(
            tf,
            common,
            agent_module,
            config,
            spec["obs"],
            spec["actions"],
            spec["discrete"],
            batch,
            make_state(config, 0),
            NoiseTape(),
        )
        size = lambda mods: int(sum(np.prod(v.shape) for m in mods for v in m.variables))
        wm, ac = agent.wm, agent._task_behavior
        counts[suite] = {
            "world_model": size([wm.encoder, wm.rssm, *wm.heads.values()]),
            "meta_weighter": size([wm.meta]),
            "actor": size([ac.actor]),
            "critic": size([ac.critic]),
            "encoder": size([wm.encoder]),
            "rssm": size([wm.rssm]),
            "decoder": size([wm.heads["decoder"]]),
            "reward": size([wm.heads["reward"]]),
        }
        if "discount" in wm.heads:
            counts[suite]["discount"] = size([wm.heads["discount"]])
    return counts


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    logging.getLogger().setLevel("ERROR")
    warnings.filterwarnings("ignore")
    tf = install_shims()
    tf.config.run_functions_eagerly(True)
    sys.path.insert(0, str(SRC))
    import agent as agent_module
    import common

    if sys.argv[1:] == ["counts"]:
        counts = parameter_counts(tf, common, agent_module)
        (HERE / "param_counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
        print(json.dumps(counts), file=sys.stderr)
        return
    only = sys.argv[1:] or list(CONFIGS)
    for name in only:
        out = generate(name, CONFIGS[name], tf, common, agent_module)
        path = HERE / f"golden_{name}.npz"
        np.savez_compressed(path, **out)
        print(f"{path}: {len(out)} arrays, {path.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    if not sys.argv[1:]:
        counts = parameter_counts(tf, common, agent_module)
        (HERE / "param_counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
        print(json.dumps(counts), file=sys.stderr)


if __name__ == "__main__":
    main()
