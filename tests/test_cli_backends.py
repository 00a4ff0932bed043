"""``asyncexec run`` on every backend, as users run it (a subprocess), against the real
engines: one small experiment, the same values from each; ``--continue`` with no flags
runs on the executor recorded in ``DIR/executor.json``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncexec.config import ENVIRONMENT, FILE_VARIABLE, PROFILE_VARIABLE
from asyncexec.experiment import ResultsStore

from .cluster import Cluster
from .fakeazure import FakeAzure
from .services import Azurite, check_docker_image
from .test_docker import IMAGE

EXPERIMENT = """
import os

from asyncexec.experiment import Experiment

# Read where the driver loads this file: the function takes it along (by value).
FAIL = os.environ.get("AE_TEST_FAIL", "")


def score(x: int, y: int) -> int:
    if str(x) == FAIL:
        raise RuntimeError(f"x={x} fails on purpose")
    return 10 * x + y


experiment = Experiment(score, {"x": [1, 2], "y": [3, 4]})
"""

#: Every run's options but the executor's.
COMMON = ("--dir", "runs", "--no-progress")

#: What every backend must give: the same values.
VALUES = {(1, 3): 13, (1, 4): 14, (2, 3): 23, (2, 4): 24}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory: the experiment's file (profiles go beside it)."""
    (tmp_path / "exp.py").write_text(EXPERIMENT)
    return tmp_path


def run(project: Path, *args: str, fail: str = "") -> tuple[int, str]:
    """``asyncexec run exp.py:experiment --dir runs ARGS`` in ``project``: status, output."""
    ours = {*ENVIRONMENT, PROFILE_VARIABLE, FILE_VARIABLE}  # none from the caller's shell
    env = {key: value for key, value in os.environ.items() if key not in ours}
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec", "run", "exp.py:experiment", *COMMON, *args],
        cwd=project,
        env={**env, "AE_TEST_FAIL": fail},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, done.stdout + done.stderr


def results(project: Path) -> tuple[dict[tuple[int, int], Any], set[str]]:
    """The values of the done runs by (x, y), and the kinds of the JobRefs of all runs."""
    with ResultsStore(project / "runs", create=False) as store:
        rows = store.rows()
    values = {
        (r["params"]["x"], r["params"]["y"]): r["value"] for r in rows if r["status"] == "done"
    }
    return values, {r["job_ref"]["kind"] for r in rows if r["job_ref"]}


def recorded(project: Path) -> dict[str, Any]:
    """``runs/executor.json``, which must be the owner's alone (0600)."""
    path = project / "runs" / "executor.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def check_run(project: Path, kind: str, *args: str) -> dict[str, Any]:
    """Run the experiment with ``args``; every value as :data:`VALUES`, every run of
    the backend ``kind``; the configuration recorded."""
    code, output = run(project, *args)
    assert code == 0, output
    assert "4 done, 0 failed of 4 runs" in output, output
    values, kinds = results(project)
    assert values == VALUES
    assert kinds == {kind}
    return recorded(project)


def profiles(project: Path, text: str) -> None:
    (project / "asyncexec.toml").write_text(textwrap.dedent(text))


def slurm_profile_text(cluster: Cluster, **fields: str | int) -> str:
    """``[profile.cluster]``: Slurm on the test cluster over SSH, quick to poll, with
    ``fields`` besides."""
    lines = ["[profile.cluster]", 'backend = "slurm"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    lines += [
        f"python = {json.dumps(cluster.python)}",
        "poll_interval = 0.2",
        "max_poll_interval = 1.0",
        "",
        "[profile.cluster.host]",
        f"host = {json.dumps(cluster.host)}",
        f"port = {cluster.port}",
        f"username = {json.dumps(cluster.user)}",
        f"client_keys = [{json.dumps(cluster.client_key)}]",
        f"known_hosts = {json.dumps(cluster.known_hosts)}",
    ]
    return "\n".join(lines) + "\n"


# -- the local backends -------------------------------------------------------------------


def test_process_from_flags(project: Path) -> None:
    config = check_run(project, "process", "--backend", "process", "--workers", "2")
    assert config == {"backend": "process", "n_workers": 2}


def test_thread_from_a_profile(project: Path) -> None:
    profiles(
        project,
        """
        [profile.threads]
        backend = "thread"
        n_workers = 3
        options = { retries = 1 }
        """,
    )
    config = check_run(project, "thread", "--profile", "threads", "--time-limit", "30")
    assert config == {
        "backend": "thread",
        "n_workers": 3,
        "options": {"time_limit": 30.0, "retries": 1},
    }


# -- Docker, SSH hosts, Slurm over SSH, Azure ----------------------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    """This checkout's test image for this Python (scripts/docker-up.sh)."""
    return check_docker_image(IMAGE)


