"""The training run, phase by phase: build and restore, prefill, pretrain, the
collect-and-update loop with its periodic duties, and teardown.

Counting: `steps`, `eval_every`, `log_every`, `video_every` and
`checkpoint_every` are in environment frames (agent steps x action repeat), the
unit of the paper's curves. `prefill` and `train_every` are in agent steps
(transitions), as in DreamerV2.

Schedule, as the released `train.py` runs it (`tempo.schedule.Every`): a prefill
of exactly `prefill` random agent steps (longer only until one episode has
finished), `pretrain` updates, then collection one agent step at a time with an
update on the first step and every `train_every` steps after it; logs and
open-loop videos start on that first step; evaluations come at the loop's first
frame and every `eval_every` frames after it, and once more at the budget
(`final_eval`), which the release does not do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tempo import workers
from tempo.agent.agent import Agent, random_actions
from tempo.agent.bilevel import BilevelTrainer
from tempo.agent.builder import build_trainer
from tempo.driver import Driver
from tempo.envs import DEFAULT_ACTION_REPEAT, EnvWorkerError, make_batch_env
from tempo.errors import CheckpointWriteError, ConfigError, NonFiniteError, PeerLostError
from tempo.evaluation import RESERVED, run_episodes
from tempo.logging import (
    FPS,
    JSONLOutput,
    Logger,
    MetricsAccumulator,
    TensorBoardOutput,
    TerminalOutput,
    read_records,
)
from tempo.progress import ProgressOutput
from tempo.replay import Replay
from tempo.schedule import Every
from tempo.weight_summaries import WeightSummaries


def train(
    logdir: str,
    task: str = "dmc_cartpole_swingup",
    steps: int = 100_000,
    seed: int = 0,
    action_repeat: int | None = None,
    obs_type: str | None = None,
    time_limit: int | None = None,
    env_options: dict | None = None,
    num_envs: int = 1,
    parallel_envs: bool = False,
    env_failure: str = "raise",
    env_max_restarts: int = 10,
    batch_size: int = 16,
    batch_length: int = 50,
    replay_capacity: int = 2_000_000,
    prioritize_ends: bool = False,
    prefill: int = 1000,
    pretrain: int = 100,
    train_every: int = 5,
    train_steps: int = 1,
    eval_every: int = 10_000,
    eval_episodes: int = 1,
    final_eval: bool = True,
    eval_state_mean: bool = False,
    log_every: int = 1_000,
    verbose: bool = False,
    video_every: int = 10_000,
    checkpoint_every: int = 10_000,
    export: bool = True,
    max_nonfinite_updates: int = 100,
    trainer_fn: Callable[..., BilevelTrainer] = build_trainer,
    on_start: Callable[[str], None] | None = None,
) -> dict:
    """Trains an agent in `logdir`, resuming from its checkpoint and replay if any.

    `env_failure` is what a crashed or hung environment worker process
    (`parallel_envs`) does to the run: 'raise' stops it (a checkpoint is saved),
    'restart' replaces the worker, up to `env_max_restarts` times, dropping only
    that environment's unfinished episode.

    Evaluation acts with the actor's mode on a sampled posterior latent, as the
    released code does; `eval_state_mean` uses the latent's mode instead (the
    exported policy always does). `final_eval` evaluates the finished policy
    at the budget's frame too, unless the grid just did.

    The terminal shows one compact progress line per log (`tempo.progress`);
    `verbose` prints every metric instead, as metrics.jsonl records them.

    `env_options` are the suite's own options (`tempo.envs.make_env`), e.g.
    ``{'proprio_keys': 'all'}`` to feed DMC's scalar and matrix observations too.

    `on_start(logdir)` runs once the task is valid, the agent is built and any
    checkpoint in the logdir restored (the launcher saves its configuration
    there). Returns a summary dict.
    """
    arguments = locals()
    settings = RunSettings(**{f.name: arguments[f.name] for f in dataclasses.fields(RunSettings)})
    return Run(pathlib.Path(logdir).expanduser(), settings, trainer_fn).execute(on_start)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What `train` was asked for, in its units."""

    task: str
    steps: int
    seed: int
    action_repeat: int | None
    obs_type: str | None
    time_limit: int | None
    env_options: dict | None
    num_envs: int
    parallel_envs: bool
    env_failure: str
    env_max_restarts: int
    batch_size: int
    batch_length: int
    replay_capacity: int
    prioritize_ends: bool
    prefill: int
    pretrain: int
    train_every: int
    train_steps: int
    eval_every: int
    eval_episodes: int
    final_eval: bool
    eval_state_mean: bool
    log_every: int
    verbose: bool
    video_every: int
    checkpoint_every: int
    export: bool
    max_nonfinite_updates: int


