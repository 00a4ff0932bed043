"""asyncexec: one async API to run functions in threads, processes and clusters.

See ``README.md`` for a tour; the error tree is drawn in ``asyncexec._exceptions``.

Importing the package is cheap: the error tree loads at once, the executors
and the rest on first use, so a worker starting in a container or on a
cluster node imports none of them.
"""

import importlib as _importlib
import typing as _typing

from ._exceptions import AsyncExecError as AsyncExecError
from ._exceptions import BackendUnavailable as BackendUnavailable
from ._exceptions import ExecutorClosed as ExecutorClosed
from ._exceptions import LaunchError as LaunchError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import SerializationError as SerializationError
from ._exceptions import TaskBackendUnavailable as TaskBackendUnavailable
from ._exceptions import TaskCancelled as TaskCancelled
from ._exceptions import TaskFailed as TaskFailed
from ._exceptions import TaskLaunchError as TaskLaunchError
from ._exceptions import TaskSerializationError as TaskSerializationError
from ._exceptions import TaskTimeout as TaskTimeout
from ._exceptions import WorkerLost as WorkerLost
from ._version import __version__ as __version__

if _typing.TYPE_CHECKING:
    from ._executor import BaseExecutor as BaseExecutor
    from ._executor import ConfiguredExecutor as ConfiguredExecutor
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
    from .launchers.docker import DockerExecutor as DockerExecutor
    from .launchers.process import ProcessExecutor as ProcessExecutor
    from .launchers.slurm import SlurmConfig as SlurmConfig
    from .launchers.slurm import SlurmExecutor as SlurmExecutor
    from .launchers.ssh import SSHExecutor as SSHExecutor
    from .launchers.thread import ThreadExecutor as ThreadExecutor
    from .shells import LocalShell as LocalShell
    from .shells import SSHShell as SSHShell

_LAZY = {
    "BaseExecutor": "._executor",
    "ConfiguredExecutor": "._executor",
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
    "DockerExecutor": ".launchers.docker",
    "ProcessExecutor": ".launchers.process",
    "SlurmConfig": ".launchers.slurm",
    "SlurmExecutor": ".launchers.slurm",
    "SSHExecutor": ".launchers.ssh",
    "ThreadExecutor": ".launchers.thread",
    "LocalShell": ".shells",
    "SSHShell": ".shells",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncexec' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncException",
    "AsyncExecError",
    "AsyncResult",
    "BackendUnavailable",
    "BaseExecutor",
    "ConfiguredExecutor",
    "DockerExecutor",
    "ExecutorClosed",
    "Future",
    "FutureState",
    "InvalidStateError",
    "JobRef",
    "LaunchError",
    "LocalShell",
    "Outcome",
    "ProcessExecutor",
    "RemoteError",
    "Resources",
    "SSHExecutor",
    "SSHShell",
    "SerializationError",
    "SlurmConfig",
    "SlurmExecutor",
    "TaskBackendUnavailable",
    "TaskCancelled",
    "TaskFailed",
    "TaskInfo",
    "TaskLaunchError",
    "TaskOptions",
    "TaskSerializationError",
    "TaskSpec",
    "TaskTimeout",
    "ThreadExecutor",
    "WorkerLost",
    "__version__",
    "handle_err",
    "timed_run",
]
