"""The error tree.

Every error asyncexec raises derives from :class:`AsyncExecError`::

    AsyncExecError
    ├── ExecutorClosed          submit() after aclose() (also a RuntimeError)
    ├── SerializationError      the task or its result cannot be pickled/decoded
    ├── LaunchError             the backend refused the task
    │   ├── BackendUnavailable  the backend cannot be reached at all
    │   └── SetupFailed         the executor's ``setup`` hook raised where tasks run
    └── TaskFailed              the task produced no value: every failed future raises one
        ├── RemoteError         user code raised (also an instance of the original class)
        ├── WorkerLost          the worker died without an outcome (.exit_code, .state)
        ├── TaskTimeout         time_limit passed and the work was killed (also a TimeoutError)
        ├── TaskCancelled       the task was cancelled
        │   └── TaskDetached    ... no: let go (executor.detach()); its work goes on
        ├── TaskSerializationError   its result (or the task, where it ran) could not be
        │                            pickled or unpickled (also a SerializationError)
        └── TaskLaunchError     the backend refused or lost the task after submit
            │                   (also a LaunchError)
            └── TaskBackendUnavailable   ... because it could not be reached (also a
                                         BackendUnavailable)

A task that could not run because its worker's ``setup`` hook raised fails
with a :class:`TaskLaunchError` that is also a :class:`SetupFailed`.

``submit`` itself raises the plain ``SerializationError`` (an argument that
cannot be pickled), ``LaunchError`` (a request the backend cannot honour) and
``ExecutorClosed``; once a future exists, ``except TaskFailed`` around
``await fut`` catches every way it can fail, whatever the backend.

Library errors are translated where a backend meets the executor
(``raise LaunchError(...) from exc``), and a task's :class:`Outcome` that is
not a value here (:func:`outcome_error`). The host's own cancellation exception
is never swallowed or wrapped.
"""

from __future__ import annotations

import signal
from typing import Any

from ._messages import Outcome

__all__ = [
    "AsyncExecError",
    "BackendUnavailable",
    "ExecutorClosed",
    "LaunchError",
    "RemoteError",
    "SerializationError",
    "SetupFailed",
    "TaskBackendUnavailable",
    "TaskCancelled",
    "TaskDetached",
    "TaskFailed",
    "TaskLaunchError",
    "TaskSerializationError",
    "TaskTimeout",
    "WorkerLost",
]


class AsyncExecError(Exception):
    """Base class of every error raised by asyncexec."""


class ExecutorClosed(AsyncExecError, RuntimeError):
    """The executor was closed; it accepts no more tasks.

    Also a ``RuntimeError``, which ``concurrent.futures`` raises after shutdown.
    """


class SerializationError(AsyncExecError):
    """A task, an argument or a result could not be pickled or unpickled."""


class LaunchError(AsyncExecError):
    """The backend refused the task (or the worker refused the driver)."""


class BackendUnavailable(LaunchError):
    """The backend could not be reached (no daemon, authentication refused...)."""


class SetupFailed(LaunchError):
    """An executor's ``setup`` hook raised where the tasks run, so they could not run.

    Raised by ``async with`` for a pool that starts its workers on entering
    (``ProcessExecutor``, warm containers); otherwise every task that needed
    the worker (or the array task, or the container group) fails with a
    :class:`TaskLaunchError` that is also a ``SetupFailed``. Its message names
    the hook's exception (``setup raised RuntimeError: ...``).

    Attributes:
        remote_traceback: the hook's traceback, as text, from where it ran
            ("" where unknown).
    """

    def __init__(self, message: str, *, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class TaskFailed(AsyncExecError):
    """The task produced no value."""


class TaskCancelled(TaskFailed):
    """The task was cancelled before it produced a value."""


class TaskDetached(TaskCancelled):
    """The executor let the task go (:meth:`~asyncexec.BaseExecutor.detach`): its work
    goes on where it runs, and ``job_ref`` follows it again
    (:meth:`~asyncexec.BaseExecutor.attach`, from this process or another)."""

    def __init__(self, message: str, job_ref: Any = None) -> None:
        super().__init__(message)
        self.job_ref = job_ref

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.job_ref))


class TaskTimeout(TaskFailed, TimeoutError):
    """The task ran past its ``time_limit`` and its work was killed."""


class TaskSerializationError(TaskFailed, SerializationError):
    """The task's result could not be pickled where it ran or unpickled here (or the
    task itself could not be unpickled where it ran)."""


class TaskLaunchError(TaskFailed, LaunchError):
    """The backend refused or lost the task after ``submit`` returned its future."""


class TaskBackendUnavailable(TaskLaunchError, BackendUnavailable):
    """The backend could not be reached to start, follow or finish the task."""


def as_task_failure(error: BaseException) -> BaseException:
    """The error a failed future raises for ``error``: a :class:`TaskFailed` for an
    asyncexec error, anything else as it is.

    The failure is also an instance of the error's own class (a launcher's
    ``LaunchError`` subclass too, made on the fly as for :class:`RemoteError`),
    with its arguments and attributes; the error itself is its ``__cause__``.
    """
    if isinstance(error, TaskFailed) or not isinstance(error, AsyncExecError):
        return error
    kind = _failure_class(type(error))
    failure = Exception.__new__(kind)  # (no __init__: the error's own may want other args)
    failure.args = error.args
    failure.__dict__.update(getattr(error, "__dict__", {}))
    failure.__cause__ = error
    return failure


#: The TaskFailed classes for errors of asyncexec's tree (those of other classes are
#: made once, on first need).
_FAILURES: dict[type[BaseException], type[TaskFailed]] = {
    AsyncExecError: TaskFailed,
    LaunchError: TaskLaunchError,
    BackendUnavailable: TaskBackendUnavailable,
    SerializationError: TaskSerializationError,
}


def _failure_class(cls: type[BaseException]) -> type[TaskFailed]:
    known = _FAILURES.get(cls)
    if known is None:
        base = next(_FAILURES[ancestor] for ancestor in cls.__mro__ if ancestor in _FAILURES)
        try:
            known = type(
                f"{base.__name__}[{cls.__name__}]",
                (base, cls),
                {"__module__": __name__, "__reduce__": _reduce_failure},
            )
        except TypeError:  # a layout that cannot combine
            known = base
        _FAILURES[cls] = known
    return known


def _reduce_failure(failure: BaseException) -> tuple[Any, ...]:
    # A class made on the fly cannot be pickled by name: it is made again from the cause.
    return (as_task_failure, (failure.__cause__,))


class WorkerLost(TaskFailed):
    """The worker running the task died without reporting an outcome.

    Attributes:
        exit_code: the worker's exit status when known (negative: killed by signal).
        state: a backend-specific state name (``"SIGKILL"``, ``"OUT_OF_MEMORY"``...).
    """

    def __init__(self, message: str, *, exit_code: int | None = None, state: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_worker_lost, (str(self), self.exit_code, self.state))


def _rebuild_worker_lost(message: str, exit_code: int | None, state: str | None) -> WorkerLost:
    return WorkerLost(message, exit_code=exit_code, state=state)


def describe_exit(exit_code: int | None) -> tuple[str, str | None]:
    """Return a human description and a state name for a worker's exit status."""
    if exit_code is None:
        return "the worker vanished", None
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        text = f"the worker was killed by {name}"
        if -exit_code == signal.SIGKILL:
            text += " (possibly by the out-of-memory killer, or a memory limit)"
        return text, name
    return f"the worker exited with status {exit_code}", None


