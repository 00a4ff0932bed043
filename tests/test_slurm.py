"""SlurmExecutor on a real single-node Slurm cluster, over SSH and on the login node."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import operator
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import (
    Future,
    FutureState,
    LaunchError,
    LocalShell,
    RemoteError,
    Resources,
    SlurmConfig,
    SlurmExecutor,
    SSHShell,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
    WorkerLost,
)
from asyncexec._runtime import run_chunk
from asyncexec.abc import Shell
from asyncexec.launchers.slurm import SlurmLauncher, judge_accounting, never_runs, parse_time
from asyncexec.launchers.slurm.adapter import SlurmAdapter
from asyncexec.testing import (
    add,
    assert_heartbeat_stopped,
    check_launcher,
    conformance_cases,
    heartbeat,
    print_both,
    sleep_for,
    touch,
)

from .cluster import Cluster, bring_up, squeue, stop_sshd
from .test_oneshot import command, outcomes, spec, stage, value, write_batch

pytestmark = [pytest.mark.anyio, pytest.mark.slurm, pytest.mark.ssh]


@pytest.fixture
def anyio_backend() -> str:
    """asyncssh runs on asyncio only."""
    return "asyncio"


def config(cluster: Cluster, **changes: object) -> SlurmConfig:
    """Quick polls (the cluster is ours): a test waits less for what it checks."""
    settings: dict[str, object] = {
        "python": cluster.python,
        "poll_interval": 0.2,
        "max_poll_interval": 2.0,
    }
    settings.update(changes)
    return SlurmConfig(**settings)  # type: ignore[arg-type]


def arrays_of(futures: list[Future[Any]]) -> set[str]:
    """The Slurm array job ids these futures' tasks were submitted in."""
    refs = [future.info.job_ref for future in futures]
    return {ref.native_id.split("_")[0] for ref in refs if ref is not None}


async def until_exists(path: str, timeout: float = 120.0) -> None:
    with anyio.fail_after(timeout):
        while not os.path.exists(path):
            await anyio.sleep(0.05)


