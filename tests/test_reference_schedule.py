"""The run's schedule against the released training loop's own.

`tests/reference/golden_schedule.json` holds what the release's `train.py`
`main()` did, unmodified, on a dummy task of 23-step episodes (made by
`tests/reference/make_schedule_golden.py`): at which agent steps it updated,
logged and evaluated, where its prefill ended, what its replay stored. Here a
tiny run of ours on the same task and settings must do the same up to its
budget. Deliberate differences, asserted as such: ours stops at the budget
(the release finishes its last evaluation period, 210-220 steps for a budget
of 200), evaluates once more there, and drops the episode its prefill stops
inside (the release glues its first steps onto the next episode).
"""

import json
import pathlib

import gymnasium
import numpy as np
import pytest

from tempo.logging import read_records

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent / "reference" / "golden_schedule.json").read_text()
)["cases"]
EPISODE = 23


class Counting(gymnasium.Env):
    """Episodes of exactly 23 steps, ended by a time limit; counts its steps."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    by_seed: dict = {}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self.steps = 0
            Counting.by_seed[seed] = self
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        self.steps += 1
        return np.full(3, self.t / EPISODE, np.float32), 0.0, False, self.t >= EPISODE, {}


gymnasium.register("TempoCounting-v0", entry_point=Counting)


def our_run(tmp_path, flags):
    """Runs ours with the release's flags; returns (update steps, log steps,
    eval steps, stored episode lengths in agent steps, summary)."""
    from support import tiny_trainer

    from tempo.run import train

    updates = []

    def trainer_fn(shapes, size, discrete, seed):
        # A real (tiny) agent acts; its update only counts, as what it computes
        # is not the question here (and tracing one costs half a minute).
        trainer = tiny_trainer(shapes, size, discrete, seed=seed, meta=False)

        def counted(batch, state):
            assert batch["is_first"].shape == (flags["dataset.batch"], flags["dataset.length"])
            updates.append(Counting.by_seed[0].steps)
            trainer.step.assign_add(1)
            return state, {}

        trainer.train = counted
        return trainer

    logdir = tmp_path / "run"
    summary = train(
        str(logdir),
        task="gym_TempoCounting-v0",
        steps=flags["steps"],
        seed=0,
        action_repeat=flags["action_repeat"],
        prefill=flags["prefill"],
        pretrain=flags["pretrain"] + 1,  # the release updates once before its pretraining
        train_every=flags["train_every"],
        train_steps=flags["train_steps"],
        log_every=flags["log_every"],
        eval_every=flags["eval_every"],
        eval_episodes=flags["eval_eps"],
        batch_size=flags["dataset.batch"],
        batch_length=flags["dataset.length"],
        prioritize_ends=False,
        checkpoint_every=1000,
        video_every=0,
        export=False,
        trainer_fn=trainer_fn,
    )
    records = read_records(logdir / "metrics.jsonl")
    logs = [r["step"] for r in records if "updates" in r]
    evals = [r["step"] for r in records if "eval/return" in r]
    lengths = []
    for path in sorted((logdir / "replay").glob("*.npz")):
        with np.load(path) as episode:
            lengths.append(int(np.sum(~episode["is_first"])))
    return updates, logs, evals, lengths, summary


def released(case, event):
    budget = case["flags"]["steps"]
    return [step for name, step in case["events"] if name == event and step <= budget]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_updates_logs_evaluations_and_prefill_fall_on_the_released_steps(tmp_path, name):
    case = GOLDEN[name]
    flags = case["flags"]
    budget = flags["steps"]
    updates, logs, evals, lengths, summary = our_run(tmp_path, flags)

    # Prefill: it ends at the release's step, then pretrain + 1 updates come there.
    assert updates[: flags["pretrain"] + 1] == [case["prefill_end"]] * (flags["pretrain"] + 1)
    # Every update at the release's step, from the first collection step on.
    assert updates == released(case, "update")
    # Logs on the release's grid; ours writes once more at the end of the run.
    assert logs[:-1] == [s for s in released(case, "log") if s < budget]
    assert logs[-1] == budget
    # Evaluations on the release's grid, and once more at the budget (ours only).
    assert evals[:-1] == released(case, "eval_policy")
    assert evals[-1] == budget and case["final_step"] > budget
    assert summary["step"] == budget

    # The replay: the same episodes, except the one the prefill stopped inside,
    # whose steps the release stores glued onto the next episode and ours drops.
    glued = [n for n in case["train_episode_lengths"] if n != EPISODE]
    assert len(glued) == 1 and glued[0] > EPISODE
    assert lengths == [EPISODE] * len(lengths)
    released_ends = case["train_env_episode_ends"]
    assert len(lengths) == len([end for end in released_ends if end <= budget])
