"""What a killed driver left in Azure: container groups found by their tags, deleted."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._arm import ArmClient

__all__ = ["Leftover", "find_leftovers", "prune_groups", "tag_time"]

#: Seconds pruning waits for ARM to say the groups it deleted are gone.
PRUNE_CONFIRM = 300.0


@dataclasses.dataclass(frozen=True)
class Leftover:
    """A container group asyncexec made, as its tags describe it."""

    name: str
    created: str  #: when (ISO 8601, UTC)
    expires: str  #: when ``asyncexec azure prune`` may delete it without ``--all``
    workdir: str  #: the blobs of its array
    launcher: str  #: the id of the launcher that made it (``AciAdapter.id``)
    state: str  #: ARM's provisioning state

    def expired(self, now: float) -> bool:
        return bool(self.expires) and self.expires <= tag_time(now)


async def find_leftovers(arm: ArmClient) -> list[Leftover]:
    """Every container group of the resource group tagged by asyncexec.

    Cancellation: stops; it only reads.
    """
    found = []
    for group in await arm.list_groups():
        tags: dict[str, Any] = group.get("tags") or {}
        if tags.get("asyncexec") != "1":
            continue
        found.append(
            Leftover(
                name=str(group.get("name", "")),
                created=str(tags.get("asyncexec-created", "")),
                expires=str(tags.get("asyncexec-expires", "")),
                workdir=str(tags.get("asyncexec-workdir", "")),
                launcher=str(tags.get("asyncexec-launcher", "")),
                state=str(group.get("properties", {}).get("provisioningState", "")),
            )
        )
    return sorted(found, key=lambda leftover: (leftover.created, leftover.name))


async def prune_groups(
    arm: ArmClient, *, every: bool = False, delete: bool = False, now: float | None = None
) -> list[Leftover]:
    """The groups asyncexec left whose TTL has passed (``every``: all of asyncexec's,
    running drivers' included); deleted when ``delete``, and confirmed gone.

    Raises:
        TimeoutError: ARM did not confirm every deletion in :data:`PRUNE_CONFIRM`.

    Cancellation: deletions sent stay sent; run it again to confirm them.
    """
    moment = time.time() if now is None else now
    chosen = [g for g in await find_leftovers(arm) if every or g.expired(moment)]
    if not delete or not chosen:
        return chosen
    async with anyio.create_task_group() as tg:
        for leftover in chosen:
            tg.start_soon(arm.delete_group, leftover.name)
    deadline = time.monotonic() + PRUNE_CONFIRM
    for leftover in chosen:
        await arm.wait_deleted(leftover.name, deadline)
    return chosen


def tag_time(seconds: float) -> str:
    """A time as the groups' tags write it (ISO 8601, UTC, whole seconds): compared as
    text, it orders as the times do."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
