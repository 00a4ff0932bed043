"""``timed_run`` and ``handle_err``, as in Powerlift, built on stopit."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from ._codec import type_name
from ._exceptions import RemoteError
from ._stopit import load_stopit

__all__ = ["handle_err", "timed_run"]

T = TypeVar("T")


def timed_run(f: Callable[[], T], timeout_seconds: float = 3600) -> tuple[T | None, float, bool]:
    """Call ``f()`` in this thread, stopping it after ``timeout_seconds``.

    The stop is stopit's ``ThreadingTimeout``: an exception raised in this
    thread at its next Python bytecode, so a call blocked in C finishes first.

    Returns:
        ``(result, duration, timed_out)``: ``result`` is None and ``duration``
        is ``timeout_seconds`` when it timed out. Exceptions from ``f`` propagate.
    """
    stopit = load_stopit()
    result: T | None = None
    start = time.perf_counter()
    with stopit.ThreadingTimeout(timeout_seconds) as context:
        result = f()
    duration = time.perf_counter() - start
    timed_out = bool(context.state == context.TIMED_OUT)
    if timed_out:
        return None, float(timeout_seconds), True
    return result, duration, False


def handle_err(err: BaseException) -> dict[str, str]:
    """Describe an error for a results table: its type, message and traceback.

    For a :class:`RemoteError` these are the remote exception's, not ours.
    """
    if isinstance(err, RemoteError):
        return {
            "type": err.remote_type,
            "message": err.remote_message,
            "traceback": err.remote_traceback,
        }
    return {
        "type": type_name(err),
        "message": str(err),
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }
