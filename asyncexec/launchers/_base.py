"""The base of the launchers whose jobs live in this process: a job table and a task group."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from .._exceptions import LaunchError
from .._messages import JobRef, Outcome
from ..abc import Launcher

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["BaseLauncher", "Job", "refuse_launcher_arguments"]


class Job:
    """A task handed to a launcher of this process, until its outcome is read."""

    __slots__ = ("_done", "callback", "outcome", "task_id")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.outcome: Outcome | None = None
        self._done: anyio.Event | None = None  # made for the first waiter only
        #: Called with the outcome, for a job taken by ``try_start`` (nobody calls wait).
        self.callback: Callable[[Outcome], None] | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    async def wait_finished(self) -> None:
        """Wait until the job has its outcome (:meth:`settle`).

        Cancellation: only the waiting stops; the job and its outcome are untouched.
        """
        if self.outcome is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def settle(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            if self._done is not None:
                self._done.set()
            if self.callback is not None:
                self.callback(outcome)


J = TypeVar("J", bound=Job)
_L = TypeVar("_L", bound="BaseLauncher[Any]")


class BaseLauncher(Launcher, Generic[J]):
    """A launcher whose jobs live in this process and which runs background tasks.

    Its task group is entered in ``__aenter__`` and left in ``__aexit__``, so it
    wraps the caller's code in between: background tasks must never raise,
    and ``aclose`` must not cancel the group.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, J] = {}
        self._tg: TaskGroup | None = None

    async def _open(self) -> None:
        """Acquire what the launcher needs once its task group runs."""

    async def __aenter__(self: _L) -> _L:
        """Start the task group, then :meth:`_open` what the launcher needs.

        Cancellation: as for an error in ``_open``, :meth:`aclose` runs
        shielded before the cancellation propagates: no worker or job started
        so far is left. The launcher is then closed.
        """
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await self._open()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            await tg.__aexit__(None, None, None)  # outside the shield: scopes nest
            self._tg = None
            raise _single(exc) from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the launcher (:meth:`aclose`), then leave its task group.

        Cancellation: ``aclose`` runs shielded, so nothing is left; the
        background tasks still running afterwards are cancelled, not awaited.
        """
        with anyio.CancelScope(shield=True):
            await self.aclose()
        if self._tg is not None:
            # The caller's own error is not the background tasks': don't wrap it.
            await self._tg.__aexit__(None, None, None)
            self._tg = None

    async def wait(self, ref: JobRef) -> Outcome:
        job = self._jobs.get(ref.native_id)
        if job is None:
            raise LaunchError(f"unknown task {ref.native_id}")
        await job.wait_finished()
        self._jobs.pop(ref.native_id, None)
        assert job.outcome is not None
        return job.outcome


def _single(exc: BaseException) -> BaseException:
    """The one error inside an exception group made by a task group, if it is alone."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


#: An executor's own parameters: the rest of its keyword form are its launcher's.
_EXECUTORS_OWN = frozenset({"self", "n_workers", "options", "max_pending", "launcher"})


def refuse_launcher_arguments(
    executor: type, arguments: Mapping[str, object], launcher: str
) -> None:
    """Refuse launcher arguments given to an executor beside a configured ``launcher=``.

    ``arguments`` are the executor's ``__init__`` arguments (its ``locals()``): any of
    its launcher's parameters that differs from its default was given by mistake.

    Raises:
        TypeError: naming them, and where they belong (the ``launcher`` class).
    """
    given = [
        name
        for name, parameter in inspect.signature(executor.__init__).parameters.items()  # type: ignore[misc]
        if name not in _EXECUTORS_OWN and arguments[name] != parameter.default
    ]
    if given:
        raise TypeError(
            f"{', '.join(given)}: the launcher's own arguments; configure them on "
            f"the {launcher} given as launcher="
        )
