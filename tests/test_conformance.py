"""The conformance suite of asyncexec.testing, against every launcher we ship."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from asyncexec import BaseExecutor, JobRef, LocalShell, SlurmConfig, TaskSpec
from asyncexec.abc import Capabilities, Launcher
from asyncexec.launchers import ProcessLauncher, ThreadLauncher
from asyncexec.launchers.slurm import SlurmLauncher
from asyncexec.testing import (
    InlineLauncher,
    check_capabilities,
    check_launcher,
    conformance_cases,
)

pytestmark = pytest.mark.anyio

LAUNCHERS: dict[str, Callable[[], Launcher]] = {
    "process": lambda: ProcessLauncher(2),
    "process-stdio": lambda: ProcessLauncher(2, transport="stdio"),
    "process-lazy": lambda: ProcessLauncher(2, eager=False),
    "thread": lambda: ThreadLauncher(2),
    "inline": InlineLauncher,
}


@pytest.mark.parametrize(
    ("kind", "case"),
    [(kind, case) for kind, make in LAUNCHERS.items() for case in conformance_cases(make())],
)
async def test_conformance(kind: str, case: str, no_leftover_processes: None) -> None:
    await check_launcher(LAUNCHERS[kind], only=[case])


def test_cases_follow_capabilities() -> None:
    assert "crash" in conformance_cases(ProcessLauncher)
    assert "crash" not in conformance_cases(ThreadLauncher)
    assert "timeout" in conformance_cases(ThreadLauncher)
    assert "cancel_running" not in conformance_cases(InlineLauncher)


def test_cases_follow_the_capabilities_of_the_instance() -> None:
    """Slurm arrays in chunks run several tasks in one process: a crash takes the
    chunk's other tasks with it, so that launcher does not isolate crashes."""
    chunked = SlurmLauncher(LocalShell(), SlurmConfig(chunk_size=4))
    assert not chunked.isolates_crashes and SlurmLauncher.isolates_crashes
    assert "crash" not in conformance_cases(chunked)
    assert "crash" in conformance_cases(SlurmLauncher(LocalShell(), SlurmConfig()))


async def test_check_launcher_reads_the_capabilities_of_the_instance() -> None:
    def chunked() -> SlurmLauncher:
        return SlurmLauncher(LocalShell(), SlurmConfig(chunk_size=4))

    with pytest.raises(ValueError, match="'crash' does not apply to SlurmLauncher"):
        await check_launcher(chunked, only=["crash"])


def test_capabilities_are_one_frozen_value_read_from_the_instance() -> None:
    chunked = SlurmLauncher(LocalShell(), SlurmConfig(chunk_size=4)).capabilities
    assert isinstance(chunked, Capabilities)
    assert not chunked.isolates_crashes and chunked.reattachable and chunked.enforces_time_limit
    assert SlurmLauncher(LocalShell(), SlurmConfig()).capabilities.isolates_crashes
    assert Capabilities.from_attributes(ThreadLauncher) == ThreadLauncher(1).capabilities
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunked.can_kill = False  # type: ignore[misc]
    for make in LAUNCHERS.values():
        check_capabilities(make())


def test_inconsistent_capabilities_are_caught() -> None:
    class SaysFastStart(InlineLauncher):
        fast_start = True

    class TimesOutWithoutKilling(InlineLauncher):
        enforces_time_limit = True

    with pytest.raises(AssertionError, match="does not implement try_start"):
        check_capabilities(SaysFastStart())
    with pytest.raises(AssertionError, match="cannot kill"):
        check_capabilities(TimesOutWithoutKilling())


async def test_the_executor_reads_capabilities_from_the_instance() -> None:
    """A launcher may compute its capabilities: the executor reads the property."""

    seen: list[int] = []

    class Recording(InlineLauncher):
        async def start(self, task: TaskSpec) -> JobRef:
            seen.append(len(task.buffers))
            return await super().start(task)

    class TakesBuffers(Recording):
        @property
        def capabilities(self) -> Capabilities:
            return dataclasses.replace(super().capabilities, takes_buffers=True)

    payload = b"x" * 1_000_000
    for launcher in (Recording(), TakesBuffers()):
        async with BaseExecutor(1, launcher=launcher) as executor:
            assert await executor.run(len, payload) == len(payload)
    assert seen == [0, 1]  # the large argument left out of the pickle only when asked
