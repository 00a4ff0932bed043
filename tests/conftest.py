from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

# The real cluster (Slurm and sshd) of the SSH and Slurm tests.
from .cluster import cluster as cluster
from .cluster import scratch as scratch
from .services import MARKER_OF_FIXTURE, Azurite, check_azurite

ASYNCIO = pytest.param("asyncio", id="asyncio")
TRIO = pytest.param("trio", id="trio")
UVLOOP = pytest.param(
    ("asyncio", {"use_uvloop": True}),
    id="uvloop",
    marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build"),
)


def loops(*params: object) -> list[object]:
    """The event loops async tests run on: all of ``params``, or those named in
    ``ASYNCEXEC_TEST_LOOPS`` (comma-separated ids). The compat sessions, which run
    the suite again on other Pythons, name asyncio only: what differs between
    Pythons shows on one loop, and the suite's time halves."""
    chosen = os.environ.get("ASYNCEXEC_TEST_LOOPS")
    if not chosen:
        return list(params)
    names = chosen.split(",")
    return [param for param in params if getattr(param, "id", None) in names]


@pytest.fixture(params=loops(ASYNCIO, TRIO))
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every async test runs on asyncio and on trio (see ``loops``)."""
    return request.param


@pytest.fixture(scope="session")
def azurite() -> Azurite:
    """Azurite's Blob service (scripts/azure-up.sh), checked once per session: its
    endpoint, account, key and connection string. Tests using it are marked ``azure``."""
    return check_azurite()


def children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if _alive(child)]


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a child process behind."""
    before = {child.pid for child in children()}
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [child for child in children() if child.pid not in before]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}"


#: The services' markers (``--strict-markers``: registered here, with ``infra`` in
#: pyproject.toml). Not in pyproject.toml because that file is hashed into the
#: Docker test image and the cluster's venvs: a branch that touches it rebuilds
#: the images and venvs every worktree on the machine shares.
SERVICE_MARKERS = (
    "docker: needs a Docker engine and this Python's test image (scripts/docker-up.sh)",
    "ssh: needs the test sshd and the cluster's venv for this Python (scripts/slurm-up.sh)",
    "slurm: needs the Slurm cluster (scripts/slurm-up.sh); marked ssh too (the login node)",
    "azure: needs Azurite (the loopback ARM server, tests/fakeazure, is the tests' own)",
)


#: Tests that stop a service every other test shares (sshd, dockerd, a node): the
#: nox sessions run them after the rest, one at a time, not beside other tests
#: (the rest runs on two pytest-xdist workers).
ALONE_MARKER = "alone: stops a shared service (sshd, dockerd, a Slurm node); runs apart"


def pytest_configure(config: pytest.Config) -> None:
    for line in (*SERVICE_MARKERS, ALONE_MARKER):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a service's fixture must carry that service's marker, so that
    ``-m "not docker"`` (or ssh, slurm) leaves out every test that needs it."""
    unmarked = [
        f"{item.nodeid} uses {name} but is not marked {marker}"
        for item in items
        for name, marker in MARKER_OF_FIXTURE.items()
        if name in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))
    for item in items:
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        if module.rpartition(".")[2] in ENGINE_MODULES and "conformance" not in item.name:
            item.add_marker(pytest.mark.infra)


#: The modules of one backend each, whose tests exercise that backend's engine (the
#: Docker daemon, sshd, the cluster, ARM): every test there but the conformance suite
#: is ``infra``. The compat sessions run each backend's conformance suite on their
#: Python (its runtime and worker there); the rest runs in the tests session.
ENGINE_MODULES = frozenset({"test_docker", "test_ssh", "test_slurm", "test_azure"})
