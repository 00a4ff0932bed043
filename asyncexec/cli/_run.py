"""``asyncexec run``: load an experiment, run it on an executor, stop it on a signal."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import signal
import sys
from typing import Any

from ._directory import open_store, print_summary
from ._exit import EXIT_INTERRUPTED, UsageError, signal_handling

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def load_experiment(target: str) -> Any:
    """The Experiment named by ``FILE.py:NAME`` or ``module:NAME``."""
    import cloudpickle

    from ..experiment import Experiment

    source, sep, name = target.rpartition(":")
    if not sep or not source or not name:
        raise UsageError(f"expected FILE.py:NAME or module:NAME, got {target!r}")
    if source.endswith(".py") or os.path.sep in source:
        path = os.path.abspath(source)
        if not os.path.isfile(path):
            raise UsageError(f"no such file: {source}")
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
            raise UsageError(f"cannot import {source}: {exc}") from exc
    experiment = getattr(module, name, None)
    if not isinstance(experiment, Experiment):
        raise UsageError(f"{target} is not an asyncexec.experiment.Experiment")
    return experiment


def run(options: argparse.Namespace) -> int:
    """``asyncexec run``: run (or continue) an experiment, then print its summary."""
    import anyio

    if not math.isfinite(options.lease) or options.lease <= 0:
        raise UsageError(f"--lease must be a positive number of seconds, got {options.lease}")
    experiment = load_experiment(options.target)
    directory = options.dir or os.path.join("asyncexec-runs", experiment.name)
    options.where = directory
    if os.path.exists(os.path.join(directory, "results.sqlite")) and not options.resume:
        raise UsageError(
            f"{directory} already holds results: pass --continue to continue it, "
            "or choose another --dir"
        )
    if options.workers is not None and options.workers < 1:
        raise UsageError("--workers must be at least 1")
    config = resolve_executor(options, directory)
    from .. import config as configuration
    from ..experiment import ResultsStore

    ResultsStore(directory, experiment=experiment.name).close()  # a bad directory fails now
    # Recorded before anything runs: `run --continue` (and status, cancel) need no flags,
    # `attach DIR` not even the experiment's name.
    recorded = configuration.save_config(directory, config)
    save_target(directory, options.target)
    try:
        summary = anyio.run(_run_async, experiment, directory, options, config, recorded)
    except BaseException as exc:
        raise _alone(exc) from None
    if summary is None or summary.cancelled:
        with open_store(directory) as store:
            counts = store.counts({run.fingerprint for run in experiment.runs})
        signal_handling().exiting(
            EXIT_INTERRUPTED,
            f"asyncexec: {experiment.name}: interrupted with {counts['done']} done and "
            f"{counts['failed']} failed of {len(experiment.runs)} runs; run it again with "
            "--continue to finish",
        )
        return EXIT_INTERRUPTED
    if summary.detached:
        left = summary.total - summary.done - summary.failed - summary.detached
        print(
            f"{summary.experiment}: {summary.detached} run(s) left running on the "
            f"{config.get('backend', 'process')} backend ({summary.done} done, "
            f"{summary.failed} failed"
            + (f", {left} not submitted yet" if left > 0 else "")
            + f"). Follow them with `asyncexec status {directory}`; collect them (and run "
            f"the rest) with `asyncexec attach {directory}`; stop them with "
            f"`asyncexec cancel {directory}`"
        )
        return 0
    print(
        f"{summary.experiment}: {summary.done} done, {summary.failed} failed of "
        f"{summary.total} runs ({summary.ran} run now in {summary.elapsed:.1f} s); "
        f"results in {summary.directory}"
    )
    print_summary(directory)
    return 0 if summary.failed == 0 else 1


#: What ``run`` records of its target in the experiment directory, for ``attach DIR``.
TARGET_FILE = "target.json"


def save_target(directory: str, target: str) -> None:
    """Record ``FILE.py:NAME`` (its file made absolute) or ``module:NAME`` in ``directory``."""
    import json

    source, _, name = target.rpartition(":")
    if source.endswith(".py") or os.path.sep in source:
        source = os.path.abspath(source)
    path = os.path.join(directory, TARGET_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        json.dump({"target": f"{source}:{name}", "cwd": os.getcwd()}, file)
    os.replace(path + ".tmp", path)


def attach(options: argparse.Namespace) -> int:
    """``asyncexec attach DIR``: ``run --continue`` of the experiment ``DIR`` records, on
    the executor it records: follow what runs, collect what ended, run the rest."""
    import json

    from ._parser import make_parser

    directory = options.directory
    try:
        with open(os.path.join(directory, TARGET_FILE), encoding="utf-8") as file:
            recorded = json.load(file)
        target = str(recorded["target"])
    except FileNotFoundError:
        raise UsageError(
            f"{directory} records no experiment (it was not run by `asyncexec run`)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read {os.path.join(directory, TARGET_FILE)}: {exc}") from None
    argv = ["run", target, "--continue", "--dir", directory]
    if options.no_progress:
        argv.append("--no-progress")
    return run(make_parser().parse_args(argv))


def _alone(exc: BaseException) -> BaseException:
    """The one error inside a task group's exception group, if it is alone."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def resolve_executor(options: argparse.Namespace, directory: str) -> dict[str, Any]:
    """The configuration of ``run``'s executor: the flags over the ``ASYNCEXEC_*``
    variables over the profile (with ``--continue``, over ``DIR/executor.json``)."""
    from .. import config as configuration

    try:
        recorded = configuration.load_config(directory) if options.resume else None
        return configuration.resolve(
            executor_flags(options),
            profile=options.profile,
            path=options.config,
            base=recorded,
            base_source=os.path.join(directory, configuration.EXECUTOR_FILE),
        )
    except configuration.ConfigError as exc:
        raise UsageError(str(exc)) from None


