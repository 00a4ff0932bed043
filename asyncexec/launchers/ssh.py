"""Run tasks on hosts reached over SSH: :class:`SSHLauncher` and :class:`SSHExecutor`.

Each host runs ``slots`` long-lived workers, ``python -m asyncexec.worker
serve --stdio``, each on an SSH channel of its own, speaking the process
pool's framed protocol (handshake and version check included). A task's
prints arrive on the channel's stderr and are copied to the driver's.

A connection that drops fails only the tasks its workers were running, with
:class:`~asyncexec.WorkerLost`; the next task reconnects.

Each worker runs the executor's ``setup`` hook when it starts and its
``teardown`` hook when it exits normally (see :class:`SSHExecutor`). A task's
``log_stdout`` / ``log_stderr`` name files on the driver's machine: the worker
sends all the task wrote back with its outcome, and the driver appends it to
them.

``Resources(cpus=n)`` pins the task's worker to ``ceil(n)`` of the CPUs it may
use on its host while the task runs (the process pool's worker code), chosen
apart from the CPUs of the tasks the host's other workers run pinned;
``memory_mb`` caps what it may add to its worker's address space; ``gpus`` is
refused at ``submit``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable, Sequence

import anyio

from .. import BaseExecutor
from .._arguments import remembers_arguments
from .._exceptions import BackendUnavailable, LaunchError
from .._hooks import Hook
from .._options import TaskOptions
from ..abc import Launcher, Shell, SpawnedProcess
from ._base import refuse_launcher_arguments
from .pool import PoolLauncher, PoolWorker

__all__ = ["SSHExecutor", "SSHLauncher"]


class _RemoteWorker(PoolWorker):
    """A worker process on a host, and the SSH channel it speaks on."""

    def __init__(self, launcher: SSHLauncher, shell: Shell, process: SpawnedProcess) -> None:
        super().__init__(process.stdin, process.stdout)
        self._launcher = launcher
        self.shell = shell
        self.place = shell  # the host: its workers share its CPUs
        self.process = process
        self.pid = process.pid
        self._closed = False
        self._exit_code: int | None = None
        self._reaped = anyio.Event()

    def __repr__(self) -> str:
        return f"<remote worker {self.pid} on {self.shell!r}>"

    def kill(self) -> None:
        self.dead = True
        self._launcher._background(self.process.kill)

    async def close_input(self) -> None:
        with contextlib.suppress(Exception):
            async with self.send_lock:
                await self.sender.aclose()

    async def wait_exit(self) -> int | None:
        return await self.process.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.process.aclose()
        self._launcher._left(self.shell)


class SSHLauncher(PoolLauncher):
    """Runs tasks on long-lived workers on SSH hosts, ``slots`` per host.

    Args:
        shells: one :class:`~asyncexec.shells.SSHShell` per host (any Shell works).
        slots: workers per host.
        python: the interpreter on the hosts (driver's minor version, with
            asyncexec and cloudpickle installed).
        setup, teardown, initializer, max_tasks_per_worker, eager,
        startup_timeout, prefetch: as for the process pool (see
            :class:`SSHExecutor`).

    ``honours_resources``: ``cpus`` and ``memory_mb``, as the process pool's.
    A host's CPUs are known only once a worker runs there: a task asking for
    more CPUs than its worker may use (or a host without
    ``os.sched_setaffinity``) fails with :class:`LaunchError` when it reaches
    the worker, not at ``submit``.
    """

    kind = "ssh"

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        shells: Sequence[Shell],
        *,
        slots: int = 1,
        python: str = "python3",
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = False,
        startup_timeout: float = 60.0,
        prefetch: int = 0,
    ) -> None:
        shells = list(shells)
        if not shells:
            raise ValueError("SSHLauncher needs at least one shell (host)")
        for shell in shells:
            if not isinstance(shell, Shell):
                raise TypeError(f"not a Shell: {shell!r}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}")
        for shell in shells:
            capacity = shell.channel_capacity
            if capacity is not None and slots >= capacity:
                # Each worker holds a channel; killing one needs another.
                raise ValueError(
                    f"{slots} slots need more than the {capacity} channels {shell!r} may open: "
                    "raise its max_connections (or channels_per_connection)"
                )
        #: Hosts that do not see this machine's files get the user's modules by value
        #: (the hooks too: set before the pool pickles them).
        self.shares_files = all(shell.shares_files for shell in shells)
        super().__init__(
            len(shells) * slots,
            setup=setup,
            teardown=teardown,
            initializer=initializer,
            max_tasks_per_worker=max_tasks_per_worker,
            eager=eager,
            startup_timeout=startup_timeout,
            prefetch=prefetch,
        )
        self.shells = shells
        self.slots = slots
        self.python = python
        self._on_host: dict[int, int] = {index: 0 for index in range(len(shells))}

    def __repr__(self) -> str:
        return f"<SSHLauncher {len(self._workers)} workers on {len(self.shells)} host(s)>"

    def _where(self) -> str:
        return f"{self.python} over {', '.join(repr(shell) for shell in self.shells)}"

    def _background(self, fn: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):
                await fn()

        if self._tg is not None:
            self._tg.start_soon(run)

    async def aclose(self) -> None:
        """Stop the workers, then close every host's connections.

        Cancellation: stopping the workers may be cut short (as
        ``PoolLauncher.aclose``; ``__aexit__`` shields it), but the connections
        are closed all the same, shielded, and a worker whose input ends exits
        and kills the task it runs. Calling it again finishes the job.
        """
        try:
            await super().aclose()
        finally:
            with anyio.CancelScope(shield=True):
                for shell in self.shells:
                    with contextlib.suppress(Exception):
                        await shell.aclose()

    def _left(self, shell: Shell) -> None:
        index = self.shells.index(shell)
        self._on_host[index] = max(0, self._on_host[index] - 1)

    async def _connect(self, task_id: str | None) -> PoolWorker:
        # The host with the most free slots; hosts that cannot be reached are skipped.
        order = sorted(self._on_host, key=lambda index: self._on_host[index])
        errors: list[str] = []
        for index in order:
            if self._on_host[index] >= self.slots:
                continue
            shell = self.shells[index]
            self._on_host[index] += 1
            try:
                process = await shell.spawn(
                    [self.python, "-m", "asyncexec.worker", "serve", "--stdio"]
                )
            except BaseException as exc:
                self._on_host[index] -= 1
                if isinstance(exc, (BackendUnavailable, OSError)):
                    errors.append(str(exc))
                    continue
                raise
            worker = _RemoteWorker(self, shell, process)
            assert self._tg is not None
            self._tg.start_soon(_copy_stderr, process)
            return worker
        if errors:
            raise BackendUnavailable("; ".join(errors))
        raise LaunchError("every host's slots are taken")


async def _copy_stderr(process: SpawnedProcess) -> None:
    """What the tasks print (their stdout and stderr) goes to the driver's stderr."""
    with contextlib.suppress(Exception):
        async for chunk in process.stderr:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()


