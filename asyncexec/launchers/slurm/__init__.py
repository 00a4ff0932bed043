"""Run tasks on a Slurm cluster: :class:`SlurmExecutor`, its launcher and its config.

Slurm is an adapter on the batch family (:mod:`asyncexec.launchers.batch`):

* :mod:`.config`: :class:`SlurmConfig`, :func:`parse_time`, ``#SBATCH`` options;
* :mod:`.accounting`: what squeue's pending reasons and sacct's states say
  (:func:`never_runs`, :func:`judge_accounting`);
* :mod:`.adapter`: ``sbatch``/``squeue``/``sacct``/``scancel`` over a Shell;
* :mod:`.executor`: :class:`SlurmLauncher` and :class:`SlurmExecutor`.

The launcher reaches the cluster through a :class:`~asyncexec.abc.Shell`:
:class:`~asyncexec.shells.LocalShell` on a login node, or
:class:`~asyncexec.shells.SSHShell` from anywhere else. It treats the
scheduler gently:


* **Submission.** ``start`` calls made within ``batch_window`` seconds of
  each other become one ``sbatch --array`` job (several when there are more
  than the cluster's ``MaxArraySize`` array tasks). Each array task runs
  ``chunk_size`` tasks with the project's one-shot runner
  (:mod:`asyncexec._runtime`, a standard-library-only file that travels with
  the array). The tasks, the runner and the job script reach the cluster as
  one archive on the standard input of the one command that unpacks them and
  calls ``sbatch``: one round trip per array, whatever its size. Staging
  directories are 0700 and files 0600.
* **Polling.** One poller per cluster, shared by every launcher of the
  process that talks to it, calls ``squeue`` once per interval for every
  live job, ``sacct --parsable2`` only for array tasks that left the queue
  without an outcome, and fetches the outcomes of finished tasks in one
  archive. The interval starts at ``poll_interval`` and grows towards
  ``max_poll_interval`` while nothing changes; ``scheduler_calls_per_minute``
  bounds the ``squeue`` and ``sacct`` calls of the cluster's launchers. A
  task's future is PENDING until ``squeue`` shows its array task running
  (:meth:`SlurmLauncher.on_running`).
* **Never-running jobs.** The same ``squeue`` call reads why pending tasks
  wait; a reason that no other job's end clears (:func:`never_runs`:
  ``PartitionConfig``, ``PartitionTimeLimit``, per-job limits...), lasting
  5 s, fails the task with a ``LaunchError`` quoting it, and the array task is
  cancelled (``scancel``): nothing waits for ever, nothing is left in the queue.
* **Setup.** ``modules``, ``venv``, ``conda_env`` and ``setup`` run under a
  bash ``ERR`` trap: a line that fails ends the array task before the runner
  starts, and its tasks fail with a ``LaunchError`` quoting the line, its
  status and the end of the array task's stderr.
* **Time limits** become ``--time`` (Slurm counts in whole minutes) and the
  worker's own limit, which stops the task on time and reports it: an
  exception in the task at its limit, and for code that does not stop (stuck
  in C with the GIL, ignoring signals) a SIGKILL from the runner's parent
  process a second later (:func:`asyncexec._runtime.supervise`). Either way
  the task fails with ``TaskTimeout``.
* **Resources.** A task's ``Resources(cpus=...)`` becomes its array's
  ``--cpus-per-task`` (rounded up) and ``gpus`` its ``--gres=gpu:N``, over
  :class:`SlurmConfig`'s; tasks asking for different ones never share an
  array. ``memory_mb`` is the runner's (``RLIMIT_AS`` on what the task adds to
  its process), not ``--mem``, which stays ``SlurmConfig.memory``.
* **Cancellation** is ``scancel`` of exactly the array task (all cancels
  made together share one call); when the array task runs other live tasks
  of its chunk, a marker file tells the worker to skip or interrupt only
  that one. ``cancel`` returns once the poller has seen the task end.
* **Re-attach.** A :class:`~asyncexec.JobRef` names the array task, the task
  and its staging directory: a new launcher on the same cluster can ``wait``
  for it (``executor.attach(ref)``), and :meth:`SlurmLauncher.find_refs`
  lists what a killed driver left in a staging directory.
"""

from __future__ import annotations

# Also importable from here, as before: the runner's wire format, Slurm's words.
from ..batch.files import _RUNNER_SOURCE as _RUNNER_SOURCE
from ..batch.files import batch_file as batch_file
from ..batch.files import read_outcome as read_outcome
from .accounting import judge_accounting as judge_accounting
from .accounting import never_runs as never_runs
from .adapter import SlurmAdapter as SlurmAdapter
from .config import SlurmConfig, parse_time
from .executor import SlurmExecutor, SlurmLauncher

__all__ = ["SlurmConfig", "SlurmExecutor", "SlurmLauncher", "parse_time"]