class RemoteError(TaskFailed):
    """User code raised an exception where the task ran.

    Wherever the original class allows it, the instance raised is also an
    instance of that class (made on the fly), so ``except ValueError:`` around
    ``await fut`` works as for a local call; ``except TaskFailed:`` still
    catches it.

    Attributes:
        remote_type: qualified name of the original exception's class.
        remote_message: ``str()`` of the original exception.
        remote_traceback: the formatted traceback, as text, from where it ran.
        original: the original exception object when it could be unpickled, else None.
    """

    remote_type: str
    remote_message: str
    remote_traceback: str
    original: BaseException | None

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        original: BaseException | None = None,
    ):
        super().__init__(remote_message)
        self._fill(remote_type, remote_message, remote_traceback, original)

    def _fill(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        original: BaseException | None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.original = original

    def __str__(self) -> str:
        return (
            f"{self.remote_type}: {self.remote_message}"
            if self.remote_message
            else self.remote_type
        )

    def __repr__(self) -> str:
        return f"RemoteError({self.remote_type!r}, {self.remote_message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            RemoteError.build,
            (self.remote_type, self.remote_message, self.remote_traceback, self.original),
        )

    @staticmethod
    def build(
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        original: BaseException | None = None,
    ) -> RemoteError:
        """Make the error for a remote exception, combined with its class when possible."""
        if original is not None and isinstance(original, Exception):
            combined = _combined_class(type(original))
            if combined is not None:
                # The class's own __new__ is refused for a subclass whose layout base
                # differs (MemoryError's freelist); Exception's then does the job.
                for new in (type(original).__new__, Exception.__new__):
                    try:
                        err = new(combined, *original.args)
                        err.__dict__.update(getattr(original, "__dict__", {}))
                        if isinstance(original, OSError):
                            for name in ("errno", "strerror", "filename", "filename2"):
                                setattr(err, name, getattr(original, name))
                        err._fill(remote_type, remote_message, remote_traceback, original)
                        return err
                    except Exception:
                        continue
        return RemoteError(remote_type, remote_message, remote_traceback, original)


_combined_classes: dict[type[BaseException], type[RemoteError] | None] = {}


def _combined_class(cls: type[BaseException]) -> type[RemoteError] | None:
    """A subclass of both RemoteError and ``cls``, or None when they cannot combine.

    Only ``Exception`` subclasses are combined: a remote ``SystemExit`` or
    ``KeyboardInterrupt`` must not stop the driver's event loop.
    """
    if cls in _combined_classes:
        return _combined_classes[cls]
    combined: type[RemoteError] | None = None
    if issubclass(cls, Exception) and not issubclass(cls, AsyncExecError):
        try:
            combined = type(
                f"RemoteError[{cls.__name__}]",
                (RemoteError, cls),
                {"__module__": __name__, "__str__": RemoteError.__str__},
            )
        except TypeError:
            combined = None
    _combined_classes[cls] = combined
    return combined


def outcome_error(outcome: Outcome, original: BaseException | None = None) -> TaskFailed:
    """The error ``await future`` raises for a task whose outcome is not a value.

    Args:
        outcome: the task's outcome, of any ``status`` but ``"ok"``.
        original: the user's exception, unpickled from ``outcome.error.pickled``
            (when it could be): the :class:`RemoteError` is also an instance of
            its class.
    """
    detail = outcome.error
    status = outcome.status
    if status == "raised" and detail is not None:
        return RemoteError.build(detail.type_name, detail.message, detail.traceback, original)
    if status == "unpicklable":
        message = detail.message if detail else "serialization failed"
        return TaskSerializationError(message)
    if status == "timeout":
        return TaskTimeout(f"task {outcome.task_id} was stopped at its time limit")
    if status == "cancelled":
        return TaskCancelled(f"task {outcome.task_id} was cancelled where it ran")
    if status == "refused":
        if detail is not None and detail.type_name == "SetupFailed":
            setup = SetupFailed(detail.message, remote_traceback=detail.traceback)
            failure = as_task_failure(setup)
            assert isinstance(failure, TaskFailed)
            return failure
        return TaskLaunchError(detail.message if detail else "the worker refused the task")
    message = detail.message if detail else "the worker died without reporting an outcome"
    return WorkerLost(
        f"task {outcome.task_id}: {message}", exit_code=outcome.exit_code, state=outcome.state
    )
