"""A pool of worker processes: :class:`ProcessLauncher` and :class:`ProcessExecutor`.

Each worker is a fresh interpreter running ``python -m asyncexec.worker serve``
(never a fork of the event loop's process), in a session of its own, talking
length-framed msgpack over a private socket pair, so the task's stdout and
stderr stay the driver's own. A worker that dies fails only the task it
held; killing a task kills its worker's whole process group, and a new worker
takes its place.

Each worker runs the executor's ``setup`` hook once when it starts and its
``teardown`` hook once when it exits normally (see :class:`ProcessExecutor`).
A task's ``log_stdout`` / ``log_stderr`` files are opened by its worker, on
this machine: they get everything the task writes, as it writes it.

``Resources(cpus=n)`` pins the worker to ``ceil(n)`` CPUs while the task runs
(``os.sched_setaffinity``, Linux), chosen apart from the CPUs of the tasks other
workers run pinned; ``memory_mb`` caps what the task may add to its worker's
address space (``RLIMIT_AS``); ``gpus`` is refused at ``submit``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Literal

import anyio
from anyio.abc import Process, SocketAttribute, UNIXSocketStream

import asyncexec

from .. import BaseExecutor
from .._arguments import remembers_arguments
from .._exceptions import LaunchError
from .._hooks import Hook
from .._messages import Resources, Setup
from .._options import TaskOptions, check_env
from ..abc import Launcher
from .pool import PoolLauncher, PoolWorker

__all__ = ["ProcessExecutor", "ProcessLauncher"]

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(asyncexec.__file__)))


class _ProcessWorker(PoolWorker):
    """A worker process and its channel: a socket, or its stdin and stdout."""

    def __init__(self, process: Process, socket_stream: UNIXSocketStream | None) -> None:
        if socket_stream is not None:
            super().__init__(socket_stream, socket_stream)
        else:
            assert process.stdin is not None and process.stdout is not None
            super().__init__(process.stdin, process.stdout)
        self.process = process
        self.pid = process.pid
        self.socket = socket_stream
        if socket_stream is not None:
            self.raw_socket = socket_stream.extra(SocketAttribute.raw_socket)
            self.reader.raw_socket = self.raw_socket

    def kill(self) -> None:
        self.dead = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def has_exited(self) -> bool:
        return _has_exited(self.process.pid)

    async def close_input(self) -> None:
        with contextlib.suppress(Exception):
            async with self.send_lock:
                if self.socket is not None:
                    await self.socket.send_eof()
                else:
                    await self.sender.aclose()

    async def wait_exit(self) -> int | None:
        return await self.process.wait()

    async def aclose(self) -> None:
        if self.socket is not None:
            await self.socket.aclose()
        await self.process.aclose()


def _has_exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (the event loop does)."""
    if not hasattr(os, "waitid"):
        return False
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, pid, flags) is not None
    except ChildProcessError:
        return True  # already reaped


