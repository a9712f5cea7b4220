"""Batches of environments: in worker processes (:class:`ParallelEnv`) or in-process
(:class:`SerialEnv`), with one API so the driver does not care which it holds.

Workers are started with the 'spawn' context: forking a parent that has imported
TensorFlow (threads, CUDA state) is unsafe. A worker failure is never silent and
never a hang: an exception in a worker, a dead worker process or a reply slower than
``timeout`` raises :class:`EnvWorkerError` in the parent, naming the env index and
carrying the worker's traceback. With ``on_failure="restart"`` a failed worker is
instead replaced by a fresh one (up to ``max_restarts`` times in all), logged with the
same message, and its environment starts a new episode: long runs survive a flaky
simulator without losing the other environments' episodes.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np

EnvCtor = Callable[[], Any]
FAILURE_POLICIES = ("raise", "restart")
logger = logging.getLogger(__name__)


class EnvWorkerError(RuntimeError):
    """An environment in a batch failed; ``index`` says which one."""

    def __init__(self, index: int, message: str, worker_traceback: str | None = None) -> None:
        text = f"environment {index}: {message}"
        if worker_traceback:
            text += f"\n--- traceback in worker {index} ---\n{worker_traceback.rstrip()}"
        super().__init__(text)
        self.index = index
        self.message = message
        self.worker_traceback = worker_traceback


def stack_obs(observations: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack a list of observation dicts into one dict with a leading batch axis."""
    return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}


def _check_actions(actions: Any, count: int) -> list[Any]:
    actions = list(actions) if not isinstance(actions, np.ndarray) else list(actions)
    if len(actions) != count:
        raise ValueError(f"expected {count} actions (one per env), got {len(actions)}")
    return actions


