"""The training loop: prefill, train, evaluate, log, checkpoint, export.

Counting: `steps`, `eval_every`, `log_every` and `checkpoint_every` are in
environment frames (agent steps x action repeat), the unit of the paper's
curves. `prefill` and `train_every` are in agent steps (transitions), as in
DreamerV2.

Schedule, as the released `train.py` runs it (`tempo.schedule.Every`): a prefill
of exactly `prefill` random agent steps (longer only until one episode has
finished), `pretrain` updates, then collection one agent step at a time with an
update on the first step and every `train_every` steps after it; logs and
open-loop videos start on that first step; evaluations come at the loop's first
frame and every `eval_every` frames after it, and once more at the budget
(`final_eval`), which the release does not do.
"""

from __future__ import annotations

import json
import pathlib
import signal
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tempo import replicas
from tempo.agent.agent import Agent, random_actions
from tempo.agent.bilevel import BilevelTrainer
from tempo.agent.builder import build_trainer
from tempo.driver import Driver
from tempo.envs import DEFAULT_ACTION_REPEAT, EnvWorkerError, make_batch_env
from tempo.errors import CheckpointWriteError, ConfigError, NonFiniteError
from tempo.evaluation import RESERVED, run_episodes
from tempo.logging import FPS, Logger, MetricsAccumulator, read_records
from tempo.replay import Replay
from tempo.schedule import Every


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

    `env_options` are the suite's own options (`tempo.envs.make_env`), e.g.
    ``{'proprio_keys': 'all'}`` to feed DMC's scalar and matrix observations too.

    `on_start(logdir)` runs once the task is valid, the agent is built and any
    checkpoint in the logdir restored (the launcher saves its configuration
    there). Returns a summary dict.
    """
    logdir = pathlib.Path(logdir).expanduser()
    # Everything that can be wrong in the configuration fails here, before the
    # logdir or anything in it is created.
    suite = task.split("_", 1)[0]
    if "_" not in task or suite not in DEFAULT_ACTION_REPEAT:
        raise ConfigError(
            f"Unknown suite {suite!r} in task {task!r}: tasks are <suite>_<name> with suite one "
            f"of {', '.join(DEFAULT_ACTION_REPEAT)} (e.g. dmc_walker_walk, atari_pong, "
            "gym_CartPole-v1)."
        )
    repeat = action_repeat or DEFAULT_ACTION_REPEAT[suite]
    env_kwargs = dict(
        action_repeat=repeat, obs_type=obs_type, time_limit=time_limit, **(env_options or {})
    )

    def make_envs(env_seed: int):
        return make_batch_env(
            task,
            num_envs,
            seed=env_seed,
            parallel=parallel_envs,
            on_failure=env_failure,
            max_restarts=env_max_restarts,
            **env_kwargs,
        )

    try:
        env = make_envs(seed)
    except (ValueError, KeyError, EnvWorkerError) as error:
        cause = error.__cause__ if isinstance(error, EnvWorkerError) else None
        raise ConfigError(f"Cannot make task {task!r}: {first_line(cause or error)}") from error
    eval_env = None
    try:  # the env's worker processes must not outlive a failure to build the rest
        eval_env = make_batch_env(task, 1, seed=seed + 10_000, parallel=False, **env_kwargs)
        obs_shapes = {k: tuple(s.shape) for k, s in env.obs_space.items() if k not in RESERVED}
        action_size = int(env.act_space.shape[0])
        trainer = trainer_fn(obs_shapes, action_size, env.discrete, seed=seed)
    except BaseException as error:
        env.close()
        if eval_env is not None:
            eval_env.close()
        if isinstance(error, (ValueError, TypeError)):
            message = f"Cannot build the agent for {task!r}: {first_line(error)}"
            raise ConfigError(message) from error
        raise

    # Under a strategy each worker collects its own experience (its environments,
    # random prefill actions and exploration seeded with seed + WORKER_SEED_STRIDE
    # * w: the same seed everywhere would make every worker collect the same
    # episodes) and samples its share of the global batch from its own replay.
    worker = _worker_index(trainer.strategy)
    several_workers = _num_workers(trainer.strategy) > 1
    worker_batch = trainer.worker_batch_size(batch_size)
    worker_seed = seed + WORKER_SEED_STRIDE * worker
    if worker:  # non-chief workers keep their own replay and checkpoints apart
        logdir = logdir / f"worker{worker}"
        env.close()
        env = make_envs(worker_seed)
    logdir.mkdir(parents=True, exist_ok=True)
    replay = Replay(
        logdir / "replay",
        capacity=replay_capacity,
        length=batch_length,
        min_length=batch_length,
        prioritize_ends=prioritize_ends,
        seed=worker_seed,
    )
    agent = Agent(trainer, seed=worker_seed, eval_state_mean=eval_state_mean)
    agent_steps = tf.Variable(0, dtype=tf.int64, name="agent_steps")
    checkpoint = tf.train.Checkpoint(trainer=trainer, agent=agent, agent_steps=agent_steps)
    manager = tf.train.CheckpointManager(checkpoint, logdir / "checkpoints", max_to_keep=3)
    if manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (ValueError, AssertionError) as error:
            raise ConfigError(
                f"The checkpoint {manager.latest_checkpoint} does not match this configuration: "
                f"{first_line(error)} Nothing in {logdir} was changed; resume with the "
                f"run's own settings ({logdir / 'config.gin'}) or start a new --logdir."
            ) from error
    resumed = manager.latest_checkpoint
    if several_workers:
        resumed = _restore_common_step(manager, checkpoint, agent_steps, trainer.strategy)
    if resumed:
        print(f"Resumed from {resumed} at env frame {int(agent_steps) * repeat}.")
    if on_start is not None:
        on_start(str(logdir))

    def save_checkpoint() -> None:
        try:
            manager.save(checkpoint_number=int(agent_steps))
        except (tf.errors.OpError, OSError) as error:
            raise CheckpointWriteError(
                f"Could not write a checkpoint to {logdir / 'checkpoints'}: "
                f"{first_line(error)} The earlier checkpoints are intact (latest: "
                f"{manager.latest_checkpoint}); free space and re-run the same command to resume."
            ) from error

    logger = Logger(logdir)
    metrics = MetricsAccumulator()
    fps, ups = FPS(), FPS()  # env frames and updates per second
    driver = Driver(env, num_envs, action_size)
    driver.on_step.append(lambda tran, worker: replay.add_step(tran, worker))
    # Count environment steps taken; the observation after a reset is not one.
    driver.on_step.append(lambda tran, worker: tran["is_first"] or agent_steps.assign_add(1))

    def on_train_episode(stats, worker):
        logger.scalars({"return": stats["return"], "length": stats["length"]}, prefix="train")

    driver.on_episode.append(on_train_episode)
    total_agent_steps = steps // repeat
    if not resumed and replay.total_episodes:
        # Killed before its first checkpoint: the steps its stored episodes hold
        # count (the released code counts its replay's steps the same way).
        agent_steps.assign(replay.total_steps - replay.total_episodes)
    rng = np.random.default_rng(worker_seed + int(agent_steps))

    # --- prefill with random actions --------------------------------------------
    # As released: exactly `prefill` agent steps, and on until one episode has
    # finished (sampling needs one). The unfinished episode is dropped.
    if int(agent_steps) < prefill or replay.num_episodes == 0:
        print(f"Prefill: {max(prefill - int(agent_steps), 0)} random agent steps.")
        random_policy = lambda obs, state: (
            random_actions(rng, num_envs, action_size, env.discrete),
            None,
        )
        while int(agent_steps) < prefill or replay.num_episodes == 0:
            driver.run(random_policy, steps=num_envs)
        # Workers of a multi-worker run may end their prefill at different steps
        # (waiting for an episode); every worker must then make the same updates
        # and saves, which are collective: all continue to the latest.
        target = _max_over_workers(trainer.strategy, int(agent_steps))
        while int(agent_steps) < target:
            driver.run(random_policy, steps=num_envs)
        driver.reset()
        replay.discard_unfinished()

    dataset = iter(replay.dataset(worker_batch, batch_length))
    train_state = trainer.initial_state(worker_batch)  # per replica under a strategy

    def update() -> None:
        nonlocal train_state
        train_state, mets = trainer.train(next(dataset), train_state)
        metrics.add({k: float(v) for k, v in mets.items()})
        ups.update(1)
        streak = int(trainer.nonfinite_streak.numpy())
        if streak >= max_nonfinite_updates:
            raise NonFiniteError(
                f"{streak} consecutive updates had non-finite losses "
                f"or gradients (see train/update_skipped in {logdir / 'metrics.jsonl'}); "
                f"stopping with the last good checkpoint in {logdir / 'checkpoints'} intact."
            )

    if int(trainer.step.numpy()) == 0:
        print(f"Pretrain: {pretrain} updates.")
        for _ in range(pretrain):
            update()

    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    frame0 = int(agent_steps) * repeat
    # The released code's grid: updates, logs and open-loop videos start on the
    # first collection step; evaluations at the loop's first frame and every
    # eval_every frames after it (a resumed run continues the grid of its last
    # evaluation); checkpoints every checkpoint_every frames.
    evaluated = eval_frames(logdir)
    last_eval = evaluated[-1] if evaluated else None
    should_train = Every(train_every)
    should_log = Every(log_every)
    should_video = Every(video_every)
    should_eval = Every(eval_every, last=last_grid_point(evaluated, eval_every))
    should_save = Every(checkpoint_every, last=frame0)
    image_keys = trainer.world_model.decoder.cnn_keys
    video_fn = tf.function(trainer.world_model.video_prediction)
    video_batches = None  # its own stream, as the release's report dataset
    eval_return = None

    def acting_policy(obs, state):
        return agent.policy(obs, state, explore=True)

    def evaluate_at(frame: int) -> None:
        nonlocal eval_return, last_eval
        last_eval = frame
        eval_return = evaluate(eval_env, agent, eval_episodes, logger)
        logger.write(frame)

    skip_final_checkpoint = failing = False
    try:
        while int(agent_steps) < total_agent_steps and not stop["now"]:
            if should_eval(int(agent_steps) * repeat):
                evaluate_at(int(agent_steps) * repeat)
            fps.update(driver.run(acting_policy, steps=num_envs) * repeat)
            frame = int(agent_steps) * repeat
            if should_train(int(agent_steps)):
                for _ in range(train_steps):
                    update()
            if should_log(frame):
                write_logs(logger, metrics, fps, ups, replay, trainer, frame, steps)
            if image_keys and should_video(frame):
                if video_batches is None:
                    video_batches = iter(replay.dataset(worker_batch, batch_length, prefetch=1))
                batch = next(video_batches)
                for key in image_keys:
                    logger.video(f"openl_{key}", video_fn(batch, key).numpy())
            if should_save(frame):
                save_checkpoint()
            if several_workers:  # a signal to one worker stops all at this step
                asked = stop["now"]
                if not asked and _preemption_noticed():
                    print("Preemption notice (SIGTERM) in the cluster: all workers stop here.")
                    asked = True
                stop["now"] = _max_over_workers(trainer.strategy, int(asked)) > 0
        frame = int(agent_steps) * repeat
        if not stop["now"] and final_eval and eval_every and last_eval != frame:
            # The policy the run finishes with (the one it exports) is evaluated
            # at the budget; the release stops without evaluating it.
            evaluate_at(frame)
    except (NonFiniteError, CheckpointWriteError):
        # A diverged run keeps its last good checkpoint as the latest; a failed
        # write is not retried on the way out.
        skip_final_checkpoint = True
        raise
    except BaseException:
        failing = True
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        frame = int(agent_steps) * repeat
        final_error = None
        if not skip_final_checkpoint:
            try:
                save_checkpoint()
            except CheckpointWriteError as error:
                final_error = error
        write_logs(logger, metrics, fps, ups, replay, trainer, frame, steps)
        logger.close()
        env.close()
        eval_env.close()
        if final_error is not None:
            if not failing:
                raise final_error
            # Keep the error that stopped the run; this one is secondary.
            print(f"warning: {final_error}")
    if stop["now"]:
        print(f"Stopped by signal at env frame {frame}; checkpoint saved.")
    elif export:
        from tempo.export import export_policy

        export_policy(agent, env.obs_space, logdir / "saved_model", {"task": task, **env_kwargs})
    summary = {"step": frame, "updates": int(trainer.step.numpy()), "eval_return": eval_return}
    (logdir / "summary.json").write_text(json.dumps(summary))
    return summary


# Seeds of worker w of a multi-worker run are offset by this much: beyond the
# consecutive seeds of a worker's environments and its evaluation environment's
# seed + 10,000, so that no two workers' environments share a seed.
WORKER_SEED_STRIDE = 100_003


def _max_over_workers(strategy, value: int) -> int:
    """The largest `value` of any worker (a collective step under a strategy)."""
    if strategy is None:
        return value
    per_replica = strategy.run(lambda: replicas.global_max(tf.constant(value, tf.int64)))
    return int(strategy.experimental_local_results(per_replica)[0])


def _restore_common_step(manager, checkpoint, agent_steps, strategy) -> str | None:
    """On every worker of a multi-worker run, the newest checkpoint step that all
    workers hold (one killed while the others saved may be a save behind) is
    the one restored (a collective step). Returns the restored path, if any."""
    path = manager.latest_checkpoint
    latest = int(agent_steps)  # 0 without a checkpoint
    common = -_max_over_workers(strategy, -latest)
    if common == latest:
        return path
    numbered = {int(p.rsplit("-", 1)[1]): p for p in manager.checkpoints}
    if common not in numbered:
        raise ConfigError(
            f"The newest step every worker has a checkpoint of is {common}, and this worker's "
            f"{manager.directory} holds only steps {sorted(numbered)}: restore every worker's "
            "checkpoints from one save, or start every worker with a new --logdir."
        )
    checkpoint.restore(numbered[common]).assert_existing_objects_matched()
    return numbered[common]


# TensorFlow's coordination service catches SIGTERM itself in a multi-worker run
# (its preemption notifier) and then records the time under this key.
_PREEMPTION_KEY = "TF_DEFAULT_PREEMPTION_NOTICE_KEY"


def _preemption_noticed() -> bool:
    """Whether the cluster's coordination service holds a preemption notice
    (a SIGTERM that TensorFlow's handler, not ours, received)."""
    from tensorflow.python.eager import context

    try:
        context.context().get_config_key_value(_PREEMPTION_KEY, timeout_in_ms=1)
    except (tf.errors.DeadlineExceededError, tf.errors.NotFoundError, tf.errors.UnavailableError):
        return False
    return True


def _num_workers(strategy) -> int:
    """How many processes train together (1 without a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def _worker_index(strategy) -> int:
    """0 for the chief (or one process), the task index of other workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if "chief" in resolver.cluster_spec().jobs else 0)


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


def write_logs(logger, metrics, fps, ups, replay, trainer, frame, total_frames) -> None:
    """Writes the averaged train metrics and the loop's rates at env frame `frame`;
    rates are left out when nothing happened since the last write (the final one)."""
    logger.scalars(metrics.result(), prefix="train")
    metrics.reset()
    scalars = {
        "replay_steps": replay.num_steps,
        "replay_episodes": replay.num_episodes,
        "updates": int(trainer.step.numpy()),
    }
    if fps.pending:
        rate = fps.rate()
        scalars["fps"] = rate
        scalars["eta_s"] = (total_frames - frame) / rate if rate > 0 else float("nan")
    if ups.pending:
        scalars["updates_per_s"] = ups.rate()
    logger.scalars(scalars)
    logger.write(frame)


def first_line(error: BaseException) -> str:
    """An exception's message without the context lines gin appends to it."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
