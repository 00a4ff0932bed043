"""Submission for a batch launcher: ``start`` calls gathered into chunks and arrays.

* ``start`` calls made within ``batch_window`` seconds of each other become
  one array (several when there are more array tasks than the place allows
  per array, and one per CPUs/GPUs request); each array task runs
  ``chunk_size`` tasks with the one-shot runner.
* An array's archive (its job script, the runner, one input file per array
  task, ``tasks.json``) travels in the one round trip that submits it.
* ``max_concurrent`` bounds the array tasks running at once across all the
  launcher's arrays: a new array's throttle is what the others leave; the
  room of ended array tasks raises throttled arrays', then lets held
  submissions go.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid

import anyio
import msgspec

from ... import _runtime
from ..._exceptions import LaunchError
from ..._hooks import Hooks
from ..._messages import JobRef
from .files import _RUNNER_SOURCE, batch_file, tar
from .jobs import Array, BatchJob, Pending
from .outcomes import Outcomes

__all__ = ["Submission"]

log = logging.getLogger("asyncexec")


class Submission(Outcomes):
    """The part of :class:`BatchLauncher` that submits: chunks, arrays, throttles."""

    kind: str
    chunk_size: int
    max_concurrent: int | None
    max_array_size: int
    staging_dir: str | None
    _max_array_size: int | None
    _batch_window: float
    _to_cancel: list[BatchJob]
    _cancel_wanted: anyio.Event

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[Pending] = []
        self._submit_wanted = anyio.Event()
        self._reserved = 0  # of max_concurrent, for arrays being submitted
        self._submitting = 0  # submissions in flight
        self._submitted = anyio.Event()  # set when none is
        #: The executor's setup and teardown hooks, run by each array task's runner
        #: around its chunk (set by the launcher of a batch system).
        self.hooks = Hooks()

    def _ref(self, array_id: str, index: int, task_id: str, workdir: str) -> JobRef:
        return JobRef(
            kind=self.kind,
            native_id=f"{array_id}_{index}",
            host=self.adapter.host,
            workdir=workdir,
            task_id=task_id,
        )

    async def _submitter(self) -> None:
        while not self._closed:
            await self._submit_wanted.wait()
            self._submit_wanted = anyio.Event()
            await anyio.sleep(self._batch_window)  # let concurrent starts gather
            batch, self._pending = self._pending, []
            if batch and not self._closed:
                await self._submit(batch)

    async def _submit(self, batch: list[Pending]) -> None:
        size = self.chunk_size
        # An array's tasks share their CPUs and GPUs request: one group per request.
        groups: dict[tuple[int | None, int | None], list[Pending]] = {}
        for pending in batch:
            cpus, gpus = pending.task.cpus, pending.task.gpus
            key = (None if cpus is None else math.ceil(cpus), gpus)
            groups.setdefault(key, []).append(pending)
        per_array = min(self.max_array_size, self._max_array_size or self.max_array_size)
        self._submitting += 1
        try:
            async with anyio.create_task_group() as tg:
                held: list[Pending] = []
                for group in groups.values():
                    chunks = [group[i : i + size] for i in range(0, len(group), size)]
                    for start in range(0, len(chunks), per_array):
                        part = chunks[start : start + per_array]
                        throttle = self._throttle_for(len(part))
                        if throttle == 0:  # max_concurrent of ours may run already
                            held += [pending for chunk in part for pending in chunk]
                            continue
                        tg.start_soon(self._submit_array, part, throttle)
                if held:  # submitted once one of our array tasks ends
                    self._pending[:0] = held
        finally:
            self._submitting -= 1
            if not self._submitting:
                self._submitted.set()
                self._submitted = anyio.Event()

    def _throttle_for(self, chunks: int) -> int | None:
        """The throttle of a new array of ``chunks`` array tasks, reserved: what is left
        of ``max_concurrent`` once every array of ours may run what its own throttle
        lets it (0: nothing is left; None: no bound)."""
        bound = self.max_concurrent
        if bound is None:
            return None
        used = self._reserved + sum(array.may_run() for array in self._arrays.values())
        throttle = max(0, min(bound - used, chunks))
        self._reserved += throttle
        return throttle

    async def _rebalance(self) -> None:
        """Give the room of ended array tasks to arrays throttled below their open tasks,
        oldest first, then to held submissions."""
        bound = self.max_concurrent
        if bound is None:
            return
        room = bound - self._reserved - sum(array.may_run() for array in self._arrays.values())
        for array_id, array in sorted(self._arrays.items(), key=lambda item: int(item[0])):
            if room <= 0:
                break
            if array.throttle is None or array.throttle >= len(array.open):
                continue
            raised = min(len(array.open), array.throttle + room)
            if not await self.adapter.set_throttle(array_id, raised):
                continue
            room -= raised - array.throttle
            array.throttle = raised
        if room > 0 and self._pending:
            self._submit_wanted.set()

    async def _submit_array(self, chunks: list[list[Pending]], throttle: int | None) -> None:
        try:
            await self._submit_throttled(chunks, throttle)
        finally:
            self._reserved -= throttle or 0

    async def _submit_throttled(self, chunks: list[list[Pending]], throttle: int | None) -> None:
        assert self.staging_dir is not None
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        workdir = f"{self.staging_dir}/{name}"
        everyone = [pending for chunk in chunks for pending in chunk]
        local_logs: dict[str, tuple[str | None, str | None]] = {}
        for pending in everyone:
            task = pending.task
            if task.stdout_path or task.stderr_path:
                # log_stdout / log_stderr name files on the driver's side: the worker
                # writes beside its outcome, the poller brings the files back.
                local_logs[task.task_id] = (task.stdout_path, task.stderr_path)
                stem = f"{workdir}/out/{task.task_id}"
                pending.task = msgspec.structs.replace(
                    task,
                    stdout_path=f"{stem}.stdout" if task.stdout_path else None,
                    stderr_path=f"{stem}.stderr" if task.stderr_path else None,
                    logs_at_end=False,  # (the poller brings back the files it finds)
                )
        try:
            archive = self._archive(workdir, chunks, throttle)
            array_id = await self.adapter.submit(workdir, archive, len(everyone))
        except Exception as exc:
            error = exc if isinstance(exc, LaunchError) else LaunchError(f"cannot submit: {exc}")
            for pending in everyone:
                pending.error = error
                pending.done.set()
            return
        log.debug("submitted %d task(s) as %s array %s", len(everyone), self.adapter.name, array_id)
        array = self._arrays.setdefault(array_id, Array(workdir, throttle))
        for index, chunk in enumerate(chunks):
            array.open[index] = len(chunk)
            siblings: list[BatchJob] = []
            for pending in chunk:
                job = BatchJob(pending.task.task_id, array_id, index, workdir)
                job.logs = local_logs.get(job.task_id, (None, None))
                job.chunk = siblings
                siblings.append(job)
                array.remaining += 1
                self._jobs[job.task_id] = job
                pending.ref = self._ref(array_id, index, job.task_id, workdir)
                pending.done.set()
                if pending.abandoned:  # its start was cancelled while it was submitted
                    job.cancel_requested = True
                    self._to_cancel.append(job)
                    self._cancel_wanted.set()
        self._wake()

    def _archive(self, workdir: str, chunks: list[list[Pending]], throttle: int | None) -> bytes:
        """The tar archive of an array: its job script, its tasks, and their index."""
        limits = [
            sum(p.task.time_limit for p in chunk if p.task.time_limit is not None)
            for chunk in chunks
        ]
        unlimited = any(p.task.time_limit is None for chunk in chunks for p in chunk)
        # The worker stops a task at its limit and its watchdog the worker 10 s later.
        time_seconds = None if unlimited else math.ceil(max(limits) + 30)
        first = chunks[0][0].task  # every task of an array asks for the same (whole) CPUs, GPUs
        script = self.adapter.script(
            workdir,
            len(chunks),
            throttle,
            time_seconds=time_seconds,
            cpus=first.cpus,
            gpus=first.gpus,
        )
        files: dict[str, bytes] = {
            "job.sh": script.encode(),
            _runtime.MODULE_FILE: _RUNNER_SOURCE,
        }
        index: list[tuple[str, int]] = []
        for number, chunk in enumerate(chunks):
            tasks = [pending.task for pending in chunk]
            files[f"in/{number}.bin"] = batch_file(tasks, self.hooks)
            index.extend((task.task_id, number) for task in tasks)
        files["tasks.json"] = json.dumps(index).encode()
        return tar(files, directories=["in"])
