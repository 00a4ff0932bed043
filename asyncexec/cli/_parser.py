"""The command's arguments: ``asyncexec run|attach|status|results|cancel|docker|azure|worker``."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .. import __version__
from . import _azure
from ._exit import EPILOG, EXIT_USAGE

#: ``run --backend``: asyncexec.config.BACKENDS (not imported: ``--help`` stays cheap).
BACKENDS = ("process", "thread", "docker", "ssh", "slurm", "azure")


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one ``asyncexec:`` line too (status 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("asyncexec").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USAGE, f"asyncexec: {where}{message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    """The parser of the command line (one subparser per command)."""
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
    _add_executor_arguments(run)
    run.add_argument(
        "--dir", default=None, help="experiment directory (default: asyncexec-runs/NAME)"
    )
    run.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="continue the experiment already in --dir, on the executor recorded there "
        "(DIR/executor.json; the executor options given override it)",
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="submit the runs, leave them running and exit (Slurm, Docker, Azure): "
        "`status DIR` shows them, `attach DIR` collects them, `cancel DIR` stops them",
    )
    run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    run.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    run.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help="seconds before another runner may take a silent runner's runs",
    )
    attach = command(
        "attach",
        help="continue the experiment in DIR as recorded there: follow what runs, collect "
        "what ended while nobody watched, run the rest (run --continue, no arguments)",
    )
    attach.add_argument("directory")
    attach.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    status = command(
        "status",
        help="counts by state, per parameter (and where running runs are, asked of the backend)",
    )
    status.add_argument("directory")
    results = command("results", help="the runs and their values")
    results.add_argument("directory")
    results.add_argument("--format", choices=("table", "csv", "json"), default="table")
    cancel = command(
        "cancel",
        help="stop the runner working on DIR, and the work of runs left running (detached, "
        "or a dead runner's), confirmed with the backend",
    )
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
    _azure.add_arguments(
        commands.add_parser("azure", help="container groups asyncexec left in Azure")
    )
    return parser


def _add_executor_arguments(run: argparse.ArgumentParser) -> None:
    """``run``'s executor: a backend or a profile, and the common fields over it."""
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="where the runs run (default: the profile's, else process; also ASYNCEXEC_BACKEND)",
    )
    run.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="[profile.NAME] of asyncexec.toml, or [tool.asyncexec.profile.NAME] of "
        "pyproject.toml (default: the profile named default, if any; also ASYNCEXEC_PROFILE)",
    )
    run.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="the file of the profiles (default: asyncexec.toml, else pyproject.toml, here or "
        "in a directory above; also ASYNCEXEC_CONFIG)",
    )
    fields = run.add_argument_group(
        "executor",
        "these override the ASYNCEXEC_* variables, which override the profile (with "
        "--continue: the configuration recorded in DIR/executor.json); see docs/config.md",
    )
    fields.add_argument(
        "--workers", type=int, default=None, help="tasks at once (default: one per CPU)"
    )
    fields.add_argument("--image", default=None, help="the image (docker, azure)")
    fields.add_argument(
        "--host",
        action="append",
        default=None,
        metavar="[USER@]HOST[:PORT]",
        help="an SSH host (ssh: repeat for more hosts; slurm: the login node)",
    )
    fields.add_argument(
        "--ssh-key",
        action="append",
        default=None,
        metavar="PATH",
        help="a private key for --host (repeat for more)",
    )
    fields.add_argument(
        "--known-hosts", default=None, metavar="PATH", help="the known_hosts file for --host"
    )
    fields.add_argument("--slots", type=int, default=None, help="workers per host (ssh)")
    fields.add_argument("--partition", default=None, help="the Slurm partition")
    fields.add_argument("--time", default=None, help="Slurm's --time of each array task")
    fields.add_argument(
        "--chunk-size", type=int, default=None, help="runs per array task or group (slurm, azure)"
    )
    fields.add_argument(
        "--staging-dir", default=None, metavar="DIR", help="on the cluster's shared disk (slurm)"
    )
    fields.add_argument(
        "--python", default=None, help="the interpreter that runs the runs (not thread)"
    )
    fields.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="per run")
    fields.add_argument("--retries", type=int, default=None, help="more tries of a failed run")
    fields.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any key of the configuration (VALUE in TOML, a bare word is a string; "
        "options.retries=2 for a key of a table)",
    )
