"""The Docker backend, on a real Docker Engine with an image built from local files.

``scripts/docker-up.sh``, run by the nox sessions before pytest, starts the
engine if needed and builds or refreshes ``asyncexec-test:pyX.Y`` for this
interpreter; the session fixture only checks that the image is there and built
from this checkout (see tests/services.py). In CI (``CI=true``) a missing engine
or image fails these tests; elsewhere they are skipped with the command to run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from asyncexec import (
    BackendUnavailable,
    FutureState,
    LaunchError,
    Resources,
    TaskCancelled,
    TaskTimeout,
    WorkerLost,
)
from asyncexec.launchers import ProcessLauncher
from asyncexec.launchers.docker import (
    EXECUTOR_LABEL,
    DockerExecutor,
    DockerLauncher,
    Mode,
    check_image,
    prune_containers,
)
from asyncexec.testing import (
    CONFORMANCE_CASES,
    add,
    assert_heartbeat_stopped,
    check_launcher,
    conformance_cases,
    exit_hard,
    heartbeat,
    sleep_for,
)

from .services import IN_CI, check_docker_image

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get(
    "ASYNCEXEC_TEST_IMAGE", "asyncexec-test:py{}.{}".format(*sys.version_info[:2])
)


@pytest.fixture
def anyio_backend() -> str:
    """aiodocker runs on asyncio only (test_trio_is_refused_clearly checks trio)."""
    return "asyncio"


@pytest.fixture(scope="session")
def image() -> str:
    """The test image, made by scripts/docker-up.sh before pytest: checked only."""
    return check_docker_image(IMAGE, built_here="ASYNCEXEC_TEST_IMAGE" not in os.environ)


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[str]:
    """A directory mounted at the same path in the containers, for files tasks write."""
    with tempfile.TemporaryDirectory(prefix="asyncexec-docker-") as path:
        os.chmod(path, 0o777)
        yield path


def containers_of(executor_id: str, *, running: bool = False) -> list[str]:
    """What `docker ps -a` lists with this executor's label (only running ones: `docker ps`)."""
    listed = subprocess.run(
        [
            "docker",
            "ps",
            "-q" if running else "-aq",
            "--filter",
            f"label={EXECUTOR_LABEL}={executor_id}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def inspect(container: str) -> dict[str, Any]:
    shown = subprocess.run(
        ["docker", "inspect", container], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(shown.stdout)[0]
    return result


async def until_exists(path: str, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not os.path.exists(path):
            await anyio.sleep(0.02)


# -- functions run inside the containers (asyncexec.testing's travel by reference) --


def network_interfaces() -> list[str]:
    return sorted(os.listdir("/sys/class/net"))


def reach(host: str, port: int) -> str:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "connected"


def default_gateway() -> str:
    """The IPv4 default gateway from the routing table ("" without one)."""
    import socket
    import struct

    with open("/proc/net/route") as routes:
        for line in routes.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return ""


def allocate(megabytes: int) -> int:
    block = bytearray(megabytes * 2**20)
    for index in range(0, len(block), 4096):
        block[index] = 1
    return len(block)


def identity_and_writes(directory: str) -> dict[str, Any]:
    results: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    for path in ("/should-not-exist", "/tmp/scratch", os.path.join(directory, "from-container")):
        try:
            with open(path, "w") as out:
                out.write("x")
            results[path] = "written"
        except OSError as exc:
            results[path] = type(exc).__name__ + ":" + str(exc.errno)
    return results


def environment(name: str) -> str | None:
    return os.environ.get(name)


def cgroup_limits() -> dict[str, str]:
    """The container's pids and CPU limits as its cgroups (v1 or v2) say."""
    found = {}
    for name, candidates in {
        "pids": ["/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"],
        "cpu": ["/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"],
    }.items():
        for candidate in candidates:
            if os.path.exists(candidate):
                with open(candidate) as limit:
                    found[name] = limit.read().strip()
                break
    return found


def hostname() -> str:
    import socket

    return socket.gethostname()


def cpus_seen(seconds: float = 0.0) -> dict[str, Any]:
    """The task's CPU affinity (after ``seconds``) and its container's CPU quota."""
    time.sleep(seconds)
    return {"affinity": sorted(os.sched_getaffinity(0)), **cgroup_limits()}


def kill_own_process(then_sleep: float) -> int:
    """SIGKILL the worker running this task; what follows runs only if that did nothing
    (as for a PID 1 without a handler)."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(then_sleep)
    return os.getpid()


def worker_pid() -> int:
    return os.getpid()


def count_start_and_die_at(path: str, doomed: int) -> None:
    """An initializer: counts the workers started (in ``path``); the ``doomed``-th
    is killed, before its handshake ends."""
    with open(path, "a") as starts:
        starts.write("x")
    with open(path) as starts:
        if len(starts.read()) == doomed:
            os.kill(os.getpid(), signal.SIGKILL)


def exit_while_starting_if(path: str) -> None:
    """An initializer: the worker exits (status 5), before its handshake ends, once
    ``path`` exists."""
    if os.path.exists(path):
        os._exit(5)


# Functions of this module travel by value: the image cannot import the tests.
import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- conformance ------------------------------------------------------------------

MODES: tuple[Mode, ...] = ("oneshot", "warm")
# 1,000 concurrent one-shot containers take minutes; test_fifty_concurrent_tasks stands in.
SLOW_FOR_ONESHOT = {"many_concurrent"}


@pytest.mark.parametrize(
    ("mode", "case"),
    [
        (mode, case)
        for mode in MODES
        for case in conformance_cases(DockerLauncher)
        if not (mode == "oneshot" and case in SLOW_FOR_ONESHOT)
    ],
)
async def test_conformance(image: str, shared_dir: str, mode: Mode, case: str) -> None:
    launchers: list[DockerLauncher] = []

    def make() -> DockerLauncher:
        launcher = DockerLauncher(
            image,
            2,
            mode=mode,
            volumes={shared_dir: shared_dir},
        )
        launchers.append(launcher)
        return launcher

    await check_launcher(make, only=[case], tmp_root=shared_dir)
    for launcher in launchers:
        assert containers_of(launcher.executor_id) == []


def test_every_case_applies_to_docker() -> None:
    assert conformance_cases(DockerLauncher) == list(CONFORMANCE_CASES)


# -- scale, cleanup, limits ----------------------------------------------------------


@pytest.mark.infra
async def test_fifty_concurrent_tasks(image: str) -> None:
    async with DockerExecutor(image, n_workers=50) as ex:
        futures = [await ex.submit(add, i, 1) for i in range(50)]
        assert await ex.wait(futures) == [i + 1 for i in range(50)]
        hosts = {future.info.host for future in futures}
        executor_id = ex.executor_id
    assert len(hosts) == 50, "one-shot tasks shared a container"
    assert containers_of(executor_id) == []


async def test_warm_containers_are_reused(image: str) -> None:
    async with DockerExecutor(image, n_workers=2, mode="warm") as ex:
        futures = [await ex.submit(hostname) for _ in range(40)]
        hosts = set(await ex.wait(futures))
        assert 1 <= len(hosts) <= 2
        assert len(containers_of(ex.executor_id)) == 2
    assert containers_of(ex.executor_id) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.infra
async def test_cancel_and_timeout_leave_no_container(
    image: str, shared_dir: str, mode: Mode
) -> None:
    beat = os.path.join(shared_dir, f"cancel-{mode}.beat")
    slow = os.path.join(shared_dir, f"timeout-{mode}.beat")
    async with DockerExecutor(
        image,
        n_workers=2,
        mode=mode,
        volumes={shared_dir: shared_dir},
    ) as ex:
        running = await ex.submit(heartbeat, beat)
        timed = await ex.with_options(time_limit=1.5).submit(heartbeat, slow)
        await until_exists(beat)
        assert await running.cancel() is True
        with pytest.raises(TaskCancelled):
            await running
        with pytest.raises(TaskTimeout):
            await timed
        await assert_heartbeat_stopped(beat)
        await assert_heartbeat_stopped(slow)
        if mode == "oneshot":
            assert containers_of(ex.executor_id) == []
        assert await (await ex.submit(add, 1, 2)) == 3
    assert containers_of(ex.executor_id) == []


async def test_aclose_cancel_pending_leaves_no_container(image: str, shared_dir: str) -> None:
    beat = os.path.join(shared_dir, "aclose.beat")
    ex = DockerExecutor(image, n_workers=3, volumes={shared_dir: shared_dir})
    async with ex:
        futures = [await ex.submit(heartbeat, beat) for _ in range(3)]
        await until_exists(beat)
        assert len(containers_of(ex.executor_id)) == 3
        await ex.aclose(cancel_pending=True)
    assert all(future.state is FutureState.CANCELLED for future in futures)
    assert containers_of(ex.executor_id) == []
    await assert_heartbeat_stopped(beat)


@pytest.mark.parametrize("mode", MODES)
async def test_memory_limit_is_an_oom_kill(image: str, mode: Mode) -> None:
    async with DockerExecutor(image, n_workers=1, mode=mode, memory_mb=96) as ex:
        future = await ex.submit(allocate, 400)
        with pytest.raises(WorkerLost) as caught:
            await future
        assert caught.value.state == "OOMKilled", caught.value
        assert "out of memory" in str(caught.value)
        assert "96 MiB" in str(caught.value)
        # Within the limit, and after the kill, work goes on.
        assert await (await ex.submit(allocate, 8)) == 8 * 2**20
    assert containers_of(ex.executor_id) == []


async def test_network_none_by_default_bridge_on_request(image: str) -> None:
    async with DockerExecutor(image, n_workers=1, network="bridge") as ex:
        assert "eth0" in await ex.run(network_interfaces)
        gateway = await ex.run(default_gateway)
        # Port 9 (discard) is closed on the host: refused, but the host was reached.
        reached = await ex.run(reach, gateway, 9)
    assert "ConnectionRefusedError" in reached or reached == "connected", reached
    async with DockerExecutor(image, n_workers=1) as ex:
        assert await ex.run(network_interfaces) == ["lo"]
        assert await ex.run(default_gateway) == ""
        refused = await ex.run(reach, gateway, 9)
    assert refused.startswith("OSError") and "unreachable" in refused.lower(), refused


async def test_read_only_root_user_env_volume(image: str, shared_dir: str) -> None:
    mounted = os.path.join(shared_dir, "ro-volume")
    os.makedirs(mounted, exist_ok=True)
    async with DockerExecutor(
        image,
        n_workers=1,
        read_only=True,
        user="65534:65534",
        env={"ASYNCEXEC_TEST_VALUE": "forty-two"},
        volumes=[f"{mounted}:/data:ro"],
    ) as ex:
        report = await ex.run(identity_and_writes, "/data")
        assert await ex.run(environment, "ASYNCEXEC_TEST_VALUE") == "forty-two"
    assert report["uid"] == 65534 and report["gid"] == 65534
    assert report["/should-not-exist"].startswith("OSError:30"), report  # EROFS
    assert report["/tmp/scratch"] == "written", report
    assert report["/data/from-container"].startswith("OSError:30"), report
    assert not os.path.exists(os.path.join(mounted, "from-container"))


async def test_resources_and_labels_reach_the_container(image: str, shared_dir: str) -> None:
    beat = os.path.join(shared_dir, "labels.beat")
    async with DockerExecutor(
        image,
        n_workers=1,
        cpus=0.5,
        pids_limit=32,
        labels={"team": "bench"},
        volumes={shared_dir: shared_dir},
    ) as ex:
        limits = await ex.run(cgroup_limits)
        future = await ex.submit(heartbeat, beat)
        await until_exists(beat)
        [container] = containers_of(ex.executor_id)
        config = inspect(container)
        await future.cancel()
    assert limits["pids"] == "32", limits
    assert limits["cpu"] in ("50000", "50000 100000"), limits
    labels = config["Config"]["Labels"]
    assert labels[EXECUTOR_LABEL] == ex.executor_id
    assert labels["asyncexec.task"] == future.task_id
    assert labels["team"] == "bench"
    assert config["HostConfig"]["NetworkMode"] == "none"
    assert config["HostConfig"]["NanoCpus"] == 500_000_000


def containers_of_task(task_id: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=asyncexec.task={task_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


async def test_oneshot_cpus_are_the_tasks_containers_nanocpus(image: str, shared_dir: str) -> None:
    beat = os.path.join(shared_dir, "nanocpus.beat")
    async with DockerExecutor(image, n_workers=2, cpus=1, volumes={shared_dir: shared_dir}) as ex:
        half = await ex.with_options(resources=Resources(cpus=0.5)).run(cpus_seen)
        default = await ex.run(cpus_seen)
        running = await ex.with_options(resources=Resources(cpus=1.5)).submit(heartbeat, beat)
        await until_exists(beat)
        [container] = containers_of_task(running.task_id)
        config = inspect(container)
        await running.cancel()
        # More than the engine has: refused at submit, no container made.
        with pytest.raises(LaunchError, match="the Docker engine has"):
            await ex.with_options(resources=Resources(cpus=1000)).submit(add, 1, 1)
    assert half["cpu"] in ("50000", "50000 100000"), half  # the task's, not cpus=1
    assert default["cpu"] in ("100000", "100000 100000"), default
    assert config["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert half["affinity"] == default["affinity"]  # a quota, not a pinning
    assert containers_of(ex.executor_id) == []


async def test_oneshot_gpus_without_a_gpu_fail_with_the_engines_refusal(image: str) -> None:
    async with DockerExecutor(image, n_workers=2) as ex:
        plain = await ex.submit(add, 1, 2)
        wants_gpu = await ex.with_options(resources=Resources(gpus=1)).submit(add, 1, 2)
        with pytest.raises(LaunchError) as caught:
            await wants_gpu
        assert containers_of_task(wants_gpu.task_id) == []  # removed before the task failed
        assert await plain == 3
        assert await ex.run(add, 2, 2) == 4
    message = str(caught.value)
    assert "cannot start container" in message and "Resources(gpus=1)" in message, message
    assert "capabilities: [[gpu]]" in message, message  # the engine's own words
    assert containers_of(ex.executor_id) == []


async def test_warm_cpus_pin_the_task_and_gpus_are_refused_at_submit(image: str) -> None:
    async with DockerExecutor(image, n_workers=2, mode="warm", cpus=1.5) as ex:
        one = ex.with_options(resources=Resources(cpus=1))
        together = await ex.wait([await one.submit(cpus_seen, 0.5) for _ in range(2)])
        after = await ex.run(cpus_seen)
        with pytest.raises(LaunchError, match="mode='oneshot'") as gpus:
            await ex.with_options(resources=Resources(gpus=1)).submit(add, 1, 1)
        with pytest.raises(LaunchError, match=r"cpus=1\.5 each") as cpus:
            await ex.with_options(resources=Resources(cpus=2)).submit(add, 1, 1)
    assert "DockerLauncher does not honour Resources.gpus" in str(gpus.value)
    assert "DockerExecutor cannot run a task with Resources(cpus=2)" in str(cpus.value)
    first, second = (seen["affinity"] for seen in together)
    assert len(first) == len(second) == 1, together
    if len(after["affinity"]) > 1:
        assert first != second, together  # two CPUs for two tasks at once
    assert set(first) | set(second) <= set(after["affinity"])
    assert containers_of(ex.executor_id) == []


async def test_two_executors_never_touch_each_others_containers(
    image: str, shared_dir: str
) -> None:
    beat = os.path.join(shared_dir, "other.beat")
    async with DockerExecutor(image, n_workers=1, volumes={shared_dir: shared_dir}) as first:
        survivor = await first.submit(heartbeat, beat)
        await until_exists(beat)
        async with DockerExecutor(image, n_workers=2, mode="warm") as second:
            doomed = await second.submit(sleep_for, 30)
            assert len(containers_of(second.executor_id)) == 2
            await second.aclose(cancel_pending=True)
        assert doomed.state is FutureState.CANCELLED
        assert await prune_containers(second.executor_id) == []
        assert containers_of(second.executor_id) == []
        assert len(containers_of(first.executor_id)) == 1
        assert not survivor.ready()
        before = Path(beat).read_text()
        deadline = time.monotonic() + 30  # it beats every 0.05 s while it runs
        while Path(beat).read_text() == before:
            assert time.monotonic() < deadline, "the other executor's task was stopped"
            await anyio.sleep(0.02)
        await survivor.cancel()
    assert containers_of(first.executor_id) == []


# -- bad input and unreachable engines ---------------------------------------------


async def test_missing_image_is_a_launch_error_naming_it(image: str) -> None:
    missing = "asyncexec-test:no-such-tag"
    with pytest.raises(LaunchError, match="no-such-tag") as caught:
        async with DockerExecutor(missing, n_workers=1, mode="warm"):
            pass
    assert "pull=True" in str(caught.value)
    # pull=True asks the registry, which cannot be reached here: still a clear LaunchError.
    with pytest.raises(LaunchError, match="cannot pull the image 'asyncexec-test:no-such-tag'"):
        async with DockerExecutor(missing, n_workers=1, pull=True):
            pass


async def test_an_image_without_python_is_refused_clearly(image: str) -> None:
    with pytest.raises(LaunchError, match="python-nowhere"):
        async with DockerExecutor(image, n_workers=1, python="python-nowhere") as ex:
            await ex.run(add, 1, 1)


async def test_unreachable_engine_is_backend_unavailable(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(BackendUnavailable, match="Docker engine"):
        async with DockerExecutor("anything", n_workers=1, url=url):
            pass


async def test_no_socket_and_no_docker_host_is_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiodocker.docker

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(aiodocker.docker, "_sock_search_paths", [])  # as if none existed
    with pytest.raises(BackendUnavailable, match="no Docker engine"):
        async with DockerExecutor("anything", n_workers=1):
            pass
    with pytest.raises(BackendUnavailable):
        await prune_containers(every=True)


async def test_a_worker_dying_at_start_says_how(image: str) -> None:
    broken = {"PYTHONHOME": "/nonexistent"}  # the interpreter cannot even start
    for mode in MODES:
        with pytest.raises(LaunchError, match=r"died while starting.*exited with status 1"):
            async with DockerExecutor(image, n_workers=1, mode=mode, env=broken) as ex:
                await ex.run(add, 1, 1)
        assert containers_of(ex.executor_id) == []


async def test_a_pool_this_large_has_the_connections_it_needs(image: str) -> None:
    # Each attached container holds a connection to the engine for its whole life;
    # aiohttp's default cap (100) would deadlock a pool of 100 containers.
    launcher = DockerLauncher(image, 150)
    with pytest.raises(RuntimeError, match="not open"):
        launcher.connection_limit  # noqa: B018  (no client before opening)
    async with DockerExecutor(launcher=launcher) as ex:
        assert launcher.connection_limit is None
        assert await ex.run(add, 1, 1) == 2


async def test_closing_while_a_dead_warm_container_is_replaced(image: str) -> None:
    for _ in range(3):
        async with DockerExecutor(image, n_workers=1, mode="warm") as ex:
            with pytest.raises(WorkerLost):
                await ex.run(exit_hard, 3)
            # Leaving now races the replacement container being created.
        assert containers_of(ex.executor_id) == []


@pytest.mark.parametrize("mode", MODES)
async def test_the_worker_is_not_pid_1_a_task_killing_it_is_worker_lost(
    image: str, mode: Mode
) -> None:
    """The worker runs under an init: PID 1 would ignore the SIGKILL a task sends it
    (no handler) and the task would go on. It is lost, and a warm pool replaces it."""
    async with DockerExecutor(image, n_workers=1, mode=mode) as ex:
        assert await ex.run(worker_pid) != 1
        before = await ex.run(hostname)
        with anyio.fail_after(60), pytest.raises(WorkerLost, match="SIGKILL"):
            await ex.run(kill_own_process, 30)
        assert await ex.run(hostname) != before  # another container
    assert containers_of(ex.executor_id) == []


async def test_a_task_whose_warm_container_dies_while_starting_runs_on_the_next(
    image: str, shared_dir: str
) -> None:
    """Issue 17, item 5, on warm containers: the container started for a waiting task
    dies before its handshake ends; the task never reached it, and runs on the next."""
    starts = os.path.join(shared_dir, f"starts-{os.getpid()}-{time.monotonic_ns()}")
    initializer = functools.partial(count_start_and_die_at, starts, 2)
    async with DockerExecutor(
        image,
        n_workers=1,
        mode="warm",
        initializer=initializer,
        volumes={shared_dir: shared_dir},
    ) as ex:
        crash = await ex.submit(exit_hard, 3)
        waiting = await ex.submit(hostname)  # waits for the one container
        with pytest.raises(WorkerLost):
            await crash
        assert await waiting.get(timeout=120)
        assert waiting.info.attempts == 1
        assert Path(starts).read_text() == "xxx"
    assert containers_of(ex.executor_id) == []


async def test_cancelling_while_containers_are_created(image: str, shared_dir: str) -> None:
    beat = os.path.join(shared_dir, "create.beat")
    async with DockerExecutor(image, n_workers=4, volumes={shared_dir: shared_dir}) as ex:
        for delay in (0.0, 0.002, 0.01, 0.03, 0.06, 0.1):
            future = await ex.submit(heartbeat, beat)
            await anyio.sleep(delay)
            await future.cancel()
            assert future.state is FutureState.CANCELLED
        # While the executor is still open, nothing of them is left.
        deadline = time.monotonic() + 10
        while containers_of(ex.executor_id):
            assert time.monotonic() < deadline, containers_of(ex.executor_id)
            await anyio.sleep(0.1)


def test_trio_is_refused_clearly() -> None:
    async def main() -> None:
        async with DockerExecutor("anything", n_workers=1):
            pass

    with pytest.raises(RuntimeError, match="asyncio only"):
        anyio.run(main, backend="trio")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": "cold"}, "mode"),
        ({"memory_mb": -1}, "memory_mb"),
        ({"cpus": 0}, "cpus"),
        ({"volumes": ["nocolon"]}, "volume"),
        ({"volumes": ["/a:relative"]}, "absolute"),
        ({"volumes": ["/a:/b:rx"]}, "mode"),
        ({"volumes": "/a:/b"}, "mapping"),
        ({"labels": {EXECUTOR_LABEL: "x"}}, "asyncexec's own"),
        ({"max_tasks_per_worker": 3}, "warm"),
        ({"network": ""}, "network"),
        ({"executor_id": "not a name"}, "executor_id"),
    ],
)
def test_bad_options_fail_at_construction(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        DockerExecutor("some-image", 1, **arguments)


def test_a_configured_launcher_is_not_configured_again() -> None:
    launcher = DockerLauncher("some-image", 3, mode="warm", memory_mb=256)
    assert DockerExecutor(launcher=launcher).n_workers == 3  # the launcher's
    assert DockerExecutor(n_workers=3, launcher=launcher).n_workers == 3
    assert DockerExecutor(launcher=launcher).executor_id == launcher.executor_id
    with pytest.raises(TypeError, match=r"^memory_mb, pull: the launcher's own"):
        DockerExecutor(launcher=launcher, memory_mb=128, pull=True)
    with pytest.raises(TypeError, match=r"^image: the launcher's own"):
        DockerExecutor("another-image", launcher=launcher)
    with pytest.raises(ValueError, match=r"n_workers=4 differs from the launcher's n_workers=3"):
        DockerExecutor(n_workers=4, launcher=launcher)
    with pytest.raises(TypeError, match="must be a DockerLauncher"):
        DockerExecutor(launcher=ProcessLauncher(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs an image"):
        DockerExecutor()


def running_containers_labelled(label: str) -> list[str]:
    """What `docker ps` lists with the label ``label`` (``key=value``)."""
    listed = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


async def test_an_executor_runs_on_the_launcher_it_is_given(image: str) -> None:
    given = f"given-{os.getpid()}-{time.monotonic_ns()}"
    launcher = DockerLauncher(
        image, 2, mode="warm", pids_limit=32, labels={"given": given}, executor_id=given
    )
    async with DockerExecutor(launcher=launcher) as ex:
        assert ex.executor_id == given and ex.n_workers == 2
        assert await ex.run(add, 1, 10) == 11
        limits = await ex.run(cgroup_limits)
        labelled = running_containers_labelled(f"given={given}")
        assert len(labelled) == 2  # the launcher's warm containers, with its labels
        assert sorted(labelled) == sorted(containers_of(given, running=True))
    assert limits["pids"] == "32", limits  # the launcher's settings, not defaults
    assert containers_of(given) == []


# -- the command line: check an image, prune what a killed driver left -------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncexec", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_cli_check_image(image: str) -> None:
    done = _cli("docker", "check", image)
    assert done.returncode == 0, done.stderr
    assert "Python {}.{}".format(*sys.version_info[:2]) in done.stdout
    missing = _cli("docker", "check", "asyncexec-test:no-such-tag")
    assert missing.returncode == 1
    assert "no-such-tag" in missing.stderr


async def test_check_image_function(image: str) -> None:
    described = await check_image(image)
    assert "asyncexec" in described


@pytest.mark.infra
def test_prune_removes_what_a_killed_driver_left(image: str, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    beat = tmp_path / "killed.beat"
    os.chmod(tmp_path, 0o777)
    driver.write_text(
        textwrap.dedent(
            f"""
            import asyncio
            from asyncexec import Resources
            from asyncexec.launchers.docker import DockerExecutor
            from asyncexec.testing import heartbeat

            async def main():
                async with DockerExecutor(
                    {image!r}, 3, mode="warm", executor_id="killed-driver-{os.getpid()}",
                    volumes={{{str(tmp_path)!r}: {str(tmp_path)!r}}},
                ) as ex:
                    # One of them memory-limited: its worker reads nothing while it runs.
                    limited = ex.with_options(resources=Resources(memory_mb=512))
                    await ex.wait([
                        await ex.submit(heartbeat, {str(beat)!r}),
                        await limited.submit(heartbeat, {str(beat)!r}),
                    ])

            asyncio.run(main())
            """
        )
    )
    executor_id = f"killed-driver-{os.getpid()}"
    process = subprocess.Popen([sys.executable, str(driver)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not beat.exists() or len(containers_of(executor_id)) < 3:
            assert time.monotonic() < deadline, "the driver never started its tasks"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    try:
        # Nobody removed them, but none runs on: each worker saw its input end and
        # exited, the busy ones killing their task (issue 17, item 6), the memory-limited
        # one too, and each container with it.
        deadline = time.monotonic() + 60
        while containers_of(executor_id, running=True):
            running = containers_of(executor_id, running=True)
            assert time.monotonic() < deadline, f"containers outlived their driver: {running}"
            time.sleep(0.1)
        stopped = beat.read_text()
        time.sleep(1)
        assert beat.read_text() == stopped, "a task still runs"
        assert len(containers_of(executor_id)) == 3
    except BaseException:
        if containers_of(executor_id):  # never leave them to the next run
            subprocess.run(["docker", "rm", "-f", *containers_of(executor_id)], check=False)
        raise
    done = _cli("docker", "prune", "--executor", executor_id)
    assert done.returncode == 0, done.stderr
    assert "removed 3 container(s)" in done.stdout, done.stdout
    assert containers_of(executor_id) == []
    assert _cli("docker", "prune", "--executor", executor_id).stdout.startswith("removed 0")
    assert _cli("docker", "prune").returncode == 2  # --executor ID or --all, never by default


# -- the engine goes away mid-run and comes back (last: it restarts dockerd) ---------


def _engine(command: str) -> None:
    script = ROOT / "scripts" / f"docker-{command}.sh"
    args = [sys.executable] if command == "up" else []
    subprocess.run(["bash", str(script), *args], check=True, capture_output=True, timeout=600)


@pytest.mark.alone
@pytest.mark.skipif(
    not (IN_CI or os.environ.get("ASYNCEXEC_TEST_RESTART_DOCKER") == "1"),
    reason="restarts dockerd (needs root): runs in CI, or with ASYNCEXEC_TEST_RESTART_DOCKER=1",
)
@pytest.mark.infra
async def test_engine_stopped_mid_run_and_started_again(image: str, shared_dir: str) -> None:
    beat = os.path.join(shared_dir, "engine.beat")
    for mode in MODES:
        async with DockerExecutor(
            image,
            n_workers=2,
            mode=mode,
            volumes={shared_dir: shared_dir},
        ) as ex:
            running = await ex.submit(heartbeat, beat)
            await until_exists(beat)
            try:
                await anyio.to_thread.run_sync(_engine, "down")
                with pytest.raises((WorkerLost, BackendUnavailable)):
                    with anyio.fail_after(60):
                        await running
                with pytest.raises(BackendUnavailable):
                    await ex.run(add, 1, 1)
            finally:
                await anyio.to_thread.run_sync(_engine, "up")
            assert await (await ex.submit(add, 2, 2)) == 4
        os.remove(beat)
        assert containers_of(ex.executor_id) == []


def test_benchmark_smoke(image: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "docker.py"), "--smoke", "--image", image],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "`docker run --rm` loop",
        "oneshot, 8 at once",
        "warm, 2 containers",
    ], done.stdout


# -- leftovers and faults (issue: "no hang, the right error, nothing left behind") ----


_BLOCKED_IMPORT = """
import sys
sys.modules[{name!r}] = None  # as if it were not installed: importing it fails
import anyio
from asyncexec.launchers.docker import DockerExecutor, prune_containers

async def main():
    try:
        async with DockerExecutor("anything", n_workers=1):
            pass
    except ImportError as exc:
        print("executor:", type(exc).__name__, exc)
    try:
        await prune_containers(every=True)
    except ImportError as exc:
        print("prune:", type(exc).__name__, exc)

anyio.run(main)
"""


@pytest.mark.parametrize("name", ["aiohttp", "aiodocker"])
def test_a_missing_client_library_gives_the_install_hint(name: str) -> None:
    # Needs no engine: the hint comes before any connection is tried.
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT.format(name=name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    hint = "pip install 'asyncexec[docker]'"
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["executor", "prune"], done.stdout
    for line in lines:
        assert ": ImportError " in line and hint in line, line


async def test_a_failed_replacement_is_one_line_with_the_traceback_at_debug(
    image: str, shared_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncexec")
    broken = os.path.join(shared_dir, f"broken-{os.getpid()}-{time.monotonic_ns()}")
    async with DockerExecutor(
        image,
        n_workers=1,
        mode="warm",
        initializer=functools.partial(exit_while_starting_if, broken),
        volumes={shared_dir: shared_dir},
    ) as ex:
        # From now on a container's worker cannot start (it exits with status 5 while
        # starting): replacing the one that dies fails for real.
        Path(broken).touch()
        with pytest.raises(WorkerLost):
            await ex.run(exit_hard, 3)
        with anyio.fail_after(60):
            while not [r for r in caplog.records if "replace" in r.getMessage()]:
                await anyio.sleep(0.1)
    replaced = [r for r in caplog.records if "replace" in r.getMessage()]
    warnings = [r for r in replaced if r.levelno == logging.WARNING]
    assert warnings, replaced
    for record in warnings:
        assert record.exc_info is None and not record.exc_text, record
        assert "\n" not in record.getMessage() and "status 5" in record.getMessage()
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in replaced), replaced
    assert containers_of(ex.executor_id) == []


async def test_a_container_that_cannot_start_is_removed_at_once(image: str) -> None:
    # The engine creates the container, whose init finds no such interpreter (exit 127;
    # without an init the engine itself refused to start it); cancelled or not, its
    # removal must not wait for the executor's closing sweep.
    async with DockerExecutor(image, n_workers=1, python="python-nowhere") as ex:
        for delay in (None, 0.0, 0.01, 0.03, 0.08, 0.15):
            with anyio.move_on_after(1e9 if delay is None else delay):
                with pytest.raises(LaunchError, match="python-nowhere"):
                    await ex.run(add, 1, 1)
            with anyio.fail_after(10):
                while containers_of(ex.executor_id):
                    await anyio.sleep(0.1)
    assert containers_of(ex.executor_id) == []


class _LosingProxy:
    """A real relay to the engine's socket that loses the engine's answer to the
    first ``lose`` container creations: the engine creates the container, and the
    client's connection is cut before the answer (with its id) reaches it.

    With ``delay``, the connection is cut as soon as the request is in, and the
    engine gets it ``delay`` seconds later (as when the engine takes longer than
    the client waits): the container appears after the client gave up on it.
    """

    def __init__(self, path: str, lose: int, delay: float = 0.0) -> None:
        self.path = path
        self.lose = lose
        self.delay = delay
        self.lost = 0
        self.answered = anyio.Event()  # the engine answered a create whose answer is lost

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_unix_listener(self.path)
        task_status.started()
        async with listener:
            await listener.serve(self._relay)

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        engine = await anyio.connect_unix("/var/run/docker.sock")
        cut = anyio.Event()
        losing = False

        async def upstream() -> None:
            nonlocal losing
            async for data in client:
                if self.lost < self.lose and b"/containers/create" in data.split(b"\r\n", 1)[0]:
                    self.lost += 1
                    request = await _whole_request(data, client)
                    if self.delay:
                        await client.aclose()
                        await anyio.sleep(self.delay)
                    losing = True
                    await engine.send(request)
                    await cut.wait()
                    return
                await engine.send(data)

        async def downstream() -> None:
            async for data in engine:
                if losing:  # the engine answered (it made the container): cut here
                    self.answered.set()
                    cut.set()
                    return
                await client.send(data)

        async with client, engine, anyio.create_task_group() as tg:
            for direction in (upstream, downstream):
                tg.start_soon(_until_either_ends, direction, tg.cancel_scope)
            await cut.wait()
            tg.cancel_scope.cancel()


async def _whole_request(data: bytes, client: anyio.abc.SocketStream) -> bytes:
    """The HTTP request that starts with ``data``, its body (Content-Length) included."""
    while b"\r\n\r\n" not in data:
        data += await client.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += await client.receive()
    return head + b"\r\n\r\n" + body


async def _until_either_ends(fn: Any, scope: anyio.CancelScope) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await fn()
    scope.cancel()


@pytest.mark.infra
@pytest.mark.parametrize("python", ["python3", "python-nowhere"])
async def test_a_lost_create_answer_leaves_no_container(
    image: str, tmp_path: Path, python: str
) -> None:
    # The engine made the container but its answer (the id) never arrived: the
    # container must be found by its name and removed while the executor is open.
    proxy = _LosingProxy(str(tmp_path / "engine.sock"), lose=1)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        async with DockerExecutor(
            image, n_workers=1, python=python, url=f"unix://{proxy.path}"
        ) as ex:
            with pytest.raises(LaunchError, match="create a container"):
                await ex.run(add, 1, 1)
            assert proxy.lost == 1
            with anyio.fail_after(30):
                while containers_of(ex.executor_id):
                    await anyio.sleep(0.1)
            if python == "python3":
                assert await ex.run(add, 1, 2) == 3  # the engine is still there
        assert containers_of(ex.executor_id) == []
        tg.cancel_scope.cancel()


@pytest.mark.infra
async def test_a_create_the_engine_finishes_after_the_client_gave_up_leaves_no_container(
    image: str, tmp_path: Path
) -> None:
    # The engine makes the container seconds after the executor lost the call (as when
    # the engine is slower than the client's timeout), and the executor closes meanwhile.
    proxy = _LosingProxy(str(tmp_path / "engine.sock"), lose=1, delay=3.0)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        url = f"unix://{proxy.path}"
        async with DockerExecutor(image, n_workers=1, url=url) as ex:
            with pytest.raises(LaunchError, match="create a container"):
                await ex.run(add, 1, 1)
        with anyio.fail_after(120):
            await proxy.answered.wait()  # the container exists from here on, unless removed
        # A removal may race the answer: the container goes, or the test fails.
        deadline = time.monotonic() + 30
        while left := containers_of(ex.executor_id):
            assert time.monotonic() < deadline, f"a container outlived its executor: {left}"
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()


@pytest.mark.infra
@pytest.mark.parametrize("python", ["python3", "python-nowhere"])
async def test_cancelled_at_any_point_of_its_launch_leaves_no_container(
    image: str, shared_dir: str, python: str
) -> None:
    beat = os.path.join(shared_dir, f"launch-{python}.beat")
    async with DockerExecutor(
        image, n_workers=2, python=python, volumes={shared_dir: shared_dir}
    ) as ex:
        began = time.monotonic()
        with contextlib.suppress(LaunchError):
            await ex.run(add, 1, 1)
        launch = time.monotonic() - began  # (only to spread the cancels over a launch)
        for step in range(30):
            delay = launch * 1.5 * step / 30
            futures = [await ex.submit(heartbeat, beat) for _ in range(2)]
            await anyio.sleep(delay)
            await ex.cancel(futures)
            assert all(future.state is not FutureState.RUNNING for future in futures)
            with anyio.fail_after(30):  # removed while the executor is open
                while containers_of(ex.executor_id):
                    await anyio.sleep(0.05)
        # Closing while containers are being created.
        await ex.submit(heartbeat, beat)
        await ex.submit(heartbeat, beat)
        await ex.aclose(cancel_pending=True)
    assert containers_of(ex.executor_id) == []


_RUNNER = """
import asyncio, sys
from asyncexec.experiment import Experiment
from asyncexec.launchers.docker import DockerExecutor

def work(x, log):
    import time
    with open(log, "a") as out:
        out.write(f"start {{x}}\\n")
    time.sleep(0.2 if x < 2 else 15)
    with open(log, "a") as out:
        out.write(f"end {{x}}\\n")
    return x * x

experiment = Experiment(work, {{"x": [0, 1, 2, 3], "log": [{log!r}]}})

async def main():
    async with DockerExecutor(
        {image!r}, 4, executor_id=sys.argv[2], volumes={{{shared!r}: {shared!r}}}
    ) as ex:
        summary = await experiment.run(ex, sys.argv[1], lease=2, progress=False)
    print("reattached", summary.reattached, "done", summary.done, flush=True)

if __name__ == "__main__":
    asyncio.run(main())
"""


def _lines(log: Path, word: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(word)]


@pytest.mark.infra
def test_a_killed_runners_oneshot_containers_are_collected_not_rerun(
    image: str, tmp_path: Path
) -> None:
    """A runner SIGKILLed while two runs are in one-shot containers: those finish there,
    and the next runner collects their results instead of running them again."""
    import sqlite3

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    # The runs write their logs in the directory: the containers see it at the same path.
    log, directory = shared / "log", str(shared / "experiment")
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER.format(image=image, log=str(log), shared=str(shared)))
    killed, resumed = f"killed-runner-{os.getpid()}", f"resumed-runner-{os.getpid()}"
    runner = subprocess.Popen([sys.executable, str(script), directory, killed], cwd=ROOT)

    def runs(status: str) -> list[str | None]:
        try:
            with contextlib.closing(
                sqlite3.connect(os.path.join(directory, "results.sqlite"))
            ) as db:
                rows = db.execute("SELECT job_ref FROM runs WHERE status = ?", (status,))
                return [ref for (ref,) in rows.fetchall()]
        except sqlite3.Error:
            return []

    def followed() -> int:
        return sum(1 for ref in runs("running") if ref)

    try:
        # The two short runs are done and their containers gone; the two long ones run.
        deadline = time.monotonic() + 120
        while (
            not log.exists()
            or len(_lines(log, "start")) < 4
            or len(runs("done")) < 2
            or len(containers_of(killed)) != 2
        ):
            assert time.monotonic() < deadline, "the runner never started its runs"
            time.sleep(0.05)
        deadline = time.monotonic() + 5  # (their JobRefs are recorded as they start)
        while followed() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert len(containers_of(killed, running=True)) == 2  # the long runs go on without it
    again = subprocess.run(
        [sys.executable, str(script), directory, resumed],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["reattached", "2", "done", "4"], again.stdout
    # Each run ran once: the two in flight were collected from their containers.
    starts = sorted(_lines(log, "start"))
    assert starts == [f"start {x}" for x in range(4)], starts
    from asyncexec.experiment import ResultsStore

    with ResultsStore(directory, create=False) as store:
        rows = store.rows()
    assert {row["params"]["x"]: (row["status"], row["value"]) for row in rows} == {
        x: ("done", x * x) for x in range(4)
    }, rows
    assert containers_of(killed) == [] and containers_of(resumed) == []


_SUBMITTER = """
import asyncio, sys
from asyncexec.launchers.docker import DockerExecutor
from asyncexec.testing import sleep_for

async def main():
    async with DockerExecutor({image!r}, 3, executor_id=sys.argv[1]) as ex:
        futures = [await ex.submit(sleep_for, 3), await ex.submit(sleep_for, 600)]
        for future in futures:
            while future.info.job_ref is None:  # set once its container runs it
                await asyncio.sleep(0.05)
            print(future.info.job_ref.native_id, future.info.job_ref.task_id,
                  future.info.job_ref.host, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def _refs_then_killed(script: Path, executor_id: str) -> list[list[str]]:
    """Run the submitter until it printed its two tasks' JobRefs, then SIGKILL it."""
    driver = subprocess.Popen(
        [sys.executable, str(script), executor_id], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout is not None
        return [driver.stdout.readline().split() for _ in range(2)]
    finally:
        driver.kill()
        driver.wait()
        if driver.stdout is not None:
            driver.stdout.close()


@pytest.mark.infra
async def test_attach_collects_cancels_or_reports_a_killed_drivers_oneshot_container(
    image: str, tmp_path: Path
) -> None:
    from asyncexec import JobRef

    script = tmp_path / "submitter.py"
    script.write_text(_SUBMITTER.format(image=image))
    killed = f"killed-submitter-{os.getpid()}"
    lines = await anyio.to_thread.run_sync(_refs_then_killed, script, killed)
    refs = [
        JobRef(kind="docker", native_id=name, task_id=task_id, host=host)
        for name, task_id, host in lines
    ]
    async with DockerExecutor(image, 1) as ex:
        assert all(ex.can_attach(ref) for ref in refs)
        short, long = [await ex.attach(ref) for ref in refs]
        assert await short == 3  # sleep_for's value, read from the container it ran in
        assert await long.cancel() is True  # kills the killed driver's container
        with pytest.raises(TaskCancelled):
            await long
        # A container that is gone: the task is lost, not waited for.
        with pytest.raises(WorkerLost, match="is gone"):
            await (await ex.attach(refs[0]))
        # Not this engine's, or not a one-shot container: not followed.
        assert not ex.can_attach(JobRef(kind="docker", native_id=refs[0].native_id, host="x"))
    async with DockerExecutor(image, 1, mode="warm") as warm:
        assert not warm.can_attach(refs[0])
    assert containers_of(killed) == [] and containers_of(ex.executor_id) == []