class SerialEnv:
    """Several envs stepped one after another in this process (num_workers=1, debugging)."""

    def __init__(self, ctor_fns: Sequence[EnvCtor]) -> None:
        if not ctor_fns:
            raise ValueError("SerialEnv needs at least one environment constructor")
        self._envs = []
        for index, ctor in enumerate(ctor_fns):
            try:
                self._envs.append(ctor())
            except Exception as exc:
                self.close()
                raise EnvWorkerError(
                    index, f"construction failed: {exc!r}", traceback.format_exc()
                ) from exc
        first = self._envs[0]
        self.obs_space: dict[str, gymnasium.spaces.Box] = first.obs_space
        self.act_space: gymnasium.spaces.Box = first.act_space
        self.discrete: bool = bool(first.discrete)

    @property
    def num_envs(self) -> int:
        return len(self._envs)

    def __len__(self) -> int:
        return len(self._envs)

    def _call(self, index: int, method: str, *args: Any) -> dict[str, np.ndarray]:
        try:
            return getattr(self._envs[index], method)(*args)
        except Exception as exc:
            raise EnvWorkerError(
                index, f"{method} failed: {exc!r}", traceback.format_exc()
            ) from exc

    def reset(self, indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Reset the envs at ``indices`` (all by default); stacked in that order."""
        indices = range(len(self._envs)) if indices is None else indices
        return stack_obs([self._call(i, "reset") for i in indices])

    def step(self, actions: Any) -> dict[str, np.ndarray]:
        """Step every env with its row of ``actions``; stacked observations."""
        actions = _check_actions(actions, len(self._envs))
        return stack_obs([self._call(i, "step", a) for i, a in enumerate(actions)])

    def close(self) -> None:
        for env in getattr(self, "_envs", []):
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing must not mask the original error
                pass
        self._envs = []

    def __enter__(self) -> SerialEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker(index: int, conn: multiprocessing.connection.Connection, ctor: EnvCtor) -> None:
    """Worker loop: build the env, then answer ('reset'|'step'|'close', payload) messages."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle.
    env = None
    try:
        env = ctor()
        conn.send(("ok", (env.obs_space, env.act_space, bool(env.discrete))))
        while True:
            command, payload = conn.recv()
            if command == "reset":
                conn.send(("ok", env.reset()))
            elif command == "step":
                conn.send(("ok", env.step(payload)))
            elif command == "close":
                break
            else:
                raise ValueError(f"unknown worker command {command!r}")
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass  # The parent went away; nothing to report to.
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        try:
            conn.send(("error", (repr(exc), traceback.format_exc())))
        except Exception:  # noqa: BLE001
            pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001
                pass
        conn.close()


class ParallelEnv:
    """Envs in 'spawn' worker processes, stepped in lockstep.

    Args:
        ctor_fns: picklable zero-argument constructors, e.g.
            ``functools.partial(make_env, 'dmc_walker_walk', seed=i)``.
        timeout: seconds to wait for any reset/step reply before raising (None: forever,
            which is not recommended).
        start_timeout: seconds to wait for a worker to build its env (imports, renderer).
        on_failure: "raise" (default): after any :class:`EnvWorkerError` the batch is shut
            down, since one env's failure leaves the lockstep batch unusable and lingering
            workers would leak processes. "restart": a worker that raised, died or hung
            during ``reset``/``step`` is killed and replaced; the call returns that env's
            first observation of a new episode (``is_first`` set) in its row.
        max_restarts: restarts allowed over the batch's life with "restart"; one more
            failure raises as with "raise", saying how many restarts were spent.
    """

    def __init__(
        self,
        ctor_fns: Sequence[EnvCtor],
        *,
        timeout: float | None = 60.0,
        start_timeout: float | None = 300.0,
        on_failure: str = "raise",
        max_restarts: int = 10,
    ) -> None:
        if not ctor_fns:
            raise ValueError("ParallelEnv needs at least one environment constructor")
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(f"unknown on_failure {on_failure!r}; choose one of {FAILURE_POLICIES}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.on_failure = on_failure
        self.max_restarts = max_restarts
        self.restarts = 0  # workers replaced so far
        self._closed = False
        self._ctors = list(ctor_fns)
        self._context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for index, ctor in enumerate(self._ctors):
            try:
                pickle.dumps(ctor)
            except Exception as exc:
                self.close()
                raise ValueError(
                    f"constructor {index} cannot be pickled for a spawned worker ({exc!r}); "
                    "use a module-level function or functools.partial(make_env, task, ...)"
                ) from exc
            self._conns.append(None)
            self._procs.append(None)
            self._start_worker(index)
        specs = [self._construct(i) for i in range(len(self._ctors))]
        self.obs_space, self.act_space, self.discrete = specs[0]
        for index, (obs_space, act_space, _) in enumerate(specs[1:], start=1):
            if obs_space != self.obs_space or act_space != self.act_space:
                self.close()
                raise ValueError(
                    f"environment {index} has different spaces than environment 0: "
                    f"{obs_space}, {act_space} vs {self.obs_space}, {self.act_space}"
                )

    @property
    def num_envs(self) -> int:
        return len(self._procs)

    def __len__(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int | None]:
        """Worker process ids (for monitoring)."""
        return [proc.pid for proc in self._procs]

    def _start_worker(self, index: int) -> None:
        parent_conn, child_conn = self._context.Pipe()
        proc = self._context.Process(
            target=_worker,
            args=(index, child_conn, self._ctors[index]),
            daemon=True,
            name=f"tempo-env-{index}",
        )
        proc.start()
        child_conn.close()
        self._conns[index], self._procs[index] = parent_conn, proc

    def _construct(self, index: int) -> tuple:
        """Waits for worker `index` to build its env; a failure here always shuts down."""
        try:
            return self._receive(index, self.start_timeout, "construction")
        except EnvWorkerError:
            self.close()
            raise

    def _fail(self, index: int, message: str, worker_traceback: str | None = None) -> None:
        # The failed worker may be hung or stopped: kill it rather than wait on it.
        if self._procs[index].is_alive():
            self._procs[index].kill()
            self._procs[index].join(2.0)
        raise EnvWorkerError(index, message, worker_traceback)

    def _recover(self, error: EnvWorkerError) -> dict[str, np.ndarray]:
        """Replaces the failed worker and returns its env's first observation, or shuts
        the batch down and raises when the policy or the restart budget says so."""
        index = error.index
        if self.on_failure != "restart" or self.restarts >= self.max_restarts:
            self.close()
            if self.on_failure == "restart":
                raise EnvWorkerError(
                    index,
                    f"{error.message} (no restart left: all {self.max_restarts} spent)",
                    error.worker_traceback,
                ) from error
            raise error
        self.restarts += 1
        logger.warning(
            "Restarting environment worker %d (restart %d of %d) after: %s",
            index,
            self.restarts,
            self.max_restarts,
            error,
        )
        self._conns[index].close()
        self._start_worker(index)
        self._construct(index)
        try:
            self._send(index, "reset")
            return self._receive(index, self.timeout, "reset")
        except EnvWorkerError:
            self.close()
            raise

    def _send(self, index: int, command: str, payload: Any = None) -> None:
        try:
            self._conns[index].send((command, payload))
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            proc = self._procs[index]
            proc.join(1.0)
            self._fail(
                index,
                f"worker process died (exit code {proc.exitcode}) before receiving {command!r}",
            )

    def _receive(self, index: int, timeout: float | None, what: str) -> Any:
        conn, proc = self._conns[index], self._procs[index]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait([conn, proc.sentinel], remaining)
            if conn in ready or conn.poll(0):
                try:
                    status, payload = conn.recv()
                except (EOFError, ConnectionResetError, OSError):
                    proc.join(1.0)
                    self._fail(
                        index, f"worker process died during {what} (exit code {proc.exitcode})"
                    )
                if status == "error":
                    message, worker_traceback = payload
                    self._fail(index, f"{what} raised {message}", worker_traceback)
                return payload
            if proc.sentinel in ready:
                proc.join(1.0)
                self._fail(index, f"worker process died during {what} (exit code {proc.exitcode})")
            if deadline is not None and time.monotonic() >= deadline:
                self._fail(index, f"no reply to {what} within {timeout} s (worker hung?)")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("ParallelEnv is closed (after close() or a worker error)")

    def reset(self, indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Reset the envs at ``indices`` (all by default) in parallel; stacked in that order."""
        self._check_open()
        indices = list(range(self.num_envs)) if indices is None else [int(i) for i in indices]
        for index in indices:
            if not 0 <= index < self.num_envs:
                raise IndexError(f"env index {index} out of range for {self.num_envs} envs")
        return stack_obs(self._call_all("reset", [(i, None) for i in indices]))

    def step(self, actions: Any) -> dict[str, np.ndarray]:
        """Step all envs in parallel, env i with ``actions[i]``; stacked observations."""
        self._check_open()
        actions = _check_actions(actions, self.num_envs)
        return stack_obs(
            self._call_all("step", [(i, np.asarray(a)) for i, a in enumerate(actions)])
        )

    def _call_all(self, command: str, calls: list[tuple[int, Any]]) -> list[dict[str, np.ndarray]]:
        """Sends `command` with its payload to each (index, payload) worker first, so they
        work in parallel, then collects the replies in that order, recovering failed
        workers by the failure policy."""
        failures: dict[int, EnvWorkerError] = {}
        for index, payload in calls:
            try:
                self._send(index, command, payload)
            except EnvWorkerError as error:
                failures[index] = error
        replies = []
        for index, _ in calls:
            try:
                if index in failures:
                    raise failures[index]
                replies.append(self._receive(index, self.timeout, command))
            except EnvWorkerError as error:
                replies.append(self._recover(error))
        return replies

    def close(self) -> None:
        """Stop all workers: politely, then by terminate/kill if they do not exit."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except Exception:  # noqa: BLE001 - worker may already be gone
                pass
        deadline = time.monotonic() + 3.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for conn in self._conns:
            conn.close()

    def __enter__(self) -> ParallelEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def make_batch_env(
    task: str,
    num_envs: int,
    *,
    seed: int = 0,
    parallel: bool | None = None,
    timeout: float | None = 60.0,
    on_failure: str = "raise",
    max_restarts: int = 10,
    **kwargs: Any,
) -> SerialEnv | ParallelEnv:
    """``num_envs`` copies of ``task`` seeded ``seed, seed + 1, ...``.

    ``parallel=None`` uses worker processes only when there is more than one env.
    ``on_failure`` and ``max_restarts`` apply to worker processes (see
    :class:`ParallelEnv`). ``kwargs`` go to :func:`tempo.envs.make_env`.
    """
    import functools

    from tempo.envs import make_env

    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if on_failure not in FAILURE_POLICIES:
        raise ValueError(f"unknown on_failure {on_failure!r}; choose one of {FAILURE_POLICIES}")
    ctors = [functools.partial(make_env, task, seed=seed + i, **kwargs) for i in range(num_envs)]
    if parallel is None:
        parallel = num_envs > 1
    if parallel:
        return ParallelEnv(ctors, timeout=timeout, on_failure=on_failure, max_restarts=max_restarts)
    return SerialEnv(ctors)
