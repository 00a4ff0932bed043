"""Detach: a driver lets its tasks go running, and a later one collects them.

``BaseExecutor.detach`` on Slurm and Docker (one-shot), ``Experiment.run(detach=True)``
then a second ``run`` that follows what was left: every value comes back and no run
executes twice (each run appends a line to a file of its own).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest

from asyncexec import (
    AzureExecutor,
    DockerExecutor,
    LaunchError,
    ProcessExecutor,
    SlurmConfig,
    SlurmExecutor,
    TaskCancelled,
    TaskDetached,
)
from asyncexec.experiment import Experiment, RunControl
from asyncexec.launchers.azure import AzureLauncher
from asyncexec.testing import sleep_for

from .cluster import Cluster, squeue
from .fakeazure import FakeAzure
from .services import Azurite, check_docker_image
from .test_azure import Azure
from .test_docker import IMAGE

pytestmark = [pytest.mark.anyio]

# The runs' function, in a module of its own that travels by value (the cluster and
# the containers cannot import the tests).
_TASKS = types.ModuleType("asyncexec_detach_tasks")
exec(
    """
import os, time

def counted(x, seconds, directory):
    time.sleep(seconds)
    with open(os.path.join(directory, f"ran-{x}"), "a") as f:
        f.write("ran\\n")
    return x * x
