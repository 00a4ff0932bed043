"""asyncexec: one async API to run functions in threads, processes and clusters.

See ``README.md`` for a tour; the error tree is drawn in ``asyncexec._exceptions``.

Importing the package is cheap: the error tree loads at once, the executors
and the rest on first use, so a worker starting in a container or on a
cluster node imports none of them.
"""

import importlib as _importlib
import typing as _typing

#: Every public name and the module that defines it: the one list. ``__all__``,
#: ``dir()`` and the lazy loading are derived from it.
_PUBLIC: dict[str, str] = {
    "AsyncExecError": "._exceptions",
    "BackendUnavailable": "._exceptions",
    "ExecutorClosed": "._exceptions",
    "LaunchError": "._exceptions",
    "RemoteError": "._exceptions",
    "SerializationError": "._exceptions",
    "SetupFailed": "._exceptions",
    "TaskBackendUnavailable": "._exceptions",
    "TaskCancelled": "._exceptions",
    "TaskDetached": "._exceptions",
    "TaskFailed": "._exceptions",
    "TaskLaunchError": "._exceptions",
    "TaskSerializationError": "._exceptions",
    "TaskTimeout": "._exceptions",
    "WorkerLost": "._exceptions",
    "BaseExecutor": "._executor",
    "ConfiguredExecutor": "._executor",
    "ExecutorStats": "._executor",
    "AsyncException": "._future",
    "AsyncResult": "._future",
    "Future": "._future",
    "FutureState": "._future",
    "InvalidStateError": "._future",
    "TaskInfo": "._future",
    "JobRef": "._messages",
    "Outcome": "._messages",
    "Resources": "._messages",
    "TaskSpec": "._messages",
    "TaskOptions": "._options",
    "handle_err": "._timed",
    "timed_run": "._timed",
    "__version__": "._version",
    "ConfigError": ".config",
    "AzureConfig": ".launchers.azure",
    "AzureExecutor": ".launchers.azure",
    "DockerExecutor": ".launchers.docker",
    "ProcessExecutor": ".launchers.process",
    "SlurmConfig": ".launchers.slurm",
    "SlurmExecutor": ".launchers.slurm",
    "SSHExecutor": ".launchers.ssh",
    "ThreadExecutor": ".launchers.thread",
    "LocalShell": ".shells",
    "SSHShell": ".shells",
}
#: Modules loaded with the package (cheap, and what every failure raises).
_EAGER = frozenset({"._exceptions", "._version"})

if _typing.TYPE_CHECKING:
    # The same names for type checkers, which cannot follow __getattr__:
    # tests/test_all_attributes.py keeps these imports and _PUBLIC equal.
    from ._exceptions import AsyncExecError as AsyncExecError
    from ._exceptions import BackendUnavailable as BackendUnavailable
    from ._exceptions import ExecutorClosed as ExecutorClosed
    from ._exceptions import LaunchError as LaunchError
    from ._exceptions import RemoteError as RemoteError
    from ._exceptions import SerializationError as SerializationError
    from ._exceptions import SetupFailed as SetupFailed
    from ._exceptions import TaskBackendUnavailable as TaskBackendUnavailable
    from ._exceptions import TaskCancelled as TaskCancelled
    from ._exceptions import TaskDetached as TaskDetached
    from ._exceptions import TaskFailed as TaskFailed
    from ._exceptions import TaskLaunchError as TaskLaunchError
    from ._exceptions import TaskSerializationError as TaskSerializationError
    from ._exceptions import TaskTimeout as TaskTimeout
    from ._exceptions import WorkerLost as WorkerLost
    from ._executor import BaseExecutor as BaseExecutor
    from ._executor import ConfiguredExecutor as ConfiguredExecutor
    from ._executor import ExecutorStats as ExecutorStats
    from ._future import AsyncException as AsyncException
    from ._future import AsyncResult as AsyncResult
    from ._future import Future as Future
    from ._future import FutureState as FutureState
    from ._future import InvalidStateError as InvalidStateError
    from ._future import TaskInfo as TaskInfo
    from ._messages import JobRef as JobRef
    from ._messages import Outcome as Outcome
    from ._messages import Resources as Resources
    from ._messages import TaskSpec as TaskSpec
    from ._options import TaskOptions as TaskOptions
    from ._timed import handle_err as handle_err
    from ._timed import timed_run as timed_run
    from ._version import __version__ as __version__
    from .config import ConfigError as ConfigError
    from .launchers.azure import AzureConfig as AzureConfig
    from .launchers.azure import AzureExecutor as AzureExecutor
    from .launchers.docker import DockerExecutor as DockerExecutor
    from .launchers.process import ProcessExecutor as ProcessExecutor
    from .launchers.slurm import SlurmConfig as SlurmConfig
    from .launchers.slurm import SlurmExecutor as SlurmExecutor
    from .launchers.ssh import SSHExecutor as SSHExecutor
    from .launchers.thread import ThreadExecutor as ThreadExecutor
    from .shells import LocalShell as LocalShell
    from .shells import SSHShell as SSHShell
else:
    for _name, _module in _PUBLIC.items():
        if _module in _EAGER:
            globals()[_name] = getattr(_importlib.import_module(_module, __name__), _name)
    del _name, _module


def __getattr__(name: str) -> _typing.Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncexec' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(_PUBLIC)
