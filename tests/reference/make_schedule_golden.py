#!/usr/bin/env python
"""Records WHEN the RELEASED training loop does things, in agent steps.

Writes tests/reference/golden_schedule.json. Run by hand, in tempo's own venv
(TensorFlow 2.21, Keras 2 through TF_USE_LEGACY_KERAS, numpy 2), never by the
test suite:

    TEMPO_REF_SRC=/work/ref/src .venv/bin/python tests/reference/make_schedule_golden.py

(TEMPO_REF_SRC defaults to /work/ref/src: a checkout of github
deng-ai-lab/TEMPO at ea83919, see README.md beside this file.) It takes under a
minute on two CPU cores, most of it importing TensorFlow, and its output
is deterministic: rerunning it gives the same file byte for byte.

For each case it runs the release's own `train.py` `main()` (imported from the
release, unmodified; its flags passed through `sys.argv` in its own `--key
value` syntax, the logdir a fresh temporary folder): its Replay, Driver,
Counter, Every/Until, Logger with its three outputs, prefill with its
RandomAgent, pretraining, the evaluation/training loop and its per-episode
callbacks all run for real. Replaced, for the duration of each run only:

- `agent.Agent` (the real `agent` module is imported, only its `Agent` is
  swapped): a stub that trains nothing. `train(data, state)` returns
  `(state, {'loss': 0.0})`, what `common.CarryOverState` unpacks;
  `report(data)` returns `{}`; `policy(obs, state, mode)` returns
  `({'action': zeros [n_envs, 2]}, state)`, what `common.Driver` expects;
  `save`/`load` do nothing. Each call appends `[event, int(step)]` to the
  event log, `step` being the release's `common.Counter` handed to the
  constructor:
    `update`       every `train` call (the first one after construction, the
                   pretraining ones, and those of train_step);
    `report_train` `report` called from train.py's `train_step` (the
                   `report_dataset` batch, logged with the fps line);
    `report_eval`  `report` called from `main` itself (the `eval_dataset`
                   batch, before each evaluation); told apart by the name of
                   the calling function (`sys._getframe`);
    `eval_policy`  the first `policy(..., mode='eval')` call of each
                   evaluation episode (the observation batch is all `is_first`);
    `save`         every `save` call.
- `common.Logger.write`: wrapped, the release's own method still runs; each
  call appends `log` when called with `fps=True` (train_step's periodic log)
  and `write` otherwise (the top of each loop pass, each episode's summary).
- The environment: `common.DMC` answers the task `dmc_dummy` with `DummyEnv`
  (any other task goes to the real DMC). It follows the release's env
  convention (`obs_space`/`act_space` dicts of `gym.spaces.Box`; `reset()` and
  `step(action)` return dicts with `image` (4x4x3 zeros, there because the
  release's `log_keys_video` default names it), a vector `obs` = [env steps so
  far, episode index, step in episode], `reward` 1.0, `is_first`, `is_last`,
  `is_terminal`). Episodes last exactly 23 agent steps: `is_last` on the 23rd
  step, `is_terminal` never. Its action is continuous, of size 2. train.py
  wraps it in `common.NormalizeAction` and `common.TimeLimit` (limit 0: none)
  as it wraps DMC.
- train.py's GPU assertion and pinning: `tf.config.experimental.
  list_physical_devices('GPU')` answers one made-up `PhysicalDevice`,
  `set_visible_devices` and `set_memory_growth` do nothing; every update is
  the stub's, so nothing runs on a device.
- Imports the release needs and tempo's venv lacks: `gym` (if not importable:
  a stub module with `gym.spaces.Box`, its `low`, `high`, `shape`, `dtype`; the
  release's RandomAgent samples through TensorFlow Probability, not
  `Box.sample`); `np.bool` & co. (aliases, only where numpy lacks them);
  `tf.keras.mixed_precision.experimental` (as in make_golden.py); and
  `ruamel.yaml`: if ruamel is not installed, a stub module whose `safe_load`
  is `mini_yaml_load` below (the subset of YAML 1.2 that configs.yaml uses:
  block mappings, flow mappings and lists, quoted strings, and the YAML 1.2
  core-schema scalars as ruamel resolves them, so `1e4` is the float 10000.0,
  not YAML 1.1's string; checked equal to ruamel 0.19's reading of the whole
  file) and whose `safe_dump` writes JSON (for Config.save's config.yaml).
  An installed ruamel.yaml is used through `YAML(typ='safe')`, as
  released_train.py does (0.18 removed the module-level functions).

Cases (all on `--configs defaults`; the flags are in the JSON):
  `base`         prefill 60 (2 episodes of 23 plus 14 steps of a third),
                 pretrain 3, train_every 5, log_every 7, eval_every 40,
                 steps 200;
  `prefill50`    the same with prefill 50 (not a multiple of 23);
  `every3`       base with train_every 3, log_every 10, eval_every 25,
                 pretrain 0.

Each case in the JSON holds `flags` (what was passed), `events` (ordered
`[event, step]` pairs), `prefill_end` (the counter when Agent was
constructed), `final_step` (the counter when main returned), `train_episodes`
and `eval_episodes` (each episode file the release's Replay wrote, in the
order the env produced it: `length` from the file name, `first_env_step`
(that env's own step count, train or eval env, at its first transition),
`is_first_at` (the indices of its `is_first` transitions: more than one means
the Replay glued two env episodes together)), `train_episode_lengths`,
`train_env_episode_ends` (the agent step at which each training env episode
ended), and `train_policy_modes` (how many train-policy calls ran in each
mode).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile
import types
import warnings

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from release_shims import install_tf_shims  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SRC = pathlib.Path(os.environ.get("TEMPO_REF_SRC", "/work/ref/src"))
OUT = HERE / "golden_schedule.json"

EPISODE_LENGTH = 23
ACT_DIM = 2

BASE_FLAGS = {
    "configs": "defaults",
    "task": "dmc_dummy",
    "action_repeat": 1,
    "time_limit": 0,
    "steps": 200,
    "prefill": 60,
    "pretrain": 3,
    "train_every": 5,
    "train_steps": 1,
    "log_every": 7,
    "eval_every": 40,
    "eval_eps": 1,
    "envs": 1,
    "envs_parallel": "none",
    "jit": False,
    "seed": 0,
    "replay.minlen": 8,
    "replay.maxlen": 8,
    "dataset.batch": 2,
    "dataset.length": 8,
    "encoder.mlp_keys": "obs",
    "encoder.cnn_keys": "$^",
    "decoder.mlp_keys": "obs",
    "decoder.cnn_keys": "$^",
}
CASES = {
    "base": {},
    "prefill50": {"prefill": 50},
    "every3": {"train_every": 3, "log_every": 10, "eval_every": 25, "pretrain": 0},
}


# ----- a YAML reader for configs.yaml (when ruamel.yaml is absent) -----
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL = {
    **{k: True for k in ("true", "True", "TRUE")},
    **{k: False for k in ("false", "False", "FALSE")},
    **{k: None for k in ("null", "Null", "NULL", "~", "")},
}


def _scalar(text: str):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        body = text[1:-1]
        return body.replace("''", "'") if text[0] == "'" else json.loads(text)
    if text in _SPECIAL:
        return _SPECIAL[text]
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    low = text.lower()
    if low in (".inf", "+.inf"):
        return float("inf")
    if low == "-.inf":
        return float("-inf")
    if low == ".nan":
        return float("nan")
    return text


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _flow(text: str, pos: int = 0):
    """Parses a flow value starting at text[pos]; returns (value, next pos)."""
    while text[pos] == " ":
        pos += 1
    if text[pos] in "[{":
        closing = "]" if text[pos] == "[" else "}"
        is_map = text[pos] == "{"
        result = {} if is_map else []
        pos += 1
        while True:
            while text[pos] in " ,":
                pos += 1
            if text[pos] == closing:
                return result, pos + 1
            if is_map:
                end = text.index(":", pos)
                key = _scalar(text[pos:end])
                value, pos = _flow(text, end + 1)
                result[key] = value
            else:
                value, pos = _flow(text, pos)
                result.append(value)
    if text[pos] in "'\"":
        end = text.index(text[pos], pos + 1)
        return _scalar(text[pos : end + 1]), end + 1
    end = pos
    while end < len(text) and text[end] not in ",]}":
        end += 1
    return _scalar(text[pos:end]), end


def mini_yaml_load(text: str):
    """The block-and-flow subset of YAML 1.2 that the release's configs.yaml uses."""
    root: dict = {}
    stack = [(-1, root)]  # (indent, mapping)
    for raw in text.splitlines():
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        match = re.match(r"^((?:'[^']*'|\"[^\"]*\"|[^:])+?):(?:\s+(.*))?$", body)
        if not match:
            raise ValueError(f"mini_yaml_load: cannot read {raw!r}")
        key, value = _scalar(match.group(1)), match.group(2)
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if value is None or value == "":
            parent[key] = {}
            stack.append((indent, parent[key]))
        else:
            parsed, end = _flow(value)
            if value[end:].strip():
                raise ValueError(f"mini_yaml_load: trailing text in {raw!r}")
            parent[key] = parsed

    # A key with no value and no children is YAML's null.
    def finish(node):
        for k, v in node.items():
            if isinstance(v, dict):
                if not v:
                    node[k] = None
                else:
                    finish(v)
        return node

    # Top-level blocks are mappings even when empty only if they had children.
    return finish(root)


