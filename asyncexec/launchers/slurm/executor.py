"""The Slurm launcher (the batch family on :class:`SlurmAdapter`) and :class:`SlurmExecutor`."""

from __future__ import annotations

from ... import BaseExecutor
from ..._arguments import remembers_arguments
from ..._hooks import Hook, make_hooks
from ..._options import TaskOptions
from ...abc import Launcher, Shell
from ...shells import LocalShell
from ..batch import BatchLauncher
from .adapter import SlurmAdapter
from .config import SlurmConfig

__all__ = ["SlurmExecutor", "SlurmLauncher"]


class SlurmLauncher(BatchLauncher):
    """Runs tasks as Slurm array tasks, reached through ``shell``.

    Args:
        shell: how to reach a login node (``LocalShell()`` on one).
        config: how to submit (see :class:`SlurmConfig`).
        staging_dir: a directory on a file system the compute nodes share,
            for the tasks, their outcomes and logs (default
            ``$HOME/.asyncexec/slurm`` on the cluster). Each array gets a
            subdirectory, removed once all its outcomes are read.
        batch_window: seconds ``start`` calls are gathered into one array.
        keep_staging: keep the subdirectories of finished arrays.
        setup: a callable each array task runs before the first task of its
            chunk (see :class:`SlurmExecutor`).
        teardown: a callable each array task runs after the last task of its
            chunk.

    Every SlurmLauncher of this process on the same cluster (same host, user
    and port, same Slurm cluster) shares one poller (:attr:`poller`) and one
    budget of ``squeue``/``sacct`` calls (``config.scheduler_calls_per_minute``).
    """

    kind = "slurm"
    #: ``--cpus-per-task`` and ``--gres=gpu:N`` per array; the runner's RLIMIT_AS.
    honours_resources = frozenset({"cpus", "memory_mb", "gpus"})

    def __init__(
        self,
        shell: Shell,
        config: SlurmConfig | None = None,
        *,
        staging_dir: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
        setup: Hook | None = None,
        teardown: Hook | None = None,
    ) -> None:
        if not isinstance(shell, Shell):
            raise TypeError(f"shell must be a Shell (LocalShell, SSHShell), got {shell!r}")
        config = config if config is not None else SlurmConfig()
        super().__init__(
            SlurmAdapter(shell, config, self._command),
            chunk_size=config.chunk_size,
            max_concurrent=config.max_concurrent,
            max_array_size=config.max_array_size,
            poll_interval=config.poll_interval,
            max_poll_interval=config.max_poll_interval,
            scheduler_calls_per_minute=config.scheduler_calls_per_minute,
            staging_dir=staging_dir,
            batch_window=batch_window,
            keep_staging=keep_staging,
        )
        self.shell = shell
        self.config = config
        #: A cluster reached over SSH does not see this machine's files (unless its shell says so).
        self.shares_files = shell.shares_files
        self.hooks = make_hooks(
            setup, teardown, travel_to=None if self.shares_files else type(self).__name__
        )

    def __repr__(self) -> str:
        return f"SlurmLauncher({self.shell!r}, staging_dir={self.staging_dir!r})"


class SlurmExecutor(BaseExecutor):
    """Run tasks on a Slurm cluster, from its login node or over SSH.

    Args:
        shell: how to reach the cluster: ``LocalShell()`` (the default) on a
            login node, ``SSHShell(host, ...)`` from anywhere else.
        config: how array tasks are submitted (:class:`SlurmConfig`).
        n_workers: tasks handed to Slurm at once at most (pending or running
            there; default 1000); ``config.max_concurrent`` limits how many run.
        staging_dir: where tasks and outcomes live on the cluster's shared
            file system (default ``$HOME/.asyncexec/slurm``).
        batch_window: seconds submissions are gathered into one array.
        keep_staging: keep the staging subdirectories of finished arrays.
        setup: a callable of no argument that each array task runs once, in the
            runner's process, before the first task of its chunk that runs
            (after ``SlurmConfig``'s shell lines, ``config.setup``): what it
            sets up (a module's state, a connection, a file) is there for the
            chunk's tasks. If it raises, no task of the chunk runs: each fails
            with a :class:`~asyncexec.TaskLaunchError` that is also a
            :class:`~asyncexec.SetupFailed`, naming its exception; the array
            task then ends, and nothing is left in the queue.
        teardown: a callable of no argument that each array task runs once
            after the last task of its chunk, in the same process, before that
            task's outcome is written (so once every future has its outcome,
            every teardown has run). It does not run when setup raised, nor in
            an array task that is killed (``scancel``: cancelling the one live
            task of an array task, closing the executor with tasks running; a
            node failure), nor in a runner killed at a stuck task's time limit
            (the runner that goes on with the chunk runs setup again). What it
            raises is printed on the array task's stderr.
            With time limits on every task, the array task's ``--time`` covers
            the tasks' limits and 30 s: a longer setup or teardown needs
            ``config.time``.
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.

    ``time_limit`` becomes the array task's ``--time``, rounded up to whole
    minutes as Slurm counts, and the worker's own limit, which stops the task
    on time (a task stuck in C or ignoring signals is killed a second past it):
    the clock starts when the task starts, not while it waits in Slurm's queue,
    and the future is PENDING while it waits there. A task Slurm can never
    start (more CPUs or time than its partition has...) fails with a
    ``LaunchError`` quoting Slurm's pending reason, and its job is cancelled.

    Resources (``TaskOptions.resources``), per task, over ``config``'s:

    * ``cpus``: the array task's ``--cpus-per-task``, rounded up to whole CPUs.
    * ``gpus``: its ``--gres=gpu:N``. A cluster without them makes ``sbatch``
      refuse: the task fails with :class:`LaunchError` quoting it, and no job
      is left.
    * ``memory_mb``: what the task may add to the runner's address space
      (``RLIMIT_AS``); the job's ``--mem`` is ``config.memory``.

    Tasks that ask for different ``cpus`` or ``gpus`` go in different arrays.

    ``log_stdout`` / ``log_stderr`` (``TaskOptions``) name files on the
    driver's side: the runner writes the task's whole output beside its
    outcome on the cluster, and the poller appends it all to those files when
    it collects the outcome (a file that cannot be written is a warning: the
    task has run).
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        shell: Shell | None = None,
        config: SlurmConfig | None = None,
        n_workers: int | None = None,
        *,
        staging_dir: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
        setup: Hook | None = None,
        teardown: Hook | None = None,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        super().__init__(
            1000 if n_workers is None else n_workers, options=options, max_pending=max_pending
        )
        if shell is None:
            shell = LocalShell()
        self.slurm = SlurmLauncher(
            shell,
            config,
            staging_dir=staging_dir,
            batch_window=batch_window,
            keep_staging=keep_staging,
            setup=setup,
            teardown=teardown,
        )

    def _create_launcher(self) -> Launcher:
        return self.slurm
