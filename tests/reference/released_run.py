#!/usr/bin/env python
"""A whole run of the RELEASED TEMPO code, evaluated as ours is, for launch.plot.

Run under the release's environment with dm_control (tests/reference/README.md):

    TEMPO_REF_SRC=$REF/src $REF/venv/bin/python tests/reference/released_run.py \\
        --logdir runs/released/dmc_cartpole_swingup/released-dreamerv2/seed0 --seed 0

It calls the release's own `train.main()` (its code unmodified; the shims of
`released_train.py`) with its `defaults` and `dmc_proprio` blocks at the sizes
of our gin_configs/cpu.gin, so that it sits beside a run of ours made with

    python -m launch.train --gin_file gin_configs/dmc_proprio.gin \\
        --gin_file gin_configs/cpu.gin --task dmc_cartpole_swingup --seed 0 \\
        --steps 100000 --meta=false --gin_param 'train.eval_episodes = 5'

Settings mapped onto the release's flags (its counts are agent steps, two env
frames each): prefill 2500 and pretrain 100 (it updates once more before its
loop: 101 updates, our cpu.gin's `train.pretrain = 101`), evaluation every
2500 agent steps (5k frames, from the end of the prefill, its grid and ours)
with 5 episodes of mode actions on a sampled latent (its `eval` mode, ours by
default). Its loop would stop at the last evaluation before the budget; the
run is given one agent step more, so that it evaluates at the budget too, and
is stopped at that step (before any update there).

--mode dreamerv2 trains with the release's `Agent.train_without_meta` (its
DreamerV2; its train.py leaves the line commented out), --mode tempo with
`Agent.train`. The logdir gets `released_run.json`, which tells
`tempo.plotting.load_run` how to read the release's metrics.jsonl and replay
(method `released-dreamerv2` or `released-tempo`).

The release resumes only partly: its weights from `variables_backup.pkl` (not
its optimizers' moments), its step counter from the episodes its replay holds
(those collected after its last save included). So that a run can be stopped
(any signal; it loses what came after its last save, every 5k frames) and
continued, this script saves the optimizers' variables with the weights
(atomically), and on a restart gives the release its last save as the backup
it loads, moves the episodes stored after that save aside
(`train_episodes/after_last_save/`) and starts its step counter there: it
continues from its saved step, on its evaluation grid, with the replay it had
then (less the episode the save fell inside, if any). What is not restored is
its stateful random streams.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import shutil
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from released_train import CPU_SIZES, flags_argv, load_release  # noqa: E402

MARKER = "released_run.json"


class BudgetReached(Exception):
    """Raised by the step counter one agent step after the budget's evaluation."""


def make_resumable(agent_class, optimizer_class, counter, logdir: pathlib.Path) -> None:
    """The release's Agent.save / load with its optimizers' variables, written
    atomically, and the step of the save recorded beside it."""

    def optimizer_variables(agnt) -> list:
        optimizers = [m for m in agnt.submodules if isinstance(m, optimizer_class)]
        return [v for opt in optimizers for v in opt._opt.variables()]

    def save(self, filename) -> None:
        values = {
            "variables": [v.numpy() for v in self.variables],
            "optimizers": [v.numpy() for v in optimizer_variables(self)],
            "step": int(counter()),
        }
        temporary = pathlib.Path(str(filename) + ".tmp")
        with temporary.open("wb") as f:
            pickle.dump(values, f)
        os.replace(temporary, filename)

    def load(self, filename) -> None:
        with pathlib.Path(filename).open("rb") as f:
            values = pickle.load(f)
        for variable, value in zip(self.variables, values["variables"], strict=True):
            variable.assign(value)
        for variable, value in zip(optimizer_variables(self), values["optimizers"], strict=True):
            variable.assign(value)
        print(f"Resumed the release's weights and optimizers at agent step {values['step']}.")

    agent_class.save, agent_class.load = save, load


def rewind_to_last_save(logdir: pathlib.Path) -> int | None:
    """Before a restart: the last save becomes the backup the release loads, and
    episodes stored after it move aside. Returns the saved agent step (None:
    nothing saved yet, the run starts over)."""
    saved = logdir / "variables.pkl"
    if not saved.exists():
        return None
    with saved.open("rb") as f:
        step = int(pickle.load(f)["step"])
    shutil.copyfile(saved, logdir / "variables_backup.pkl")
    episodes = sorted((logdir / "train_episodes").glob("*.npz"))
    aside = logdir / "train_episodes" / "after_last_save"
    total = 0
    for path in episodes:
        total += int(path.stem.rsplit("-", 1)[1])  # its names count agent steps
        if total > step:
            aside.mkdir(exist_ok=True)
            os.replace(path, aside / path.name)
    return step