def install_yaml() -> None:
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    try:
        import ruamel.yaml as ry

        def safe_load(text):
            return ry.YAML(typ="safe", pure=True).load(text)

        def safe_dump(data, stream):
            ry.YAML(typ="safe", pure=True).dump(plain(data), stream)

        ry.safe_load, ry.safe_dump = safe_load, safe_dump
    except ImportError:
        ruamel = types.ModuleType("ruamel")
        ry = types.ModuleType("ruamel.yaml")
        ry.safe_load = mini_yaml_load
        ry.safe_dump = lambda data, stream: stream.write(json.dumps(plain(data), indent=2))
        ruamel.yaml = ry
        sys.modules["ruamel"], sys.modules["ruamel.yaml"] = ruamel, ry


# ----- the replaced pieces -----
class Recorder:
    def __init__(self):
        self.events: list = []
        self.agents: list = []
        self.envs: list = []


def make_dummy_env_class(gym_spaces, record: Recorder):
    class DummyEnv:
        """Episodes of exactly EPISODE_LENGTH agent steps, release env convention."""

        def __init__(self):
            self.total_steps = 0
            self.episode = -1
            self.t = None
            self.episode_ends: list = []
            record.envs.append(self)

        @property
        def obs_space(self):
            return {
                "image": gym_spaces.Box(0, 255, (4, 4, 3), dtype=np.uint8),
                "obs": gym_spaces.Box(-np.inf, np.inf, (3,), dtype=np.float32),
                "reward": gym_spaces.Box(-np.inf, np.inf, (), dtype=np.float32),
                "is_first": gym_spaces.Box(0, 1, (), dtype=bool),
                "is_last": gym_spaces.Box(0, 1, (), dtype=bool),
                "is_terminal": gym_spaces.Box(0, 1, (), dtype=bool),
            }

        @property
        def act_space(self):
            return {"action": gym_spaces.Box(-1, 1, (ACT_DIM,), dtype=np.float32)}

        def _obs(self, reward, first, last):
            return {
                "image": np.zeros((4, 4, 3), np.uint8),
                "obs": np.array([self.total_steps, self.episode, self.t], np.float32),
                "reward": reward,
                "is_first": first,
                "is_last": last,
                "is_terminal": False,
            }

        def step(self, action):
            assert self.t is not None, "step before reset"
            assert np.shape(action["action"]) == (ACT_DIM,), action
            self.t += 1
            self.total_steps += 1
            last = self.t >= EPISODE_LENGTH
            obs = self._obs(1.0, False, last)
            if last:
                self.episode_ends.append(self.total_steps)
                self.t = None
            return obs

        def reset(self):
            self.episode += 1
            self.t = 0
            return self._obs(0.0, True, False)

    return DummyEnv


