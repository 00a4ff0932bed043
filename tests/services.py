"""Where the tests find the real services, and what they do when one is missing.

The services are brought up once, before pytest, by the nox sessions
(``scripts/docker-up.sh``, ``scripts/slurm-up.sh``, ``scripts/submitit-up.sh``,
``scripts/azure-up.sh``; see scripts/README.md), never from a test. The fixtures
only check that what they need is there and current for this Python, and call
:func:`missing` otherwise: a failure in CI (``CI=true``), a skip elsewhere whose
reason names the command to run. Tests that stop a service on purpose (sshd, dockerd, a
node) start it again themselves.

Each service has a marker (registered in conftest.py): ``docker``, ``ssh``, ``slurm``
(a Slurm test carries ``ssh`` too: the cluster is reached over ssh), ``azure``;
``pytest -m "not docker"`` runs the rest on a machine without the engine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from asyncexec.launchers.azure import _blob

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
PY = "{}.{}".format(*sys.version_info[:2])

#: What brings each service up (as the nox sessions do, before pytest).
DOCKER_UP = f"bash scripts/docker-up.sh {sys.executable}"
SLURM_UP = f"bash scripts/slurm-up.sh {sys.executable}"
SUBMITIT_UP = "bash scripts/submitit-up.sh"
AZURE_UP = "bash scripts/azure-up.sh"

#: Fixtures that need a service, and the marker a test using them must carry
#: (checked at collection, in conftest.py).
MARKER_OF_FIXTURE = {"image": "docker", "cluster": "ssh", "scratch": "ssh", "azurite": "azure"}


def missing(reason: str, bring_up: str) -> NoReturn:
    """Fail in CI, skip elsewhere: ``reason`` and the command ``bring_up`` that fixes it."""
    message = f"{reason} (run `{bring_up}` first, as `nox -s tests` does)"
    if IN_CI:
        pytest.fail(f"CI needs this service: {message}", pytrace=False)
    pytest.skip(message)


# -- Docker ---------------------------------------------------------------------------


def _docker_image_script() -> ModuleType:
    """scripts/docker_image.py, imported: its hash says whether an image is current."""
    spec = importlib.util.spec_from_file_location(
        "asyncexec_docker_image", ROOT / "scripts" / "docker_image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_docker_image(tag: str, *, built_here: bool = True) -> str:
    """``tag``, once the engine answers and has it; if ``built_here`` (the project's
    test image, not one named by ``ASYNCEXEC_TEST_IMAGE``), its label must match
    what ``scripts/docker_image.py`` would build from this checkout for this Python."""
    label = '{{index .Config.Labels "asyncexec.source"}}'
    try:
        shown = subprocess.run(
            ["docker", "image", "inspect", "--format", label, tag],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing(f"no Docker engine answers: {exc}", DOCKER_UP)
    if shown.returncode != 0:
        missing(f"no Docker engine with the image {tag}: {shown.stderr.strip()}", DOCKER_UP)
    if built_here:
        script = _docker_image_script()
        wanted = script.source_hash(ROOT, script.interpreter(), script.pins())
        if shown.stdout.strip() != wanted:
            missing(
                f"{tag} is not built from this checkout for {sys.executable}"
                f" (label {shown.stdout.strip() or 'none'}, want {wanted})",
                DOCKER_UP,
            )
    return tag


# -- the cluster: sshd, Slurm, the jobs' venvs ------------------------------------------


def cluster_description(cluster_dir: Path) -> dict[str, Any]:
    """``cluster.json``, once the cluster's venv for this Python holds this checkout's
    asyncexec (and the driver's cloudpickle) and its sshd answers."""
    try:
        described: dict[str, Any] = json.loads((cluster_dir / "cluster.json").read_text())
    except (OSError, ValueError) as exc:
        missing(f"no cluster description in {cluster_dir}: {exc}", SLURM_UP)
    python = described.get("pythons", {}).get(PY)
    if python is None:
        missing(f"cluster.json names no venv for Python {PY}", SLURM_UP)
    stale = _stale_venv(Path(python).parent.parent)
    if stale:
        missing(f"the cluster's venv for Python {PY} is out of date: {stale}", SLURM_UP)
    _check_ssh_answers(described["host"], int(described["port"]))
    return described


def _tree_hashes(package: Path) -> dict[str, str]:
    return {
        path.relative_to(package).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in package.rglob("*.py")
    }


def _stale_venv(venv: Path) -> str:
    """What differs between the venv and this checkout and driver ("" if nothing)."""
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        return f"{venv} has no site-packages"
    site = found[0]
    installed, ours = _tree_hashes(site / "asyncexec"), _tree_hashes(ROOT / "asyncexec")
    if installed != ours:
        differ = sorted(
            name for name in installed.keys() | ours.keys() if installed.get(name) != ours.get(name)
        )
        return f"its asyncexec differs from the checkout's in {', '.join(differ[:5])}"
    try:
        driver = importlib.metadata.version("cloudpickle")
    except importlib.metadata.PackageNotFoundError:
        return ""
    if not list(site.glob(f"cloudpickle-{driver}.dist-info")):
        return f"its cloudpickle is not the driver's {driver}"
    return ""


def _check_ssh_answers(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=10) as connection:
            connection.settimeout(10)
            banner = connection.recv(64)
    except OSError as exc:
        missing(f"the cluster's sshd on {host}:{port} does not answer: {exc}", SLURM_UP)
    if not banner.startswith(b"SSH-"):
        missing(f"what answers on {host}:{port} is not an sshd: {banner!r}", SLURM_UP)


def check_submitit_venv(python: str) -> str:
    """The python of the venv ``scripts/submitit-up.sh`` makes, with the locked submitit."""
    locked = next(
        line.split("==")[1].split()[0]
        for line in (ROOT / "locks" / "bench.txt").read_text().splitlines()
        if line.startswith("submitit==")
    )
    venv = Path(python).parent.parent
    if not Path(python).exists():
        missing(f"no venv for submitit at {venv}", SUBMITIT_UP)
    if not list(venv.glob(f"lib/python*/site-packages/submitit-{locked}.dist-info")):
        missing(f"{venv} does not hold submitit {locked} (locks/bench.txt)", SUBMITIT_UP)
    return python


# -- Azurite: the Blob service ------------------------------------------------------------

#: Where scripts/azure-up.sh runs Azurite's Blob service (``ASYNCEXEC_AZURITE_PORT``).
AZURITE_HOST = "127.0.0.1"
AZURITE_PORT = int(os.environ.get("ASYNCEXEC_AZURITE_PORT", "10000"))
#: Azurite's one account and its key (well known, published by Microsoft): the Blob
#: client's own constants, which ``UseDevelopmentStorage=true`` means.
AZURITE_ACCOUNT = _blob.AZURITE_ACCOUNT
AZURITE_KEY = _blob.AZURITE_KEY


@dataclass(frozen=True)
class Azurite:
    """The Blob service of a running Azurite: path-style, ``{endpoint}/{container}/...``."""

    endpoint: str
    account: str
    key: str
    version: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.key};BlobEndpoint={self.endpoint};"
        )