def release_argv(args: argparse.Namespace, train_module, repeat: int) -> list[str]:
    """The command line the release's train.py parses (its own flag syntax)."""
    settings = {
        "configs": "dmc_proprio",
        "logdir": args.logdir,
        "task": args.task,
        "seed": args.seed,
        "steps": args.steps // repeat + 1,  # one more: its loop evaluates at the budget
        "eval_every": args.eval_every // repeat,
        "eval_eps": args.eval_episodes,
        "prefill": args.prefill,
        "pretrain": args.pretrain,
        **CPU_SIZES,
    }
    return flags_argv(train_module, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--mode", default="dreamerv2", choices=["tempo", "dreamerv2"])
    parser.add_argument("--task", default="dmc_cartpole_swingup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100_000, help="Budget in env frames.")
    parser.add_argument("--eval_every", type=int, default=5000, help="Env frames.")
    parser.add_argument("--eval_episodes", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=2500, help="Agent steps (cpu.gin).")
    parser.add_argument("--pretrain", type=int, default=100, help="The release's count.")
    args = parser.parse_args()

    logdir = pathlib.Path(args.logdir).expanduser()
    marker_path = logdir / MARKER
    if marker_path.exists() and json.loads(marker_path.read_text()).get("finished"):
        print(f"released run already finished: {logdir}")
        return
    resume_step = None
    if (logdir / "train_episodes").exists():
        resume_step = rewind_to_last_save(logdir)
        if resume_step is None:
            parser.error(f"{logdir} holds a release run that never saved: remove it to start over")
    tf, agent, common, train, repeat = load_release()
    last_step = args.steps // repeat
    if (last_step - args.prefill) % (args.eval_every // repeat):
        parser.error("the budget must lie on the evaluation grid: prefill + k * eval_every")

    class BudgetCounter(common.Counter):
        """The release's agent-step counter; its loop ends one step past the budget."""

        def increment(self, amount: int = 1) -> None:
            if int(self) + amount > last_step:
                raise BudgetReached
            super().increment(amount)

    common.Counter = BudgetCounter
    counters = []

    class RecordedCounter(BudgetCounter):
        """Its count starts at the saved step on a restart (the release would
        start at the steps of the episodes it stored, which puts its
        evaluation grid off the saved one when a save falls inside an episode)."""

        def __init__(self, initial: int = 0):
            super().__init__(initial if resume_step is None else resume_step)
            counters.append(self)

    common.Counter = RecordedCounter
    make_resumable(agent.Agent, common.Optimizer, lambda: int(counters[0]), logdir)
    if args.mode == "dreamerv2":
        agent.Agent.train = agent.Agent.train_without_meta
    logdir.mkdir(parents=True, exist_ok=True)
    marker = {
        "program": "released TEMPO (deng-ai-lab/TEMPO ea83919), train.py main()",
        "method": f"released-{args.mode}",
        "task": args.task,
        "seed": args.seed,
        "action_repeat": repeat,
        "prefill": args.prefill,
        "budget_frames": args.steps,
        "eval_every_frames": args.eval_every,
        "eval_episodes": args.eval_episodes,
        "sizes": "gin_configs/cpu.gin",
        "tf": tf.__version__,
        "intra_op_threads": os.environ.get("TF_NUM_INTRAOP_THREADS", "default"),
    }
    if resume_step is not None:
        marker = {**json.loads(marker_path.read_text()), "resumed_at": resume_step}
    marker_path.write_text(json.dumps(marker, indent=1) + "\n")
    sys.argv = release_argv(args, train, repeat)
    start = time.time()
    finished = False
    try:
        train.main()
    except BudgetReached:
        finished = True
    marker = json.loads(marker_path.read_text())
    marker.update(finished=finished, wall_s=round(marker.get("wall_s", 0) + time.time() - start, 1))
    marker_path.write_text(json.dumps(marker, indent=1) + "\n")
    print(f"released run {'finished' if finished else 'stopped'}: {logdir}", flush=True)


if __name__ == "__main__":
    main()
