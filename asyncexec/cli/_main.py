"""The entry point: parse the arguments, run the command, end it with one status."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import _azure, _directory, _docker, _run
from ._exit import EXIT_BUG, EXIT_FAILED, explain, start_signal_handling
from ._parser import make_parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asyncexec`` command.

    It answers SIGINT and SIGTERM itself from here until the process ends (see
    ``SignalHandling`` in ``_exit``): call it as a program, not from a library.
    """
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "worker":
        from ..worker import main as worker_main

        return worker_main(args[1:])
    signals = start_signal_handling()
    signals.debug = os.environ.get("ASYNCEXEC_DEBUG", "") not in ("", "0")
    signals.install()
    options: argparse.Namespace | None = None
    try:
        options = make_parser().parse_args(args)
        signals.debug = getattr(options, "debug", False) or signals.debug
        code = _command(options)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            signals.exiting(exc.code if isinstance(exc.code, int) else EXIT_FAILED)
            raise
        code, message = explain(exc, getattr(options, "where", None))
        if signals.debug:
            traceback.print_exception(exc)
        elif code == EXIT_BUG:
            message += " (run with --debug for the traceback)"
        signals.exiting(code, f"asyncexec: {message}")
        return code
    signals.exiting(code)
    return code


def _command(options: argparse.Namespace) -> int:
    if options.command == "run":
        return _run.run(options)
    if options.command == "attach":
        options.where = options.directory
        return _run.attach(options)
    if options.command == "status":
        options.where = options.directory
        return _directory.status(options.directory)
    if options.command == "results":
        options.where = options.directory
        return _directory.results(options.directory, options.format)
    if options.command == "cancel":
        options.where = options.directory
        return _directory.cancel(options.directory)
    if options.command == "docker":
        return _docker.docker(options)
    if options.command == "azure":
        return _azure.azure(options)
    raise AssertionError(options.command)
