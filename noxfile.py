"""Sessions: tests, compat, lint, typecheck, docs (CI's), bench, latest, lock.

Every session but ``latest`` installs exactly the versions in ``locks/`` (made
by ``nox -s lock``), so a fresh clone installs what CI passed with; ``latest``
runs the suite against the newest releases instead. See README.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests", "compat"]
nox.options.reuse_existing_virtualenvs = True
# uv makes the venvs and installs into them: the locks' versions in seconds.
nox.options.default_venv_backend = "uv"
# An interpreter that is missing is missing (a failure on CI): never downloaded.
nox.options.download_python = "never"
os.environ["UV_PYTHON_DOWNLOADS"] = "never"

LINTED = ("asyncexec", "tests", "docs", "benchmarks", "examples", "scripts", "noxfile.py")

#: Each lock file in locks/ and the extras of pyproject.toml it pins (with
#: asyncexec's own dependencies), for every Python we support (uv's universal
#: resolution: markers where versions differ between Pythons).
LOCKS = {
    "test": ("test",),
    "lint": ("lint",),
    "docs": ("docker", "ssh", "azure"),
    "bench": ("bench",),
}
OLDEST_PYTHON = "3.10"


def install_locked(session: nox.Session, lock: str) -> None:
    """Make the venv hold ``locks/{lock}.txt`` exactly, then asyncexec from this checkout.

    asyncexec is built with the locked setuptools (no build isolation, which
    would take the newest; every lock has it, a dependency of asyncexec's own)
    and rebuilt every time: uv would otherwise reuse a wheel built before the
    sources changed.
    """
    # sync, not install: a reused venv (`nox -r`) ends up exactly as locked, too.
    python = os.path.join(session.virtualenv.location, "bin", "python")
    session.run_install(
        sys.executable,
        "-m",
        "uv",
        "pip",
        "sync",
        "--python",
        python,
        f"locks/{lock}.txt",
        external=True,
    )
    session.install("--no-deps", "--no-build-isolation", "--reinstall-package", "asyncexec", ".")


def bring_up(session: nox.Session, *services: str) -> None:
    """Bring up the real services (scripts/README.md) for the session's Python, before
    pytest or the examples run: tests never start a service, they only check for it.

    ``docker``: the engine and this interpreter's test image; ``slurm``: the cluster,
    its sshd and this Python's job venv; ``submitit``: the Slurm benchmark's peer venv;
    ``azure``: Azurite (the Blob protocol; ARM's loopback server is the tests' own).
    Each script is a no-op when everything is up and current; as root on a laptop it
    starts what is missing, not root it says why and exits 0 (1 when ``CI=true``).
    """
    for service in services:
        args = ["python"] if service in ("docker", "slurm") else []
        session.run("bash", f"scripts/{service}-up.sh", *args, external=True)


TEST_SERVICES = ("docker", "slurm", "submitit", "azure")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every async test on asyncio and trio (and uvloop)."""
    install_locked(session, "test")
    bring_up(session, *TEST_SERVICES)
    run_pytest(session, "")


def run_pytest(session: nox.Session, marks: str) -> None:
    """pytest with the session's arguments, or the suite selected by ``marks``: on two
    workers (pytest-xdist; ``worksteal``: a worker that runs out takes tests from the
    other, so a long file does not hold CI up), then the tests marked ``alone`` (they
    stop a service the others share) one at a time. (Every ``alone`` test stops an
    engine: ``infra`` all of them, so ``marks="not infra"`` runs the first half only.)

    pytest exits 5 when it collected no test: nox fails on any non-zero status, so
    either half selecting nothing fails the session.
    """
    if session.posargs:
        session.run("pytest", *session.posargs)
        return
    rest = f"({marks}) and not alone" if marks else "not alone"
    session.run("pytest", "-q", "-n", "2", "--dist", "worksteal", "--durations=15", "-m", rest)
    if marks != "not infra":
        session.run("pytest", "-q", "-m", f"({marks}) and alone" if marks else "alone")


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


@nox.session(python=[interpreter(OLDEST_PYTHON), interpreter("3.13")])
def compat(session: nox.Session) -> None:
    """The test suite on the oldest and the newest Python we support, on asyncio.

    (The tests session runs every async test on trio and uvloop too, and the
    tests marked ``infra``, which exercise an engine or the cluster rather than
    the interpreter (the ``alone`` ones, and every test of test_docker, test_ssh,
    test_slurm and test_azure but their conformance suites: tests/conftest.py):
    what differs between Pythons shows without them, in half the time. The
    backends' conformance suites still run here, on this Python's test image
    and cluster venvs.)
    """
    install_locked(session, "test")
    bring_up(session, *TEST_SERVICES)  # this Python's test image and cluster venv
    session.env["ASYNCEXEC_TEST_LOOPS"] = "asyncio"
    run_pytest(session, "not infra")


@nox.session
def latest(session: nox.Session) -> None:
    """The test suite against the newest release of every dependency (not the locks).

    Not one of CI's sessions: an upstream release that breaks us shows here, as
    a failing session to look into, and never turns main red. ``nox -s lock``
    then takes the new releases into the locks once the suite passes on them.
    (The driver's side only: the Docker test image and the cluster's job venvs
    keep the locked versions but for cloudpickle, pinned to the driver's.)
    """
    session.install("--upgrade", "--reinstall-package", "asyncexec", ".[test]")
    session.run("python", "-c", _PRINT_VERSIONS)
    bring_up(session, *TEST_SERVICES)
    run_pytest(session, "")


_PRINT_VERSIONS = (
    "import importlib.metadata as m; "
    "print(' '.join(sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))"
)


@nox.session(venv_backend="none")
def lock(session: nox.Session) -> None:
    """Refresh every file in locks/ to the newest releases pyproject.toml allows.

    Run it, then the sessions, and commit the locks with what the new releases
    needed: ``python3 -m nox -s lock && python3 -m nox``.
    """
    compile_ = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--universal"]
    compile_ += ["--upgrade", "--python-version", OLDEST_PYTHON]
    compile_ += ["--custom-compile-command", "python3 -m nox -s lock"]
    for name, extras in LOCKS.items():
        options = [option for extra in extras for option in ("--extra", extra)]
        session.run(*compile_, "pyproject.toml", *options, "-o", f"locks/{name}.txt")
    session.run(*compile_, "locks/tools.in", "-o", "locks/tools.txt")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("-c", "locks/lint.txt", "ruff")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and the tests."""
    install_locked(session, "lint")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark under benchmarks/, against its peers, in one run: tables to stdout.

    `nox -s bench -- --smoke` checks the harnesses only, in seconds.
    """
    install_locked(session, "bench")
    # benchmarks/docker.py needs the engine and this interpreter's test image;
    # benchmarks/slurm.py the cluster, its sshd, a venv for this Python and submitit's.
    bring_up(session, "docker", "slurm", "submitit", "azure")
    for script in sorted(glob.glob("benchmarks/*.py")):
        session.run("python", script, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Run every example in the README and docs/, as users would."""
    install_locked(session, "docs")
    # docs/docker.md's example runs in this interpreter's test image, docs/slurm.md's
    # on the test cluster, docs/azure.md's against Azurite and the test suite's
    # loopback ARM (tests/fakeazure, which checks bodies with jsonschema), which
    # runs its container groups from that image.
    bring_up(session, "docker", "slurm", "azure")
    session.install("-c", "locks/test.txt", "jsonschema")
    version = session.run(
        "python", "-c", "import sys; print('{}.{}'.format(*sys.version_info))", silent=True
    )
    image = f"asyncexec-test:py{str(version).strip()}"
    session.run("python", "-m", "tests.fakeazure", image, "--", "python", "docs/check_examples.py")