async def until_gone_from_queue(cluster: Cluster, job: str, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while any(line.split()[0] == job for line in squeue(cluster.user)):
            await anyio.sleep(0.2)


# -- configuration --------------------------------------------------------------------


def test_times_are_parsed_as_slurm_does() -> None:
    assert parse_time("30") == 1800
    assert parse_time("1:30") == 90
    assert parse_time("1:00:00") == 3600
    assert parse_time("2-03") == (2 * 24 + 3) * 3600
    assert parse_time("1-00:30") == 86400 + 1800
    assert parse_time("1-0:0:5") == 86405
    assert parse_time("UNLIMITED") is None
    for bad in ("", "1h", "1:60:00", "-5", "1::2", "1:2:3:4"):
        with pytest.raises(ValueError, match="Slurm time"):
            parse_time(bad)


def test_sacct_states_are_judged_and_a_failed_task_waits_for_its_exit_code() -> None:
    assert judge_accounting("FAILED", "127:0", 0.0) == ("lost", 127)
    assert judge_accounting("OUT_OF_MEMORY", "0:125", 0.0) == ("lost", 0)
    assert judge_accounting("TIMEOUT", "0:15", 0.0) == ("timeout", 0)
    assert judge_accounting("CANCELLED", "0:15", 0.0) == ("cancelled", 0)
    # slurmdbd can show FAILED before the exit code of a task that failed at once
    # (seen in CI: "FAILED|0:0", then "FAILED|127:0"): wait a little for it.
    assert judge_accounting("FAILED", "0:0", 1.0) is None
    assert judge_accounting("FAILED", "0:0", 6.0) == ("lost", 0)
    assert judge_accounting("FAILED", "0:9", 0.0) == ("lost", 0)
    # COMPLETED without an outcome file: the file system may lag; then it is lost.
    assert judge_accounting("COMPLETED", "0:0", 2.0) is None
    assert judge_accounting("COMPLETED", "0:0", 11.0) == ("lost", 0)
    assert judge_accounting("", "", 100.0) is None  # not in sacct yet
    assert judge_accounting("RUNNING", "0:0", 100.0) is None  # requeued


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"time": "an hour"}, "Slurm time"),
        ({"cpus": 0}, "cpus"),
        ({"max_concurrent": -1}, "max_concurrent"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"memory": "4 GB"}, "memory"),
        ({"memory": -5}, "memory"),
        ({"venv": "/v", "conda_env": "c"}, "not both"),
        ({"setup": ["echo a\necho b"]}, "one line"),
        ({"setup": "echo a"}, "sequence of strings"),
        ({"extra_sbatch": ["--qos low"]}, "single options"),
        ({"partition": "a b"}, "one word"),
        ({"poll_interval": 5, "max_poll_interval": 1}, "poll_interval"),
        ({"scheduler_calls_per_minute": 0}, "scheduler_calls_per_minute"),
    ],
)
def test_bad_config_is_refused_at_construction(changes: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SlurmConfig(**changes)  # type: ignore[arg-type]


def test_sbatch_options() -> None:
    options = SlurmConfig(
        partition="debug", time="10", cpus=2, memory="4G", gpus=1, extra_sbatch=["--exclusive"]
    ).sbatch_options(time_seconds=1000)
    assert "--time=17" in options  # 1000 s: 17 minutes, more than the 10 configured
    assert {"--partition=debug", "--cpus-per-task=2", "--mem=4G", "--gres=gpu:1"} <= set(options)
    assert options[-1] == "--exclusive" and "--no-requeue" in options


def test_a_tasks_resources_replace_the_configs_cpus_and_gpus() -> None:
    cfg = SlurmConfig(cpus=4, gpus=1)
    options = cfg.sbatch_options(time_seconds=None, cpus=1.5, gpus=2)
    assert "--cpus-per-task=2" in options and "--gres=gpu:2" in options  # rounded up
    assert "--cpus-per-task=4" not in options and "--gres=gpu:1" not in options
    assert {"--cpus-per-task=4", "--gres=gpu:1"} <= set(cfg.sbatch_options(time_seconds=None))
    assert not any(o.startswith("--gres") for o in SlurmConfig().sbatch_options(time_seconds=None))


# -- the conformance suite -------------------------------------------------------------

CASES = [case for case in conformance_cases(SlurmLauncher) if case != "many_concurrent"]


@pytest.mark.parametrize("case", CASES)
async def test_conformance_over_ssh(cluster: Cluster, scratch: str, case: str) -> None:
    def make() -> SlurmLauncher:
        return SlurmLauncher(cluster.shell(), config(cluster))

    await check_launcher(make, only=[case], tmp_root=scratch, workdir_mode=0o777, n_workers=4)


@pytest.mark.infra
async def test_conformance_in_chunks(cluster: Cluster, scratch: str) -> None:
    """Tasks in chunks of 3 per array task: the cases that apply to such a launcher
    (read from the instance: a crash takes its chunk's other tasks with it)."""

    def make() -> SlurmLauncher:
        return SlurmLauncher(cluster.shell(), config(cluster, chunk_size=3))

    cases = conformance_cases(make())
    assert "crash" not in cases
    only = [case for case in cases if case != "many_concurrent"]
    await check_launcher(make, only=only, tmp_root=scratch, workdir_mode=0o777, n_workers=4)


@pytest.mark.infra
def test_conformance_on_the_login_node_as_the_cluster_user(cluster: Cluster, scratch: str) -> None:
    """LocalShell, as a user on the login node would: the suite runs as the cluster user."""
    script = Path(scratch) / "conformance.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import anyio
            from asyncexec import LocalShell, SlurmConfig
            from asyncexec.launchers.slurm import SlurmLauncher
            from asyncexec.testing import check_launcher

            def make():
                return SlurmLauncher(LocalShell(), SlurmConfig(poll_interval=0.2,
                                     max_poll_interval=2.0, python={cluster.python!r}))

            async def main():
                await check_launcher(make, only={CASES!r}, tmp_root={scratch!r}, n_workers=4)
                print("conformance passed")

            anyio.run(main)
            """
        )
    )
    os.chmod(script, 0o644)
    done = subprocess.run(
        ["runuser", "-u", cluster.user, "--", cluster.python, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/tmp",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "conformance passed" in done.stdout


# -- batching and polling -------------------------------------------------------------


@pytest.mark.infra
async def test_1000_tasks_take_two_sbatch_calls_and_polls_bounded_by_time(
    cluster: Cluster,
) -> None:
    cfg = config(cluster, chunk_size=10, max_poll_interval=1.0)
    started = time.monotonic()
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        futures = [await ex.submit(add, i, 1) for i in range(1000)]
        assert await ex.wait(futures) == [i + 1 for i in range(1000)]
        calls = dict(ex.slurm.calls)
    elapsed = time.monotonic() - started
    assert calls["sbatch"] <= 2, calls
    # One squeue per interval at most (the interval never drops below poll_interval).
    assert calls["squeue"] <= elapsed / cfg.poll_interval + 2, (calls, elapsed)
    assert calls.get("sacct", 0) == 0, calls  # every task left an outcome
    refs = {future.info.job_ref.native_id for future in futures if future.info.job_ref}
    assert len(refs) == 100  # chunks of ten


@pytest.mark.infra
async def test_arrays_are_split_at_max_array_size(cluster: Cluster) -> None:
    cfg = config(cluster, max_array_size=3)
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        futures = [await ex.submit(add, i, i) for i in range(10)]
        assert await ex.wait(futures) == [2 * i for i in range(10)]
        assert ex.slurm.calls["sbatch"] == 4
    native = [future.info.job_ref.native_id for future in futures if future.info.job_ref]
    indices = sorted(int(ref.split("_")[1]) for ref in native)
    assert max(indices) == 2 and len({ref.split("_")[0] for ref in native}) == 4


async def test_cluster_max_array_size_is_read(cluster: Cluster) -> None:
    async with SlurmLauncher(cluster.shell(), config(cluster)) as launcher:
        assert launcher.max_array_size == 100001  # from scontrol show config


@pytest.mark.infra
async def test_throttle_and_private_staging(cluster: Cluster, scratch: str) -> None:
    cfg = config(cluster, max_concurrent=2)
    async with SlurmExecutor(cluster.shell(), cfg, keep_staging=True) as ex:
        futures = [await ex.submit(sleep_for, 1.0) for _ in range(6)]
        running: list[str] = []
        with anyio.fail_after(120):  # looked at while some run, not before
            while not running:
                ours = arrays_of(futures)
                running = [
                    line
                    for line in squeue(cluster.user)
                    if line.endswith("RUNNING") and line.split("_")[0] in ours
                ]
                await anyio.sleep(0.1)
        assert len(running) <= 2, running
        await ex.wait(futures)
        ref = futures[0].info.job_ref
    assert ref is not None and ref.workdir is not None
    workdir = Path(ref.workdir)
    try:
        assert (workdir / "job.sh").read_text().count("--array=0-5%2") == 1
        for path in [workdir, *workdir.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() or path.name == "job.sh" else 0o600), (
                path,
                oct(mode),
            )
    finally:
        shutil.rmtree(workdir)  # kept for the test only


@pytest.mark.infra
async def test_max_concurrent_bounds_the_executor_across_its_arrays(cluster: Cluster) -> None:
    """Three batches of two, three arrays: never more than max_concurrent (3) of their
    array tasks run at once. The second array gets what is left (%1), raised as the first
    ends (scontrol update); the third waits in the driver until there is room."""
    name = f"ae-bound-{os.getpid()}-{time.monotonic_ns()}"
    cfg = config(cluster, job_name=name, max_concurrent=3)
    most: list[str] = []

    async def watch() -> None:
        while True:
            listed = await anyio.run_process(["squeue", "-h", "-r", "-n", name, "-o", "%i %T"])
            lines = listed.stdout.decode().splitlines()
            running = [line for line in lines if line.endswith("RUNNING")]
            if len(running) > len(most):
                most[:] = running
            await anyio.sleep(0.1)

    async with SlurmExecutor(cluster.shell(), cfg) as ex, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        futures = []
        seconds = [2.0, 6.0, 6.0]  # the first array ends well before the second's first task
        for duration in seconds:  # past batch_window: an array each
            futures += [await ex.submit(sleep_for, duration) for _ in range(2)]
            await anyio.sleep(0.5)
        assert await ex.wait(futures) == [d for d in seconds for _ in range(2)]
        tg.cancel_scope.cancel()
        updates = ex.slurm.calls["scontrol"] - 1  # the first read the configuration
    assert 2 <= len(most) <= 3, most  # before: each array its own %3, 6 at once
    assert len(arrays_of(futures)) == 3
    assert updates >= 1


async def test_finished_staging_directories_are_removed(cluster: Cluster) -> None:
    """As soon as every outcome of an array is read, not only when the executor closes."""
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        future = await ex.submit(add, 1, 2)
        assert await future == 3
        assert future.info.job_ref is not None and future.info.job_ref.workdir is not None
        workdir = future.info.job_ref.workdir
        with anyio.fail_after(30):
            while os.path.exists(workdir):
                await anyio.sleep(0.1)
        assert ex.slurm.calls["rm"] == 1


# -- outcomes -------------------------------------------------------------------------


def test_a_place_is_one_cluster_reached_one_way() -> None:
    """Launchers share a poller when they reach the same Slurm cluster the same way: the
    same host, port and user over SSH (or this machine), and the same cluster."""

    def place(shell: Shell, cluster: str = "localcluster@vm") -> object:
        adapter = SlurmLauncher(shell).adapter
        assert isinstance(adapter, SlurmAdapter)
        return adapter.place_of(cluster)

    def ssh(host: str = "h", port: int = 22, user: str = "u") -> SSHShell:
        return SSHShell(host, port=port, username=user, verify_host_key=False)

    assert place(ssh()) == place(ssh())
    assert place(ssh()) != place(ssh(user="v"))
    assert place(ssh()) != place(ssh(port=2222))
    assert place(ssh()) != place(ssh(host="g"))
    assert place(ssh()) != place(ssh(), "other@vm")
    assert place(LocalShell()) == place(LocalShell())
    assert place(LocalShell()) != place(LocalShell(), "other@vm")
    assert place(LocalShell()) != place(ssh())


SCHEDULER = ("squeue", "sacct")


def scheduler_calls(*executors: SlurmExecutor) -> int:
    """The squeue and sacct commands these executors' launchers ran."""
    return sum(ex.slurm.calls[name] for ex in executors for name in SCHEDULER)


async def test_executors_on_one_cluster_share_one_poller_that_outlives_each(
    cluster: Cluster,
) -> None:
    """One squeue per round for both executors' arrays, run by one of them; once that
    one closes, the other's polling goes on (its task still finishes)."""
    async with (
        SlurmExecutor(cluster.shell(), config(cluster)) as first,
        SlurmExecutor(cluster.shell(), config(cluster)) as second,
    ):
        poller = first.slurm.poller
        assert poller is not None and poller is second.slurm.poller
        assert poller.stats().launchers == 2
        both = [await first.submit(add, 1, 2), await second.submit(add, 3, 4)]
        assert [await future for future in both] == [3, 7]
        assert len(arrays_of(both)) == 2  # two arrays, asked about together
        squeues = (first.slurm.calls["squeue"], second.slurm.calls["squeue"])
        stats = poller.stats()
        assert sum(squeues) == stats.rounds > 0 and min(squeues) == 0, (squeues, stats)
        assert stats.scheduler_calls == scheduler_calls(first, second)
        leader, other = (first, second) if squeues[0] else (second, first)

        later = await other.submit(sleep_for, 3.0)
        with anyio.fail_after(60):
            while later.state is FutureState.PENDING:
                await anyio.sleep(0.05)
        await leader.aclose()
        assert poller.stats().launchers == 1 and leader.slurm.poller is None
        rounds, polled = poller.stats().rounds, other.slurm.calls["squeue"]
        assert await later == 3.0
        assert poller.stats().rounds > rounds and other.slurm.calls["squeue"] > polled
    assert other.slurm.poller is None


@pytest.mark.infra
async def test_the_budget_bounds_the_clusters_scheduler_calls_per_minute(
    cluster: Cluster,
) -> None:
    """Polls every 0.1 s would make ~10 calls a second; a budget of 12 a minute (the
    smaller one, asked by one of the two executors) holds them to 12 over the first
    minute, and the tasks (ended long before) are collected once the window lets the
    next round in."""
    fast = {"poll_interval": 0.1, "max_poll_interval": 0.1}
    budgeted = config(cluster, scheduler_calls_per_minute=12, **fast)
    async with (
        SlurmExecutor(cluster.shell(), budgeted) as first,
        SlurmExecutor(cluster.shell(), config(cluster, **fast)) as second,
    ):
        poller = first.slurm.poller
        assert poller is not None and poller is second.slurm.poller
        assert poller.stats().budget == 12
        started = time.monotonic()
        futures = [await first.submit(sleep_for, 15.0), await second.submit(sleep_for, 15.0)]
        with anyio.fail_after(15):
            while poller.stats().calls_last_minute < 12:  # spent: in a second or two
                await anyio.sleep(0.05)
        # The tasks end at about 16 s; nobody may ask the scheduler again before 60 s.
        await anyio.sleep(max(0.0, started + 25 - time.monotonic()))
        stats = poller.stats()
        assert stats.scheduler_calls == 12 == scheduler_calls(first, second), stats
        assert not any(future.ready() for future in futures)
        assert [await future for future in futures] == [15.0, 15.0]
        elapsed = time.monotonic() - started
        assert 50 < elapsed < 120, elapsed
        stats = poller.stats()
        assert stats.calls_last_minute <= 12 and stats.scheduler_calls == scheduler_calls(
            first, second
        )


async def test_per_task_output_and_info(cluster: Cluster) -> None:
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        future = await ex.submit(print_both, "hello")
        assert await future == 5
    assert "out:hello" in future.info.stdout and "err:hello" in future.info.stderr
    assert future.info.job_ref is not None and future.info.job_ref.kind == "slurm"
    assert future.info.host == cluster.node


@pytest.mark.infra
async def test_time_limit_is_the_workers_and_rounds_up_to_minutes(
    cluster: Cluster, scratch: str
) -> None:
    beat = f"{scratch}/beat"
    async with SlurmExecutor(cluster.shell(), config(cluster), keep_staging=True) as ex:
        future = await ex.with_options(time_limit=2).submit(heartbeat, beat)
        with pytest.raises(TaskTimeout):
            await future
        await assert_heartbeat_stopped(beat)
    ref = future.info.job_ref
    assert ref is not None and ref.workdir is not None
    try:
        assert "#SBATCH --time=1\n" in Path(ref.workdir, "job.sh").read_text()
    finally:
        shutil.rmtree(ref.workdir)  # kept for the test only


@pytest.mark.infra
async def test_a_worker_that_cannot_start_is_lost_with_its_log(cluster: Cluster) -> None:
    cfg = config(cluster, python="/nonexistent/python3")
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        with pytest.raises(WorkerLost, match=r"FAILED.*nonexistent") as caught:
            await (await ex.submit(add, 1, 1))
    assert caught.value.state == "FAILED" and caught.value.exit_code == 127


async def test_sbatch_refusal_is_a_launch_error(cluster: Cluster) -> None:
    cfg = config(cluster, partition="nosuchpartition")
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        with pytest.raises(LaunchError, match=r"sbatch refused.*partition"):
            await (await ex.submit(add, 1, 1))


def sacct_jobs_named(name: str) -> set[str]:
    """The ids of the jobs (arrays) of every user that sacct knows by this job name."""
    listed = subprocess.run(
        ["sacct", "-a", "-X", "-n", "-P", "--name", name, "-S", "now-1hour", "-o", "JobID"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split("_")[0] for line in listed.stdout.split()}


def queued_named(name: str) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-n", name], capture_output=True, text=True)
    return listed.stdout.splitlines()


@pytest.mark.infra
async def test_each_tasks_cpus_and_gpus_reach_sbatch_in_arrays_of_their_own(
    cluster: Cluster,
) -> None:
    def cpus_per_task() -> str | None:  # (by value: the nodes cannot import the tests)
        return os.environ.get("SLURM_CPUS_PER_TASK")

    name = f"asyncexec-res-{os.getpid()}-{time.monotonic_ns()}"
    async with SlurmExecutor(cluster.shell(), config(cluster, job_name=name)) as ex:
        two = ex.with_options(resources=Resources(cpus=1.5))
        plain = [await ex.submit(cpus_per_task), await ex.submit(cpus_per_task)]
        pinned = await two.submit(cpus_per_task)
        whole = await ex.with_options(resources=Resources(cpus=2)).submit(cpus_per_task)
        wants_gpu = await ex.with_options(resources=Resources(gpus=1)).submit(add, 1, 2)
        with pytest.raises(LaunchError, match="sbatch refused 1 task") as caught:
            await wants_gpu
        assert await ex.wait(plain) == ["1", "1"]  # SlurmConfig.cpus
        assert await pinned == "2"  # 1.5, rounded up
        assert await whole == "2"
        assert len(arrays_of(plain)) == 1 and arrays_of(plain) != arrays_of([pinned])
        assert arrays_of([pinned, whole]) == arrays_of([pinned])  # the same whole CPUs
        assert wants_gpu.info.job_ref is None
    assert "gres" in str(caught.value).lower(), caught.value  # sbatch's own words
    # The refused task left no job: sacct knows the other two arrays of that name only.
    expected = arrays_of(plain) | arrays_of([pinned])
    with anyio.fail_after(60):
        while (known := sacct_jobs_named(name)) != expected:
            assert known <= expected, known
            await anyio.sleep(0.5)
    assert queued_named(name) == []


# -- cancellation ---------------------------------------------------------------------


@pytest.mark.infra
async def test_cancel_running_scancels_exactly_that_array_task(
    cluster: Cluster, scratch: str
) -> None:
    beat = f"{scratch}/beat"
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        other = await ex.submit(sleep_for, 3.0)
        target = await ex.submit(heartbeat, beat)
        await until_exists(beat)
        assert await target.cancel() is True
        assert target.state is FutureState.CANCELLED
        await assert_heartbeat_stopped(beat)
        assert target.info.job_ref is not None
        await until_gone_from_queue(cluster, target.info.job_ref.native_id, timeout=5)
        assert await other == 3.0  # its sibling in the array lives on
        assert ex.slurm.calls["scancel"] == 1


@pytest.mark.infra
async def test_cancel_inside_a_chunk_spares_its_siblings(cluster: Cluster, scratch: str) -> None:
    beat = f"{scratch}/beat"
    cfg = config(cluster, chunk_size=3)
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        first = await ex.submit(heartbeat, beat, 0.05)
        second = await ex.submit(add, 1, 1)
        third = await ex.submit(add, 2, 2)
        await until_exists(beat)
        await ex.cancel(first)
        with pytest.raises(TaskCancelled):
            await first
        await assert_heartbeat_stopped(beat)
        assert await second == 2 and await third == 4
        assert ex.slurm.calls.get("scancel", 0) == 0


async def test_every_attempts_job_ref_is_kept(cluster: Cluster, scratch: str) -> None:
    """A retry runs in a new array task: info.job_ref is the current attempt's, and
    info.job_refs holds every attempt's, in order."""

    def crash_once(marker: str) -> int:
        if not os.path.exists(marker):
            Path(marker).touch()
            os._exit(3)  # no outcome: WorkerLost, retried
        return 7

    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        future = await ex.with_options(retries=1).submit(crash_once, f"{scratch}/crashed")
        assert await future == 7
    info = future.info
    assert info.attempts == 2
    assert len(info.job_refs) == 2, info.job_refs
    first, last = info.job_refs
    assert first.native_id != last.native_id
    assert info.job_ref == last  # the attempt that succeeded


@pytest.mark.infra
async def test_an_experiment_stores_the_job_ref_of_a_retried_tasks_live_attempt(
    cluster: Cluster, scratch: str, tmp_path: Path
) -> None:
    """What a resuming runner re-attaches to is the attempt that runs, not the first."""
    import json
    import sqlite3

    from asyncexec import TaskOptions
    from asyncexec.experiment import Experiment

    def crash_then_wait(scratch: str) -> int:
        if not os.path.exists(f"{scratch}/crashed"):
            Path(f"{scratch}/crashed").touch()
            os._exit(3)
        Path(f"{scratch}/second").touch()
        deadline = time.time() + 120
        while not os.path.exists(f"{scratch}/release") and time.time() < deadline:
            time.sleep(0.1)
        return 7

    results = str(tmp_path / "experiment" / "results.sqlite")

    def stored() -> str | None:
        try:
            with contextlib.closing(sqlite3.connect(results)) as db:
                row = db.execute("SELECT job_ref FROM runs WHERE status = 'running'").fetchone()
        except sqlite3.Error:
            return None  # not made yet
        return None if row is None or not row[0] else str(json.loads(row[0])["native_id"])

    experiment = Experiment(crash_then_wait, {"scratch": [scratch]})
    options = TaskOptions(retries=1)
    ex = SlurmExecutor(cluster.shell(), config(cluster), options=options)
    async with ex, anyio.create_task_group() as tg:
        tg.start_soon(
            functools.partial(experiment.run, ex, str(tmp_path / "experiment"), progress=False)
        )
        await until_exists(f"{scratch}/second")
        with anyio.fail_after(30):
            while True:
                ref = await anyio.to_thread.run_sync(stored)
                running = [line.split()[0] for line in squeue(cluster.user)]
                if ref is not None and ref in running:
                    break  # before: the first attempt's, long gone from the queue
                await anyio.sleep(0.2)
        Path(f"{scratch}/release").touch()


@pytest.mark.infra
async def test_cancelling_a_task_of_a_chunk_not_started_returns_at_once(
    cluster: Cluster, scratch: str
) -> None:
    """Its marker is written while squeue says the chunk waits: the runner will skip it,
    so the future is cancelled then, not when the chunk runs (up to a minute later)."""
    cfg = config(cluster, chunk_size=3, extra_sbatch=["--hold"])
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        first = await ex.submit(add, 1, 1)
        second = await ex.submit(touch, f"{scratch}/never")
        third = await ex.submit(add, 2, 2)
        with anyio.fail_after(60):
            while third.info.job_ref is None:
                await anyio.sleep(0.05)
        assert len(arrays_of([first, second, third])) == 1
        began = time.monotonic()
        await ex.cancel(second)
        assert time.monotonic() - began < 15  # 62 s before (the grace for sacct)
        assert second.state is FutureState.CANCELLED
        assert first.state is FutureState.PENDING and third.state is FutureState.PENDING
        await anyio.run_process(["scontrol", "release", array_of(first) or "?"])
        assert await first == 2 and await third == 4
        assert ex.slurm.calls.get("scancel", 0) == 0
    assert not os.path.exists(f"{scratch}/never")  # skipped by the runner


async def test_aclose_cancel_pending_leaves_no_job(cluster: Cluster) -> None:
    cfg = config(cluster, max_concurrent=2)
    staging = staging_for(cluster, "aclose")
    try:
        ex = SlurmExecutor(cluster.shell(), cfg, staging_dir=staging)
        async with ex:
            futures = [await ex.submit(sleep_for, 60) for _ in range(8)]
            with anyio.fail_after(60):
                while not any(future.state is FutureState.RUNNING for future in futures):
                    await anyio.sleep(0.2)
                await anyio.sleep(1.0)
            await ex.aclose(cancel_pending=True)
        assert all(future.state is FutureState.CANCELLED for future in futures)
        with anyio.fail_after(30):
            while any(line.split("_")[0] in arrays_of(futures) for line in squeue(cluster.user)):
                await anyio.sleep(0.2)
        assert ex.slurm.calls["scancel"] == 1  # all cancels in one call
        assert os.listdir(staging) == []  # nor a staging directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- failures of the cluster ------------------------------------------------------------


@pytest.mark.alone
@pytest.mark.infra
async def test_node_down_mid_run_is_worker_lost(cluster: Cluster, scratch: str) -> None:
    beat = f"{scratch}/beat"
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        future = await ex.submit(heartbeat, beat)
        await until_exists(beat)
        try:
            await anyio.run_process(
                ["scontrol", "update", f"nodename={cluster.node}", "state=down", "reason=test"]
            )
            with pytest.raises(WorkerLost) as caught:
                await future
            assert caught.value.state == "NODE_FAIL"
        finally:
            # Slurm may have returned it to service already (ReturnToService=2).
            await anyio.run_process(
                ["scontrol", "update", f"nodename={cluster.node}", "state=resume"], check=False
            )
        with anyio.fail_after(60):
            assert await (await ex.submit(add, 2, 3)) == 5


@pytest.mark.alone
@pytest.mark.infra
async def test_sshd_restarted_mid_run(cluster: Cluster) -> None:
    """The poller rides out a dead sshd; the tasks finish and are collected after."""
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        futures = [await ex.submit(sleep_for, 3.0) for _ in range(4)]
        with anyio.fail_after(120):  # mid-run: the poller saw every task start
            while any(future.state is FutureState.PENDING for future in futures):
                await anyio.sleep(0.05)
        stop_sshd()
        await anyio.sleep(3.0)
        await anyio.to_thread.run_sync(bring_up)
        with anyio.fail_after(120):
            assert await ex.wait(futures) == [3.0] * 4


# -- re-attach ----------------------------------------------------------------------------

# A driver in a process of its own (to be killed): argv is the cluster as JSON, a directory.
DRIVER_PRELUDE = """
import asyncio, json, sys
from asyncexec import SSHShell, SlurmConfig, SlurmExecutor
from asyncexec.experiment import Experiment
from asyncexec.testing import sleep_for

def login_node():
    cluster = json.loads(sys.argv[1])
    return SSHShell(cluster["host"], port=cluster["port"], username=cluster["user"],
                    connect_options={{"client_keys": [cluster["client_key"]],
                                      "known_hosts": cluster["known_hosts"]}})
"""

DRIVER = (
    DRIVER_PRELUDE
    + """
async def main():
    shell = login_node()
    async with SlurmExecutor(shell, SlurmConfig(python={python!r}),
                             staging_dir=sys.argv[2]) as ex:
        futures = [await ex.submit(sleep_for, 0.1 * i) for i in range(4)]
        futures.append(await ex.submit(sleep_for, 4.0))
        await ex.wait(futures[:4])
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""
)


@pytest.mark.infra
async def test_a_new_executor_reattaches_to_a_killed_drivers_jobs(
    cluster: Cluster, tmp_path: Path
) -> None:
    import json

    staging = f"{cluster.home}/.asyncexec/reattach-{os.getpid()}-{time.monotonic_ns()}"
    described = json.dumps(cluster.__dict__)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(python=cluster.python))
    driver = await anyio.open_process(
        [sys.executable, str(script), described, staging], start_new_session=True
    )
    try:
        assert driver.stdout is not None
        with anyio.fail_after(120):
            line = b""
            while b"\n" not in line:
                line += await driver.stdout.receive()
        assert line.strip() == b"ready"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        await driver.aclose()
    async with SlurmExecutor(cluster.shell(), config(cluster), staging_dir=staging) as ex:
        refs = await ex.slurm.find_refs()
        assert len(refs) == 5
        futures = [await ex.attach(ref) for ref in refs]
        values = sorted(await ex.wait(futures))
        assert values == pytest.approx([0.0, 0.1, 0.2, 0.3, 4.0])
        assert ex.slurm.calls.get("sbatch", 0) == 0  # nothing ran twice
    async with SlurmExecutor(cluster.shell(), config(cluster), staging_dir=staging) as ex:
        assert await ex.slurm.find_refs() == []  # collected and cleaned up
    assert os.listdir(staging) == []
    os.rmdir(staging)  # the staging root itself is the user's, here the test's


async def test_a_login_node_without_slurm_is_a_launch_error(tmp_path: Path) -> None:
    (tmp_path / "sh").symlink_to("/bin/sh")  # a shell, and no Slurm command
    shell = LocalShell(env={"PATH": str(tmp_path)})
    with pytest.raises(LaunchError, match="Slurm configuration"):
        async with SlurmLauncher(shell):
            pass


EXPERIMENT_DRIVER = (
    DRIVER_PRELUDE
    + """
async def main():
    shell = login_node()
    experiment = Experiment(sleep_for, {{"seconds": [0.1, 0.2, 5.0, 5.5]}})
    async with SlurmExecutor(shell, SlurmConfig(python={python!r})) as ex:
        await experiment.run(ex, sys.argv[2], lease=2, progress=False)

asyncio.run(main())
"""
)


@pytest.mark.infra
async def test_an_experiment_resumes_by_reattaching_to_running_jobs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A runner killed while two runs are on the cluster: the next one follows them."""
    import json
    import sqlite3

    from asyncexec.experiment import Experiment

    directory = str(tmp_path / "experiment")
    script = tmp_path / "driver.py"
    script.write_text(EXPERIMENT_DRIVER.format(python=cluster.python))
    driver = await anyio.open_process(
        [sys.executable, str(script), json.dumps(cluster.__dict__), directory],
        start_new_session=True,
    )

    results = os.path.join(directory, "results.sqlite")

    def followed() -> int:
        try:
            with contextlib.closing(sqlite3.connect(results)) as db:
                rows = db.execute(
                    "SELECT status, job_ref FROM runs WHERE status = 'running'"
                ).fetchall()
        except sqlite3.Error:
            return 0
        return sum(1 for _, ref in rows if ref)

    try:
        with anyio.fail_after(120):
            while followed() < 2:
                await anyio.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        await driver.aclose()
    with contextlib.closing(sqlite3.connect(results)) as db:
        (done_before,) = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone()
    left_running = followed()
    assert left_running >= 2
    experiment = Experiment(sleep_for, {"seconds": [0.1, 0.2, 5.0, 5.5]})
    async with SlurmExecutor(cluster.shell(), config(cluster)) as ex:
        summary = await experiment.run(ex, directory, lease=2, progress=False)
        calls = dict(ex.slurm.calls)
    assert summary.complete and summary.done == 4, summary
    # What the killed runner had on the cluster was followed, not submitted again.
    assert summary.reattached == left_running, summary
    assert summary.ran == 4 - done_before, summary
    if done_before + left_running == 4:
        assert calls.get("sbatch", 0) == 0, calls
    # The killed runner's array directory goes too: every task in it has an outcome,
    # some read by the killed runner, the rest by this one (it was left before).
    with contextlib.closing(sqlite3.connect(results)) as db:
        refs = [json.loads(ref) for (ref,) in db.execute("SELECT job_ref FROM runs")]
    workdirs = {ref["workdir"] for ref in refs if ref}
    assert workdirs
    assert [workdir for workdir in workdirs if os.path.exists(workdir)] == []


def test_staging_dir_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        SlurmLauncher(LocalShell(), staging_dir="relative/dir")


async def test_closing_while_sbatch_runs_leaves_no_job(cluster: Cluster) -> None:
    """Cancelled starts whose sbatch was already on its way are scancelled on close."""
    name = f"ae-close-{os.getpid()}-{time.monotonic_ns()}"
    staging = staging_for(cluster, "close")
    cfg = config(cluster, job_name=name, max_concurrent=1)
    try:
        ex = SlurmExecutor(cluster.shell(), cfg, batch_window=0, staging_dir=staging)
        async with ex:
            futures = [await ex.submit(sleep_for, 60) for _ in range(50)]
            await anyio.sleep(0.05)  # the submission is under way
            await ex.aclose(cancel_pending=True)
        assert all(future.state is FutureState.CANCELLED for future in futures)
        listed = await anyio.run_process(["squeue", "-h", "-r", "-n", name, "-o", "%i"])
        assert listed.stdout.decode().split() == []
        assert os.listdir(staging) == []  # nor the array's staging directory
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- a node with nothing but Python -----------------------------------------------------


def test_map_chunks_run_where_python_has_nothing_else(tmp_path: Path) -> None:
    """No cluster needed: the runner as a job runs it, by an interpreter with neither
    asyncexec nor site-packages (so no cloudpickle), loads map's chunks."""
    offset = 10

    def shifted(x: int, y: int) -> int:  # defined here: pickled by value
        return x * y + offset

    workdir = stage(tmp_path)
    write_batch(
        workdir,
        [
            spec("by-reference", run_chunk, operator.neg, [1, 2, 3]),
            spec("by-value", run_chunk, shifted, (1, 2), (3, 4)),
            spec("raised", run_chunk, math.sqrt, [4.0, -1.0]),
        ],
    )
    bare = [sys.executable, "-I", "-S"]  # no site-packages, PYTHON* variables or cwd
    for module in ("asyncexec", "cloudpickle"):
        probe = subprocess.run(
            [*bare, "-c", f"import {module}"], capture_output=True, timeout=60, cwd=tmp_path
        )
        assert b"ModuleNotFoundError" in probe.stderr, probe
    done = subprocess.run(
        [*bare, *command(workdir)[1:]], capture_output=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr.decode()
    found = outcomes(workdir)
    assert value(found["by-reference"]) == [-1, -2, -3]
    assert value(found["by-value"]) == [13, 18]
    raised = found["raised"]
    assert raised.status == "raised" and raised.error is not None, raised
    assert raised.error.type_name == "ValueError" and "math domain error" in raised.error.message


async def test_map_in_chunks_runs_on_a_python_without_asyncexec(cluster: Cluster) -> None:
    """Nodes need only Python: the one-shot runner travels with the job and runs map's
    chunks (asyncexec's chunk runner travels by reference) with no asyncexec there."""
    offset = 10

    def shifted(x: int, y: int) -> int:  # defined here: pickled by value
        return x * y + offset

    cfg = config(cluster, python=cluster.bare_python)
    async with SlurmExecutor(cluster.shell(), cfg) as ex:
        # Not vacuous: this interpreter's jobs cannot import asyncexec.
        assert await ex.run(importlib.util.find_spec, "asyncexec") is None
        negated = [value async for value in ex.map(operator.neg, range(10), chunksize=4)]
        assert negated == [-i for i in range(10)]
        pairs = ex.map(shifted, range(7), range(7, 14), chunksize=3)
        assert [value async for value in pairs] == [x * (x + 7) + 10 for x in range(7)]
        # A chunk's failure comes back as the original exception, from the bare node.
        with pytest.raises(RemoteError, match="math domain error") as caught:
            async for _ in ex.map(math.sqrt, [4.0, 1.0, 9.0, -1.0], chunksize=2):
                pass
        assert isinstance(caught.value, ValueError)


# -- leftovers (issue: "no hang, the right error, nothing left behind") --------------


@pytest.mark.parametrize(
    ("changes", "resources", "match"),
    [
        ({}, Resources(gpus=1), "gres"),  # this cluster has no GPU
        ({"extra_sbatch": ["--no-such-sbatch-option"]}, None, "no-such-sbatch-option"),
    ],
    ids=["gpus", "bad-extra-sbatch"],
)
async def test_a_refused_sbatch_leaves_no_staging_directory(
    cluster: Cluster, changes: dict[str, Any], resources: Resources | None, match: str
) -> None:
    staging = f"{cluster.home}/.asyncexec/refused-{os.getpid()}-{time.monotonic_ns()}"
    try:
        async with SlurmExecutor(
            cluster.shell(), config(cluster, **changes), staging_dir=staging
        ) as ex:
            refused = ex if resources is None else ex.with_options(resources=resources)
            with pytest.raises(LaunchError, match="sbatch refused") as caught:
                await (await refused.submit(add, 1, 1))
            assert match in str(caught.value).lower(), caught.value
            # What it staged (job.sh, the pickled task) went with the refusal, at once.
            assert os.listdir(staging) == []
            if resources is not None:  # the executor still runs what the cluster accepts
                assert await ex.run(add, 2, 2) == 4
        assert os.listdir(staging) == []
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- faults: a job that can never run, code stuck past its limit, a failing setup ---------


def staging_for(cluster: Cluster, what: str) -> str:
    return f"{cluster.home}/.asyncexec/{what}-{os.getpid()}-{time.monotonic_ns()}"


def array_of(future: Future[Any]) -> str | None:
    ref = future.info.job_ref
    return None if ref is None else ref.native_id.split("_")[0]


def in_queue(cluster: Cluster, array: str | None) -> list[str]:
    return [line for line in squeue(cluster.user) if line.split("_")[0] == array]


def processes_naming(text: str) -> list[str]:
    """The live processes (zombies are dead) whose command line names ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z" and entry.name != str(os.getpid()):
            found.append(f"{entry.name}: {cmdline}")
    return found


def partition_total_cpus(partition: str | None = None) -> int:
    """What the (default) partition really has: its TotalCPUs."""
    listed = subprocess.run(
        ["scontrol", "-o", "show", "partition", *([partition] if partition else [])],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in listed.stdout.splitlines():
        fields = dict(item.partition("=")[::2] for item in line.split())
        if partition or fields.get("Default") == "YES":
            return int(fields["TotalCPUs"])
    raise AssertionError(f"no default partition in {listed.stdout!r}")


async def states_until_done(future: Future[Any], timeout: float = 120.0) -> set[FutureState]:
    """The states the future shows, once Slurm accepted its task, until it is done."""
    seen: set[FutureState] = set()
    with anyio.fail_after(timeout):
        while not future.ready():
            if future.info.job_ref is not None:
                seen.add(future.state)
            await anyio.sleep(0.05)
    return seen


def test_pending_reasons_that_never_clear() -> None:
    for reason in (
        "PartitionConfig",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "QOSMaxCpuPerJobLimit",
        "QOSMaxWallDurationPerJobLimit",
        "QOSMaxMemoryPerNode",
        "AssocMaxNodesPerJobLimit",
        "QOSMinCpuNotSatisfied",
    ):
        assert never_runs(reason), reason
    for reason in (
        "Resources",
        "Priority",
        "None",
        "JobHeldUser",
        "BeginTime",
        "ReqNodeNotAvail, UnavailableNodes:vm",
        "QOSGrpCpuLimit",
        "AssocGrpJobsLimit",
        "QOSMaxJobsPerUserLimit",
        "QOSMaxCpuPerUserLimit",
        "AssocMaxJobsLimit",
    ):
        assert not never_runs(reason), reason
    # Also said while the partition's nodes are down: final only beyond its node count.
    assert never_runs("PartitionNodeLimit", nodes=2, partition_nodes=1)
    assert not never_runs("PartitionNodeLimit", nodes=1, partition_nodes=1)
    assert not never_runs("PartitionNodeLimit")


@pytest.mark.infra
@pytest.mark.parametrize(
    "case", ["cpus", "time", "nodes", "nodelist"], ids=lambda case: f"beyond-{case}"
)
async def test_a_job_that_can_never_run_fails_with_slurms_reason_and_leaves_nothing(
    cluster: Cluster, case: str
) -> None:
    cpus = partition_total_cpus()
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "cpus": ({"cpus": 2 * cpus}, "PartitionConfig"),
        "time": ({"partition": cluster.short_partition, "time": "5"}, "PartitionTimeLimit"),
        "nodes": ({"extra_sbatch": ["--nodes=2"]}, "PartitionNodeLimit"),
        # sbatch itself refuses a node that does not exist.
        "nodelist": ({"extra_sbatch": ["--nodelist=nosuchnode"]}, "Invalid node name"),
    }
    changes, reason = cases[case]
    staging = staging_for(cluster, "never")
    try:
        async with SlurmExecutor(
            cluster.shell(), config(cluster, **changes), staging_dir=staging
        ) as ex:
            future = await ex.submit(add, 1, 1)
            states = await states_until_done(future, timeout=90)
            with pytest.raises(LaunchError) as caught:
                await future
            assert isinstance(caught.value, TaskFailed)
            assert reason in str(caught.value), caught.value
            # Never RUNNING: it waited in the queue (or never got there).
            assert states <= {FutureState.PENDING}, states
            if case != "nodelist":
                assert states == {FutureState.PENDING}
                assert "cancelled" in str(caught.value)
            assert in_queue(cluster, array_of(future)) == []
        assert os.listdir(staging) == []
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.mark.infra
async def test_a_job_held_in_the_queue_is_pending_until_it_runs(cluster: Cluster) -> None:
    """A reason that can clear (a hold) is waited out; the future says PENDING meanwhile."""
    async with SlurmExecutor(cluster.shell(), config(cluster, extra_sbatch=["--hold"])) as ex:
        future = await ex.submit(sleep_for, 2.0)
        with anyio.fail_after(60):
            while future.info.job_ref is None:
                await anyio.sleep(0.05)
        # Several polls see it held (JobHeldUser): the third call started, two ended.
        polls = ex.slurm.calls["squeue"]
        with anyio.fail_after(60):
            while ex.slurm.calls["squeue"] < polls + 3:
                await anyio.sleep(0.05)
        assert future.state is FutureState.PENDING and not future.ready()
        assert future.info.started is None
        await anyio.run_process(["scontrol", "release", array_of(future) or "?"])
        with anyio.fail_after(60):
            while future.state is FutureState.PENDING:
                await anyio.sleep(0.05)
        assert future.state is FutureState.RUNNING or future.ready()
        assert await future == 2.0 and future.info.started is not None


@pytest.mark.infra
@pytest.mark.parametrize("how", ["gil-holding-c-call", "signal-ignoring-spin"])
async def test_code_stuck_past_its_time_limit_is_killed_as_a_timeout(
    cluster: Cluster, how: str
) -> None:
    # Defined here, so pickled by value: the nodes cannot import the tests.
    def stuck_in_c_holding_the_gil(marker: str) -> None:
        """A C call that never returns, holding the GIL: a mutex locked twice (``re``
        and big-int arithmetic check for signals, so they would not do)."""
        import ctypes
        import subprocess

        subprocess.Popen(["sleep", "600", marker])
        libc = ctypes.PyDLL(None)  # PyDLL: the GIL stays held during the call
        mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # deadlocks; signals do not end the wait

    def spin_ignoring_signals(marker: str) -> None:
        """A loop that ignores SIGTERM, SIGINT and the time limit's SIGALRM."""
        import signal
        import subprocess

        subprocess.Popen(["sleep", "600", marker])
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(signum, signal.SIG_IGN)
        while True:
            pass

    stuck = stuck_in_c_holding_the_gil if how == "gil-holding-c-call" else spin_ignoring_signals
    marker = f"asyncexec-stuck-{os.getpid()}-{time.monotonic_ns()}"
    staging = staging_for(cluster, "stuck")
    try:
        async with SlurmExecutor(cluster.shell(), config(cluster), staging_dir=staging) as ex:
            future = await ex.with_options(time_limit=3).submit(stuck, marker)
            began = time.monotonic()
            with pytest.raises(TimeoutError) as caught:
                await future
            took = time.monotonic() - began
            assert isinstance(caught.value, TaskTimeout), caught.value
            assert took < 12, took  # it was 15 s and a WorkerLost; ~3-5 s now (noisy)
            assert in_queue(cluster, array_of(future)) == []
            assert processes_naming(marker) == [] and processes_naming(staging) == []
            assert await ex.run(add, 2, 2) == 4
        assert os.listdir(staging) == []
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.mark.infra
@pytest.mark.parametrize(
    ("changes", "failing", "said"),
    [
        ({"modules": ["nosuchmodule"]}, "module load nosuchmodule", "command not found"),
        (
            {"setup": ["export A=1", "ls /nonexistent-asyncexec-dir", "export B=2"]},
            "ls /nonexistent-asyncexec-dir",
            "No such file or directory",
        ),
    ],
    ids=["modules", "setup"],
)
async def test_a_failing_setup_line_fails_the_task_without_running_it(
    cluster: Cluster, scratch: str, changes: dict[str, Any], failing: str, said: str
) -> None:
    ran = f"{scratch}/ran"
    staging = staging_for(cluster, "setup")
    try:
        async with SlurmExecutor(
            cluster.shell(), config(cluster, **changes), staging_dir=staging
        ) as ex:
            future = await ex.submit(touch, ran)
            with anyio.fail_after(120), pytest.raises(LaunchError) as caught:
                await future
            assert isinstance(caught.value, TaskFailed)
            message = str(caught.value)
            assert failing in message and said in message, message
            assert not os.path.exists(ran)  # the function never ran
            assert in_queue(cluster, array_of(future)) == []
        assert os.listdir(staging) == []
    finally:
        shutil.rmtree(staging, ignore_errors=True)
