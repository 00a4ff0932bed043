"""Every executor's ``setup`` / ``teardown`` hooks and ``log_stdout`` / ``log_stderr``,
against the real engines: threads, worker processes, SSH hosts, Docker (warm and one-shot),
Slurm and Azure Container Instances (the loopback ARM, real containers, Azurite).

The hooks write files in a directory the driver and the tasks share, named after the
place they ran in (host and pid: a container's pids are its own), and ``setup`` sets an
environment variable that ``teardown`` removes: a task seeing it saw its own process's
setup; a ``teardown-*`` file for every place the tasks ran says each ended gracefully.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import (
    Future,
    LaunchError,
    ProcessExecutor,
    SetupFailed,
    SlurmExecutor,
    SSHExecutor,
    TaskCancelled,
    TaskLaunchError,
    ThreadExecutor,
)
from asyncexec._runtime import TAIL_BYTES
from asyncexec.launchers.azure import AzureExecutor, AzureLauncher
from asyncexec.launchers.docker import EXECUTOR_LABEL, DockerExecutor

from .cluster import Cluster, squeue
from .fakeazure import FakeAzure
from .services import Azurite, check_docker_image
from .test_azure import Azure
from .test_docker import IMAGE
from .test_slurm import config as slurm_config

pytestmark = [pytest.mark.anyio]

ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])
#: Lines each chatty task prints: more than the tail an outcome keeps.
LINES = 3000
LINE = "x" * 60


# -- what runs where the tasks run (by value: the places cannot import the tests) ----------


def place() -> str:
    """This process, apart from every other: containers share pids, even host names."""
    token = getattr(sys, "_asyncexec_lifecycle_token", None)
    if token is None:  # (kept in sys: this module's globals are per pickle, by value)
        token = uuid.uuid4().hex[:8]
        sys._asyncexec_lifecycle_token = token  # type: ignore[attr-defined]
    return f"{os.uname().nodename}-{os.getpid()}-{token}"


def set_up(directory: str, key: str) -> None:
    os.environ[key] = place()
    Path(directory, f"setup-{place()}").write_text(key)


def tear_down(directory: str, key: str) -> None:
    seen = os.environ.pop(key, "")
    Path(directory, f"teardown-{place()}").write_text(seen)


def fail_setup(directory: str) -> None:
    Path(directory, f"failed-{place()}").write_text(str(os.getpid()))
    raise RuntimeError("setup exploded")


def fail_teardown() -> None:
    raise RuntimeError("teardown exploded")


def chatty(key: str, lines: int = 0) -> tuple[str, str | None]:
    """Where it ran and what setup left there; ``lines`` lines printed, and one on stderr."""
    for number in range(lines):
        print(f"out {number:06d} {LINE}")
    print("err: the end", file=sys.stderr)
    return place(), os.environ.get(key)


def touch_and_wait(path: str, seconds: float) -> str:
    Path(path).write_text(place())
    import time

    time.sleep(seconds)
    return place()


# Functions of this module travel by value: the containers and nodes cannot import it.
import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- checks -----------------------------------------------------------------------------


class Hooked:
    """The hooks of one executor, and what they left in ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.key = f"ASYNCEXEC_LIFECYCLE_{uuid.uuid4().hex[:8]}"
        self.setup = functools.partial(set_up, directory, self.key)
        self.teardown = functools.partial(tear_down, directory, self.key)

    def places(self, kind: str) -> set[str]:
        return {
            name.name.partition("-")[2]
            for name in Path(self.directory).iterdir()
            if name.name.startswith(f"{kind}-")
        }

    def check_tasks(self, results: list[tuple[str, str | None]]) -> set[str]:
        """Each task saw its own process's setup: the places they ran in."""
        for where, seen in results:
            assert where == seen, (where, seen)
        return {where for where, _ in results}

    def check_torn_down(self, ran: set[str]) -> None:
        """Every place set up was torn down, with what its setup left there."""
        assert ran <= self.places("setup")
        assert self.places("teardown") == self.places("setup"), self.places("teardown")
        for where in self.places("teardown"):
            assert Path(self.directory, f"teardown-{where}").read_text() == where


def check_logs(out: Path, err: Path, future: Future[Any], lines: int) -> None:
    """The log files hold all the task wrote; its info, the tail only."""
    written = out.read_text().splitlines()
    assert len(written) == lines and written[0].startswith("out 000000 "), written[:2]
    assert written[-1] == f"out {lines - 1:06d} {LINE}"
    assert err.read_text() == "err: the end\n"
    assert future.info.stdout.endswith(f"out {lines - 1:06d} {LINE}\n")
    assert len(future.info.stdout) <= TAIL_BYTES < out.stat().st_size


