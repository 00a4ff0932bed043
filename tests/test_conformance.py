"""The conformance suite of asyncexec.testing, against every launcher we ship."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asyncexec.abc import Launcher
from asyncexec.launchers import ProcessLauncher, ThreadLauncher
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
    [(kind, case) for kind, make in LAUNCHERS.items() for case in conformance_cases(type(make()))],
)
async def test_conformance(kind: str, case: str, no_leftover_processes: None) -> None:
    await check_launcher(LAUNCHERS[kind], only=[case])


def test_cases_follow_capabilities() -> None:
    assert "crash" in conformance_cases(ProcessLauncher)
    assert "crash" not in conformance_cases(ThreadLauncher)
    assert "timeout" in conformance_cases(ThreadLauncher)
    assert "cancel_running" not in conformance_cases(InlineLauncher)