@pytest.mark.docker
@pytest.mark.infra
def test_docker_from_flags(project: Path, image: str) -> None:
    config = check_run(project, "docker", "--backend", "docker", "--image", image, "--workers", "2")
    assert config == {"backend": "docker", "image": image, "n_workers": 2}


def ssh_flags(cluster: Cluster) -> list[str]:
    return [
        "--backend",
        "ssh",
        "--host",
        f"{cluster.user}@{cluster.host}:{cluster.port}",
        "--ssh-key",
        cluster.client_key,
        "--known-hosts",
        cluster.known_hosts,
        "--python",
        cluster.python,
        "--slots",
        "2",
    ]


@pytest.mark.ssh
@pytest.mark.infra
def test_ssh_from_flags_then_continue_with_none(project: Path, cluster: Cluster) -> None:
    """The first run fails x=2 (on purpose); ``--continue --retry-failed`` alone runs them
    again on the same SSH hosts, read from DIR/executor.json; flags given override it."""
    code, output = run(project, *ssh_flags(cluster), fail="2")
    assert code == 1, output
    assert "2 done, 2 failed of 4 runs" in output, output
    first = recorded(project)
    assert first == {
        "backend": "ssh",
        "hosts": [
            {
                "host": cluster.host,
                "port": cluster.port,
                "username": cluster.user,
                "client_keys": [cluster.client_key],
                "known_hosts": cluster.known_hosts,
            }
        ],
        "slots": 2,
        "python": cluster.python,
    }
    code, output = run(project, "--continue", "--retry-failed")
    assert code == 0, output
    assert "4 done, 0 failed of 4 runs (2 run now" in output, output
    values, kinds = results(project)
    assert values == VALUES and kinds == {"ssh"}
    assert recorded(project) == first
    code, output = run(project, "--continue", "--slots", "3")
    assert code == 0 and "(0 run now" in output, output
    assert recorded(project) == {**first, "slots": 3}


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
def test_slurm_over_ssh_from_a_profile(project: Path, cluster: Cluster) -> None:
    profiles(project, slurm_profile_text(cluster, partition="debug", chunk_size=2))
    config = check_run(project, "slurm", "--profile", "cluster", "--time", "5")
    assert config["host"]["host"] == cluster.host and config["time"] == "5"
    assert config["chunk_size"] == 2 and config["partition"] == "debug"


@pytest.fixture
def fake_azure() -> Iterator[FakeAzure]:
    with FakeAzure() as fake:
        yield fake
    assert not fake.docker_leftovers(), fake.docker_leftovers()


def azure_profile(
    project: Path,
    fake: FakeAzure,
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
    *lines: str,
) -> None:
    """``[profile.aci]``: the loopback ARM and Azurite, with ``lines`` more; the client
    secret and the storage key come from the variables the profile names."""
    monkeypatch.setenv("AE_TEST_AZURE_SECRET", fake.client_secret)
    monkeypatch.setenv("AE_TEST_AZURE_KEY", azurite.key)
    more = "\n".join(lines)
    profiles(
        project,
        f"""
[profile.aci]
backend = "azure"
subscription_id = "{fake.subscription_id}"
resource_group = "{fake.resource_group}"
location = "{fake.location}"
storage_account = "{azurite.account}"
storage_endpoint = "{azurite.endpoint}"
storage_container = "t{uuid.uuid4().hex[:20]}"
arm_endpoint = "{fake.url}"
python = "{os.path.realpath(sys.executable)}"
poll_interval = 0.2
max_poll_interval = 1.0
check_interval = [2.0, 5.0]
storage_key = {{ env = "AE_TEST_AZURE_KEY" }}
{more}

[profile.aci.credential]
type = "client_secret"
tenant_id = "{fake.tenant_id}"
client_id = "{fake.client_id}"
client_secret = {{ env = "AE_TEST_AZURE_SECRET" }}
authority = "{fake.authority}"
""",
    )


@pytest.mark.azure
@pytest.mark.docker
@pytest.mark.infra
def test_azure_from_a_profile(
    project: Path,
    image: str,
    azurite: Azurite,
    fake_azure: FakeAzure,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loopback ARM runs each container group as a container of the test image; the
    client secret and the storage key come from the variables the profile names."""
    fake = fake_azure
    azure_profile(project, fake, azurite, monkeypatch, "chunk_size = 2")
    config = check_run(project, "aci", "--profile", "aci", "--image", image)
    assert config["image"] == image
    assert config["credential"]["client_secret"] == {"env": "AE_TEST_AZURE_SECRET"}
    assert fake.client_secret not in json.dumps(config) and azurite.key not in json.dumps(config)
    assert not fake.groups and not fake.invalid, (sorted(fake.groups), fake.invalid)