def check_setup_failed(error: BaseException, where: str = "", *, task: bool = True) -> None:
    """A task's SetupFailed (``task``: also its TaskLaunchError) naming the hook's error."""
    assert isinstance(error, SetupFailed) and isinstance(error, TaskLaunchError) == task, error
    assert "setup raised RuntimeError: setup exploded" in str(error), str(error)
    assert "fail_setup" in error.remote_traceback
    assert where in str(error)


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def shared() -> Iterator[str]:
    """A directory the driver and every place's tasks write to (the same path)."""
    with tempfile.TemporaryDirectory(prefix="asyncexec-lifecycle-") as path:
        os.chmod(path, 0o777)
        yield path


def test_hooks_are_checked_when_the_executor_is_made() -> None:
    with pytest.raises(TypeError, match="setup must be callable"):
        ProcessExecutor(1, setup="not a function")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="teardown must be callable"):
        ThreadExecutor(1, teardown=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="former name"):
        ProcessExecutor(1, setup=place, initializer=place)
    with pytest.raises(TypeError, match="teardown must be callable"):
        SlurmExecutor(teardown="rm -rf /tmp/x")  # type: ignore[arg-type]


# -- threads ---------------------------------------------------------------------------------


async def test_threads_set_up_once_and_tear_down_on_closing(shared: str, tmp_path: Path) -> None:
    hooks = Hooked(shared)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    async with ThreadExecutor(2, setup=hooks.setup, teardown=hooks.teardown) as ex:
        assert hooks.places("setup") == {place()} and not hooks.places("teardown")
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        results = [await logged, *[await ex.run(chatty, hooks.key) for _ in range(3)]]
        assert hooks.check_tasks(results) == {place()}
    check_logs(out, err, logged, LINES)
    hooks.check_torn_down({place()})
    assert hooks.key not in os.environ


async def test_threads_whose_setup_fails_do_not_open(shared: str) -> None:
    teardown = Hooked(shared).teardown
    with pytest.raises(SetupFailed, match="setup raised RuntimeError: setup exploded") as caught:
        async with ThreadExecutor(
            2, setup=functools.partial(fail_setup, shared), teardown=teardown
        ):
            pytest.fail("entered an executor whose setup failed")
    assert "fail_setup" in caught.value.remote_traceback
    assert sorted(os.listdir(shared)) == [f"failed-{place()}"]  # no teardown


# -- worker processes ------------------------------------------------------------------------


async def test_processes_tear_down_when_retiring_and_closing_not_when_killed(
    shared: str, tmp_path: Path, no_leftover_processes: None
) -> None:
    hooks = Hooked(shared)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    started = f"{shared}/started"
    async with ProcessExecutor(
        1, max_tasks_per_worker=2, setup=hooks.setup, teardown=hooks.teardown
    ) as ex:
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        results = [await logged, await ex.run(chatty, hooks.key)]  # its worker retires
        results.append(await ex.run(chatty, hooks.key))  # on a new worker
        ran = hooks.check_tasks(results)
        assert len(ran) == 2
        sleeper = await ex.submit(touch_and_wait, started, 60)
        with anyio.fail_after(30):
            while not os.path.exists(started):
                await anyio.sleep(0.02)
        killed = Path(started).read_text()
        await ex.cancel(sleeper)
        with pytest.raises(TaskCancelled):
            await sleeper  # its worker was killed: the one that ran the third task
        replacement, _ = await ex.run(chatty, hooks.key)
        assert replacement not in ran | {killed}
    check_logs(out, err, logged, LINES)
    set_up, torn_down = hooks.places("setup"), hooks.places("teardown")
    assert killed in set_up and killed not in torn_down  # killed: no teardown
    assert torn_down == set_up - {killed} and ran - {killed} <= torn_down
    # The first worker's, when it retired; the killed one's replacement's, on closing.
    assert torn_down == (ran - {killed}) | {replacement}


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "on-need"])
async def test_processes_whose_setup_fails_leave_nothing(
    shared: str, eager: bool, no_leftover_processes: None
) -> None:
    teardown = Hooked(shared).teardown
    executor = ProcessExecutor(
        2, eager=eager, setup=functools.partial(fail_setup, shared), teardown=teardown
    )
    if eager:
        with pytest.raises(SetupFailed) as caught:
            async with executor:
                pytest.fail("entered a pool whose workers cannot be set up")
        check_setup_failed(caught.value, sys.executable, task=False)
    else:
        async with executor as ex:
            future = await ex.submit(touch_and_wait, f"{shared}/ran", 0)
            with anyio.fail_after(60), pytest.raises(LaunchError) as raised:
                await future
        check_setup_failed(raised.value, sys.executable)
        assert not os.path.exists(f"{shared}/ran")
    failed = [name for name in os.listdir(shared) if name.startswith("failed-")]
    assert failed and not [name for name in os.listdir(shared) if name.startswith("teardown-")]
    for name in failed:
        assert not pid_alive(int(Path(shared, name).read_text()))


