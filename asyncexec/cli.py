"""The ``asyncexec`` command (also ``python -m asyncexec``).

::

    asyncexec run FILE.py:EXPERIMENT [--backend process|thread] [--workers N]
                  [--dir DIR] [--continue] [--retry-failed]
    asyncexec status DIR
    asyncexec results DIR [--format table|csv|json]
    asyncexec cancel DIR
    asyncexec docker check IMAGE  (can IMAGE run our tasks?)
    asyncexec docker prune --executor ID | --all
    asyncexec worker ...          (the worker itself; see `asyncexec worker -h`)

Exit status:

* 0: every run is done (``run``), or the command did what it was asked;
* 1: some runs failed (``run``), or a Docker check or prune failed;
* 2: bad usage (a bad option or target), or a directory that is not a usable
  experiment directory (not a directory, cannot be made, another
  experiment's, a damaged results or sweeper database);
* 3: the system refused: disk full, I/O error, permission denied;
* 4: an unexpected error inside asyncexec (a bug: please report it with the
  ``--debug`` traceback);
* 130: interrupted (Ctrl-C, SIGTERM, ``asyncexec cancel``). A second Ctrl-C
  while the first one is being handled exits at once: runs left running are
  taken up again by ``run --continue``.

Interrupts: ``asyncexec: SIGINT: stopping, ...`` says the first was received;
the command then ends with its one ``asyncexec:`` line. A second one says
``asyncexec: SIGINT again: exiting now; ...`` (``--debug``: every thread's
stack first) and exits with 130. A signal once the last line is printed ends
the process silently with the status it announced.

Errors, bad usage included, are reported as one ``asyncexec: ...`` line on
stderr; ``--debug`` (or the environment variable ``ASYNCEXEC_DEBUG=1``) also
prints the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.util
import math
import os
import signal
import sqlite3
import statistics
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["main"]

BACKENDS = ("process", "thread")


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SYSTEM, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EPILOG = """exit status: 0 all done; 1 some runs failed; 2 bad usage or a bad or damaged
experiment directory; 3 the system refused (disk full, I/O error, permission
denied); 4 an unexpected error (a bug: report it with --debug); 130 interrupted
(Ctrl-C, SIGTERM, asyncexec cancel; a second Ctrl-C exits at once).
Errors are one "asyncexec: ..." line; --debug or ASYNCEXEC_DEBUG=1 adds the traceback."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asyncexec`` command.

    It answers SIGINT and SIGTERM itself from here until the process ends (see
    :class:`_SignalHandling`): call it as a program, not from a library.
    """
    global _SIGNALS
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "worker":
        from .worker import main as worker_main

        return worker_main(args[1:])
    _SIGNALS = _SignalHandling()
    _SIGNALS.debug = os.environ.get("ASYNCEXEC_DEBUG", "") not in ("", "0")
    _SIGNALS.install()
    options: argparse.Namespace | None = None
    try:
        options = _parser().parse_args(args)
        _SIGNALS.debug = getattr(options, "debug", False) or _SIGNALS.debug
        code = _command(options)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            _SIGNALS.exiting(exc.code if isinstance(exc.code, int) else EXIT_FAILED)
            raise
        code, message = _explain(exc, getattr(options, "where", None))
        if _SIGNALS.debug:
            traceback.print_exception(exc)
        elif code == EXIT_BUG:
            message += " (run with --debug for the traceback)"
        _SIGNALS.exiting(code, f"asyncexec: {message}")
        return code
    _SIGNALS.exiting(code)
    return code


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while no event loop was watching for it."""


