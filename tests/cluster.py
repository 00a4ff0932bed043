"""The real cluster the SSH and Slurm tests run against, started by the project's script.

``scripts/slurm-up.sh``, run by the nox sessions before pytest, starts
(idempotently) a single-node Slurm cluster with accounting and an sshd on
127.0.0.1, and a venv of this interpreter's minor version for the cluster
user's jobs (and names a bare interpreter of that version, without asyncexec);
``cluster.json`` says where everything is. The fixture only checks (see
tests/services.py): in CI (``CI=true``) a missing or stale cluster fails the
tests; elsewhere they are skipped with the command to run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncexec import SSHShell

from .services import PY, ROOT, SLURM_UP, cluster_description, missing

CLUSTER_DIR = Path(os.environ.get("ASYNCEXEC_CLUSTER_DIR", "/var/tmp/asyncexec-cluster"))


@dataclasses.dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    client_key: str
    known_hosts: str
    home: str
    node: str
    python: str  # the venv of this interpreter's minor version, readable by the jobs
    # An interpreter of that version the jobs run without asyncexec (None: none named).
    bare: str | None = None
    # A partition on the node with a one-minute MaxTime (None: none named).
    short: str | None = None

    @property
    def short_partition(self) -> str:
        """A partition whose MaxTime is one minute."""
        if self.short is None:
            missing("cluster.json names no short partition", SLURM_UP)
        return self.short

    @property
    def bare_python(self) -> str:
        """The bare interpreter: what a node with nothing but Python runs."""
        if self.bare is None:
            missing(f"cluster.json names no bare Python {PY}", SLURM_UP)
        return self.bare

    def shell(self, **overrides: Any) -> SSHShell:
        options: dict[str, Any] = {
            "client_keys": [self.client_key],
            "known_hosts": self.known_hosts,
        }
        options.update(overrides.pop("connect_options", {}))
        return SSHShell(
            self.host,
            port=self.port,
            username=overrides.pop("username", self.user),
            connect_options=options,
            **overrides,
        )


def bring_up() -> None:
    """Start again what a test stopped on purpose (sshd): only such tests call this;
    the services are up before pytest starts, and the fixtures only check."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-up.sh"), sys.executable],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, (
        f"scripts/slurm-up.sh could not start again what the test stopped:\n"
        f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The cluster, checked once per session (brought up before pytest, never here)."""
    described = cluster_description(CLUSTER_DIR)
    return Cluster(
        host=described["host"],
        port=int(described["port"]),
        user=described["user"],
        client_key=described["client_key"],
        known_hosts=described["known_hosts"],
        home=described["home"],
        node=described["node"],
        python=described["pythons"][PY],
        bare=described.get("bare_pythons", {}).get(PY),
        short=described.get("short_partition"),
    )


@pytest.fixture
def scratch() -> Iterator[str]:
    """A directory both the driver and the cluster user's tasks write to."""
    with tempfile.TemporaryDirectory(prefix="asyncexec-cluster-") as path:
        os.chmod(path, 0o777)
        yield path


def sshd_pids() -> list[int]:
    """Every sshd process of the test server (the listener and its sessions)."""
    pid_file = CLUSTER_DIR / "sshd.pid"
    listed = subprocess.run(["pgrep", "-f", "sshd"], capture_output=True, text=True)
    pids = [int(p) for p in listed.stdout.split()]
    main = int(pid_file.read_text()) if pid_file.exists() else None
    ours = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pid == main or str(CLUSTER_DIR) in cmdline or "slurmuser" in cmdline:
            ours.append(pid)
    return ours


def stop_sshd() -> None:
    """Stop the test sshd and drop every connection it serves."""
    subprocess.run(["bash", str(ROOT / "scripts" / "slurm-down.sh"), "sshd"], check=True)
    for pid in sshd_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def squeue(user: str) -> list[str]:
    """The cluster user's jobs in the queue, one array task per line."""
    listed = subprocess.run(
        ["squeue", "-h", "-r", "-u", user, "-o", "%i %T"], capture_output=True, text=True
    )
    return listed.stdout.split("\n")[:-1]


def make_key(path: Path) -> str:
    """Generate an ed25519 key pair at ``path``; its public key as known_hosts wants it."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])
