"""asyncexec: one async API to run functions in threads, processes and clusters.

See ``README.md`` for a tour; the error tree is drawn in ``asyncexec._exceptions``.
"""

from ._exceptions import AsyncExecError as AsyncExecError
from ._exceptions import BackendUnavailable as BackendUnavailable
from ._exceptions import ExecutorClosed as ExecutorClosed
from ._exceptions import LaunchError as LaunchError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import SerializationError as SerializationError
from ._exceptions import TaskCancelled as TaskCancelled
from ._exceptions import TaskFailed as TaskFailed
from ._exceptions import TaskTimeout as TaskTimeout
from ._exceptions import WorkerLost as WorkerLost
from ._executor import BaseExecutor as BaseExecutor
from ._executor import ConfiguredExecutor as ConfiguredExecutor
from ._future import AsyncException as AsyncException
from ._future import AsyncResult as AsyncResult
from ._future import Future as Future
from ._future import FutureState as FutureState
from ._future import TaskInfo as TaskInfo
from ._messages import JobRef as JobRef
from ._messages import Outcome as Outcome
from ._messages import Resources as Resources
from ._messages import TaskSpec as TaskSpec
from ._options import TaskOptions as TaskOptions
from ._timed import handle_err as handle_err
from ._timed import timed_run as timed_run
from ._version import __version__ as __version__
from .launchers.process import ProcessExecutor as ProcessExecutor
from .launchers.thread import ThreadExecutor as ThreadExecutor
from .shells import LocalShell as LocalShell

__all__ = [
    "AsyncException",
    "AsyncExecError",
    "AsyncResult",
    "BackendUnavailable",
    "BaseExecutor",
    "ConfiguredExecutor",
    "ExecutorClosed",
    "Future",
    "FutureState",
    "JobRef",
    "LaunchError",
    "LocalShell",
    "Outcome",
    "ProcessExecutor",
    "RemoteError",
    "Resources",
    "SerializationError",
    "TaskCancelled",
    "TaskFailed",
    "TaskInfo",
    "TaskOptions",
    "TaskSpec",
    "TaskTimeout",
    "ThreadExecutor",
    "WorkerLost",
    "__version__",
    "handle_err",
    "timed_run",
]
