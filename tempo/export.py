"""SavedModel export of a trained policy that runs without tempo installed.

The loaded object has two `tf.function`s with input signatures:
`initial_state(batch_size)` -> state dict, and `step(observation, state)` ->
(action, new state), where `observation` holds every key the environment
returns (with a leading batch dimension) and the action is the mode action in
the environment's convention (one-hot or in [-1, 1]), from the posterior
latent's mode: a deterministic policy (the release samples the latent when it
evaluates; `train.eval_state_mean = True` makes evaluation act like this). `policy_spec.json`
beside it lists the observation keys, shapes and dtypes.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import tensorflow as tf

from tempo.agent.agent import Agent

SPEC_FILE = "policy_spec.json"


class ExportedPolicy(tf.Module):
    """The deterministic policy with explicit signatures (what SavedModel keeps)."""

    def __init__(self, agent: Agent, obs_spec: dict[str, tuple[tuple[int, ...], str]]):
        super().__init__(name="policy")
        # Only the variables are tracked: tracking the Keras models themselves would
        # make SavedModel trace every layer's `call`, and heads return distributions.
        self._agent = _Untracked(agent)
        wm = agent.world_model
        self.policy_variables = [*wm.encoder.variables, *wm.rssm.variables, *agent.actor.variables]
        obs_signature = {
            key: tf.TensorSpec([None, *shape], tf.as_dtype(dtype), name=key)
            for key, (shape, dtype) in obs_spec.items()
        }
        example = agent.initial_state(1)
        state_signature = {
            key: tf.TensorSpec([None, *value.shape[1:]], value.dtype, name=f"state_{key}")
            for key, value in example.items()
        }
        self.initial_state = tf.function(
            self._initial_state,
            input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")],
            autograph=False,
        )
        self.step = tf.function(
            self._step, input_signature=[obs_signature, state_signature], autograph=False
        )
        # Signatures need flat outputs: {"action", "state_<key>"...} for TF Serving.
        self.serve = tf.function(
            self._serve, input_signature=[obs_signature, state_signature], autograph=False
        )

    def _initial_state(self, batch_size):
        return self._agent.value.initial_state(batch_size)

    def _step(self, observation, state):
        no_seed = tf.zeros([2], tf.int32)
        return self._agent.value.step(observation, state, False, no_seed, sample_latent=False)

    def _serve(self, observation, state):
        action, new_state = self._step(observation, state)
        return {"action": action, **{f"state_{k}": v for k, v in new_state.items()}}


class _Untracked:
    """Holds an object without making it part of the checkpointed object graph."""

    def __init__(self, value):
        self.value = value


def observation_spec(obs_space: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(int(d) for d in s.shape), str(s.dtype)) for k, s in obs_space.items()}


def export_policy(
    agent: Agent, obs_space: dict, directory: str | os.PathLike, env_config: dict | None = None
) -> pathlib.Path:
    """Writes the SavedModel and its JSON spec to `directory`, replacing an older
    export only once the new one is complete. `env_config` (task, action repeat,
    ...) is recorded so the policy can be evaluated in the environment it was
    trained in."""
    directory = pathlib.Path(directory)
    spec = observation_spec(obs_space)
    module = ExportedPolicy(agent, spec)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".saved_model-", dir=directory.parent))
    try:
        tf.saved_model.save(
            module,
            str(staging),
            signatures={"serving_default": module.serve.get_concrete_function()},
        )
        meta = {
            "observation": {k: {"shape": list(s), "dtype": d} for k, (s, d) in spec.items()},
            "action_size": agent.action_size,
            "discrete": agent.discrete,
            "state": {k: list(v.shape[1:]) for k, v in agent.initial_state(1).items()},
            "env": dict(env_config or {}),
        }
        (staging / SPEC_FILE).write_text(json.dumps(meta, indent=2))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
