"""Slurm's words: what squeue's pending reasons and sacct's states say of an array task."""

from __future__ import annotations

import re

from ..._messages import OutcomeStatus

__all__ = ["judge_accounting", "never_runs"]

#: Array task states that mean the work is over and lost.
_LOST_STATES = {"OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "FAILED"}
#: Seconds to wait for the exit code of a task sacct calls FAILED with "0:0". slurmdbd
#: can show the row of a task that ended before its start was recorded with the final
#: state but not yet the exit code (seen here: a script failing 14 ms after it started).
_EXIT_CODE_GRACE = 5.0


def judge_accounting(
    state: str, exit_text: str, waited: float
) -> tuple[OutcomeStatus, int | None] | None:
    """What sacct's ``State`` and ``ExitCode`` of a task that left the queue without an
    outcome file say: ``(status, exit code)``, or None while they say nothing final yet.

    ``waited`` is how long the task has been gone from the queue.
    """
    code, _, signal = exit_text.partition(":")
    exit_code = int(code) if code.isdigit() else None
    if state == "TIMEOUT":
        return "timeout", exit_code
    if state == "CANCELLED":
        return "cancelled", exit_code
    if state in _LOST_STATES:
        unrecorded = state == "FAILED" and code in ("", "0") and signal in ("", "0")
        if unrecorded and waited < _EXIT_CODE_GRACE:
            return None  # the exit code may not be recorded yet
        return "lost", exit_code
    if state == "COMPLETED" and waited > 10:  # the file system had time to show the outcome
        return "lost", exit_code
    return None


#: States of an array task that has not started yet (the future stays PENDING).
_WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
#: Pending reasons that no other job's end can clear: only an administrator changing the
#: cluster, or a different request. (Limits on what a user or an account runs at once,
#: ``Resources``, ``Priority``, ``ReqNodeNotAvail`` for a node that is down or busy, held
#: jobs... clear by themselves or by a release, and are waited out.)
_NEVER_REASONS = {
    "PartitionConfig",  # more CPUs, memory... than the partition has
    "PartitionTimeLimit",  # more time than the partition's MaxTime
    "BadConstraints",  # features no node has
    "InvalidAccount",
    "InvalidQOS",
    "AccountNotAllowed",  # the partition's AllowAccounts/DenyAccounts
    "QOSNotAllowed",  # the partition's AllowQos/DenyQos
    "DependencyNeverSatisfied",
}
#: A QOS's or an association's limit on one job (or on one job's share of a node): the
#: job exceeds it, or asks for less than a QOS's minimum, whatever else runs.
_NEVER_LIMIT = re.compile(r"(QOS|Assoc)Max\w*Per(Job|Node)\w*|QOSMin\w*")
#: Seconds the partitions' node counts are kept (PartitionNodeLimit is doubtful without).
_PARTITIONS_TTL = 60.0


def never_runs(reason: str, nodes: int | None = None, partition_nodes: int | None = None) -> bool:
    """Whether a pending array task with squeue's ``reason`` can never start by itself.

    ``PartitionNodeLimit`` also shows while the partition's nodes are down: it is
    final only when the task asks for more ``nodes`` than the partition can ever
    give (``partition_nodes``: the lesser of its ``MaxNodes`` and ``TotalNodes``).
    """
    if reason == "PartitionNodeLimit":
        return nodes is not None and partition_nodes is not None and nodes > partition_nodes
    return reason in _NEVER_REASONS or _NEVER_LIMIT.fullmatch(reason) is not None