async def test_a_teardown_that_raises_is_printed_and_fails_nothing(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    async with ProcessExecutor(1, teardown=fail_teardown) as ex:
        assert (await ex.run(chatty, "KEY"))[1] is None
    async with ThreadExecutor(1, teardown=fail_teardown) as threads:
        assert (await threads.run(chatty, "KEY"))[1] is None
    printed = capfd.readouterr().err  # the worker's stderr: the driver's
    assert "teardown hook raised" in printed and "RuntimeError: teardown exploded" in printed
    assert "teardown hook raised" in caplog.text and "teardown exploded" in caplog.text


async def test_a_bad_log_path_fails_the_task_on_every_pool(tmp_path: Path) -> None:
    bad = str(tmp_path / "no-such-dir" / "out.log")
    async with ProcessExecutor(1) as ex:
        with pytest.raises(FileNotFoundError):
            await ex.with_options(log_stdout=bad).run(chatty, "KEY")
        assert (await ex.run(chatty, "KEY"))[1] is None


def quiet() -> str:
    return "nothing printed"


def only_stderr() -> str:
    print("a warning", file=sys.stderr)
    return "one stream"


async def check_logs_at_end(ex: Any, tmp_path: Path, remote: bool = False) -> None:
    """``logs_at_end``: a file only for a stream the task wrote to, all of it there; a task
    that prints nothing leaves no file; a log directory that is not there fails the task
    (and the next one captures as ever, with nothing of the last one's)."""
    logs = tmp_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def logged(stem: str) -> Any:
        return ex.with_options(
            log_stdout=str(logs / f"{stem}.out"),
            log_stderr=str(logs / f"{stem}.err"),
            logs_at_end=True,
        )

    chatter = await logged("chatty").submit(chatty, "KEY", LINES)
    assert (await logged("quiet").run(quiet)) == "nothing printed"
    assert (await logged("stderr").run(only_stderr)) == "one stream"
    await chatter
    check_logs(logs / "chatty.out", logs / "chatty.err", chatter, LINES)
    assert sorted(path.name for path in logs.iterdir()) == [
        "chatty.err",
        "chatty.out",
        "stderr.err",
    ]
    assert (logs / "stderr.err").read_text() == "a warning\n"
    bad = ex.with_options(log_stdout=str(tmp_path / "no-such-dir" / "out.log"), logs_at_end=True)
    with pytest.raises(FileNotFoundError):
        await bad.run(chatty, "KEY")
    after = await ex.with_options(capture_output=True).submit(only_stderr)
    await after
    assert after.info.stdout == "" and after.info.stderr == "a warning\n"


async def test_logs_at_end_on_threads(tmp_path: Path) -> None:
    async with ThreadExecutor(2) as ex:
        await check_logs_at_end(ex, tmp_path)


async def test_logs_at_end_on_processes(tmp_path: Path, no_leftover_processes: None) -> None:
    async with ProcessExecutor(1) as ex:
        await check_logs_at_end(ex, tmp_path)


def say(text: str) -> str:
    print(text)
    return text


async def test_a_worker_prints_where_it_did_between_tasks_that_log_at_the_end(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], no_leftover_processes: None
) -> None:
    """A worker leaves its stdout and stderr on its capture files from one ``logs_at_end``
    task to the next: a task that captures nothing still prints where the worker
    prints, a task that captures gets only its own output, and so does the next
    ``logs_at_end`` task; the teardown hook, run after one, prints to the driver's
    stderr."""
    async with ProcessExecutor(1, teardown=fail_teardown) as ex:

        def logged(stem: str) -> Any:
            return ex.with_options(log_stdout=str(tmp_path / f"{stem}.out"), logs_at_end=True)

        assert await logged("one").run(say, "first") == "first"
        assert await logged("two").run(say, "second") == "second"
        assert await ex.run(say, "uncaptured") == "uncaptured"
        captured = await ex.with_options(capture_output=True).submit(say, "its own")
        await captured
        assert await logged("three").run(say, "third") == "third"
    assert [(tmp_path / f"{stem}.out").read_text() for stem in ("one", "two", "three")] == [
        "first\n",
        "second\n",
        "third\n",
    ]
    assert captured.info.stdout == "its own\n"
    printed = capfd.readouterr()
    assert "uncaptured" in printed.out
    assert not any(text in printed.out for text in ("first", "second", "third", "its own"))
    assert "teardown hook raised" in printed.err


