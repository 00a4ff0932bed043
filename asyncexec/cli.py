"""The ``asyncexec`` command (also ``python -m asyncexec``)."""

from __future__ import annotations

import argparse
import sys

from ._version import __version__

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``asyncexec`` command."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "worker":
        from ._worker import main as worker_main

        return worker_main(args[1:])
    parser = argparse.ArgumentParser(prog="asyncexec", description=__doc__)
    parser.add_argument("--version", action="version", version=f"asyncexec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "worker", help="run the worker (python -m asyncexec.worker); see `asyncexec worker -h`"
    )
    parser.parse_args(args)
    return 0