class ProcessLauncher(PoolLauncher):
    """Runs tasks in a pool of ``n_workers`` worker processes.

    Args:
        n_workers: worker processes at most.
        python: the interpreter the workers run.
        env: environment variables added to the driver's for the workers.
        setup: a callable each worker runs once at start (see
            :class:`ProcessExecutor`).
        teardown: a callable each worker runs once when it exits normally.
        initializer: ``setup``'s former name (give one or the other).
        max_tasks_per_worker: replace a worker after this many tasks.
        eager: start every worker when the pool opens (else on first need).
        startup_timeout: seconds a worker may take to say hello.
        transport: ``"socket"`` (a private socket pair; the task's stdout and
            stderr are the driver's) or ``"stdio"`` (the worker's stdin and
            stdout, as over SSH; the task's stdout goes to stderr).
        prefetch: tasks queued at each busy worker behind the one it runs, so
            it never waits for a round trip (tasks with a time limit or
            ``cpus`` always wait for an idle worker).

    ``honours_resources``: ``cpus`` (where ``os.sched_setaffinity`` exists) and
    ``memory_mb``; :meth:`check_resources` refuses more CPUs than the workers
    may use (the driver's own affinity, which they inherit).
    """

    kind = "process"
    sees_driver_files = True  # the workers open the log files themselves

    def __init__(
        self,
        n_workers: int,
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = True,
        startup_timeout: float = 60.0,
        transport: Literal["socket", "stdio"] = "socket",
        prefetch: int = 64,
    ) -> None:
        if transport not in ("socket", "stdio"):
            raise ValueError(f"transport must be 'socket' or 'stdio', got {transport!r}")
        super().__init__(
            n_workers,
            setup=setup,
            teardown=teardown,
            initializer=initializer,
            max_tasks_per_worker=max_tasks_per_worker,
            eager=eager,
            startup_timeout=startup_timeout,
            prefetch=prefetch,
        )
        self._python = python
        self._env = check_env(env)
        self._transport = transport
        self.fd_payloads = transport == "socket" and hasattr(os, "memfd_create")
        if not hasattr(os, "sched_setaffinity"):  # (not Linux) nothing to pin a task with
            self.honours_resources = frozenset({"memory_mb"})

    def __repr__(self) -> str:
        return f"<ProcessLauncher {len(self._workers)}/{self._n_workers} workers>"

    def _where(self) -> str:
        return self._python

    def check_resources(self, resources: Resources) -> str | None:
        problem = super().check_resources(resources)
        if problem is None and resources.cpus is not None:
            usable = os.sched_getaffinity(0)  # the workers' too: they inherit it
            if math.ceil(resources.cpus) > len(usable):
                return (
                    f"ProcessLauncher pins a task to whole CPUs, and Resources.cpus asks for "
                    f"{math.ceil(resources.cpus)} (rounded up) where its workers may use "
                    f"{len(usable)} (os.sched_getaffinity); ask for at most {len(usable)}, or "
                    "use a larger machine (SSHExecutor, SlurmExecutor)"
                )
        return problem

    def _setup(self) -> Setup:
        return Setup(
            sys_path=[entry for entry in sys.path if entry],
            initializer=self.hooks.setup,
            teardown=self.hooks.teardown,
        )

    async def _connect(self, task_id: str | None) -> PoolWorker:
        command = [self._python, "-m", "asyncexec.worker", "serve"]
        try:
            if self._transport == "stdio":
                process = await anyio.open_process(
                    [*command, "--stdio"],
                    stderr=None,
                    start_new_session=True,
                    env=self._worker_env(),
                )
                return _ProcessWorker(process, None)
            parent, child = socket.socketpair()
            try:
                process = await anyio.open_process(
                    [*command, "--fd", str(child.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=None,
                    stderr=None,
                    pass_fds=(child.fileno(),),
                    start_new_session=True,
                    env=self._worker_env(),
                )
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
            return _ProcessWorker(process, await UNIXSocketStream.from_socket(parent))
        except OSError as exc:
            raise LaunchError(f"cannot start a worker with {self._python}: {exc}") from exc

    def _worker_env(self) -> dict[str, str]:
        env = {**os.environ, **self._env}
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_ROOT + (os.pathsep + path if path else "")
        env["ASYNCEXEC_PARENT_PID"] = str(os.getpid())
        return env


class ProcessExecutor(BaseExecutor):
    """Run tasks in a pool of worker processes on this machine.

    Args:
        n_workers: worker processes (default: ``os.cpu_count()``).
        max_tasks_per_worker: replace each worker after this many tasks.
        setup: a callable of no argument each worker process runs once when it
            starts, before its first task: what it sets up (a module's state,
            a connection, a warmed cache) is there for every task the worker
            runs. It runs again in each worker that replaces one (a crash, a
            cancelled or timed-out task's worker, ``max_tasks_per_worker``).
            If it raises, the worker is killed and reaped: entering the
            executor raises :class:`~asyncexec.SetupFailed` (``eager=True``), or
            (``eager=False``) each task that needed a new worker fails with a
            :class:`~asyncexec.TaskLaunchError` that is also a ``SetupFailed``,
            naming its exception.
        teardown: a callable of no argument each worker process runs once when
            it exits normally: when the executor closes (it has
            :attr:`ProcessLauncher.CLOSE_GRACE` seconds, then is killed), or
            when it retires after ``max_tasks_per_worker`` tasks. It does not
            run in a worker that is killed (a cancelled or timed-out task's, a
            crash, a driver that died) nor where setup raised; what it raises is
            printed on the worker's stderr (the driver's).
        initializer: ``setup``'s former name, kept for compatibility (give one
            or the other).
        python: the interpreter the workers run (same minor version and
            cloudpickle as the driver, or the handshake refuses it).
        env: environment variables added to the driver's for the workers.
        eager: start all workers on entering ``async with`` (default) or on need.
        prefetch: tasks queued at each busy worker behind the one it runs, so
            that it never waits for the driver between tasks (0: hand a task
            only to an idle worker). Tasks with a time limit always wait for an
            idle worker, so their clock starts when they start; so do tasks
            pinned to CPUs, so their CPUs are chosen when they start.
        options: default :class:`TaskOptions`.
        max_pending: queued tasks at most before ``submit`` waits.

    Resources (``TaskOptions.resources``):

    * ``cpus``: the worker runs the task pinned to ``ceil(cpus)`` of the CPUs
      it may use (``os.sched_setaffinity``, all its threads; Linux only) and
      gets them all back when the task ends. Tasks that run at the same time on
      different workers get different CPUs where there are enough. More CPUs
      than the process may use is refused at ``submit``
      (:class:`LaunchError`).
    * ``memory_mb``: what the task may add to its worker's address space
      (``RLIMIT_AS``): past it, allocations fail with ``MemoryError``.
    * ``gpus``: refused at ``submit`` (:class:`LaunchError`).

    ``log_stdout`` / ``log_stderr`` (``TaskOptions``): the worker appends all
    the task writes to file descriptors 1 and 2 (its C code and child processes
    too) to those files, as it writes it; a file that cannot be opened fails
    the task with that ``OSError``.
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        n_workers: int | None = None,
        *,
        max_tasks_per_worker: int | None = None,
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        eager: bool = True,
        prefetch: int = 64,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        if n_workers is None:
            n_workers = os.cpu_count() or 1
        super().__init__(n_workers, options=options, max_pending=max_pending)
        # Made (and so validated) now rather than on entering the pool.
        self._process_launcher = ProcessLauncher(
            self.n_workers,
            python=python,
            env=env,
            setup=setup,
            teardown=teardown,
            initializer=initializer,
            max_tasks_per_worker=max_tasks_per_worker,
            eager=eager,
            prefetch=prefetch,
        )

    @property
    def launcher(self) -> ProcessLauncher:
        """The pool of worker processes this executor runs on (made with it, opened with it)."""
        return self._process_launcher

    def _create_launcher(self) -> Launcher:
        return self._process_launcher
