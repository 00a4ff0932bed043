"""How the command ends: its exit status, its one-line error, and the signals that stop it."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import sys

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SYSTEM, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EPILOG = """exit status: 0 all done; 1 some runs failed; 2 bad usage or a bad or damaged
experiment directory; 3 the system refused (disk full, I/O error, permission
denied); 4 an unexpected error (a bug: report it with --debug); 130 interrupted
(Ctrl-C, SIGTERM, asyncexec cancel; a second Ctrl-C exits at once).
Errors are one "asyncexec: ..." line; --debug or ASYNCEXEC_DEBUG=1 adds the traceback."""


class UsageError(Exception):
    """Bad usage found by a command (a bad target, option or directory): status 2."""


def explain(exc: BaseException, where: str | None) -> tuple[int, str]:
    """The exit status and the one-line message for an error that ended a command."""
    from ..experiment import StoreError
    from ..sweep import SweeperError

    inside = f" (in {where})" if where else ""
    while isinstance(exc, BaseExceptionGroup):  # tasks that failed together: the first says
        exc = exc.exceptions[0]
    if isinstance(exc, (StoreError, SweeperError, UsageError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"interrupted by {_SIGNALS.first or 'SIGINT'}{inside}"
    if isinstance(exc, sqlite3.DatabaseError):
        text = " ".join(str(exc).split())
        text = text if len(text) <= 160 else text[:157] + "..."
        if isinstance(exc, sqlite3.OperationalError) and any(
            word in text for word in ("full", "disk I/O", "readonly", "unable to open")
        ):
            return EXIT_SYSTEM, f"cannot write the experiment's database{inside}: {text}"
        return EXIT_USAGE, (
            f"an experiment database is damaged{inside}: {text}; "
            "move the directory aside and run again, or recover it with sqlite3's .recover"
        )
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return EXIT_SYSTEM, f"disk full{inside}: {exc}"
        return EXIT_SYSTEM, str(exc)
    return EXIT_BUG, f"unexpected error: {type(exc).__name__}: {exc}"


# -- signals --------------------------------------------------------------------------


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while no event loop was watching for it."""


class SignalHandling:
    """What SIGINT and SIGTERM do, from the command's start until the process ends.

    The first one stops the command: inside ``run``'s event loop by cancelling
    the run (``_stop_on_signals`` in ``_run``), elsewhere by raising
    :class:`_Interrupted`; either way the command ends with one ``asyncexec:``
    line and status 130.
    A second one, while the first is being handled, exits at once, with one
    ``asyncexec:`` line saying so. Once the command has said how it ends, a
    signal ends the process at once, silently, with that status (interpreter
    shutdown included: never a raw traceback).
    """

    def __init__(self) -> None:
        self.first: str | None = None  # the signal that stopped the command
        self.code: int | None = None  # the command's status, once it said how it ends
        self.debug = False
        self.saying = False  # the last line is being written
        self.pending = False  # a signal came meanwhile

    def install(self) -> None:
        """(Re)install the handlers: at start, and when an event loop gives them back."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def exiting(self, code: int, line: str | None = None) -> None:
        """The command ends with ``code``, after saying ``line`` on stderr.

        A signal while the line is written waits for it, then ends the process.
        """
        self.code = code
        self.saying = line is not None
        try:
            if line is not None:
                print(line, file=sys.stderr, flush=True)
        finally:
            self.saying = False
        if self.pending:
            _exit_now(code)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.saying:
            self.pending = True
            return
        if self.code is not None:
            _exit_now(self.code)
        if self.first is not None:
            self.again(name)
        self.first = name
        raise _Interrupted(name)

    def received(self, name: str, note: str) -> None:
        """A signal reached the event loop: the first is told with ``note``, a second exits."""
        if self.code is not None:
            _exit_now(self.code)
        if self.first is not None:
            self.again(name)
        self.first = name
        print(f"asyncexec: {name}: {note}", file=sys.stderr, flush=True)

    def again(self, name: str) -> None:
        """A second signal: exit now (the leases see this process gone; workers die with it)."""
        if self.debug:  # where the command was when it was told to stop
            import faulthandler

            faulthandler.dump_traceback(all_threads=True)
        print(
            f"asyncexec: {name} again: exiting now; `asyncexec run --continue` takes up "
            "what was left",
            file=sys.stderr,
            flush=True,
        )
        _exit_now(EXIT_INTERRUPTED)


def _exit_now(code: int) -> None:
    """End the process at once (no cleanup that could be interrupted), output flushed."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


_SIGNALS = SignalHandling()


def start_signal_handling() -> SignalHandling:
    """A fresh :class:`SignalHandling` for the command starting (not installed yet)."""
    global _SIGNALS
    _SIGNALS = SignalHandling()
    return _SIGNALS


def signal_handling() -> SignalHandling:
    """The signal handling of the command running."""
    return _SIGNALS