def make_stub_agent_class(record: Recorder):
    class StubAgent:
        """Trains nothing; logs when the release's loop calls it."""

        def __init__(self, config, obs_space, act_space, step):
            self.config, self.obs_space, self.act_space, self.step = (
                config,
                obs_space,
                act_space,
                step,
            )
            self.prefill_end = int(step)
            self.policy_modes = collections.Counter()
            record.agents.append(self)

        def _log(self, event):
            record.events.append([event, int(self.step)])

        def train(self, data, state=None):
            self._log("update")
            return state, {"loss": 0.0}

        def report(self, data):
            caller = sys._getframe(1).f_code.co_name
            self._log(
                {"train_step": "report_train", "main": "report_eval"}.get(
                    caller, f"report_{caller}"
                )
            )
            return {}

        def policy(self, obs, state=None, mode="train"):
            first = np.asarray(obs["is_first"])
            if mode == "eval":
                if first.all():
                    self._log("eval_policy")
            else:
                self.policy_modes[mode] += 1
            n = len(first)
            return {"action": np.zeros((n, ACT_DIM), np.float32)}, state

        def save(self, filename):
            self._log("save")

        def load(self, filename):
            self._log("load")

    return StubAgent


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def release_argv(flags: dict, logdir: pathlib.Path) -> list:
    argv = [str(SRC / "train.py")]  # train.py reads configs.yaml beside argv[0]
    for key, value in {**flags, "logdir": str(logdir)}.items():
        argv += [f"--{key}", str(value)]
    return argv