# -- SSH hosts ------------------------------------------------------------------------------


@pytest.mark.ssh
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_ssh_workers_set_up_tear_down_and_send_their_logs_home(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    hooks = Hooked(scratch)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    async with SSHExecutor(
        [cluster.shell()],
        slots=2,
        python=cluster.python,
        setup=hooks.setup,
        teardown=hooks.teardown,
    ) as ex:
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        others = [await ex.submit(chatty, hooks.key) for _ in range(3)]
        ran = hooks.check_tasks([await logged, *[await future for future in others]])
        with pytest.raises(FileNotFoundError):  # a log file here that cannot be opened
            await ex.with_options(log_stdout=str(tmp_path / "nodir" / "x")).run(chatty, "K")
        await check_logs_at_end(ex, tmp_path / "at-end")
    check_logs(out, err, logged, LINES)
    hooks.check_torn_down(ran)


@pytest.mark.ssh
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_ssh_workers_whose_setup_fails_leave_nothing(cluster: Cluster, scratch: str) -> None:
    teardown = Hooked(scratch).teardown
    async with SSHExecutor(
        [cluster.shell()],
        python=cluster.python,
        setup=functools.partial(fail_setup, scratch),
        teardown=teardown,
    ) as ex:
        future = await ex.submit(touch_and_wait, f"{scratch}/ran", 0)
        with anyio.fail_after(60), pytest.raises(LaunchError) as caught:
            await future
    check_setup_failed(caught.value, cluster.python)
    assert not os.path.exists(f"{scratch}/ran")
    failed = [name for name in os.listdir(scratch) if name.startswith("failed-")]
    assert len(failed) == 1 and not pid_alive(int(Path(scratch, failed[0]).read_text()))
    assert not [name for name in os.listdir(scratch) if name.startswith("teardown-")]


# -- Docker ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def image() -> str:
    """The test image, made by scripts/docker-up.sh before pytest: checked only."""
    return check_docker_image(IMAGE, built_here="ASYNCEXEC_TEST_IMAGE" not in os.environ)


def containers_of(executor_id: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={EXECUTOR_LABEL}={executor_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


@pytest.mark.docker
@pytest.mark.infra
@ASYNCIO_ONLY
@pytest.mark.parametrize("mode", ["warm", "oneshot"])
async def test_containers_set_up_tear_down_and_send_their_logs_home(
    image: str, shared: str, tmp_path: Path, mode: Any
) -> None:
    hooks = Hooked(shared)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    async with DockerExecutor(
        image,
        n_workers=2,
        mode=mode,
        volumes={shared: shared},
        setup=hooks.setup,
        teardown=hooks.teardown,
    ) as ex:
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        others = [await ex.submit(chatty, hooks.key) for _ in range(2)]
        ran = hooks.check_tasks([await logged, *[await future for future in others]])
        # A container per task, one-shot; warm, the executor's two.
        assert len(ran) == 3 if mode == "oneshot" else len(ran) <= 2
    check_logs(out, err, logged, LINES)
    hooks.check_torn_down(ran)
    assert containers_of(ex.executor_id) == []


@pytest.mark.docker
@pytest.mark.infra
@ASYNCIO_ONLY
@pytest.mark.parametrize("mode", ["warm", "oneshot"])
async def test_containers_whose_setup_fails_leave_nothing(
    image: str, shared: str, mode: Any
) -> None:
    teardown = Hooked(shared).teardown
    executor = DockerExecutor(
        image,
        n_workers=1,
        mode=mode,
        volumes={shared: shared},
        setup=functools.partial(fail_setup, shared),
        teardown=teardown,
    )
    if mode == "warm":
        with pytest.raises(SetupFailed) as caught:
            async with executor:
                pytest.fail("entered a pool whose containers cannot be set up")
        check_setup_failed(caught.value, image, task=False)
    else:
        async with executor as ex:
            future = await ex.submit(touch_and_wait, f"{shared}/ran", 0)
            with anyio.fail_after(60), pytest.raises(LaunchError) as raised:
                await future
        check_setup_failed(raised.value, image)
    assert not os.path.exists(f"{shared}/ran")
    assert [name for name in os.listdir(shared) if name.startswith("failed-")]
    assert not [name for name in os.listdir(shared) if name.startswith("teardown-")]
    assert containers_of(executor.executor_id) == []


# -- Slurm -------------------------------------------------------------------------------


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_array_tasks_set_up_before_their_chunk_and_tear_down_after_it(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    hooks = Hooked(scratch)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    async with SlurmExecutor(
        cluster.shell(),
        slurm_config(cluster, chunk_size=2),
        setup=hooks.setup,
        teardown=hooks.teardown,
    ) as ex:
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        others = [await ex.submit(chatty, hooks.key) for _ in range(3)]
        ran = hooks.check_tasks([await logged, *[await future for future in others]])
        # Once a chunk's last outcome is in, its teardown has run: no waiting here.
        assert len(ran) == 2 and ran == hooks.places("teardown")
    check_logs(out, err, logged, LINES)
    hooks.check_torn_down(ran)


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_an_array_task_whose_setup_fails_runs_none_of_its_chunk(
    cluster: Cluster, scratch: str
) -> None:
    teardown = Hooked(scratch).teardown
    staging = f"{cluster.home}/.asyncexec/lifecycle-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        async with SlurmExecutor(
            cluster.shell(),
            slurm_config(cluster, chunk_size=2),
            staging_dir=staging,
            setup=functools.partial(fail_setup, scratch),
            teardown=teardown,
        ) as ex:
            futures = [await ex.submit(touch_and_wait, f"{scratch}/ran-{i}", 0) for i in range(2)]
            for future in futures:
                with anyio.fail_after(120), pytest.raises(LaunchError) as caught:
                    await future
                check_setup_failed(caught.value, cluster.node)
            arrays = {ref.native_id.split("_")[0] for f in futures if (ref := f.info.job_ref)}
            assert len(arrays) == 1
        assert not [name for name in os.listdir(scratch) if name.startswith("ran-")]
        assert len([n for n in os.listdir(scratch) if n.startswith("failed-")]) == 1  # once
        assert not [name for name in os.listdir(scratch) if name.startswith("teardown-")]
        assert [line for line in squeue(cluster.user) if line.split("_")[0] in arrays] == []
        assert os.listdir(staging) == []
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- Azure Container Instances -----------------------------------------------------------


@pytest.fixture
def aci(azurite: Azurite, image: str, shared: str) -> Iterator[Azure]:
    """The loopback ARM (its groups: containers of the test image) and Azurite, with
    ``shared`` as the "scratch" file share, mounted at its own path in the groups."""
    with FakeAzure(shares={"scratch": shared}) as fake:
        yield Azure(fake, azurite, image, shared)


def azure_launcher(aci: Azure, **hooks: Any) -> AzureLauncher:
    return AzureLauncher(
        aci.config(chunk_size=2), aci.credential(), storage_key=aci.storage.key, **hooks
    )


@pytest.mark.azure
@pytest.mark.docker
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_container_groups_set_up_tear_down_and_send_their_logs_home(
    aci: Azure, tmp_path: Path
) -> None:
    hooks = Hooked(aci.share)
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    launcher = azure_launcher(aci, setup=hooks.setup, teardown=hooks.teardown)
    async with AzureExecutor(launcher) as ex:
        logged = await ex.with_options(log_stdout=out, log_stderr=err).submit(
            chatty, hooks.key, LINES
        )
        others = [await ex.submit(chatty, hooks.key) for _ in range(3)]
        ran = hooks.check_tasks([await logged, *[await future for future in others]])
        # Once a group's last outcome is in, its teardown has run: no waiting here.
        assert len(ran) == 2 and ran == hooks.places("teardown")
    check_logs(out, err, logged, LINES)
    hooks.check_torn_down(ran)
    aci.assert_clean()


@pytest.mark.azure
@pytest.mark.docker
@pytest.mark.infra
@ASYNCIO_ONLY
async def test_a_container_group_whose_setup_fails_runs_none_of_its_chunk(aci: Azure) -> None:
    shared = aci.share
    setup = functools.partial(fail_setup, shared)
    launcher = azure_launcher(aci, setup=setup, teardown=Hooked(shared).teardown)
    async with AzureExecutor(launcher) as ex:
        futures = [await ex.submit(touch_and_wait, f"{shared}/ran-{i}", 0) for i in range(2)]
        for future in futures:
            with anyio.fail_after(120), pytest.raises(LaunchError) as caught:
                await future
            check_setup_failed(caught.value)
    names = os.listdir(shared)
    assert len([name for name in names if name.startswith("failed-")]) == 1  # once a group
    assert not [name for name in names if name.startswith(("ran-", "teardown-"))]
    aci.assert_clean()