class _SignalHandling:
    """What SIGINT and SIGTERM do, from the command's start until the process ends.

    The first one stops the command: inside ``run``'s event loop by cancelling
    the run (``_stop_on_signals``), elsewhere by raising :class:`_Interrupted`;
    either way the command ends with one ``asyncexec:`` line and status 130.
    A second one, while the first is being handled, exits at once, with one
    ``asyncexec:`` line saying so. Once the command has said how it ends, a
    signal ends the process at once, silently, with that status (interpreter
    shutdown included: never a raw traceback).
    """

    def __init__(self) -> None:
        self.first: str | None = None  # the signal that stopped the command
        self.code: int | None = None  # the command's status, once it said how it ends
        self.debug = False
        self.saying = False  # the last line is being written
        self.pending = False  # a signal came meanwhile

    def install(self) -> None:
        """(Re)install the handlers: at start, and when an event loop gives them back."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def exiting(self, code: int, line: str | None = None) -> None:
        """The command ends with ``code``, after saying ``line`` on stderr.

        A signal while the line is written waits for it, then ends the process.
        """
        self.code = code
        self.saying = line is not None
        try:
            if line is not None:
                print(line, file=sys.stderr, flush=True)
        finally:
            self.saying = False
        if self.pending:
            _exit_now(code)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.saying:
            self.pending = True
            return
        if self.code is not None:
            _exit_now(self.code)
        if self.first is not None:
            self.again(name)
        self.first = name
        raise _Interrupted(name)

    def received(self, name: str, note: str) -> None:
        """A signal reached the event loop: the first is told with ``note``, a second exits."""
        if self.code is not None:
            _exit_now(self.code)
        if self.first is not None:
            self.again(name)
        self.first = name
        print(f"asyncexec: {name}: {note}", file=sys.stderr, flush=True)

    def again(self, name: str) -> None:
        """A second signal: exit now (the sweeper sees this process gone; workers die with it)."""
        if self.debug:  # where the command was when it was told to stop
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)
        print(
            f"asyncexec: {name} again: exiting now; `asyncexec run --continue` takes up "
            "what was left",
            file=sys.stderr,
            flush=True,
        )
        _exit_now(EXIT_INTERRUPTED)


def _exit_now(code: int) -> None:
    """End the process at once (no cleanup that could be interrupted), output flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


_SIGNALS = _SignalHandling()


def _command(options: argparse.Namespace) -> int:
    if options.command == "run":
        return _run(options)
    if options.command == "status":
        options.where = options.directory
        return _status(options.directory)
    if options.command == "results":
        options.where = options.directory
        return _results(options.directory, options.format)
    if options.command == "cancel":
        options.where = options.directory
        return _cancel(options.directory)
    if options.command == "docker":
        return _docker(options)
    raise AssertionError(options.command)


def _explain(exc: BaseException, where: str | None) -> tuple[int, str]:
    """The exit status and the one-line message for an error that ended a command."""
    from .experiment import StoreError
    from .sweep import SweeperError

    inside = f" (in {where})" if where else ""
    while isinstance(exc, BaseExceptionGroup):  # tasks that failed together: the first says
        exc = exc.exceptions[0]
    if isinstance(exc, (StoreError, SweeperError, _UsageError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"interrupted by {_SIGNALS.first or 'SIGINT'}{inside}"
    if isinstance(exc, sqlite3.DatabaseError):
        text = " ".join(str(exc).split())
        text = text if len(text) <= 160 else text[:157] + "..."
        if isinstance(exc, sqlite3.OperationalError) and any(
            word in text for word in ("full", "disk I/O", "readonly", "unable to open")
        ):
            return EXIT_SYSTEM, f"cannot write the experiment's database{inside}: {text}"
        return EXIT_USAGE, (
            f"an experiment database is damaged{inside}: {text}; "
            "move the directory aside and run again, or recover it with sqlite3's .recover"
        )
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return EXIT_SYSTEM, f"disk full{inside}: {exc}"
        return EXIT_SYSTEM, str(exc)
    return EXIT_BUG, f"unexpected error: {type(exc).__name__}: {exc}"


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one ``asyncexec:`` line too (status 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("asyncexec").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"asyncexec: {where}{message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asyncexec",
        description="Run experiments (a function over a parameter grid) on any executor.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncexec {__version__}")
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error (also: ASYNCEXEC_DEBUG=1)",
    )
    parser.add_argument("--debug", action="store_true", default=False, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[debug],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )

    run = command("run", help="run (or continue) an experiment")
    run.add_argument("target", help="FILE.py:NAME or package.module:NAME of an Experiment")
    run.add_argument("--backend", choices=BACKENDS, default="process")
    run.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    run.add_argument(
        "--dir", default=None, help="experiment directory (default: asyncexec-runs/NAME)"
    )
    run.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="continue the experiment already in --dir",
    )
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    run.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help="seconds before another runner may take a silent runner's runs",
    )
    status = command("status", help="counts by state, per parameter")
    status.add_argument("directory")
    results = command("results", help="the runs and their values")
    results.add_argument("directory")
    results.add_argument("--format", choices=("table", "csv", "json"), default="table")
    cancel = command("cancel", help="stop the runner working on DIR")
    cancel.add_argument("directory")
    commands.add_parser("worker", help="the worker (python -m asyncexec.worker)")
    docker = commands.add_parser("docker", help="check an image, remove leftover containers")
    docker_commands = docker.add_subparsers(dest="docker_command", required=True)
    check = docker_commands.add_parser("check", help="can IMAGE run our tasks? (runs one)")
    check.add_argument("image")
    check.add_argument("--python", default="python3", help="the interpreter in the image")
    check.add_argument("--url", default=None, help="the engine (default: DOCKER_HOST)")
    prune = docker_commands.add_parser(
        "prune", help="kill and remove containers asyncexec left (a killed driver's)"
    )
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument("--executor", default=None, help="this executor's (its id)")
    which.add_argument(
        "--all",
        dest="every",
        action="store_true",
        help="every executor's, running drivers' included",
    )
    prune.add_argument("--url", default=None, help="the engine (default: DOCKER_HOST)")
    return parser


