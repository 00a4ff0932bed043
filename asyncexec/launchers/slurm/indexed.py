"""Slurm's indexed arrays (:mod:`asyncexec.launchers.batch.indexed`): the job script
and the ``sbatch`` command; the rest is the shell adapter's and the batch family's."""

from __future__ import annotations

import shlex

from ..batch.adapter import BatchAdapter, Run
from ..batch.indexed import IndexedAdapter, ShellIndexed, indexed_job_script
from .adapter import SlurmAdapter

__all__ = ["SlurmIndexed", "indexed_adapter"]


class SlurmIndexed(ShellIndexed):
    """Indexed arrays on Slurm: ``sbatch --array=INDICES`` of one job script per array.

    Every attempt of array task ``N`` appends its output (stdout and stderr) to
    ``log/N.log`` (``--open-mode=append``), so an array task submitted again
    makes no new file.
    """

    adapter: SlurmAdapter

    def script(
        self,
        workdir: str,
        *,
        time_seconds: int | None,
        cpus: float | None,
        gpus: int | None,
    ) -> str:
        config = self.adapter.config
        header = [
            f"--output={workdir}/log/%a.log",
            "--open-mode=append",
            *config.sbatch_options(time_seconds=time_seconds, cpus=cpus, gpus=gpus),
        ]
        return indexed_job_script(
            [f"#SBATCH {shlex.quote(option)}" for option in header],
            config.prologue(),
            config.interpreter(),
            workdir,
            "$SLURM_ARRAY_TASK_ID",
        )

    def submit_command(self, indices: str) -> list[str]:
        return ["sbatch", "--parsable", f"--array={indices}", "job.sh"]


def indexed_adapter(adapter: BatchAdapter, run: Run) -> IndexedAdapter | None:
    """Slurm's :class:`IndexedAdapter` for ``adapter`` (see
    :func:`asyncexec.launchers.batch.indexed.indexed_adapter`)."""
    return SlurmIndexed(adapter, run) if isinstance(adapter, SlurmAdapter) else None