def read_episodes(directory: pathlib.Path) -> list:
    episodes = []
    for path in directory.glob("*.npz"):
        with np.load(path) as data:
            obs = data["obs"]
            is_first = data["is_first"]
        episodes.append(
            {
                "length": int(path.name.split("-")[-1][: -len(".npz")]),
                "first_env_step": int(obs[0, 0]),
                "is_first_at": [int(i) for i in np.flatnonzero(is_first)],
            }
        )
    return sorted(episodes, key=lambda e: e["first_env_step"])


def run_case(name: str, overrides: dict, tf, agent, common, train) -> dict:
    flags = {**BASE_FLAGS, **overrides}
    record = Recorder()
    DummyEnv = make_dummy_env_class(sys.modules["gym"].spaces, record)
    real_dmc = common.DMC

    def dmc(task, *args, **kwargs):
        return DummyEnv() if task == "dummy" else real_dmc(task, *args, **kwargs)

    real_write = common.Logger.write

    def write(self, fps=False):
        record.events.append(["log" if fps else "write", int(self._step)])
        return real_write(self, fps)

    exp = tf.config.experimental
    fake_gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    real_list = exp.list_physical_devices

    def list_devices(device_type=None):
        return [fake_gpu] if device_type == "GPU" else real_list(device_type)

    logdir = pathlib.Path(tempfile.mkdtemp(prefix=f"schedule_{name}_"))
    output = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(patched(agent, "Agent", make_stub_agent_class(record)))
            stack.enter_context(patched(common, "DMC", dmc))
            stack.enter_context(patched(common.Logger, "write", write))
            stack.enter_context(patched(exp, "list_physical_devices", list_devices))
            stack.enter_context(patched(exp, "set_visible_devices", lambda *a, **k: None))
            stack.enter_context(patched(exp, "set_memory_growth", lambda *a, **k: None))
            stack.enter_context(patched(sys, "argv", release_argv(flags, logdir)))
            stack.enter_context(contextlib.redirect_stdout(output))
            train.main()
        (agnt,) = record.agents
        train_eps = read_episodes(logdir / "train_episodes")
        eval_eps = read_episodes(logdir / "eval_episodes")
        return {
            "flags": flags,
            "episode_length": EPISODE_LENGTH,
            "prefill_end": agnt.prefill_end,
            "final_step": int(agnt.step),
            "events": record.events,
            "train_episode_lengths": [e["length"] for e in train_eps],
            "train_episodes": train_eps,
            "eval_episodes": eval_eps,
            "train_env_episode_ends": record.envs[0].episode_ends,
            "train_policy_modes": dict(sorted(agnt.policy_modes.items())),
        }
    except BaseException:
        sys.stderr.write(output.getvalue()[-5000:])
        raise
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def summarize(name: str, case: dict) -> str:
    def at(event):
        return [s for e, s in case["events"] if e == event]

    updates = at("update")
    return "\n".join(
        [
            f"[{name}] prefill_end {case['prefill_end']}  final_step {case['final_step']}",
            f"  updates {len(updates)}; first 5 at {updates[:5]}; "
            f"{sum(s == case['prefill_end'] for s in updates)} at prefill_end",
            f"  eval episodes at {at('eval_policy')}; eval reports at {at('report_eval')}",
            f"  logs (fps) at {at('log')}",
            f"  train reports at {at('report_train')}",
            f"  saves at {at('save')}",
            f"  train replay episode lengths {case['train_episode_lengths']}",
        ]
    )


def dump(golden: dict) -> str:
    """JSON with one [event, step] pair per line."""
    text = json.dumps(golden, indent=2, sort_keys=False)
    # Collapse short flat lists (pairs, lengths, indices) onto one line.
    return (
        re.sub(
            r"\[\s*([^\[\]{}]*?)\s*\]",
            lambda m: (
                "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]"
                if m.group(1).strip()
                else "[]"
            ),
            text,
        )
        + "\n"
    )


def main() -> None:
    logging.getLogger().setLevel("ERROR")
    warnings.filterwarnings("ignore")
    tf = install_tf_shims()
    install_yaml()
    sys.path.insert(0, str(SRC))
    import ruamel.yaml as ry

    configs = ry.safe_load((SRC / "configs.yaml").read_text())
    assert configs["defaults"]["log_every"] == 1e4 and isinstance(
        configs["defaults"]["steps"], float
    )

    import agent
    import common
    import train

    golden = {
        "source": "released TEMPO train.py main() (deng-ai-lab/TEMPO ea83919), "
        "made by tests/reference/make_schedule_golden.py",
        "cases": {},
    }
    for name, overrides in CASES.items():
        case = run_case(name, overrides, tf, agent, common, train)
        golden["cases"][name] = case
        print(summarize(name, case))
    OUT.write_text(dump(golden))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