class _UsageError(Exception):
    pass


def _docker(options: argparse.Namespace) -> int:
    import asyncio

    from . import LaunchError
    from .launchers.docker import check_image, prune_containers

    try:
        if options.docker_command == "check":
            described = asyncio.run(
                check_image(options.image, python=options.python, url=options.url)
            )
            print(f"{options.image} can run asyncexec tasks: {described}")
            return 0
        removed = asyncio.run(
            prune_containers(options.executor, every=options.every, url=options.url)
        )
    except LaunchError as exc:
        print(f"asyncexec: {exc}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} container(s)" + "".join(f"\n  {name}" for name in removed))
    return 0


# -- run ----------------------------------------------------------------------------


def load_experiment(target: str) -> Any:
    """The Experiment named by ``FILE.py:NAME`` or ``module:NAME``."""
    import cloudpickle

    from .experiment import Experiment

    source, sep, name = target.rpartition(":")
    if not sep or not source or not name:
        raise _UsageError(f"expected FILE.py:NAME or module:NAME, got {target!r}")
    if source.endswith(".py") or os.path.sep in source:
        path = os.path.abspath(source)
        if not os.path.isfile(path):
            raise _UsageError(f"no such file: {source}")
        module_name = os.path.splitext(os.path.basename(path))[0]
        sys.path.insert(0, os.path.dirname(path))
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        # Its functions travel by value: workers need not find the file.
        cloudpickle.register_pickle_by_value(module)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise _UsageError(f"cannot import {source}: {exc}") from exc
    experiment = getattr(module, name, None)
    if not isinstance(experiment, Experiment):
        raise _UsageError(f"{target} is not an asyncexec.experiment.Experiment")
    return experiment


def _run(options: argparse.Namespace) -> int:
    import anyio

    if not math.isfinite(options.lease) or options.lease <= 0:
        raise _UsageError(f"--lease must be a positive number of seconds, got {options.lease}")
    experiment = load_experiment(options.target)
    directory = options.dir or os.path.join("asyncexec-runs", experiment.name)
    options.where = directory
    if os.path.exists(os.path.join(directory, "results.sqlite")) and not options.resume:
        raise _UsageError(
            f"{directory} already holds results: pass --continue to continue it, "
            "or choose another --dir"
        )
    if options.workers is not None and options.workers < 1:
        raise _UsageError("--workers must be at least 1")
    from .experiment import ResultsStore

    ResultsStore(directory, experiment=experiment.name).close()  # a bad directory fails now
    try:
        summary = anyio.run(_run_async, experiment, directory, options)
    except BaseException as exc:
        raise _alone(exc) from None
    if summary is None or summary.cancelled:
        with _open(directory) as store:
            counts = store.counts({run.fingerprint for run in experiment.runs})
        _SIGNALS.exiting(
            EXIT_INTERRUPTED,
            f"asyncexec: {experiment.name}: interrupted with {counts['done']} done and "
            f"{counts['failed']} failed of {len(experiment.runs)} runs; run it again with "
            "--continue to finish",
        )
        return EXIT_INTERRUPTED
    print(
        f"{summary.experiment}: {summary.done} done, {summary.failed} failed of "
        f"{summary.total} runs ({summary.ran} run now in {summary.elapsed:.1f} s); "
        f"results in {summary.directory}"
    )
    _print_summary(directory)
    return 0 if summary.failed == 0 else 1


