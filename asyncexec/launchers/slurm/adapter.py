"""Slurm as a batch system: ``sbatch``, ``squeue``, ``sacct``, ``scancel`` over a Shell.

The four questions of :class:`~asyncexec.launchers.batch.BatchAdapter`:
submit a chunk (``sbatch --array``, staged with the shell adapter's one
command), ask the state of many (one ``squeue`` for every live array),
cancel some (one ``scancel``), move bytes (tar over the shell's pipes).
Slurm's extras: ``sacct`` for tasks that left the queue without an outcome,
``scontrol update ArrayTaskThrottle`` for ``max_concurrent``, and the pending
reasons that never clear (:func:`never_runs`).
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Sequence

from ..._exceptions import LaunchError
from ..._messages import OutcomeStatus
from ...abc import Shell
from ..batch import Opened, Queued, ShellAdapter, job_script
from ..batch.adapter import Run
from ..batch.jobs import BatchJob
from .accounting import _PARTITIONS_TTL, _WAITING_STATES, judge_accounting, never_runs
from .config import SlurmConfig

__all__ = ["SlurmAdapter"]

log = logging.getLogger("asyncexec")


class SlurmAdapter(ShellAdapter):
    """Slurm reached through ``shell``, submitting as ``config`` says."""

    kind = "slurm"
    name = "Slurm"
    cancel_name = "scancel"
    scheduler_commands = frozenset({"squeue", "sacct"})
    submit_command = ("sbatch", "--parsable", "job.sh")

    def __init__(self, shell: Shell, config: SlurmConfig, run: Run) -> None:
        super().__init__(shell, run)
        self.config = config
        self._partitions: tuple[float, dict[str, int]] | None = None  # when read, nodes

    async def open(self) -> Opened:
        script = 'echo "$HOME"; scontrol show config'
        done = await self._run("scontrol", ["sh", "-c", script])
        if done.returncode != 0:
            raise LaunchError(
                f"cannot read the Slurm configuration through {self.shell!r}: "
                f"{done.stderr.decode(errors='replace').strip()}"
            )
        lines = done.stdout.decode(errors="replace").splitlines()
        home = lines[0].strip() if lines else ""
        settings: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
        size = settings.get("MaxArraySize", "")
        cluster = settings.get("ClusterName", "") + "@" + settings.get("SlurmctldHost[0]", "")
        max_array_size = int(size) if size.isdigit() and int(size) else 1001  # Slurm's default
        return Opened(home, max_array_size, self.place_of(cluster))

    def script(
        self,
        workdir: str,
        chunks: int,
        throttle: int | None,
        *,
        time_seconds: int | None,
        cpus: float | None,
        gpus: int | None,
    ) -> str:
        array = f"0-{chunks - 1}"
        if throttle is not None:
            array += f"%{throttle}"
        header = [
            f"--array={array}",
            f"--output={workdir}/log/%a.out",
            f"--error={workdir}/log/%a.err",
            *self.config.sbatch_options(time_seconds=time_seconds, cpus=cpus, gpus=gpus),
        ]
        directives = [f"#SBATCH {shlex.quote(option)}" for option in header]
        return job_script(
            directives,
            self.config.prologue(),
            self.config.interpreter(),
            workdir,
            "$SLURM_ARRAY_TASK_ID",
        )

    async def states(self, ids: Sequence[str]) -> dict[str, Queued]:
        """State, reason, nodes and partition of every array task squeue lists for ``ids``
        (arrays or tasks): one call for all.

        Cancellation: ``squeue`` is killed; it only reads.
        """
        done = await self._run(
            "squeue", ["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r|%D|%P"]
        )
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0 and "Invalid job id" not in stderr:
            raise LaunchError(f"squeue failed: {stderr.strip()}")
        queued: dict[str, Queued] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            native_id, state, reason, nodes, partition = (line.strip().split("|", 4) + [""] * 4)[:5]
            count = int(nodes) if nodes.isdigit() else None
            queued[native_id] = Queued(state, state in _WAITING_STATES, reason, count, partition)
        return queued

    async def cancel(self, ids: Sequence[str]) -> str | None:
        done = await self._run("scancel", ["scancel", *ids])
        if done.returncode != 0:
            return str(done.stderr.decode(errors="replace").strip())
        return None

    async def accounting(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """sacct's ``State`` and ``ExitCode`` of ``ids``, one call for all.

        Cancellation: ``sacct`` is killed; it only reads.
        """
        done = await self._run(
            "sacct",
            ["sacct", "--parsable2", "-n", "-X", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"],
        )
        states: dict[str, tuple[str, str]] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = line.strip().split("|")
            if len(fields) >= 3:
                states[fields[0]] = (fields[1].split()[0] if fields[1] else "", fields[2])
        return states

    def judge(
        self, state: str, exit_text: str, waited: float
    ) -> tuple[OutcomeStatus, int | None] | None:
        return judge_accounting(state, exit_text, waited)

    async def set_throttle(self, array_id: str, throttle: int) -> bool:
        """``scontrol update ArrayTaskThrottle``.

        Cancellation: it may or may not have taken; the bound holds either way.
        """
        update = ["scontrol", "update", f"JobId={array_id}", f"ArrayTaskThrottle={throttle}"]
        done = await self._run("scontrol", update)
        if done.returncode != 0:  # it ended meanwhile, say: the bound holds anyway
            log.warning("scontrol update: %s", done.stderr.decode(errors="replace").strip())
            return False
        return True

    def may_never_run(self, seen: Queued) -> bool:
        return seen.state == "PENDING" and (
            seen.reason == "PartitionNodeLimit" or never_runs(seen.reason)
        )

    async def hopeless(
        self, stuck: Sequence[tuple[BatchJob, Queued]]
    ) -> list[tuple[BatchJob, Queued]]:
        """Those of ``stuck`` whose reason :func:`never_runs` confirms (with the
        partitions' node counts for ``PartitionNodeLimit``).

        Cancellation: ``scontrol`` is killed; it only reads.
        """
        limits: dict[str, int] = {}
        if any(seen.reason == "PartitionNodeLimit" for _, seen in stuck):
            limits = await self._partition_nodes()
        doomed = []
        for job, seen in stuck:
            most = [limits[name] for name in seen.partition.split(",") if name in limits]
            if never_runs(seen.reason, seen.nodes, max(most) if most else None):
                doomed.append((job, seen))
        return doomed

    async def _partition_nodes(self) -> dict[str, int]:
        """The most nodes a job of each partition can have (MaxNodes, TotalNodes)."""
        now = time.monotonic()
        if self._partitions is not None and now - self._partitions[0] < _PARTITIONS_TTL:
            return self._partitions[1]
        done = await self._run("scontrol", ["scontrol", "-o", "show", "partition"])
        found: dict[str, int] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = dict(item.partition("=")[::2] for item in line.split() if "=" in item)
            total = fields.get("TotalNodes", "")
            if "PartitionName" in fields and total.isdigit():
                most = int(total)
                if fields.get("MaxNodes", "").isdigit():
                    most = min(most, int(fields["MaxNodes"]))
                found[fields["PartitionName"]] = most
        self._partitions = (now, found)
        return found
