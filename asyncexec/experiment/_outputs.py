"""The process's stdout and stderr sent to files (``redirect_outputs``) or to files and
the terminal both (``copy_outputs``), as execo_engine's functions of those names do.

Both work on the file descriptors 1 and 2, not only on ``sys.stdout``: what the
engine's child processes print lands in the same files. Files are opened for
appending, so an experiment continued in its directory adds to them.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys

__all__ = ["copy_outputs", "redirect_outputs"]

#: The copying processes ``copy_outputs`` started: held for the life of the
#: process (never waited on; each ends by itself once the last writer is gone).
_COPIERS: list[subprocess.Popen[bytes]] = []

#: What a copying process runs (standard library only, in an isolated interpreter):
#: stdin to stdout and to the file named by its argument, until no writer is left.
_COPIER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # outlive the engine's Ctrl-C: copy its last words
target = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
outputs = [1, target]
while True:
    try:
        chunk = os.read(0, 65536)
    except OSError:  # a pty's reading end fails (EIO) once its last writer closed
        break
    if not chunk:
        break
    for fd in list(outputs):
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError:  # the terminal went away: keep the file
            outputs.remove(fd)
"""


def redirect_outputs(stdout_filename: str, stderr_filename: str) -> None:
    """Send this process's stdout and stderr to files from now on (appending).

    The same name twice merges both streams in one file. ``sys.stdout`` is
    reopened line-buffered on the new stdout, so that a ``print`` reaches the
    file at once and a killed engine loses nothing printed.

    Raises:
        OSError: a file cannot be opened.
    """
    _flush()
    _point(1, stdout_filename)
    _point(2, stderr_filename)
    _reopen_stdout()


def copy_outputs(stdout_filename: str, stderr_filename: str, use_pty: bool = False) -> None:
    """Copy this process's stdout and stderr to files (appending), as ``tee -a`` does.

    Each stream goes through a small copying process that writes it to where it
    went before and to the file. It ignores Ctrl-C and ends once every writer
    (this process and its children) has closed the stream, so the engine's last
    words, a traceback included, reach the file even when the engine is killed.
    The same name twice merges both streams in one file. ``use_pty`` makes the
    new stdout and stderr terminals (programs that check keep their colours and
    line buffering; a terminal writes line ends as ``\\r\\n``).

    Raises:
        OSError: a file cannot be opened or the copying process cannot start.
    """
    _flush()
    # Opened here, so that a file that cannot be opened is an error at once.
    for name in {stdout_filename, stderr_filename}:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    _tee(1, stdout_filename, use_pty)
    _tee(2, stderr_filename, use_pty)
    _reopen_stdout()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()


def _point(fileno: int, filename: str) -> None:
    fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, fileno)
    finally:
        os.close(fd)


def _tee(fileno: int, filename: str, use_pty: bool) -> None:
    reading, writing = pty.openpty() if use_pty else os.pipe()
    try:
        copier = subprocess.Popen(
            [sys.executable, "-I", "-c", _COPIER, filename],
            stdin=reading,
            stdout=fileno,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C or a signal to the engine's group leaves it be.
            start_new_session=True,
        )
        _COPIERS.append(copier)
        os.dup2(writing, fileno)
    finally:
        os.close(reading)
        os.close(writing)


def _reopen_stdout() -> None:
    old = sys.stdout
    encoding = getattr(old, "encoding", None) or "utf-8"
    errors = getattr(old, "errors", None) or "strict"
    # closefd=False: fd 1 stays open whatever becomes of this object or the one before.
    sys.stdout = open(1, "w", buffering=1, encoding=encoding, errors=errors, closefd=False)  # noqa: SIM115
