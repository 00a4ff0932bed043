"""The conformance suite of asyncexec.testing, against every launcher we ship."""

from __future__ import annotations

import pytest

from asyncexec.abc import Launcher
from asyncexec.launchers import ProcessLauncher, ThreadLauncher
from asyncexec.testing import InlineLauncher, check_launcher, conformance_cases

pytestmark = pytest.mark.anyio

LAUNCHERS: dict[str, type[Launcher]] = {
    "process": ProcessLauncher,
    "thread": ThreadLauncher,
    "inline": InlineLauncher,
}


def make(kind: str) -> Launcher:
    if kind == "process":
        return ProcessLauncher(2)
    if kind == "thread":
        return ThreadLauncher(2)
    return InlineLauncher()


@pytest.mark.parametrize(
    ("kind", "case"),
    [(kind, case) for kind, cls in LAUNCHERS.items() for case in conformance_cases(cls)],
)
async def test_conformance(kind: str, case: str, no_leftover_processes: None) -> None:
    await check_launcher(lambda: make(kind), only=[case])


def test_cases_follow_capabilities() -> None:
    assert "crash" in conformance_cases(ProcessLauncher)
    assert "crash" not in conformance_cases(ThreadLauncher)
    assert "timeout" in conformance_cases(ThreadLauncher)
    assert "cancel_running" not in conformance_cases(InlineLauncher)
