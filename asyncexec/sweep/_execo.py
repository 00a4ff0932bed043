"""execo_engine's ParamSweeper files (``sweeps``, ``done``): read, never written."""

from __future__ import annotations

import logging
import os
import pickle
from typing import IO, Any

from ._sweep import HashableDict

__all__ = ["load_execo_pickle", "new_execo_done"]

log = logging.getLogger("asyncexec")


class _ExecoUnpickler(pickle.Unpickler):
    """Reads execo_engine's pickles, also where it is not installed: its HashableDict is ours."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("execo_engine.sweep", "HashableDict"):
            return HashableDict
        return super().find_class(module, name)


def load_execo_pickle(file: IO[bytes]) -> Any:
    """One pickle execo_engine wrote (its ``sweeps`` file, an entry of its ``done`` file)."""
    return _ExecoUnpickler(file).load()


def new_execo_done(file: IO[bytes], last: str | None, name: str) -> tuple[list[Any], str]:
    """The combinations execo appended to its ``done`` file since ``last`` was reached.

    execo appends each one, pickled: the file is read from where the last reading
    stopped (from the start again if it shrank or was replaced) up to the first
    entry that cannot be read (execo's half-written last one). Returns them and
    where the reading stopped (``device:inode:offset``).
    """
    status = os.fstat(file.fileno())
    identity = f"{status.st_dev}:{status.st_ino}:"
    start = 0
    if last is not None and last.startswith(identity):
        start = int(last[len(identity) :])
    if start > status.st_size:
        start = 0
    file.seek(start)
    combinations: list[Any] = []
    end = start
    while end < status.st_size:
        try:
            combinations.append(load_execo_pickle(file))
        except Exception as exc:
            log.warning("%s: execo's done file is unreadable from byte %d: %r", name, end, exc)
            break
        end = file.tell()
    return combinations, f"{identity}{end}"
