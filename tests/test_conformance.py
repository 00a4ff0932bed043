"""The conformance suite of asyncexec.testing, against every launcher we ship."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asyncexec import LocalShell, SlurmConfig
from asyncexec.abc import Launcher
from asyncexec.launchers import ProcessLauncher, ThreadLauncher
from asyncexec.launchers.slurm import SlurmLauncher
from asyncexec.testing import InlineLauncher, check_launcher, conformance_cases

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