class Run:
    """One run in one logdir. `execute` calls the phases in order; each phase
    is a method of its own name, and the state they share is attributes."""

    def __init__(self, logdir: pathlib.Path, settings: RunSettings, trainer_fn: Callable) -> None:
        self.logdir = logdir
        self.s = settings
        self.trainer_fn = trainer_fn
        self.stop_requested = False  # the loop stops (every worker agreed)
        self.stop_asked = False  # a signal came to this process
        self.eval_return: float | None = None

    # ------------------------------------------------------------------ phases

    def execute(self, on_start: Callable[[str], None] | None = None) -> dict:
        self.build()
        self.restore()
        if on_start is not None:
            on_start(str(self.logdir))
        try:
            self.connect()
            self.prefill()
            self.pretrain()
            self.collect_and_update()
        except BaseException as error:
            lost = self.peer_lost(error)
            self.record_failure(lost or error)
            if lost is not None:
                raise lost from error
            raise
        return self.finish()

    def build(self) -> None:
        """Environments, trainer, replay, agent and checkpoint. Everything that
        can be wrong in the configuration fails here, before the logdir or
        anything in it is created; no environment worker outlives a failure."""
        s = self.s
        suite = s.task.split("_", 1)[0]
        if "_" not in s.task or suite not in DEFAULT_ACTION_REPEAT:
            raise ConfigError(
                f"Unknown suite {suite!r} in task {s.task!r}: tasks are <suite>_<name> with suite "
                f"one of {', '.join(DEFAULT_ACTION_REPEAT)} (e.g. dmc_walker_walk, atari_pong, "
                "gym_CartPole-v1)."
            )
        self.repeat = s.action_repeat or DEFAULT_ACTION_REPEAT[suite]
        self.env_kwargs = dict(
            action_repeat=self.repeat,
            obs_type=s.obs_type,
            time_limit=s.time_limit,
            **(s.env_options or {}),
        )
        try:
            self.env = self.make_envs(s.seed)
        except (ValueError, KeyError, EnvWorkerError) as error:
            cause = error.__cause__ if isinstance(error, EnvWorkerError) else None
            raise ConfigError(
                f"Cannot make task {s.task!r}: {first_line(cause or error)}"
            ) from error
        self.eval_env = None
        try:
            self.eval_env = make_batch_env(
                s.task, 1, seed=s.seed + 10_000, parallel=False, **self.env_kwargs
            )
            obs_space = self.env.obs_space
            obs_shapes = {k: tuple(v.shape) for k, v in obs_space.items() if k not in RESERVED}
            self.action_size = int(self.env.act_space.shape[0])
            self.trainer = self.trainer_fn(
                obs_shapes, self.action_size, self.env.discrete, seed=s.seed
            )
        except BaseException as error:
            self.env.close()
            if self.eval_env is not None:
                self.eval_env.close()
            if isinstance(error, (ValueError, TypeError)):
                message = f"Cannot build the agent for {s.task!r}: {first_line(error)}"
                raise ConfigError(message) from error
            raise

        # Under a strategy each worker collects its own experience (its
        # environments, random prefill actions and exploration seeded with seed +
        # WORKER_SEED_STRIDE * w: the same seed everywhere would make every worker
        # collect the same episodes) and samples its share of the global batch
        # from its own replay.
        strategy = self.trainer.strategy
        worker = workers.worker_index(strategy)
        self.several_workers = workers.num_workers(strategy) > 1
        self.worker_batch = self.trainer.worker_batch_size(s.batch_size)
        self.worker_seed = s.seed + workers.WORKER_SEED_STRIDE * worker
        if worker:  # non-chief workers keep their own replay and checkpoints apart
            self.logdir = self.logdir / f"worker{worker}"
            self.env.close()
            self.env = self.make_envs(self.worker_seed)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.replay = Replay(
            self.logdir / "replay",
            capacity=s.replay_capacity,
            length=s.batch_length,
            min_length=s.batch_length,
            prioritize_ends=s.prioritize_ends,
            seed=self.worker_seed,
        )
        self.agent = Agent(self.trainer, seed=self.worker_seed, eval_state_mean=s.eval_state_mean)
        self.agent_steps = tf.Variable(0, dtype=tf.int64, name="agent_steps")
        self.checkpoint = tf.train.Checkpoint(
            trainer=self.trainer, agent=self.agent, agent_steps=self.agent_steps
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self.logdir / "checkpoints", max_to_keep=3
        )

    def make_envs(self, env_seed: int):
        s = self.s
        return make_batch_env(
            s.task,
            s.num_envs,
            seed=env_seed,
            parallel=s.parallel_envs,
            on_failure=s.env_failure,
            max_restarts=s.env_max_restarts,
            **self.env_kwargs,
        )

    def restore(self) -> None:
        """The latest checkpoint, if any (the newest one every worker holds in a
        multi-worker run); a run killed before its first checkpoint counts the
        steps its stored episodes hold, as the released code does."""
        manager = self.manager
        if manager.latest_checkpoint:
            try:
                self.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
            except (ValueError, AssertionError) as error:
                raise ConfigError(
                    f"The checkpoint {manager.latest_checkpoint} does not match this "
                    f"configuration: {first_line(error)} Nothing in {self.logdir} was changed; "
                    f"resume with the run's own settings ({self.logdir / 'config.gin'}) or start "
                    "a new --logdir."
                ) from error
        resumed = manager.latest_checkpoint
        if self.several_workers:
            resumed = workers.restore_common_step(
                manager, self.checkpoint, self.agent_steps, self.trainer.strategy
            )
        if resumed:
            print(f"Resumed from {resumed} at env frame {self.frame}.")
        elif self.replay.total_episodes:
            self.agent_steps.assign(self.replay.total_steps - self.replay.total_episodes)

    def connect(self) -> None:
        """The logger, the metrics and the driver that feeds replay and step count."""
        terminal = TerminalOutput()
        if not self.s.verbose:
            earlier = read_records(self.logdir / "metrics.jsonl")  # a resumed run's
            terminal = ProgressOutput(self.s.steps, earlier=earlier)
        outputs = [terminal, JSONLOutput(self.logdir), TensorBoardOutput(self.logdir)]
        self.logger = Logger(self.logdir, outputs)
        self.metrics = MetricsAccumulator()
        self.fps, self.ups = FPS(), FPS()  # env frames and updates per second
        self.driver = Driver(self.env, self.s.num_envs, self.action_size)
        self.driver.on_step.append(lambda tran, worker: self.replay.add_step(tran, worker))
        # Count environment steps taken; the observation after a reset is not one.
        self.driver.on_step.append(
            lambda tran, worker: tran["is_first"] or self.agent_steps.assign_add(1)
        )
        self.driver.on_episode.append(
            lambda stats, worker: self.logger.scalars(
                {"return": stats["return"], "length": stats["length"]}, prefix="train"
            )
        )
        self.rng = np.random.default_rng(self.worker_seed + int(self.agent_steps))

    def prefill(self) -> None:
        """Random actions for exactly `prefill` agent steps, and on until one
        episode has finished (sampling needs one); the episode it stops inside
        is dropped."""
        s, replay = self.s, self.replay
        if int(self.agent_steps) >= s.prefill and replay.num_episodes:
            return
        print(f"Prefill: {max(s.prefill - int(self.agent_steps), 0)} random agent steps.")

        def random_policy(obs, state):
            return random_actions(self.rng, s.num_envs, self.action_size, self.env.discrete), None

        while int(self.agent_steps) < s.prefill or replay.num_episodes == 0:
            self.driver.run(random_policy, steps=s.num_envs)
        # Workers of a multi-worker run may end their prefill at different steps
        # (waiting for an episode); every worker must then make the same updates
        # and saves, which are collective: all continue to the latest.
        target = workers.max_over_workers(self.trainer.strategy, int(self.agent_steps))
        while int(self.agent_steps) < target:
            self.driver.run(random_policy, steps=s.num_envs)
        self.driver.reset()
        replay.discard_unfinished()

    def pretrain(self) -> None:
        """The training stream, the carried state, and `pretrain` updates before
        the first collection step (a resumed run has made them)."""
        self.dataset = iter(self.replay.dataset(self.worker_batch, self.s.batch_length))
        self.train_state = self.trainer.initial_state(self.worker_batch)  # per replica
        if int(self.trainer.step.numpy()) == 0:
            print(f"Pretrain: {self.s.pretrain} updates.")
            for _ in range(self.s.pretrain):
                self.update()

    def collect_and_update(self) -> None:
        """The loop, one collection step at a time, up to the budget or a stop
        signal, then the evaluation at the budget; teardown in any case."""
        s = self.s
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        self.start_duties()
        self.fps, self.ups = FPS(), FPS()  # the loop's rates, without the start-up's time
        skip_final_checkpoint = failing = False
        try:
            while int(self.agent_steps) < s.steps // self.repeat and not self.stop_requested:
                if self.should_eval(self.frame):
                    self.evaluate()
                steps = self.driver.run(self.acting_policy, steps=s.num_envs)
                self.fps.update(steps * self.repeat)
                self.after_step()
            if not self.stop_requested and s.final_eval and s.eval_every:
                if self.last_eval != self.frame:
                    # The policy the run finishes with (the one it exports) is
                    # evaluated at the budget; the release stops without it.
                    self.evaluate()
        except (NonFiniteError, CheckpointWriteError):
            # A diverged run keeps its last good checkpoint as the latest; a failed
            # write is not retried on the way out.
            skip_final_checkpoint = True
            raise
        except BaseException as error:
            failing = True
            # Saving is collective: without every worker it cannot complete.
            skip_final_checkpoint = self.peer_lost(error) is not None
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.teardown(save=not skip_final_checkpoint, failing=failing)

    def finish(self) -> dict:
        """The export (unless stopped by a signal) and the summary."""
        saved_model = None
        if not self.stop_requested and self.s.export:
            from tempo.export import export_policy

            saved_model = self.logdir / "saved_model"
            metadata = {"task": self.s.task, **self.env_kwargs}
            export_policy(self.agent, self.env.obs_space, saved_model, metadata)
        ended = "stopped" if self.stop_requested else "finished"
        return self.write_summary(ended, saved_model=saved_model and str(saved_model))

    def record_failure(self, error: BaseException) -> None:
        """summary.json of a failed run, unless that write fails too (a full
        disk): the error that stopped the run is the one to report."""
        with contextlib.suppress(OSError):
            self.write_summary("failed", error=first_line(error))

    def write_summary(self, ended: str, **details) -> dict:
        """summary.json, the machine-readable end: `ended` is 'finished', 'stopped'
        (by a signal, with a checkpoint) or 'failed' (with the `error`)."""
        summary = {
            "ended": ended,
            "step": self.frame,
            "updates": int(self.trainer.step.numpy()),
            "eval_return": self.eval_return,
            "logdir": str(self.logdir),
            "checkpoint": self.manager.latest_checkpoint,
            **details,
        }
        (self.logdir / "summary.json").write_text(json.dumps(summary))
        return summary

    # ------------------------------------------------------------ periodic duties

    def start_duties(self) -> None:
        """The released code's grid: updates, logs and open-loop videos start on
        the first collection step; evaluations at the loop's first frame and every
        eval_every frames after it (a resumed run continues the grid of its last
        evaluation); checkpoints every checkpoint_every frames."""
        s = self.s
        evaluated = eval_frames(self.logdir)
        self.last_eval = evaluated[-1] if evaluated else None
        self.should_train = Every(s.train_every)  # agent steps
        self.should_log = Every(s.log_every)  # frames, as the rest
        self.should_video = Every(s.video_every)
        self.should_eval = Every(s.eval_every, last=last_grid_point(evaluated, s.eval_every))
        self.should_save = Every(s.checkpoint_every, last=self.frame)
        self.image_keys = self.trainer.world_model.decoder.cnn_keys
        self.video_fn = tf.function(self.trainer.world_model.video_prediction, autograph=False)
        self.video_batches = None  # its own stream, as the release's report dataset
        # The meta-weighter's choices, on the video grid (DreamerV2 runs too: their
        # untrained weighter is the baseline); one forward pass, no update.
        self.should_weigh = Every(s.video_every)
        self.weight_summaries = WeightSummaries(
            self.trainer, self.worker_batch, s.batch_length, self.worker_seed, self.image_keys
        )

    def after_step(self) -> None:
        """What follows a collection step, in the release's order: updates, then
        the log; then the video, the checkpoint and a multi-worker stop. The
        weight analysis comes before the log, so its scalars share that record."""
        frame = self.frame
        if self.should_train(int(self.agent_steps)):
            for _ in range(self.s.train_steps):
                self.update()
        if self.should_weigh(frame):
            self.log_weights()
        if self.should_log(frame):
            self.write_logs()
        if self.image_keys and self.should_video(frame):
            self.log_video()
        if self.should_save(frame):
            self.save_checkpoint()
        if self.several_workers:
            self.agree_to_stop()

    def update(self) -> None:
        """One update; stops the run after `max_nonfinite_updates` skipped in a row."""
        self.train_state, mets = self.trainer.train(next(self.dataset), self.train_state)
        self.metrics.add({k: float(v) for k, v in mets.items()})
        self.ups.update(1)
        streak = int(self.trainer.nonfinite_streak.numpy())
        if streak >= self.s.max_nonfinite_updates:
            raise NonFiniteError(
                f"{streak} consecutive updates had non-finite losses "
                f"or gradients (see train/update_skipped in {self.logdir / 'metrics.jsonl'}); "
                f"stopping with the last good checkpoint in {self.logdir / 'checkpoints'} intact."
            )

    def evaluate(self) -> None:
        """Evaluation episodes now, logged at this frame."""
        self.last_eval = self.frame
        self.eval_return = evaluate(self.eval_env, self.agent, self.s.eval_episodes, self.logger)
        self.logger.write(self.frame)

    def write_logs(self) -> None:
        """The averaged train metrics and the loop's rates at this frame; rates
        are left out when nothing happened since the last write (the final one)."""
        logger, frame = self.logger, self.frame
        restarts = getattr(self.env, "restarts", None)  # environment worker processes
        if restarts is not None:
            logger.scalar("env_restarts", restarts)  # since this process started
        logger.scalars(self.metrics.result(), prefix="train")
        self.metrics.reset()
        scalars = {
            "replay_steps": self.replay.num_steps,
            "replay_episodes": self.replay.num_episodes,
            "updates": int(self.trainer.step.numpy()),
        }
        if self.fps.pending:
            rate = self.fps.rate()
            scalars["fps"] = rate
            scalars["eta_s"] = (self.s.steps - frame) / rate if rate > 0 else float("nan")
        if self.ups.pending:
            scalars["updates_per_s"] = self.ups.rate()
        logger.scalars(scalars)
        logger.write(frame)

    def log_weights(self) -> None:
        """The meta-weighter's choices on replay windows that no update consumes
        (`tempo.weight_summaries`): histogram, correlations, extreme steps."""
        self.weight_summaries(self.replay.episodes(), self.logger)

    def log_video(self) -> None:
        """Open-loop predictions on a batch of its own replay stream."""
        if self.video_batches is None:
            self.video_batches = iter(
                self.replay.dataset(self.worker_batch, self.s.batch_length, prefetch=1)
            )
        batch = next(self.video_batches)
        for key in self.image_keys:
            self.logger.video(f"openl_{key}", self.video_fn(batch, key).numpy())

    def save_checkpoint(self) -> None:
        manager = self.manager
        try:
            manager.save(checkpoint_number=int(self.agent_steps))
        except (tf.errors.OpError, OSError) as error:
            raise CheckpointWriteError(
                f"Could not write a checkpoint to {self.logdir / 'checkpoints'}: "
                f"{first_line(error)} The earlier checkpoints are intact (latest: "
                f"{manager.latest_checkpoint}); free space and re-run the same command to resume."
            ) from error

    def agree_to_stop(self) -> None:
        """A signal to one worker, or a preemption notice, stops all at this step;
        one that comes during the vote (the handler runs inside the collective)
        counts at the next step's."""
        asked = self.stop_asked
        if not asked and workers.preemption_noticed():
            print("Preemption notice (SIGTERM) in the cluster: all workers stop here.")
            asked = self.stop_asked = True
        self.stop_requested = workers.max_over_workers(self.trainer.strategy, int(asked)) > 0

    # ------------------------------------------------------------------ helpers

    @property
    def frame(self) -> int:
        """Environment frames so far."""
        return int(self.agent_steps) * self.repeat

    def acting_policy(self, obs, state):
        return self.agent.policy(obs, state, explore=True)

    def peer_lost(self, error: BaseException) -> PeerLostError | None:
        """A collective step that failed because another worker of a multi-worker
        run is gone, as an error that says what was lost and what to do; None
        for any other error."""
        peer = workers.lost_peer(error, self.trainer.strategy) if self.several_workers else None
        if peer is None:
            return None
        latest = self.manager.latest_checkpoint
        kept = "none was written yet"
        if latest:
            kept = f"{latest}, env frame {int(latest.rsplit('-', 1)[1]) * self.repeat}"
        return PeerLostError(
            f"Lost {peer} of this multi-worker run; this worker stopped at env frame "
            f"{self.frame}, and the training since its last checkpoint ({kept}) is lost. "
            "Restart every worker: they resume from the newest checkpoint all of them hold."
        )

    def request_stop(self, signum, frame) -> None:
        self.stop_asked = True
        if not self.several_workers:  # otherwise all decide together (agree_to_stop)
            self.stop_requested = True

    def teardown(self, save: bool, failing: bool) -> None:
        """The final checkpoint (unless the run diverged or a write failed), the
        last logs, and the environments closed. A failed final write is raised
        unless another error already stops the run (then it is a warning)."""
        final_error = None
        if save:
            try:
                self.save_checkpoint()
            except CheckpointWriteError as error:
                final_error = error
        self.write_logs()
        self.logger.close()
        self.env.close()
        self.eval_env.close()
        if final_error is not None:
            if not failing:
                raise final_error
            # Keep the error that stopped the run; this one is secondary.
            print(f"warning: {final_error}")


def evaluate(env, agent: Agent, episodes: int, logger: Logger) -> float:
    """Runs `episodes` episodes with the mode action; logs and returns the mean return."""
    policy = lambda obs, state: agent.policy(obs, state, explore=False)
    returns, lengths = run_episodes(env, policy, episodes, agent.action_size)
    logger.scalars({"return": np.mean(returns), "length": np.mean(lengths)}, prefix="eval")
    return float(np.mean(returns))


def eval_frames(logdir: pathlib.Path) -> list[int]:
    """The env frames of the evaluations in logdir's metrics.jsonl, in order."""
    return sorted(r["step"] for r in read_records(logdir / "metrics.jsonl") if "eval/return" in r)


def last_grid_point(evaluated: list[int], every: int) -> int | None:
    """The last point of the evaluation grid (the first evaluation, then every
    `every` frames) that a run has passed; None before its first evaluation.
    An evaluation at the budget off the grid does not move it."""
    if not evaluated or not every:
        return None
    first = evaluated[0]
    return first + (evaluated[-1] - first) // every * every


def first_line(error: BaseException) -> str:
    """An exception's message without the context lines gin appends to it."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