class SSHExecutor(BaseExecutor):
    """Run tasks on hosts over SSH: ``slots`` long-lived workers per host.

    Args:
        shells: one :class:`~asyncexec.shells.SSHShell` per host.
        slots: workers (tasks at once) per host.
        python: the interpreter on the hosts (driver's Python minor version,
            asyncexec and cloudpickle installed).
        setup: a callable of no argument each worker (a process on a host)
            runs once when it starts, before its first task; again in each
            worker that replaces one. If it raises, the worker is killed and
            each task that needed it fails with a
            :class:`~asyncexec.TaskLaunchError` that is also a
            :class:`~asyncexec.SetupFailed`, naming its exception (with
            ``eager=True``, entering the executor raises ``SetupFailed``).
            It travels pickled (a function of the driver's script by value).
        teardown: a callable of no argument each worker runs once when it
            exits normally: when the executor closes (within
            :attr:`SSHLauncher.CLOSE_GRACE` seconds, or it is killed) or when it
            retires after ``max_tasks_per_worker`` tasks. Not in a worker that
            is killed (a cancelled or timed-out task's, a dropped connection)
            nor where setup raised; what it raises is printed on the worker's
            stderr, which reaches the driver's.
        initializer: ``setup``'s former name (give one or the other).
        max_tasks_per_worker: replace a worker after this many tasks.
        eager: start every worker on entering ``async with`` (default: on need).
        startup_timeout: seconds a worker may take to start and say hello.
        prefetch: tasks queued at a busy worker (0: one task per worker at a
            time, so a dropped connection fails only the tasks that ran).
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.
        launcher: a configured :class:`SSHLauncher` instead of ``shells`` and
            the workers' settings (giving both is a ``TypeError``).

    Resources (``TaskOptions.resources``), as for :class:`ProcessExecutor`:

    * ``cpus``: the task's worker is pinned to ``ceil(cpus)`` of the CPUs it
      may use on its host while the task runs (Linux hosts), apart from the
      CPUs of the host's other pinned tasks where there are enough. A request
      for more CPUs than the worker may use, or a host that cannot pin, fails
      the task with :class:`LaunchError` once it reaches the worker (a host's
      CPUs are not known at ``submit``).
    * ``memory_mb``: what the task may add to its worker's address space.
    * ``gpus``: refused at ``submit`` (:class:`LaunchError`).

    ``log_stdout`` / ``log_stderr`` (``TaskOptions``) name files on the
    driver's machine: the worker captures everything the task writes (file
    descriptors 1 and 2) and sends it all back with the outcome; the driver
    appends it to those files once the task ends (not as it is written). A
    file that cannot be opened here fails the task with that ``OSError``
    before it runs.
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        shells: Sequence[Shell] | None = None,
        *,
        slots: int = 1,
        python: str = "python3",
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        max_tasks_per_worker: int | None = None,
        eager: bool = False,
        startup_timeout: float = 60.0,
        prefetch: int = 0,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
        launcher: SSHLauncher | None = None,
    ) -> None:
        if launcher is not None:
            if not isinstance(launcher, SSHLauncher):
                raise TypeError(f"launcher must be an SSHLauncher, got {launcher!r}")
            refuse_launcher_arguments(SSHExecutor, locals(), "SSHLauncher")
            self.ssh = launcher
        elif shells is None:
            raise TypeError("SSHExecutor needs shells, or a configured launcher=")
        else:
            self.ssh = SSHLauncher(
                shells,
                slots=slots,
                python=python,
                setup=setup,
                teardown=teardown,
                initializer=initializer,
                max_tasks_per_worker=max_tasks_per_worker,
                eager=eager,
                startup_timeout=startup_timeout,
                prefetch=prefetch,
            )
        super().__init__(
            len(self.ssh.shells) * self.ssh.slots, options=options, max_pending=max_pending
        )

    def _create_launcher(self) -> Launcher:
        return self.ssh
