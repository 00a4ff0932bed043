"""Run tasks in Azure Container Instances: :class:`AzureExecutor`, over plain REST.

ACI is an adapter on the batch family (:mod:`asyncexec.launchers.batch`):

* :mod:`._config`: :class:`AzureConfig`, plain data (no secret);
* :mod:`._auth`: credentials (a client secret, a managed identity, the
  Azure CLI), tokens refreshed ahead of expiry;
* :mod:`._arm`: the ARM client (retries, ``Retry-After``, token buckets,
  async operations);
* :mod:`._limits`: the quotas kept on the driver's side;
* :mod:`._blob`: Blob Storage (Shared Key, SAS URLs signed locally);
* :mod:`._adapter`: the four questions, and the groups created and deleted
  as the quotas allow;
* :mod:`._executor`: :class:`AzureLauncher` and :class:`AzureExecutor`;
* :mod:`._prune`: the groups a killed driver left, found by their tags
  (``asyncexec azure prune``).

Needs ``httpx`` (the ``azure`` extra). See docs/azure.md.
"""

from __future__ import annotations

from ._adapter import AciAdapter
from ._arm import ArmClient, ArmError
from ._auth import AzureCliCredential, ClientSecretCredential, Credential, ManagedIdentityCredential
from ._blob import BlobStore
from ._config import AzureConfig
from ._executor import AzureExecutor, AzureLauncher
from ._limits import ArmLimits
from ._prune import Leftover, find_leftovers, prune_groups

__all__ = [
    "AciAdapter",
    "ArmClient",
    "ArmError",
    "ArmLimits",
    "AzureCliCredential",
    "AzureConfig",
    "AzureExecutor",
    "AzureLauncher",
    "BlobStore",
    "ClientSecretCredential",
    "Credential",
    "Leftover",
    "ManagedIdentityCredential",
    "find_leftovers",
    "prune_groups",
]
