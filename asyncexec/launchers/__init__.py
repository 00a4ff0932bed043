"""Backends: each module holds a Launcher and the executor built on it."""

from .process import ProcessExecutor as ProcessExecutor
from .process import ProcessLauncher as ProcessLauncher
from .thread import ThreadExecutor as ThreadExecutor
from .thread import ThreadLauncher as ThreadLauncher

__all__ = ["ProcessExecutor", "ProcessLauncher", "ThreadExecutor", "ThreadLauncher"]
