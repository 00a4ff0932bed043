"""The ACI launcher (the batch family on :class:`AciAdapter`) and :class:`AzureExecutor`."""

from __future__ import annotations

import os

from ... import BaseExecutor
from ..._arguments import remembers_arguments
from ..._hooks import Hook, make_hooks
from ..._options import TaskOptions
from ...abc import Launcher
from ..batch import BatchLauncher
from ._adapter import AciAdapter
from ._arm import ArmClient
from ._auth import Credential
from ._blob import BlobStore
from ._config import AzureConfig
from ._limits import ArmLimits

__all__ = ["AzureExecutor", "AzureLauncher"]


class AzureLauncher(BatchLauncher):
    """Runs tasks in Azure Container Instances, ``config.chunk_size`` per container group.

    Args:
        config: where and how (:class:`AzureConfig`).
        credential: how to get ARM tokens (a client secret, a managed
            identity, the Azure CLI: see :mod:`asyncexec.launchers.azure`).
        storage_key: the storage account's key (default: the environment's
            ``AZURE_STORAGE_KEY``); it signs the SAS URLs the groups get and
            never leaves the driver.
        batch_window: seconds ``start`` calls are gathered into one array.
        keep_staging: keep the blobs of finished arrays.
        setup: a callable of no argument that each container group runs once,
            in the runtime's process, before the first task of its chunk
            that runs. If it raises, no task of the chunk runs: each fails
            with a :class:`~asyncexec.TaskLaunchError` that is also a
            :class:`~asyncexec.SetupFailed`, naming its exception, and the
            group ends (and is deleted) as any other.
        teardown: a callable of no argument that each container group runs
            once after the last task of its chunk, before that task's outcome
            is sent (so the group is not deleted under it: once every future
            has its outcome, every teardown has run). Not when setup raised,
            nor in a group deleted while it runs (a cancelled task alone in
            it, closing the executor with tasks running), nor in a runtime
            killed at a stuck task's time limit (the one that goes on with the
            chunk runs setup again). What it raises is printed on the
            container's stderr.
    """

    kind = "aci"
    #: A container group holds the image's files only: the user's modules travel by value.
    shares_files = False
    #: ``cpus`` per group (4 at most); ``memory_mb`` is the runtime's limit.
    honours_resources = frozenset({"cpus", "memory_mb"})

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        config: AzureConfig,
        credential: Credential,
        *,
        storage_key: str | None = None,
        batch_window: float = 0.05,
        keep_staging: bool = False,
        setup: Hook | None = None,
        teardown: Hook | None = None,
    ) -> None:
        if not isinstance(config, AzureConfig):
            raise TypeError(f"config must be an AzureConfig, got {config!r}")
        if not isinstance(credential, Credential):
            raise TypeError(f"credential must be a Credential, got {type(credential).__name__}")
        key = storage_key if storage_key is not None else os.environ.get("AZURE_STORAGE_KEY")
        if not key:
            raise ValueError("the storage account's key: storage_key= or AZURE_STORAGE_KEY")
        limits = ArmLimits.shared(
            (config.arm_endpoint, config.subscription_id, config.location),
            creates=config.create_quota,
            removals=config.delete_quota,
        )
        arm = ArmClient(
            credential,
            config.subscription_id,
            config.resource_group,
            config.location,
            endpoint=config.arm_endpoint,
            limits=limits,
        )
        blobs = BlobStore(
            config.storage_account,
            key,
            config.storage_container,
            endpoint=config.storage_endpoint,
        )
        super().__init__(
            AciAdapter(config, arm, blobs, storage_key=key),
            chunk_size=config.chunk_size,
            max_concurrent=config.max_concurrent,
            poll_interval=config.poll_interval,
            max_poll_interval=config.max_poll_interval,
            staging_dir=f"/{config.storage_container}/{config.staging_prefix.strip('/')}",
            batch_window=batch_window,
            keep_staging=keep_staging,
        )
        self.config = config
        self.hooks = make_hooks(setup, teardown, travel_to=type(self).__name__)

    def __repr__(self) -> str:
        c = self.config
        return f"AzureLauncher({c.subscription_id}/{c.resource_group}@{c.location})"


class AzureExecutor(BaseExecutor):
    """Run tasks in Azure Container Instances, over ARM's REST API and Blob Storage.

    Args:
        launcher: a configured :class:`AzureLauncher`.
        n_workers: tasks handed to ACI at once at most (queued or running;
            default 10,000): the quotas decide how many groups run.
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.

    ``config.chunk_size`` tasks share a container group, run one after the
    other by the project's one-file runtime, which the container fetches with
    its chunk over read-only SAS URLs; each outcome comes back as a blob as
    soon as its task ends. A task's future is PENDING until its container
    starts. ``time_limit`` is enforced in the container (a group stops
    billing even when the driver is gone). Cancelling a task deletes its
    group, or, in a chunk still running others, skips or interrupts it there.

    The ``setup`` and ``teardown`` hooks are the launcher's
    (:class:`AzureLauncher`): each container group runs them around its chunk.
    ``log_stdout`` / ``log_stderr`` (``TaskOptions``) name files on the
    driver's side: the container sends the task's whole output as blobs with
    its outcome, and the poller appends it all to those files (a file that
    cannot be written is a warning: the task has run).
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        launcher: AzureLauncher,
        n_workers: int | None = None,
        *,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        if not isinstance(launcher, AzureLauncher):
            raise TypeError(f"launcher must be an AzureLauncher, got {launcher!r}")
        super().__init__(
            10_000 if n_workers is None else n_workers, options=options, max_pending=max_pending
        )
        self.azure = launcher

    def _create_launcher(self) -> Launcher:
        return self.azure