def _alone(exc: BaseException) -> BaseException:
    """The one error inside a task group's exception group, if it is alone."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _run_async(experiment: Any, directory: str, options: argparse.Namespace) -> Any:
    import anyio

    from . import ProcessExecutor, ThreadExecutor

    executor = (ProcessExecutor if options.backend == "process" else ThreadExecutor)(
        options.workers
    )
    summary = None  # stays None when a signal interrupts the run
    run_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        # The watcher outlives the run's scope: a second signal, while the first is
        # being handled, must not fall back on Python's handler (a traceback).
        # (On a terminal the progress bar holds the line: the notice starts a new one.)
        newline = not options.no_progress and sys.stderr.isatty()
        tg.start_soon(_stop_on_signals, run_scope, newline)
        try:
            with run_scope:
                async with executor as ex:
                    summary = await experiment.run(
                        ex,
                        directory,
                        retry_failed=options.retry_failed,
                        progress=False if options.no_progress else None,
                        lease=options.lease,
                    )
        finally:
            tg.cancel_scope.cancel()  # the signal watcher
    return summary


async def _stop_on_signals(scope: Any, newline: bool) -> None:
    import anyio

    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if newline:
                    print(file=sys.stderr)
                # A second one exits at once: what is left running is taken up again
                # by `run --continue` (the sweeper sees this process gone).
                _SIGNALS.received(
                    signal.Signals(signum).name,
                    "stopping, cancelling running tasks (again to exit at once)",
                )
                scope.cancel()
    finally:
        _SIGNALS.install()  # the loop restored Python's defaults: a late signal is ours too


# -- status, results, cancel ----------------------------------------------------------


def _open(directory: str) -> Any:
    from .experiment import ResultsStore

    if not os.path.exists(directory):
        raise _UsageError(f"no such directory: {directory}")
    if not os.path.isdir(directory):
        raise _UsageError(f"not a directory: {directory}")
    return ResultsStore(directory, create=False)


def _status(directory: str) -> int:
    from .sweep import sweep_stats

    with _open(directory) as store:
        counts = store.counts()
        rows = store.rows()
        name = store.experiment
    total = sum(counts.values())
    print(f"experiment {name!r} in {directory}: {total} runs")
    print("  " + ", ".join(f"{count} {status}" for status, count in counts.items()))
    by_status: dict[str, list[dict[str, Any]]] = {status: [] for status in counts}
    for row in rows:
        by_status[row["status"]].append(_hashable(row["params"]))
    stats = sweep_stats(
        (
            [_hashable(row["params"]) for row in rows],
            by_status["pending"] + by_status["cancelled"],
            by_status["failed"],
            by_status["running"],
            by_status["done"],
        ),
        all_levels=True,
    )
    table = [
        [
            factor,
            _text(level),
            f"{int(stats['total'][factor][level])}",
            f"{int(stats['done'][factor][level])}",
            f"{int(stats['skipped'][factor][level])}",
            f"{stats['done_ratio'][factor][level]:.0%}",
        ]
        for factor in stats["total"]
        for level in stats["total"][factor]
    ]
    if table:
        print()
        print(_format_table(["factor", "level", "runs", "done", "failed", "done %"], table))
    return 0


def _results(directory: str, form: str) -> int:
    with _open(directory) as store:
        if form == "csv":
            sys.stdout.write(store.to_csv())
            return 0
        if form == "json":
            print(store.to_json())
            return 0
        rows = store.rows()
    factors = _factors(rows)
    table = [
        [
            *(_text(row["params"].get(f, "")) for f in factors),
            str(row["repeat"]),
            row["status"],
            _text(row["value"]) if row["status"] == "done" else (row["error_type"] or ""),
            "" if row["duration"] is None else f"{row['duration']:.3f}",
        ]
        for row in rows
    ]
    print(_format_table([*factors, "repeat", "status", "value / error", "seconds"], table))
    return 0


def _cancel(directory: str) -> int:
    with _open(directory) as store:
        store.request_cancel()
    print(f"cancel requested: the runner working on {directory} stops within a second or two")
    return 0


def _print_summary(directory: str) -> None:
    """One line per parameter combination: runs, failures, median value and time."""
    with _open(directory) as store:
        rows = store.rows()
    factors = _factors(rows)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(_text(row["params"].get(f, "")) for f in factors)
        groups.setdefault(key, []).append(row)
    table = []
    for key, group in groups.items():
        values = [r["value"] for r in group if r["status"] == "done"]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        shown = (
            _text(statistics.median(numbers))
            if numbers and len(numbers) == len(values)
            else (_text(values[-1]) if values else "")
        )
        seconds = [r["duration"] for r in group if r["duration"] is not None]
        failed = sum(r["status"] == "failed" for r in group)
        table.append(
            [
                *key,
                str(len(group)),
                str(failed),
                shown,
                f"{statistics.median(seconds):.3f}" if seconds else "",
            ]
        )
    print()
    print(_format_table([*factors, "runs", "failed", "value (median)", "seconds (median)"], table))


def _factors(rows: Sequence[dict[str, Any]]) -> list[str]:
    factors: list[str] = []
    for row in rows:
        factors.extend(name for name in row["params"] if name not in factors)
    return factors


def _hashable(params: dict[str, Any]) -> Any:
    from .sweep import HashableDict

    return HashableDict(params)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )
    return "\n".join(line.rstrip() for line in lines)
