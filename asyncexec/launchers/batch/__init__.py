"""The chunk-and-poll family: tasks chunked into array jobs, staged in bulk, run by
the one-shot runner, outcomes collected by ONE poller per place, re-attachable.

A batch system is an adapter (:class:`BatchAdapter`) answering four
questions: submit a chunk, ask the state of many, cancel some, move bytes.
:class:`BatchLauncher` does the rest:

* :mod:`.files`: what travels (the array's archive, input and outcome files);
* :mod:`.jobs`: the launcher's bookkeeping (tasks, arrays, submissions);
* :mod:`.adapter`: the seam, and :class:`ShellAdapter` for systems whose
  commands run through a Shell on a shared file system;
* :mod:`.launcher`: the seam (start, wait, cancel), closing, re-attach;
* :mod:`.submission`: chunking, the staging archive, ``max_concurrent``;
* :mod:`.outcomes`: what a polling round makes of the scheduler's answer;
* :mod:`.poller`: the place's :class:`Poller`, its adaptive interval and budget.

Slurm (:mod:`asyncexec.launchers.slurm`) is one adapter on it.
"""

from __future__ import annotations

from .adapter import BatchAdapter, Opened, Queued, ShellAdapter, Verdict
from .files import batch_file, job_script, read_outcome
from .launcher import BatchLauncher
from .poller import Poller, PollerStats

__all__ = [
    "BatchAdapter",
    "BatchLauncher",
    "Opened",
    "Poller",
    "PollerStats",
    "Queued",
    "ShellAdapter",
    "Verdict",
    "batch_file",
    "job_script",
    "read_outcome",
]
