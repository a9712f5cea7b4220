"""Batches of environments: in worker processes (:class:`ParallelEnv`) or in-process
(:class:`SerialEnv`), with one API so the driver does not care which it holds.

Workers are started with the 'spawn' context: forking a parent that has imported
TensorFlow (threads, CUDA state) is unsafe. A worker failure is never silent and
never a hang: an exception in a worker, a dead worker process or a reply slower than
``timeout`` raises :class:`EnvWorkerError` in the parent, naming the env index and
carrying the worker's traceback.
"""

from __future__ import annotations

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


class EnvWorkerError(RuntimeError):
    """An environment in a batch failed; ``index`` says which one."""

    def __init__(self, index: int, message: str, worker_traceback: str | None = None) -> None:
        text = f"environment {index}: {message}"
        if worker_traceback:
            text += f"\n--- traceback in worker {index} ---\n{worker_traceback.rstrip()}"
        super().__init__(text)
        self.index = index
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

    After any :class:`EnvWorkerError` the batch is shut down: one env's failure leaves the
    lockstep batch unusable, and lingering workers would leak processes.
    """

    def __init__(
        self,
        ctor_fns: Sequence[EnvCtor],
        *,
        timeout: float | None = 60.0,
        start_timeout: float | None = 300.0,
    ) -> None:
        if not ctor_fns:
            raise ValueError("ParallelEnv needs at least one environment constructor")
        self.timeout = timeout
        self._closed = False
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        context = multiprocessing.get_context("spawn")
        for index, ctor in enumerate(ctor_fns):
            try:
                pickle.dumps(ctor)
            except Exception as exc:
                self.close()
                raise ValueError(
                    f"constructor {index} cannot be pickled for a spawned worker ({exc!r}); "
                    "use a module-level function or functools.partial(make_env, task, ...)"
                ) from exc
            parent_conn, child_conn = context.Pipe()
            proc = context.Process(
                target=_worker,
                args=(index, child_conn, ctor),
                daemon=True,
                name=f"tempo-env-{index}",
            )
            proc.start()
            child_conn.close()
            self._conns.append(parent_conn)
            self._procs.append(proc)
        specs = [self._receive(i, start_timeout, "construction") for i in range(len(ctor_fns))]
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

    def _fail(self, index: int, message: str, worker_traceback: str | None = None) -> None:
        # The failed worker may be hung or stopped: kill it rather than wait on it.
        if self._procs[index].is_alive():
            self._procs[index].kill()
            self._procs[index].join(2.0)
        self.close()
        raise EnvWorkerError(index, message, worker_traceback)

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
        for index in indices:
            self._send(index, "reset")
        return stack_obs([self._receive(i, self.timeout, "reset") for i in indices])

    def step(self, actions: Any) -> dict[str, np.ndarray]:
        """Step all envs in parallel, env i with ``actions[i]``; stacked observations."""
        self._check_open()
        actions = _check_actions(actions, self.num_envs)
        for index, action in enumerate(actions):
            self._send(index, "step", np.asarray(action))
        return stack_obs([self._receive(i, self.timeout, "step") for i in range(self.num_envs)])

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
    **kwargs: Any,
) -> SerialEnv | ParallelEnv:
    """``num_envs`` copies of ``task`` seeded ``seed, seed + 1, ...``.

    ``parallel=None`` uses worker processes only when there is more than one env.
    ``kwargs`` go to :func:`tempo.envs.make_env`.
    """
    import functools

    from tempo.envs import make_env

    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    ctors = [functools.partial(make_env, task, seed=seed + i, **kwargs) for i in range(num_envs)]
    if parallel is None:
        parallel = num_envs > 1
    if parallel:
        return ParallelEnv(ctors, timeout=timeout)
    return SerialEnv(ctors)