""",
    _TASKS.__dict__,
)
sys.modules[_TASKS.__name__] = _TASKS
cloudpickle.register_pickle_by_value(_TASKS)
counted = _TASKS.counted


def executions(directory: str, n: int) -> list[int]:
    """How many times each run ``x`` in ``range(n)`` ran."""
    counts = []
    for x in range(n):
        path = os.path.join(directory, f"ran-{x}")
        counts.append(len(Path(path).read_text().splitlines()) if os.path.exists(path) else 0)
    return counts


@pytest.fixture
def anyio_backend() -> str:
    """asyncssh and aiodocker run on asyncio only."""
    return "asyncio"


async def test_a_backend_whose_work_ends_with_the_driver_refuses_to_detach(
    tmp_path: Path,
) -> None:
    async with ProcessExecutor(1) as ex:
        future = await ex.submit(sleep_for, 0.2)
        with pytest.raises(LaunchError, match="cannot detach"):
            await ex.detach()
        assert await future == 0.2  # still open, the task untouched
        experiment = Experiment(sleep_for, {"seconds": [0.0]})
        with pytest.raises(LaunchError, match="cannot detach"):
            await experiment.run(ex, tmp_path / "e", detach=True, progress=False)
    assert not (tmp_path / "e").exists()


# -- Slurm ----------------------------------------------------------------------------------


def slurm(cluster: Cluster, staging: str) -> SlurmExecutor:
    config = SlurmConfig(python=cluster.python, poll_interval=0.2, max_poll_interval=2.0)
    return SlurmExecutor(cluster.shell(), config, staging_dir=staging)


def staging_for(cluster: Cluster) -> str:
    return f"{cluster.home}/.asyncexec/detach-{os.getpid()}-{time.monotonic_ns()}"


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
async def test_slurm_detach_leaves_the_jobs_and_a_new_executor_collects_them(
    cluster: Cluster, scratch: str
) -> None:
    staging = staging_for(cluster)
    async with slurm(cluster, staging) as ex:
        futures = [await ex.submit(counted, x, 1.0, scratch) for x in range(3)]
        refs = await ex.detach()
    assert len(refs) == 3
    for future in futures:
        error = future.exception()
        assert isinstance(error, TaskDetached) and isinstance(error, TaskCancelled)
        assert error.job_ref in refs
    arrays = {ref.native_id.split("_")[0] for ref in refs}
    assert arrays & {line.split("_")[0] for line in squeue(cluster.user)} or all(
        executions(scratch, 3)
    )  # still queued or running, or already over: never cancelled
    async with slurm(cluster, staging) as ex:
        states = await ex.job_states(refs)
        assert set(states) <= {"queued", "running", "ended"}, states
        values = await ex.wait([await ex.attach(ref) for ref in refs])
        assert ex.slurm.calls.get("sbatch", 0) == 0
    assert sorted(values) == [0, 1, 4]
    assert executions(scratch, 3) == [1, 1, 1]
    assert os.listdir(staging) == []  # collected, cleaned up
    os.rmdir(staging)


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
async def test_an_experiment_detached_on_slurm_is_continued_with_nothing_run_twice(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    directory = tmp_path / "experiment"
    experiment = Experiment(
        counted, {"x": list(range(6)), "seconds": [0.5], "directory": [scratch]}
    )
    staging = staging_for(cluster)
    async with slurm(cluster, staging) as ex:
        summary = await experiment.run(ex, directory, detach=True, progress=False)
    assert summary.detached + summary.done == 6 and summary.detached > 0, summary
    assert not summary.cancelled
    async with slurm(cluster, staging) as ex:
        summary = await experiment.run(ex, directory, progress=False)
        assert ex.slurm.calls.get("sbatch", 0) == 0, "the detached runs are followed"
    assert summary.complete and summary.done == 6, summary
    assert executions(scratch, 6) == [1] * 6
    assert os.listdir(staging) == []
    os.rmdir(staging)


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
async def test_a_run_detached_midway_leaves_its_runs_in_flight_to_the_next(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    """RunControl.detach (Ctrl-C's "detach" on a terminal): the runs in flight go on,
    the rest stay to do; the next run follows the first and runs the rest."""
    directory = tmp_path / "experiment"
    experiment = Experiment(
        counted, {"x": list(range(5)), "seconds": [2.0], "directory": [scratch]}
    )
    staging = staging_for(cluster)
    control = RunControl()
    config = SlurmConfig(python=cluster.python, poll_interval=0.2, max_poll_interval=2.0)

    def handed_over() -> int:
        try:
            with contextlib.closing(sqlite3.connect(directory / "results.sqlite")) as db:
                (count,) = db.execute("SELECT COUNT(job_ref) FROM runs").fetchone()
        except sqlite3.Error:
            return 0
        return int(count)

    async def detach_once_one_is_handed_over() -> None:
        while handed_over() < 1:
            await anyio.sleep(0.1)
        control.detach()

    executor = SlurmExecutor(cluster.shell(), config, 2, staging_dir=staging)
    async with executor as ex, anyio.create_task_group() as tg:
        tg.start_soon(detach_once_one_is_handed_over)
        summary = await experiment.run(ex, directory, control=control, progress=False)
    assert 1 <= summary.detached <= 2 and summary.done == 0, summary
    assert not summary.complete
    async with slurm(cluster, staging) as ex:
        summary = await experiment.run(ex, directory, progress=False)
    assert summary.complete and summary.done == 5, summary
    assert summary.reattached >= 1, summary
    assert executions(scratch, 5) == [1] * 5
    assert os.listdir(staging) == []
    os.rmdir(staging)


# -- Docker ---------------------------------------------------------------------------------


def containers_of(executor_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=asyncexec.executor={executor_id}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


@pytest.fixture(scope="module")
def image() -> str:
    return check_docker_image(IMAGE, built_here="ASYNCEXEC_TEST_IMAGE" not in os.environ)


@pytest.mark.docker
@pytest.mark.infra
async def test_docker_detach_leaves_the_containers_and_attach_collects_them(
    image: str, tmp_path: Path
) -> None:
    shared = str(tmp_path)
    os.chmod(shared, 0o777)
    options: dict[str, Any] = {"volumes": [f"{shared}:{shared}"], "mode": "oneshot"}
    async with DockerExecutor(image, 2, **options) as ex:
        executor_id = ex.executor_id
        futures = [await ex.submit(counted, x, 1.5, shared) for x in range(2)]
        refs = await ex.detach()
    assert len(refs) == 2 and all(isinstance(f.exception(), TaskDetached) for f in futures)
    assert len(containers_of(executor_id)) == 2  # left running, not removed
    async with DockerExecutor(image, 2, **options) as ex:
        states = await ex.job_states(refs)
        assert set(states) <= {"queued", "running", "ended"}, states
        values = await ex.wait([await ex.attach(ref) for ref in refs])
    assert sorted(values) == [0, 1]
    assert executions(shared, 2) == [1, 1]
    with anyio.fail_after(30):
        while containers_of(executor_id):
            await anyio.sleep(0.2)


# -- Azure ----------------------------------------------------------------------------------


@pytest.fixture
def azure(azurite: Azurite, image: str, tmp_path: Path) -> Iterator[Azure]:
    share = str(tmp_path)
    os.chmod(share, 0o777)
    with FakeAzure(shares={"scratch": share}) as fake:
        yield Azure(fake, azurite, image, share)


@pytest.mark.azure
@pytest.mark.docker
@pytest.mark.infra
async def test_azure_detach_leaves_the_groups_and_attach_collects_them(azure: Azure) -> None:
    config = azure.config(chunk_size=1)

    def executor() -> AzureExecutor:
        credential = azure.credential()
        return AzureExecutor(AzureLauncher(config, credential, storage_key=azure.storage.key))

    async with executor() as ex:
        futures = [await ex.submit(counted, x, 2.0, azure.share) for x in range(3)]
        refs = await ex.detach()
    assert len(refs) == 3 and all(isinstance(f.exception(), TaskDetached) for f in futures)
    assert len(azure.fake.groups) == 3  # created, left running: not deleted
    async with executor() as ex:
        values = await ex.wait([await ex.attach(ref) for ref in refs])
    assert sorted(values) == [0, 1, 4]
    assert executions(azure.share, 3) == [1, 1, 1]
    assert azure.fake.counters["create"] == 3  # nothing created twice
    azure.assert_clean()
