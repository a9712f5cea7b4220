"""A multi-worker run's coordination: worker identity, seeds, collective
decisions (the latest step, a stop), and the checkpoint every worker holds.

One process is one worker; without a multi-worker strategy every function
here answers as for a single worker (index 0, one worker, values unchanged).
"""

from __future__ import annotations

import tensorflow as tf

from tempo import replicas
from tempo.errors import ConfigError

# Seeds of worker w of a multi-worker run are offset by this much: beyond the
# consecutive seeds of a worker's environments and its evaluation environment's
# seed + 10,000, so that no two workers' environments share a seed.
WORKER_SEED_STRIDE = 100_003


def max_over_workers(strategy, value: int) -> int:
    """The largest `value` of any worker (a collective step under a strategy)."""
    if strategy is None:
        return value
    per_replica = strategy.run(lambda: replicas.global_max(tf.constant(value, tf.int64)))
    return int(strategy.experimental_local_results(per_replica)[0])


def restore_common_step(manager, checkpoint, agent_steps, strategy) -> str | None:
    """On every worker of a multi-worker run, the newest checkpoint step that all
    workers hold (one killed while the others saved may be a save behind) is
    the one restored (a collective step). Returns the restored path, if any."""
    path = manager.latest_checkpoint
    latest = int(agent_steps)  # 0 without a checkpoint
    common = -max_over_workers(strategy, -latest)
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


def preemption_noticed() -> bool:
    """Whether the cluster's coordination service holds a preemption notice
    (a SIGTERM that TensorFlow's handler, not ours, received)."""
    from tensorflow.python.eager import context

    try:
        context.context().get_config_key_value(_PREEMPTION_KEY, timeout_in_ms=1)
    except (tf.errors.DeadlineExceededError, tf.errors.NotFoundError, tf.errors.UnavailableError):
        return False
    return True


def num_workers(strategy) -> int:
    """How many processes train together (1 without a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs)


def worker_index(strategy) -> int:
    """0 for the chief (or one process), the task index of other workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if "chief" in resolver.cluster_spec().jobs else 0)
