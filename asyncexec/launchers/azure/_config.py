"""How every container group is made: :class:`AzureConfig` (plain data, no secret)."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence

__all__ = ["AzureConfig", "check_group_name"]

#: A container group's name: 1-63 of ``[a-z0-9]`` and ``-`` inside.
_GROUP_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
#: What one container group may ask for at most (ACI's per-group limits, Linux).
MAX_GROUP_CPUS = 4.0
MAX_GROUP_MEMORY_GB = 16.0


def check_group_name(name: str) -> str:
    """``name`` if ARM takes it as a container group's name, else ValueError."""
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a container group name: 1-63 of a-z, 0-9 and '-' inside")
    return name


@dataclasses.dataclass(frozen=True)
class AzureConfig:
    """Where and how tasks run in Azure Container Instances.

    Args:
        subscription_id: the subscription whose quota the groups use.
        resource_group: the resource group that holds them (it must exist).
        location: the region (``"westeurope"``).
        storage_account: the Blob Storage account for tasks and outcomes (its
            key is given to the launcher, never kept here).
        image: what each group runs: a Python of the driver's minor version,
            plus the libraries the tasks import (cloudpickle for functions
            defined in a script). Default ``python:<driver's X.Y>-slim``.
        python: the interpreter in the image.
        cpu: cores per group (a task's ``Resources(cpus=...)`` replaces it);
            4 at most.
        memory_gb: memory per group, 16 at most (a task's ``memory_mb`` is
            the runtime's limit on what the task adds, as on Slurm).
        chunk_size: tasks one group runs one after the other. One group per
            task meets the create quota (100 per 5 minutes) at once: chunk.
        max_concurrent: groups of the launcher at once (default: what the
            quota leaves, see ``max_groups``).
        max_groups: container groups of the subscription in the region at
            most (ACI's default quota); creates wait for room, read from the
            usages API.
        max_cores: standard cores likewise.
        create_quota: ``(creates, seconds)`` windows group creates stay within
            (ACI's defaults: 100 per 5 minutes, 300 per hour).
        delete_quota: the same for deletes.
        arm_reads_per_second: the pace of the slow ARM checks of groups.
        storage_container: the Blob Storage container (made if missing).
        staging_prefix: the blob prefix every array's blobs live under.
        group_prefix: the first word of every group's name.
        arm_endpoint: Azure Resource Manager (another cloud's, or a test's).
        storage_endpoint: the account's Blob endpoint (default
            ``https://<account>.blob.core.windows.net``; Azurite's is path-style).
        environment: variables of every container (not secret: they show in
            the group's definition).
        file_shares: Azure Files shares of the storage account mounted in
            every container, share name -> mount path (for tasks that read or
            write files; their values travel in the outcomes either way).
        poll_interval: seconds between looks at the outcomes (one List Blobs).
        max_poll_interval: the ceiling that interval grows to while nothing
            changes.
        check_interval: ``(first, most)`` seconds between the ARM checks of a
            group (provisioning failures, image pulls, lost containers): the
            first after creating, doubling up to the most.
        stuck_after: seconds a container may wait (an image that does not
            pull) before its tasks are refused and its group deleted.
        ttl: seconds after which ``asyncexec azure prune`` deletes a group
            nobody deleted (a driver killed for good), from its tags.
        sas_lifetime: seconds the SAS URLs a group gets stay valid.
    """

    subscription_id: str
    resource_group: str
    location: str
    storage_account: str
    image: str = f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim"
    python: str = "python3"
    cpu: float = 1.0
    memory_gb: float = 1.5
    chunk_size: int = 10
    max_concurrent: int | None = None
    max_groups: int = 100
    max_cores: int = 100
    create_quota: Sequence[tuple[int, float]] = ((100, 300.0), (300, 3600.0))
    delete_quota: Sequence[tuple[int, float]] = ((100, 300.0), (300, 3600.0))
    arm_reads_per_second: float = 2.0
    storage_container: str = "asyncexec"
    staging_prefix: str = "aci"
    group_prefix: str = "asyncexec"
    arm_endpoint: str = "https://management.azure.com"
    storage_endpoint: str | None = None
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict)
    file_shares: Mapping[str, str] = dataclasses.field(default_factory=dict)
    poll_interval: float = 1.0
    max_poll_interval: float = 10.0
    check_interval: tuple[float, float] = (15.0, 120.0)
    stuck_after: float = 600.0
    ttl: float = 86400.0
    sas_lifetime: float = 7 * 86400.0

    def __post_init__(self) -> None:
        for name in ("subscription_id", "resource_group", "location", "storage_account"):
            if not getattr(self, name):
                raise ValueError(f"AzureConfig.{name} is required")
        if not 0 < self.cpu <= MAX_GROUP_CPUS:
            raise ValueError(f"cpu must be in (0, {MAX_GROUP_CPUS:g}], got {self.cpu!r}")
        if not 0 < self.memory_gb <= MAX_GROUP_MEMORY_GB:
            raise ValueError(
                f"memory_gb must be in (0, {MAX_GROUP_MEMORY_GB:g}], got {self.memory_gb!r}"
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent!r}")
        check_group_name(f"{self.group_prefix}-0-0")
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", self.storage_container):
            raise ValueError(f"{self.storage_container!r} is not a Blob Storage container name")
        if not self.staging_prefix.strip("/"):
            raise ValueError("staging_prefix must name a prefix")
        for windows in (self.create_quota, self.delete_quota):
            for count, seconds in windows:
                if count < 1 or seconds <= 0:
                    raise ValueError(f"a quota window is (count >= 1, seconds > 0): {windows!r}")

    def group_cpu(self, cpus: float | None) -> float:
        """The cores of a group whose tasks ask for ``cpus`` (None: the config's).

        Raises:
            ValueError: more than a group may have.
        """
        cpu = self.cpu if cpus is None else float(cpus)
        if not 0 < cpu <= MAX_GROUP_CPUS:
            raise ValueError(
                f"a container group has at most {MAX_GROUP_CPUS:g} CPUs: asked for {cpu:g}"
            )
        return cpu