def azurite_version() -> str:
    """The Azurite version scripts/azurite/package-lock.json pins."""
    lock = json.loads((ROOT / "scripts" / "azurite" / "package-lock.json").read_text())
    version: str = lock["packages"]["node_modules/azurite"]["version"]
    return version


def check_azurite() -> Azurite:
    """Azurite's Blob service, once the locked version answers on its port."""
    want = f"Azurite-Blob/{azurite_version()}"
    connection = HTTPConnection(AZURITE_HOST, AZURITE_PORT, timeout=10)
    try:
        connection.request("GET", "/")
        server = connection.getresponse().getheader("Server", "")
    except OSError as exc:
        missing(f"Azurite does not answer on {AZURITE_HOST}:{AZURITE_PORT}: {exc}", AZURE_UP)
    finally:
        connection.close()
    if server != want:
        missing(
            f"what answers on {AZURITE_HOST}:{AZURITE_PORT} is {server or 'no Server'},"
            f" not {want} (scripts/azurite/package-lock.json)",
            AZURE_UP,
        )
    endpoint = f"http://{AZURITE_HOST}:{AZURITE_PORT}/{AZURITE_ACCOUNT}"
    return Azurite(endpoint, AZURITE_ACCOUNT, AZURITE_KEY, server.partition("/")[2])
