"""The ``asyncexec`` command (also ``python -m asyncexec``).

::

    asyncexec run FILE.py:EXPERIMENT [--backend process|thread|docker|ssh|slurm|azure]
                  [--profile NAME] [--config FILE] [--workers N] [--image IMAGE]
                  [--host USER@HOST:PORT] [--partition P] [--time T] [--chunk-size N]
                  [--set KEY=VALUE] ... [--dir DIR] [--continue] [--retry-failed]
    asyncexec status DIR
    asyncexec results DIR [--format table|csv|json]
    asyncexec cancel DIR
    asyncexec docker check IMAGE  (can IMAGE run our tasks?)
    asyncexec docker prune --executor ID | --all
    asyncexec azure prune [--all] [--yes]  (container groups a driver left)
    asyncexec worker ...          (the worker itself; see `asyncexec worker -h`)

Exit status:

* 0: every run is done (``run``), or the command did what it was asked;
* 1: some runs failed (``run``), or a Docker check or prune failed;
* 2: bad usage (a bad option or target), or a directory that is not a usable
  experiment directory (not a directory, cannot be made, another
  experiment's, a damaged results database);
* 3: the system refused: disk full, I/O error, permission denied;
* 4: an unexpected error inside asyncexec (a bug: please report it with the
  ``--debug`` traceback);
* 130: interrupted (Ctrl-C, SIGTERM, ``asyncexec cancel``). A second Ctrl-C
  while the first one is being handled exits at once: runs left running are
  taken up again by ``run --continue``.

The executor of ``run`` comes from ``asyncexec.config``: flags over the
``ASYNCEXEC_*`` variables over a profile of ``asyncexec.toml`` or
``pyproject.toml``; ``run`` records it in ``DIR/executor.json`` before it
runs, and ``run --continue`` starts from that record (docs/config.md).

Interrupts: ``asyncexec: SIGINT: stopping, ...`` says the first was received;
the command then ends with its one ``asyncexec:`` line. A second one says
``asyncexec: SIGINT again: exiting now; ...`` (``--debug``: every thread's
stack first) and exits with 130. A signal once the last line is printed ends
the process silently with the status it announced.

Errors, bad usage included, are reported as one ``asyncexec: ...`` line on
stderr; ``--debug`` (or the environment variable ``ASYNCEXEC_DEBUG=1``) also
prints the traceback.

Where each part lives: ``_main`` (the entry point), ``_parser`` (the
arguments), ``_exit`` (how the command ends: exit status, the one-line
error, signals), ``_run`` (``run``), ``_directory`` (``status``,
``results``, ``cancel`` and the summary ``run`` prints), ``_docker``
(``docker check|prune``), ``_azure`` (``azure prune``), ``_output`` (tables and cells).
"""

from ._main import main as main
from ._run import load_experiment as load_experiment

__all__ = ["main"]
