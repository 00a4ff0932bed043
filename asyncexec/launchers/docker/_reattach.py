"""Re-attach: collect the outcome of a one-shot container another driver started.

A one-shot container runs ``serve --stdio --finish``: should its driver die,
the worker still finishes its task and writes the :class:`Outcome` out, and
the engine keeps that stdout byte for byte in the container's ``local`` log.
A driver given the task's :class:`JobRef` (which names the container) waits
for the container to end, reads the outcome from its log, then removes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from ..._codec import take_frames
from ..._messages import ErrorInfo, Outcome
from ._engine import CALL_TIMEOUT, NOT_FOUND, engine_error, error_status, stdout_of

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer


async def collect(
    docker: aiodocker.Docker,
    name: str,
    task_id: str,
    remove: Callable[[DockerContainer, str], Awaitable[bool]],
) -> Outcome:
    """Wait for the one-shot container ``name`` another driver started, read the
    Outcome of ``task_id`` from its stdout (its log), then ``remove`` it.

    A container that is gone, or that ended without the outcome, gives a
    ``"lost"`` outcome saying so.

    Raises:
        LaunchError: the engine failed to wait for it or to give its log
            (:class:`~asyncexec.BackendUnavailable` when unreachable).

    Cancellation: while the container runs, stops the waiting only (the
    container stays, and another call collects it). Once it has ended, the
    log is read and the container removed, shielded: the outcome is the
    caller's from then on.
    """
    container = docker.containers.container(name)
    try:
        status = await container.wait()
    except Exception as exc:
        if error_status(exc) != NOT_FOUND:
            raise engine_error(f"wait for container {name}", exc) from exc
        return lost(task_id, f"container {name} is gone, and its outcome with it", None)
    # Shielded: once read, the outcome is the caller's; only then does its container go.
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                output = await stdout_of(docker, name)
        except Exception as exc:
            raise engine_error(f"read the output of container {name}", exc) from exc
        await remove(container, name)
    outcome = outcome_in(output, task_id)
    if outcome is not None:
        return outcome
    code = status.get("StatusCode")
    code = code if isinstance(code, int) else None
    text = f"container {name} ended (status {code}) without the task's outcome"
    return lost(task_id, text, code)


def outcome_in(output: bytes, task_id: str) -> Outcome | None:
    """The Outcome of ``task_id`` among a worker's frames (None: not there, or cut short)."""
    try:
        messages = take_frames(bytearray(output))
    except Exception:  # a log cut by rotation: not frames from the start
        return None
    for message in messages:
        if isinstance(message, Outcome) and message.task_id == task_id:
            return message
    return None


def lost(task_id: str, text: str, exit_code: int | None) -> Outcome:
    """A ``"lost"`` outcome (the executor raises ``WorkerLost``) saying ``text``."""
    error = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
    return Outcome(task_id=task_id, status="lost", error=error, exit_code=exit_code)
