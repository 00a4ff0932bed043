"""Starting one of a pool's workers: connect, then the handshake, in one deadline.

A worker says :class:`~asyncexec._messages.Hello` (its versions, pid and the
CPUs it may use), is sent the pool's :class:`~asyncexec._messages.Setup`, and
answers :class:`~asyncexec._messages.Ready` (or what its ``setup`` hook raised).
A worker killed before that was sent no task: :class:`DiedStarting` says so,
and the pool starts another for the task that waited for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ..._codec import encode_frame, versions
from ..._exceptions import LaunchError, SetupFailed
from ..._messages import Hello, Ready, Setup
from ..._worker import version_mismatch
from ._workers import PoolWorker

__all__ = ["DiedStarting", "handshake", "start_worker"]


class DiedStarting(LaunchError):
    """A worker was killed before its handshake ended: it had been sent no task."""


async def start_worker(
    connect: Callable[[], Awaitable[PoolWorker]],
    setup: Callable[[], Setup],
    where: str,
    timeout: float,
) -> PoolWorker:
    """Start a worker with ``connect``, then make the handshake (:func:`handshake`),
    within ``timeout`` seconds in all. ``where`` says where workers run, in errors.

    Raises:
        DiedStarting: it was killed before its handshake ended (another may start).
        SetupFailed: its ``setup`` hook raised (the worker is killed and reaped).
        LaunchError: it cannot be started, exited by itself, took too long, or
            did not speak asyncexec's protocol.

    Cancellation: a worker cut short in its handshake is killed and reaped
    (shielded) before the cancellation propagates; one cut short while it is
    being connected is disposed of as ``connect`` does.
    """
    too_slow = f"a worker ({where}) did not start within {timeout:g} s"
    deadline = anyio.current_time() + timeout
    try:
        with anyio.fail_after(timeout):
            worker = await connect()
    except TimeoutError:
        raise LaunchError(too_slow) from None
    try:
        with anyio.fail_after(max(deadline - anyio.current_time(), 0.001)):
            await handshake(worker, setup, where)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            exit_code = None
            if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
                # It died by itself: its own exit status says why (before we kill it).
                with anyio.move_on_after(5):
                    exit_code = await worker.wait_exit()
            worker.kill()
            reaped = await worker.wait_exit()
            exit_code = reaped if exit_code is None else exit_code
            await worker.aclose()
        if isinstance(exc, (anyio.EndOfStream, anyio.BrokenResourceError)):
            text, state = worker.describe_exit(exit_code)
            # Killed (a signal, the OOM killer) or gone unseen: another may start.
            # One that exited by itself (a broken interpreter or environment) would
            # again.
            killed = state is not None or exit_code is None
            error = DiedStarting if killed else LaunchError
            raise error(f"a worker died while starting ({where}): {text}") from None
        if isinstance(exc, TimeoutError):
            raise LaunchError(too_slow) from None
        if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
            raise LaunchError(
                f"a worker's first words ({where}) were not asyncexec's protocol "
                f"({exc}); does something print to stdout when Python starts?"
            ) from exc
        raise
    return worker


async def handshake(worker: PoolWorker, setup: Callable[[], Setup], where: str) -> None:
    """Read the worker's :class:`Hello`, check its versions, send it ``setup()``,
    and read its :class:`Ready`.

    Raises:
        SetupFailed: its ``setup`` hook raised (or a hook could not be unpickled).
        LaunchError: it cannot run our tasks.
        anyio.EndOfStream: it is gone.

    Cancellation: leaves the channel in the middle of the handshake: the
    caller kills the worker.
    """
    hello = await worker.reader.read()
    if not isinstance(hello, Hello):
        raise LaunchError(f"the worker spoke first with {type(hello).__name__}, not Hello")
    worker.pid = hello.pid
    worker.affinity = hello.affinity
    mismatch = version_mismatch(versions(), hello.versions)
    if mismatch is not None:
        raise LaunchError(f"{where} cannot run our tasks: {mismatch}")
    await worker.send(encode_frame(setup()))
    ready = await worker.reader.read()
    if not isinstance(ready, Ready):
        raise LaunchError(f"the worker answered Setup with {type(ready).__name__}")
    error = ready.error
    if error is not None:
        raise SetupFailed(
            f"a worker ({where}) could not be set up: {error.message}",
            remote_traceback=error.traceback,
        )