def executor_flags(options: argparse.Namespace) -> dict[str, Any]:
    """``run``'s executor options as a configuration's keys (those given only)."""
    from .. import config as configuration

    flags: dict[str, Any] = {}
    for setting in options.set or ():
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, got {setting!r}")
        *tables, name = key.strip().split(".")
        into = flags
        for table in tables:
            into = into.setdefault(table, {})
            if not isinstance(into, dict):
                raise UsageError(f"--set {key}: {table} is not a table")
        into[name] = _value(text)
    simple = {
        "backend": options.backend,
        "n_workers": options.workers,
        "image": options.image,
        "slots": options.slots,
        "partition": options.partition,
        "time": options.time,
        "chunk_size": options.chunk_size,
        "staging_dir": options.staging_dir,
        "python": options.python,
    }
    flags.update({key: value for key, value in simple.items() if value is not None})
    task = {"time_limit": options.time_limit, "retries": options.retries}
    for key, value in task.items():
        if value is not None:
            flags.setdefault("options", {})[key] = value
    if options.host:
        hosts = [configuration.parse_host(text, source="--host") for text in options.host]
        for host in hosts:
            if options.ssh_key:
                host["client_keys"] = list(options.ssh_key)
            if options.known_hosts:
                host["known_hosts"] = options.known_hosts
        flags["host"] = hosts
    elif options.ssh_key or options.known_hosts:
        raise UsageError("--ssh-key and --known-hosts go with --host")
    return flags


def _value(text: str) -> Any:
    """A ``--set`` value: TOML (``2``, ``true``, ``["a", "b"]``, ``"x"``), else the text."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (3.10)
        import tomli as tomllib
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


async def _run_async(
    experiment: Any,
    directory: str,
    options: argparse.Namespace,
    config: dict[str, Any],
    recorded: str,
) -> Any:
    import anyio

    from .. import config as configuration
    from ..experiment import RunControl

    executor = configuration.from_dict(config, source=recorded)
    summary = None  # stays None when a signal interrupts the run
    run_scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        # The watcher outlives the run's scope: a second signal, while the first is
        # being handled, must not fall back on Python's handler (a traceback).
        # (On a terminal the progress bar holds the line: the notice starts a new one.)
        newline = not options.no_progress and sys.stderr.isatty()
        control = RunControl()
        tg.start_soon(_stop_on_signals, run_scope, newline, control, tg)
        try:
            with run_scope:
                async with executor as ex:
                    summary = await experiment.run(
                        ex,
                        directory,
                        retry_failed=options.retry_failed,
                        progress=False if options.no_progress else None,
                        lease=options.lease,
                        detach=options.detach,
                        control=control,
                    )
        finally:
            tg.cancel_scope.cancel()  # the signal watcher
    return summary


async def _stop_on_signals(scope: Any, newline: bool, control: Any, tg: Any) -> None:
    import anyio

    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if newline:
                    print(file=sys.stderr)
                name = signal.Signals(signum).name
                if name == "SIGINT" and control.can_detach and _interactive():
                    # On a terminal, with work that outlives us: the user chooses.
                    signal_handling().received(name, "detach or cancel? (again to exit at once)")
                    tg.start_soon(_detach_or_cancel, scope, control)
                    continue
                # A second one exits at once: what is left running is taken up again
                # by `run --continue` (its leases see this process gone).
                signal_handling().received(
                    name, "stopping, cancelling running tasks (again to exit at once)"
                )
                scope.cancel()
    finally:
        # The loop restored Python's defaults: a late signal is ours too.
        signal_handling().install()


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


async def _detach_or_cancel(scope: Any, control: Any) -> None:
    """Ask on the terminal: detach (the runs go on where they run) or cancel them."""
    import anyio

    def ask() -> str:
        sys.stderr.write(
            "  [d]etach: leave the runs running, collect them later with `asyncexec attach`\n"
            "  [c]ancel: stop them now (the default)\n  > "
        )
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower()

    answer = await anyio.to_thread.run_sync(ask, abandon_on_cancel=True)
    if answer.startswith("d"):
        print("asyncexec: detaching: the runs in flight go on running", file=sys.stderr)
        control.detach()
    else:
        print("asyncexec: cancelling running tasks", file=sys.stderr)
        scope.cancel()
