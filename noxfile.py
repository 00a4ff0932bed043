"""Sessions: tests, lint, typecheck, docs. Run `python3 -m nox -s tests` (see README)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests", "compat"]
nox.options.reuse_existing_virtualenvs = True

LINTED = ("asyncexec", "tests", "docs", "benchmarks", "examples", "scripts", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every async test on asyncio and trio (and uvloop)."""
    session.install(".[test]")
    # pytest exits 5 when it collected no test: nox fails on any non-zero status.
    session.run("pytest", *(session.posargs or ["-q"]))


def interpreter(version: str) -> str:
    """A working python{version}: on the PATH, else in pyenv's versions folder.

    (pyenv's shims answer only for the global version.) Falls back to the bare
    version, which nox reports as missing: a failure on CI, a skip elsewhere.
    """
    pattern = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    for candidate in [shutil.which(f"python{version}"), *sorted(glob.glob(pattern))]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return version


@nox.session(python=[interpreter("3.10"), interpreter("3.13")])
def compat(session: nox.Session) -> None:
    """The test suite on the oldest and the newest Python we support, on asyncio.

    (The tests session runs every async test on trio and uvloop too; what differs
    between Pythons shows on one event loop, in half the time.)
    """
    session.install(".[test]")
    session.env["ASYNCEXEC_TEST_LOOPS"] = "asyncio"
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the tests."""
    session.install(".[lint]")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark under benchmarks/, against its peers, in one run: tables to stdout.

    `nox -s bench -- --smoke` checks the harnesses only, in seconds.
    """
    session.install(".[bench]")
    # benchmarks/docker.py needs the engine and this interpreter's test image;
    # benchmarks/slurm.py the cluster, its sshd and a venv for this Python.
    session.run("bash", "scripts/docker-up.sh", "python", external=True)
    session.run("bash", "scripts/slurm-up.sh", "python", external=True)
    for script in sorted(glob.glob("benchmarks/*.py")):
        session.run("python", script, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Run every example in the README and docs/, as users would."""
    session.install(".[docker,ssh]")
    # docs/docker.md's example runs in this interpreter's test image, docs/slurm.md's
    # on the test cluster.
    session.run("bash", "scripts/docker-up.sh", "python", external=True)
    session.run("bash", "scripts/slurm-up.sh", "python", external=True)
    session.run("python", "docs/check_examples.py")
