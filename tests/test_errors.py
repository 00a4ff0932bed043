"""The error tree, RemoteError's double identity, timed_run and handle_err."""

from __future__ import annotations

import pickle
import time

import pytest

from asyncexec import (
    AsyncExecError,
    BackendUnavailable,
    ExecutorClosed,
    LaunchError,
    RemoteError,
    SerializationError,
    TaskBackendUnavailable,
    TaskCancelled,
    TaskFailed,
    TaskLaunchError,
    TaskSerializationError,
    TaskTimeout,
    WorkerLost,
    handle_err,
    timed_run,
)


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a, b)
        self.total = a + b


def test_the_tree() -> None:
    branches: tuple[type[Exception], ...] = (
        ExecutorClosed,
        SerializationError,
        LaunchError,
        TaskFailed,
    )
    for branch in branches:
        assert issubclass(branch, AsyncExecError)
    assert issubclass(BackendUnavailable, LaunchError)
    leaves: tuple[type[Exception], ...] = (
        RemoteError,
        WorkerLost,
        TaskTimeout,
        TaskCancelled,
        TaskSerializationError,
        TaskLaunchError,
        TaskBackendUnavailable,
    )
    for leaf in leaves:
        assert issubclass(leaf, TaskFailed)
    assert issubclass(TaskTimeout, TimeoutError)
    # What a failed future raises is a TaskFailed that is also the specific error.
    assert issubclass(TaskSerializationError, SerializationError)
    assert issubclass(TaskLaunchError, LaunchError)
    assert issubclass(TaskBackendUnavailable, BackendUnavailable)
    assert issubclass(TaskBackendUnavailable, TaskLaunchError)
    # concurrent.futures code catches RuntimeError after shutdown.
    assert issubclass(ExecutorClosed, RuntimeError)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (LaunchError("sbatch: error: refused"), TaskLaunchError),
        (BackendUnavailable("no daemon"), TaskBackendUnavailable),
        (SerializationError("cannot unpickle"), TaskSerializationError),
    ],
)
def test_a_failed_future_raises_a_task_failed_that_is_also_the_error(
    raised: Exception, expected: type[TaskFailed]
) -> None:
    from asyncexec._exceptions import as_task_failure

    failure = as_task_failure(raised)
    assert type(failure) is expected and isinstance(failure, type(raised))
    assert str(failure) == str(raised) and failure.__cause__ is raised
    again = pickle.loads(pickle.dumps(failure))
    assert type(again) is expected and str(again) == str(raised)
    already = TaskTimeout("late")
    assert as_task_failure(already) is already


def test_remote_error_combines_with_the_original_class() -> None:
    original = NeedsTwo(1, 2)
    error = RemoteError.build("tests.NeedsTwo", str(original), "Traceback...", original)
    assert isinstance(error, NeedsTwo) and isinstance(error, RemoteError)
    assert error.total == 3 and error.original is original
    assert error.remote_traceback == "Traceback..."
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, NeedsTwo)
    assert isinstance(again, RemoteError)
    assert again.remote_type == "tests.NeedsTwo"


def test_oserror_keeps_its_fields() -> None:
    error = RemoteError.build("FileNotFoundError", "gone", "tb", FileNotFoundError(2, "gone", "/x"))
    assert isinstance(error, FileNotFoundError)
    assert (error.errno, error.filename) == (2, "/x")


@pytest.mark.parametrize("base", [SystemExit(3), KeyboardInterrupt()])
def test_base_exceptions_are_never_combined(base: BaseException) -> None:
    error = RemoteError.build(type(base).__name__, "", "tb", base)
    assert type(error) is RemoteError
    assert isinstance(error, Exception)


def test_without_original_a_plain_remote_error() -> None:
    error = RemoteError.build("somewhere.Gone", "message", "tb", None)
    assert type(error) is RemoteError
    assert str(error) == "somewhere.Gone: message"
    assert "somewhere.Gone" in repr(error)


def test_worker_lost_pickles_with_its_fields() -> None:
    error = pickle.loads(pickle.dumps(WorkerLost("died", exit_code=-9, state="SIGKILL")))
    assert (str(error), error.exit_code, error.state) == ("died", -9, "SIGKILL")


def spin_for(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


def test_timed_run() -> None:
    result, duration, timed_out = timed_run(lambda: spin_for(0.01), timeout_seconds=30)
    assert (result, timed_out) == ("done", False) and duration > 0
    result, duration, timed_out = timed_run(lambda: spin_for(30), timeout_seconds=0.2)
    assert (result, duration, timed_out) == (None, 0.2, True)


def test_handle_err() -> None:
    try:
        raise ValueError("local")
    except ValueError as exc:
        record = handle_err(exc)
    assert record["type"] == "ValueError" and record["message"] == "local"
    assert "test_handle_err" in record["traceback"]
    remote = RemoteError.build("KeyError", "'k'", "remote tb", KeyError("k"))
    assert handle_err(remote) == {"type": "KeyError", "message": "'k'", "traceback": "remote tb"}


class QuotaExceeded(LaunchError):
    """A launcher's own refusal, with an __init__ of its own."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"quota of {limit} exceeded")
        self.limit = limit


def test_a_failure_keeps_the_class_of_a_launchers_own_error() -> None:
    """`except QuotaExceeded` (and retry_on) still match the future's error."""
    from asyncexec._exceptions import as_task_failure

    failure = as_task_failure(QuotaExceeded(3))
    assert isinstance(failure, QuotaExceeded) and isinstance(failure, TaskLaunchError)
    assert failure.limit == 3 and str(failure) == "quota of 3 exceeded"
    assert type(as_task_failure(QuotaExceeded(4))) is type(failure)  # made once
    again = pickle.loads(pickle.dumps(failure))
    assert isinstance(again, QuotaExceeded) and isinstance(again, TaskFailed)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("raised", RemoteError),
        ("unpicklable", TaskSerializationError),
        ("timeout", TaskTimeout),
        ("cancelled", TaskCancelled),
        ("refused", TaskLaunchError),
        ("lost", WorkerLost),
    ],
)
def test_each_outcome_that_is_not_a_value_raises_its_task_failed(
    status: str, expected: type[TaskFailed]
) -> None:
    from asyncexec import Outcome
    from asyncexec._exceptions import outcome_error
    from asyncexec._messages import ErrorInfo

    detail = ErrorInfo(type_name="KeyError", message="'k'", traceback="Traceback: here")
    outcome = Outcome(task_id="t-1", status=status, error=detail, exit_code=3)  # type: ignore[arg-type]
    error = outcome_error(outcome, KeyError("k") if status == "raised" else None)
    assert type(error) is expected or (status == "raised" and isinstance(error, KeyError))
    assert isinstance(error, TaskFailed)
    if status == "raised":
        assert isinstance(error, RemoteError) and error.remote_traceback == "Traceback: here"
    if status == "lost":
        assert isinstance(error, WorkerLost) and error.exit_code == 3
    bare = outcome_error(Outcome(task_id="t-1", status=status))  # type: ignore[arg-type]
    assert isinstance(bare, TaskFailed)
    if status != "raised":  # (a "raised" outcome without its description is a lost one)
        assert type(bare) is expected
