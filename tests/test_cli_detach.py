"""``asyncexec run --detach``, then ``status``, ``attach`` and ``cancel`` from fresh
processes (no runner alive in between), on Slurm over SSH, Docker and Azure (the
loopback ARM): every value comes back with nothing executed twice, and ``cancel`` leaves
no job, container or container group."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncexec.config import ENVIRONMENT, FILE_VARIABLE, PROFILE_VARIABLE
from asyncexec.experiment import ResultsStore

from .cluster import Cluster
from .fakeazure import FakeAzure
from .services import Azurite, check_docker_image
from .test_cli_backends import azure_profile, profiles, slurm_profile_text
from .test_docker import IMAGE

pytestmark = [pytest.mark.infra]

EXPERIMENT = """
import os, time

from asyncexec.experiment import Experiment

# Read where the driver loads this file: the function takes them along (by value).
COUNTS = os.environ["AE_TEST_COUNTS"]
SECONDS = float(os.environ["AE_TEST_SECONDS"])


def counted(x: int) -> int:
    time.sleep(SECONDS)
    with open(os.path.join(COUNTS, f"ran-{x}"), "a") as f:
        f.write("ran\\n")
    return x * x


experiment = Experiment(counted, {"x": [0, 1, 2, 3]})
"""


def asyncexec(project: Path, *args: str, counts: str, seconds: float) -> tuple[int, str]:
    """``python -m asyncexec ARGS`` in ``project``, a process of its own: status, output."""
    ours = {*ENVIRONMENT, PROFILE_VARIABLE, FILE_VARIABLE}
    env = {key: value for key, value in os.environ.items() if key not in ours}
    env.update(AE_TEST_COUNTS=counts, AE_TEST_SECONDS=str(seconds))
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout + done.stderr


def jobs_named(name: str) -> list[str]:
    """The array tasks in Slurm's queue whose job is called ``name``."""
    listed = subprocess.run(
        ["squeue", "-h", "-r", "-n", name, "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def executions(counts: str) -> list[int]:
    return [
        len(Path(counts, f"ran-{x}").read_text().splitlines())
        if Path(counts, f"ran-{x}").exists()
        else 0
        for x in range(4)
    ]


def detach_then_attach(project: Path, profile: str, counts: str) -> None:
    """Detach, ask the status from a fresh process, attach: every value, each run once."""
    run = ["run", "exp.py:experiment", "--profile", profile, "--dir", "a", "--no-progress"]
    code, output = asyncexec(project, *run, "--detach", counts=counts, seconds=2.0)
    assert code == 0, output
    assert "left running" in output and "asyncexec attach a" in output, output
    code, output = asyncexec(project, "status", "a", counts=counts, seconds=2.0)
    assert code == 0, output
    assert "on the backend, of the 4 runs recorded running:" in output, output
    # Slurm's queue and Docker's containers say where each is; Azure's adapter knows
    # only the arrays it follows, and says so rather than guess.
    assert ("unknown" in output) == (profile == "aci"), output
    code, output = asyncexec(project, "attach", "a", "--no-progress", counts=counts, seconds=2.0)
    assert code == 0, output
    assert "4 done, 0 failed of 4 runs (0 run now" not in output, output  # followed them
    assert "4 done, 0 failed of 4 runs" in output, output
    assert executions(counts) == [1, 1, 1, 1]


def detach_then_cancel(project: Path, profile: str, counts: str) -> None:
    """Detach long runs, then ``cancel`` with no runner alive: confirmed gone."""
    run = ["run", "exp.py:experiment", "--profile", profile, "--dir", "b", "--no-progress"]
    code, output = asyncexec(project, *run, "--detach", counts=counts, seconds=120.0)
    assert code == 0, output
    code, output = asyncexec(project, "cancel", "b", counts=counts, seconds=120.0)
    assert code == 0, output
    assert "the backend confirms that none of it is left" in output, output
    code, output = asyncexec(project, "status", "b", counts=counts, seconds=120.0)
    assert "0 running" in output, output


def slurm_profile(project: Path, cluster: Cluster, name: str, staging: str) -> None:
    """``[profile.cluster]``: the test cluster over SSH, its jobs called ``name``."""
    profiles(project, slurm_profile_text(cluster, job_name=name, staging_dir=staging))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    return tmp_path


@pytest.fixture
def counts() -> Iterator[str]:
    """Where the runs count themselves: the same path for the driver and the work (which
    runs as another user: the cluster's, the containers')."""
    with tempfile.TemporaryDirectory(prefix="asyncexec-counts-") as path:
        os.chmod(path, 0o777)
        yield path


@pytest.mark.slurm
@pytest.mark.ssh
def test_slurm(project: Path, cluster: Cluster, counts: str) -> None:
    name = f"ae-detach-{uuid.uuid4().hex[:8]}"
    staging = f"{cluster.home}/.asyncexec/{name}"
    slurm_profile(project, cluster, name, staging)
    detach_then_attach(project, "cluster", counts)
    assert os.listdir(staging) == []  # collected, cleaned up
    detach_then_cancel(project, "cluster", counts)
    assert not jobs_named(name)
    assert os.listdir(staging) == []  # killed, cleaned up
    os.rmdir(staging)


@pytest.mark.docker
def test_docker(project: Path, counts: str) -> None:
    image = check_docker_image(IMAGE)
    label = f"ae-detach-{uuid.uuid4().hex[:8]}"
    profiles(
        project,
        f"""
        [profile.containers]
        backend = "docker"
        image = "{image}"
        n_workers = 4
        volumes = ["{counts}:{counts}"]
        labels = {{ "ae-test" = "{label}" }}
        """,
    )
    detach_then_attach(project, "containers", counts)
    detach_then_cancel(project, "containers", counts)
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=ae-test={label}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not left


@pytest.mark.azure
@pytest.mark.docker
def test_azure(
    project: Path, counts: str, azurite: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = check_docker_image(IMAGE)
    with FakeAzure(shares={"counts": counts}) as fake:
        azure_profile(
            project,
            fake,
            azurite,
            monkeypatch,
            f'image = "{image}"',
            "chunk_size = 1",
            f'file_shares = {{ counts = "{counts}" }}',
        )
        detach_then_attach(project, "aci", counts)
        detach_then_cancel(project, "aci", counts)
        assert not fake.groups, sorted(fake.groups)
        assert not fake.docker_leftovers(), fake.docker_leftovers()


@pytest.mark.slurm
@pytest.mark.ssh
def test_ctrl_c_on_a_terminal_asks_and_detaches(
    project: Path, cluster: Cluster, counts: str
) -> None:
    """Ctrl-C while `run` follows Slurm work, on a terminal: it asks; "d" detaches (the
    runs go on, the command ends 0 saying so), and `cancel` then stops them."""
    name = f"ae-ctrlc-{uuid.uuid4().hex[:8]}"
    staging = f"{cluster.home}/.asyncexec/{name}"
    slurm_profile(project, cluster, name, staging)
    ours = {*ENVIRONMENT, PROFILE_VARIABLE, FILE_VARIABLE}
    env = {key: value for key, value in os.environ.items() if key not in ours}
    env.update(AE_TEST_COUNTS=counts, AE_TEST_SECONDS="120")
    argv = [sys.executable, "-m", "asyncexec", "run", "exp.py:experiment"]
    argv += ["--profile", "cluster", "--dir", "c", "--no-progress"]
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        argv, cwd=project, env=env, stdin=terminal, stdout=terminal, stderr=terminal
    ) as process:
        os.close(terminal)
        output = b""

        def read_until(text: bytes, timeout: float = 60) -> None:
            nonlocal output
            deadline = time.monotonic() + timeout
            while text not in output:
                assert time.monotonic() < deadline, output.decode(errors="replace")
                ready, _, _ = select.select([controller], [], [], 0.2)
                if ready:
                    output += os.read(controller, 4096)

        def handed_over() -> int:
            try:
                with ResultsStore(project / "c", create=False) as store:
                    return len(store.running_job_refs())
            except Exception:
                return 0

        deadline = time.monotonic() + 60
        while handed_over() < 4:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        read_until(b"> ")
        os.write(controller, b"d\n")
        read_until(b"left running")
        assert process.wait(timeout=60) == 0, output.decode(errors="replace")
    os.close(controller)
    assert jobs_named(name)  # still there: detached, not cancelled
    code, said = asyncexec(project, "cancel", "c", counts=counts, seconds=120.0)
    assert code == 0 and "none of it is left" in said, said
    assert not jobs_named(name)
    assert os.listdir(staging) == []
    os.rmdir(staging)
