"""A multi-worker run's coordination: worker identity, seeds, collective
decisions (the latest step, a stop), and the checkpoint every worker holds.

One process is one worker; without a multi-worker strategy every function
here answers as for a single worker (index 0, one worker, values unchanged).
"""

from __future__ import annotations

import re

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


# What TensorFlow says when a collective or the coordination service lost a peer:
# its connection reset or closed, its heartbeats stopped, or the collectives of
# the group were aborted because of one of those.
_PEER_LOSS_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.InternalError)
_PEER_LOSS_SIGNS = (
    "Collective ops is aborted",
    "Connection reset by peer",
    "Socket closed",
    "heartbeat timeout",
    "failed to connect to all addresses",
    "coordination service has stopped",
)


def lost_peer(error: BaseException, strategy) -> str | None:
    """Which other worker `error` says was lost ('worker 1'), 'a peer worker'
    when TensorFlow names none, or None when `error` is not a lost peer."""
    if not isinstance(error, _PEER_LOSS_ERRORS):
        return None
    text = str(error)
    if not any(sign in text for sign in _PEER_LOSS_SIGNS):
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "a peer worker"
    me = (resolver.task_type, int(resolver.task_id))
    named = {
        (job, int(index)) for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", text)
    }
    for job, addresses in resolver.cluster_spec().as_dict().items():
        for index, address in enumerate(addresses):
            if re.search(re.escape(address) + r"(?!\d)", text):
                named.add((job, index))
    named.discard(me)
    if len(named) != 1:
        return "a peer worker"
    job, index = named.pop()
    return f"{job} {index}"


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
