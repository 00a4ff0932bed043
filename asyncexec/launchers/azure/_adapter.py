"""Azure Container Instances as a batch system: container groups over ARM, bytes in Blob
Storage.

The four questions of :class:`~asyncexec.launchers.batch.BatchAdapter`:

* **submit a chunk**: an array's blobs (the runtime, one input per chunk,
  ``tasks.json``, ``job.json``) are uploaded at once; its container groups,
  one per chunk, are created in the background (:meth:`AciAdapter.serve`) as
  the quotas allow: creates per 5 minutes and per hour, groups and cores of
  the region (read from the usages API), ``max_concurrent``. A chunk not
  created yet waits in the queue, as an array task waits in Slurm's.
* **ask the state of many**: ONE List Blobs of the staging prefix per round
  says which chunks started, which ended, which tasks wrote their outcome
  (read at once, before the chunk ends). Storage is not throttled by ARM; ARM
  GETs of groups come at a slow pace of their own (``check_interval``), only
  to catch what no blob tells: provisioning that failed, a container stuck
  waiting (an image that does not pull), a container that died without a
  word. What they say goes into the task's ``LaunchError`` / ``WorkerLost``.
* **cancel some**: a group whose tasks are all cancelled is DELETEd and stays
  in the queue until a GET says 404; a task inside a running chunk is named in
  the chunk's cancel blob, which the container reads every second.
* **move bytes**: blobs, through Shared Key on the driver's side, and SAS URLs
  (read-only per blob; create-only for outcomes) on the container's.

A chunk's group is deleted as soon as its container said it is over (its
``log/<i>.exit`` blob): groups count against the region's quota until then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..._exceptions import LaunchError
from ..._runtime import BOOT_BLOB
from ..batch import BatchAdapter, Opened, Queued, Verdict
from ..batch.files import untar
from ..batch.jobs import BatchJob
from ._config import AzureConfig, check_group_name
from ._prune import tag_time

if TYPE_CHECKING:
    from ._arm import ArmClient
    from ._blob import BlobStore

__all__ = ["AciAdapter"]

log = logging.getLogger("asyncexec")

#: Seconds the usages API is trusted before it is read again (when room is short).
USAGE_TTL = 30.0
#: Groups created at once.
CREATE_CONCURRENCY = 8
#: Seconds closing waits for ARM to confirm that the groups it deleted are gone.
CLOSE_CONFIRM = 120.0
#: What of a container's log to quote.
LOG_TAIL = 2000
#: ARM error codes that mean "no room now": the create waits and tries again.
QUOTA_CODES = frozenset(
    {
        "ContainerGroupQuotaReached",
        "StandardCoresQuotaReached",
        "QuotaExceeded",
        "ResourceRequestsThrottled",
        "ServiceUnavailable",
    }
)


class _Chunk:
    """One chunk of an array: one container group."""

    __slots__ = (
        "cancelled",
        "check_delay",
        "checked",
        "cpu",
        "created_at",
        "delete_sent",
        "exited",
        "index",
        "name",
        "next_check",
        "put_sent",
        "started",
        "state",
        "task_ids",
        "terminated_at",
        "verdict",
    )

    def __init__(self, name: str, index: int, task_ids: list[str], cpu: float) -> None:
        self.name = name
        self.index = index
        self.task_ids = task_ids
        self.cpu = cpu
        # queued (not created yet), creating (PUT under way), created, deleting
        # (cancelled: until ARM says 404), done (over: the reaper deletes its group), gone,
        # released (let go running, executor.detach(): a later driver's to delete)
        self.state = "queued"
        self.put_sent = False  # its group may exist
        self.delete_sent = False  # ARM took a DELETE of it
        self.cancelled = False  # cancelled while its PUT was under way: deleted after it
        self.created_at = 0.0
        self.next_check = 0.0
        self.check_delay = 0.0
        self.checked = False  # an ARM GET saw it (adopted chunks: whether it exists)
        self.started = False
        self.exited = False
        self.terminated_at: float | None = None
        self.verdict: Verdict | None = None

    @property
    def in_queue(self) -> bool:
        return self.state in ("queued", "creating", "created", "deleting")


class _Array:
    """An array: its blobs' prefix, its chunks, how its groups are made."""

    __slots__ = ("array_id", "chunks", "loaded", "prefix", "template", "throttle", "workdir")

    def __init__(self, array_id: str, workdir: str, prefix: str) -> None:
        self.array_id = array_id
        self.workdir = workdir
        self.prefix = prefix
        self.chunks: list[_Chunk] = []
        self.template: dict[str, Any] = {}
        self.throttle: int | None = None
        self.loaded = False  # its chunks are known (adopted arrays: read from tasks.json)

    def chunk_of(self, native_id: str) -> _Chunk | None:
        index = native_id.rpartition("_")[2]
        if index.isdigit() and int(index) < len(self.chunks):
            return self.chunks[int(index)]
        return None

    def running(self) -> int:
        return sum(chunk.state in ("creating", "created", "deleting") for chunk in self.chunks)


class AciAdapter(BatchAdapter):
    """Azure Container Instances reached through ``arm``, with bytes in ``blobs``."""

    kind = "aci"
    name = "Azure Container Instances"
    cancel_name = "DELETE"

    def __init__(
        self, config: AzureConfig, arm: ArmClient, blobs: BlobStore, *, storage_key: str = ""
    ) -> None:
        self.config = config
        #: What tags this adapter's groups (``asyncexec-launcher``), for ``prune``.
        self.id = secrets.token_hex(6)
        self._storage_key = storage_key  # for the Azure Files shares it mounts
        self.arm = arm
        self.blobs = blobs
        self._root = f"/{config.storage_container}/"
        self._arrays: dict[str, _Array] = {}
        self._by_workdir: dict[str, _Array] = {}
        self._names: set[str] = set()  # the last listing of the staging prefix
        self._work = anyio.Event()  # something to create or delete
        self._usage: tuple[float, int, float] | None = None  # when, others' groups, cores
        self._limits = (config.max_groups, config.max_cores)  # the region's, as read
        self._cancelled: dict[tuple[str, int], set[str]] = {}  # task ids, by chunk
        self._to_delete: list[_Chunk] = []
        self._backoff = 0.0  # seconds before creating again, after ARM said no room
        self._deleted: dict[str, _Chunk] = {}  # DELETE sent, 404 not seen yet

    def __repr__(self) -> str:
        c = self.config
        return f"AciAdapter({c.subscription_id}/{c.resource_group}@{c.location})"

    @property
    def host(self) -> str | None:
        return f"{self.config.subscription_id}/{self.config.resource_group}"

    def blob_name(self, path: str) -> str:
        """The blob a launcher's path names (``/<container>/<name>``)."""
        if not path.startswith(self._root):
            raise LaunchError(f"{path!r} is not in storage container {self._root!r}")
        return path[len(self._root) :]

    # -- opening ----------------------------------------------------------------------

    async def open(self) -> Opened:
        await self.blobs.ensure_container()
        await self._read_usage()
        # Each launcher polls for itself: the listing and the groups are its own.
        return Opened("", 100_000, ("aci", id(self)))

    async def _read_usage(self) -> None:
        """What others use of the region's groups and cores (ours left out)."""
        used = await self.arm.usages()
        groups, group_limit = used.get("ContainerGroups", (0, self.config.max_groups))
        cores, core_limit = used.get("StandardCores", (0, self.config.max_cores))
        self._limits = (
            min(group_limit, self.config.max_groups),
            min(core_limit, self.config.max_cores),
        )
        ours = self._ours()
        others = max(0, groups - len(ours))
        others_cores = max(0.0, cores - sum(c.cpu for c in ours))
        self._usage = (time.monotonic(), others, others_cores)

    # -- submission -------------------------------------------------------------------

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
        if gpus:
            raise LaunchError("asyncexec runs no GPU tasks in Azure Container Instances")
        try:
            cpu = self.config.group_cpu(cpus)
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
        job = {"chunks": chunks, "throttle": throttle, "cpu": cpu, "time_seconds": time_seconds}
        return json.dumps(job)

    async def submit(self, workdir: str, archive: bytes, tasks: int) -> str:
        prefix = self.blob_name(workdir)
        files = untar(archive)
        job = json.loads(files["/job.sh"])
        index = json.loads(files["/tasks.json"])
        existing = await self.blobs.get(f"{prefix}/job_id")
        if existing is not None:  # submitted before: the same id
            return existing.decode()
        array_id = f"{time.time_ns() // 1000}{secrets.randbelow(1000):03d}"
        uploads = {
            f"{prefix}/job.json": files["/job.sh"],
            f"{prefix}/tasks.json": files["/tasks.json"],
        }
        for path, data in files.items():
            if path.startswith("/in/"):
                uploads[f"{prefix}{path}"] = data
            elif path.endswith(".py"):
                uploads[f"{prefix}/runtime.py"] = data
        try:
            async with anyio.create_task_group() as tg:
                for name, data in uploads.items():
                    tg.start_soon(self.blobs.put, name, data)
            await self.blobs.put(f"{prefix}/job_id", array_id.encode())  # last: find() reads it
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.blobs.delete_prefix(f"{prefix}/")
            raise
        array = self._add_array(array_id, workdir, prefix)
        self._load(array, job, index)
        self._wake()
        log.debug("staged %d task(s) as ACI array %s (%d groups)", tasks, array_id, job["chunks"])
        return array_id

    def _add_array(self, array_id: str, workdir: str, prefix: str) -> _Array:
        array = self._arrays.get(array_id)
        if array is None:
            array = self._arrays[array_id] = _Array(array_id, workdir, prefix)
            self._by_workdir[workdir] = array
        return array

    def _load(self, array: _Array, job: dict[str, Any], index: list[list[Any]]) -> None:
        """Know ``array``'s chunks from its ``job.json`` and ``tasks.json``."""
        by_chunk: dict[int, list[str]] = {}
        for task_id, number in index:
            by_chunk.setdefault(int(number), []).append(str(task_id))
        array.template = job
        array.throttle = job.get("throttle")
        cpu = float(job.get("cpu") or self.config.cpu)
        array.chunks = [
            _Chunk(self._group_name(array.array_id, n), n, by_chunk.get(n, []), cpu)
            for n in range(int(job["chunks"]))
        ]
        array.loaded = True

    def _group_name(self, array_id: str, index: int) -> str:
        return check_group_name(f"{self.config.group_prefix}-{array_id}-{index}")

    async def set_throttle(self, array_id: str, throttle: int) -> bool:
        array = self._arrays.get(array_id)
        if array is None:
            return False
        array.throttle = throttle
        self._wake()
        return True

    def adopt(self, job: BatchJob) -> None:
        """Follow an array another driver submitted (re-attach): read on the next round."""
        self._add_array(job.array_id, job.workdir, self.blob_name(job.workdir))
        self._wake()

    # -- the background: creating and deleting groups ---------------------------------------

    def _wake(self) -> None:
        self._work.set()

    async def serve(self) -> None:
        while True:
            with anyio.move_on_after(self._backoff or USAGE_TTL):
                await self._work.wait()
            self._work = anyio.Event()
            try:
                await self._delete_done()
                await self._create_ready()
            except Exception:  # a bug of ours, say: the loop goes on, later
                log.exception("creating or deleting container groups failed; again")
                self._backoff = min(max(2 * self._backoff, 1.0), USAGE_TTL)

    def _ours(self) -> list[_Chunk]:
        """Our chunks whose group may exist: what they hold of the region's quota."""
        held = ("creating", "created", "deleting", "done")
        return [c for a in self._arrays.values() for c in a.chunks if c.state in held]

    def _room(self) -> tuple[int, float]:
        """Groups and cores the region has room for now."""
        ours = self._ours()
        others, others_cores = (0, 0.0) if self._usage is None else self._usage[1:]
        groups = self._limits[0] - others - len(ours)
        cores = self._limits[1] - others_cores - sum(c.cpu for c in ours)
        return groups, cores

    async def _create_ready(self) -> None:
        """Create the groups of queued chunks that the throttles and the region leave room
        for, oldest array first."""
        ready: list[tuple[_Array, _Chunk]] = []
        groups, cores = self._room()
        if groups <= 0 and (self._usage is None or time.monotonic() - self._usage[0] > USAGE_TTL):
            with contextlib.suppress(Exception):
                await self._read_usage()  # others may have left
                groups, cores = self._room()
        for array_id in sorted(self._arrays, key=int):
            array = self._arrays[array_id]
            room = None if array.throttle is None else array.throttle - array.running()
            for chunk in array.chunks:
                if chunk.state != "queued" or not array.loaded:
                    continue
                if room is not None and room <= 0:
                    break
                if groups <= 0 or cores < chunk.cpu:
                    break
                ready.append((array, chunk))
                groups -= 1
                cores -= chunk.cpu
                if room is not None:
                    room -= 1
        if not ready:
            return
        limiter = anyio.CapacityLimiter(CREATE_CONCURRENCY)

        async def create(array: _Array, chunk: _Chunk) -> None:
            async with limiter:
                await self._create(array, chunk)

        async with anyio.create_task_group() as tg:
            for array, chunk in ready:
                tg.start_soon(create, array, chunk)

    async def _create(self, array: _Array, chunk: _Chunk) -> None:
        chunk.state = "creating"  # counted against the room while it is being created
        try:
            body = self._group_body(array, chunk)
            chunk.put_sent = True
            await self.arm.create_group(chunk.name, body)
        except LaunchError as exc:
            # ARM's own retries are spent: a quota, or throttling that lasted, waits
            # (for room, for the bucket); a refusal, or ARM out of reach, refuses.
            code = str(getattr(exc, "code", ""))
            if code in QUOTA_CODES or getattr(exc, "status", 0) == 429:
                # No room after all (others', or groups we deleted not gone yet): later.
                chunk.state = "queued"
                self._usage = None
                self._backoff = min(max(2 * self._backoff, 1.0), USAGE_TTL)
                log.info("ACI has no room for group %s now (%s); waiting", chunk.name, code)
                return
            chunk.state = "done"
            chunk.verdict = Verdict(
                "refused", "REFUSED", None, f"ARM refused container group {chunk.name}: {exc}"
            )
            return
        except (OSError, TimeoutError) as exc:
            chunk.state = "queued"
            self._backoff = min(max(2 * self._backoff, 1.0), USAGE_TTL)
            log.warning("creating container group %s failed (%s); again", chunk.name, exc)
            return
        except BaseException:
            chunk.state = "created"  # it may exist: closing deletes it
            raise
        chunk.state = "created"
        self._backoff = 0.0
        chunk.created_at = time.monotonic()
        chunk.check_delay = self.config.check_interval[0]
        chunk.next_check = chunk.created_at + chunk.check_delay
        chunk.checked = True
        if chunk.cancelled:  # cancelled while it was created
            await self._kill(chunk)

    def _group_body(self, array: _Array, chunk: _Chunk) -> dict[str, Any]:
        config = self.config
        prefix = array.prefix
        expiry = time.time() + config.sas_lifetime
        secure = {
            "ASYNCEXEC_RUNTIME": self.blobs.sas_url(f"{prefix}/runtime.py", "r", expiry),
            "ASYNCEXEC_BATCH": self.blobs.sas_url(f"{prefix}/in/{chunk.index}.bin", "r", expiry),
            "ASYNCEXEC_CANCEL": self.blobs.sas_url(f"{prefix}/cancel/{chunk.index}", "r", expiry),
            "ASYNCEXEC_OUT": self.blobs.container_sas_url("c", expiry),
        }
        plain = {
            **config.environment,
            "ASYNCEXEC_PREFIX": prefix,
            "ASYNCEXEC_INDEX": str(chunk.index),
            "ASYNCEXEC_BLOB_VERSION": self.blobs.API_VERSION,
            "PYTHONUNBUFFERED": "1",
        }
        variables: list[dict[str, str]] = [{"name": k, "value": v} for k, v in plain.items()]
        variables += [{"name": k, "secureValue": v} for k, v in secure.items()]
        container: dict[str, Any] = {
            "image": config.image,
            "command": [config.python, "-c", BOOT_BLOB],
            "environmentVariables": variables,
            "resources": {"requests": {"cpu": chunk.cpu, "memoryInGB": config.memory_gb}},
        }
        properties: dict[str, Any] = {
            "osType": "Linux",
            "restartPolicy": "Never",
            "containers": [{"name": "task", "properties": container}],
        }
        if config.file_shares:
            shares = sorted(config.file_shares.items())
            properties["volumes"] = [
                {
                    "name": f"share{n}",
                    "azureFile": {
                        "shareName": share,
                        "storageAccountName": config.storage_account,
                        "storageAccountKey": self._storage_key,
                    },
                }
                for n, (share, _) in enumerate(shares)
            ]
            container["volumeMounts"] = [
                {"name": f"share{n}", "mountPath": path} for n, (_, path) in enumerate(shares)
            ]
        now = time.time()
        return {
            "location": config.location,
            "tags": {
                "asyncexec": "1",
                "asyncexec-launcher": self.id,
                "asyncexec-workdir": array.workdir,
                "asyncexec-created": tag_time(now),
                "asyncexec-expires": tag_time(now + config.ttl),
            },
            "properties": properties,
        }

    async def _delete_done(self) -> None:
        """Delete the groups of the chunks that are over (they hold quota until then)."""
        done, self._to_delete = self._to_delete, []
        if not done:
            return
        limiter = anyio.CapacityLimiter(CREATE_CONCURRENCY)

        async def delete(chunk: _Chunk) -> None:
            async with limiter:
                try:
                    await self._delete(chunk)
                except Exception as exc:
                    log.warning("deleting container group %s failed (%s); again", chunk.name, exc)
                    self._to_delete.append(chunk)

        async with anyio.create_task_group() as tg:
            for chunk in done:
                tg.start_soon(delete, chunk)

    async def _delete(self, chunk: _Chunk) -> None:
        """DELETE the group of a chunk that is over (or of any, closing): once."""
        before = chunk.state
        if before == "done":
            chunk.state = "gone"  # taken: the reaper, remove() and aclose() send one DELETE
        self._deleted[chunk.name] = chunk  # closing confirms (or sends) it, whatever happens
        try:
            await self.arm.delete_group(chunk.name)
        except BaseException:
            chunk.state = before
            raise
        chunk.delete_sent = True
        chunk.check_delay = self.config.check_interval[0] / 4
        chunk.next_check = time.monotonic() + chunk.check_delay
        self._wake()  # room for a queued chunk

    # -- polling ----------------------------------------------------------------------

    def knows(self, native_id: str) -> bool:
        """Only the arrays this adapter follows: their chunks are known from their blobs."""
        return native_id.partition("_")[0] in self._arrays

    async def states(self, ids: Sequence[str]) -> dict[str, Queued]:
        arrays = {native_id.partition("_")[0] for native_id in ids}
        await self._list()
        for array_id in arrays:
            array = self._arrays.get(array_id)
            if array is not None and not array.loaded:
                await self._load_adopted(array)
        await self._check_groups([self._arrays[a] for a in arrays if a in self._arrays])
        queued: dict[str, Queued] = {}
        wanted = set(ids)
        for array_id in arrays:
            array = self._arrays.get(array_id)
            if array is None:
                continue
            for chunk in array.chunks:
                native_id = f"{array_id}_{chunk.index}"
                if array_id not in wanted and native_id not in wanted:
                    continue
                if chunk.in_queue:
                    queued[native_id] = self._queued(chunk)
        return queued

    def _queued(self, chunk: _Chunk) -> Queued:
        if chunk.state == "queued":
            return Queued("QUEUED", True, "waiting for room (quota)", 1, "")
        if chunk.state == "deleting":
            return Queued("DELETING", not chunk.started, "deleted", 1, "")
        if chunk.started:
            return Queued("RUNNING", False, "", 1, "")
        return Queued("CREATING", True, "provisioning", 1, "")

    async def _list(self) -> None:
        """One List Blobs of the staging prefix: what started, ended, wrote its outcome."""
        prefix = self.config.staging_prefix.strip("/") + "/"
        self._names = set(await self.blobs.list(prefix))
        ended: list[tuple[_Array, _Chunk]] = []
        for array in self._arrays.values():
            for chunk in array.chunks:
                log_stem = f"{array.prefix}/log/{chunk.index}"
                if not chunk.started and f"{log_stem}.started" in self._names:
                    chunk.started = True
                if not chunk.exited and f"{log_stem}.exit" in self._names:
                    chunk.exited = True
                    if chunk.state == "created":
                        chunk.state = "done"
                        self._to_delete.append(chunk)
                        self._wake()
                    outcomes = (f"{array.prefix}/out/{task}.bin" for task in chunk.task_ids)
                    if not all(name in self._names for name in outcomes):
                        ended.append((array, chunk))
        if ended:
            await self._ended_early(ended)

    async def _ended_early(self, ended: list[tuple[_Array, _Chunk]]) -> None:
        """The verdict on chunks whose runner exited before writing every outcome (a
        task that killed it): its exit status and the end of its stderr."""
        names = [f"{a.prefix}/log/{c.index}.{end}" for a, c in ended for end in ("exit", "err")]
        found = await self.blobs.get_many(names)
        for array, chunk in ended:
            stem = f"{array.prefix}/log/{chunk.index}"
            text = found.get(f"{stem}.exit", b"").decode(errors="replace").strip()
            code = int(text) if text.lstrip("-").isdigit() else None
            tail = found.get(f"{stem}.err", b"")[-LOG_TAIL:].decode(errors="replace").strip()
            message = (
                f"the runner of container group {chunk.name} exited with status {code} "
                "before this task's outcome was written"
            ) + (f": {tail}" if tail else "")
            chunk.verdict = Verdict("lost", "EXITED", code, message)

    def written(self, job: BatchJob) -> bool:
        with contextlib.suppress(LaunchError):
            return f"{self.blob_name(job.workdir)}/out/{job.task_id}.bin" in self._names
        return False

    def verdict(self, native_id: str) -> Verdict | None:
        array = self._arrays.get(native_id.partition("_")[0])
        chunk = None if array is None else array.chunk_of(native_id)
        return None if chunk is None else chunk.verdict

    async def _load_adopted(self, array: _Array) -> None:
        """Read an adopted array's chunks; its chunks whose group another driver never
        created (killed before) are created here."""
        found = await self.blobs.get_many(
            [f"{array.prefix}/job.json", f"{array.prefix}/tasks.json"]
        )
        job = found.get(f"{array.prefix}/job.json")
        index = found.get(f"{array.prefix}/tasks.json")
        if job is None or index is None:
            # Its blobs are gone (removed once read by the driver that died, say): its
            # tasks left the queue without an outcome, lost once the grace has passed.
            log.warning("no ACI array is staged in %s any more", array.workdir)
            array.loaded = True
            return
        self._load(array, json.loads(job), json.loads(index))
        for chunk in array.chunks:
            chunk.state = "created"  # until a GET says otherwise
            chunk.checked = False
            chunk.next_check = 0.0
            chunk.check_delay = self.config.check_interval[0]
            if f"{array.prefix}/log/{chunk.index}.exit" in self._names:
                chunk.exited = True
                chunk.state = "done"
                self._to_delete.append(chunk)
        self._wake()

    async def _check_groups(self, arrays: list[_Array]) -> None:
        """The slow ARM checks: GET the groups whose turn it is."""
        now = time.monotonic()
        due = [
            chunk
            for array in arrays
            for chunk in array.chunks
            if (chunk.state == "created" and not chunk.exited and now >= chunk.next_check)
            or chunk.state == "deleting"
        ]
        # Groups deleted once over: gone for good once a GET says 404 (closing waits
        # only for those still there).
        due += [c for c in self._deleted.values() if c.delete_sent and now >= c.next_check]
        due = list({id(chunk): chunk for chunk in due}.values())
        if not due:
            return
        limiter = anyio.CapacityLimiter(CREATE_CONCURRENCY)

        async def check(chunk: _Chunk) -> None:
            async with limiter:
                try:
                    group = await self.arm.get_group(chunk.name)
                except (LaunchError, OSError, TimeoutError) as exc:
                    log.warning("reading container group %s failed (%s)", chunk.name, exc)
                    return
                await self._judge(chunk, group)

        async with anyio.create_task_group() as tg:
            for chunk in due:
                tg.start_soon(check, chunk)

    async def _judge(self, chunk: _Chunk, group: dict[str, Any] | None) -> None:
        """What a GET of ``chunk``'s group says of it."""
        now = time.monotonic()
        chunk.check_delay = min(chunk.check_delay * 2, self.config.check_interval[1])
        chunk.next_check = now + chunk.check_delay
        if group is None:
            self._deleted.pop(chunk.name, None)
            if chunk.state == "deleting":
                chunk.state = "gone"
            elif chunk.state != "created":
                pass  # over, and now gone: nothing more to know
            elif not chunk.checked and not chunk.put_sent:  # adopted: its driver died first
                chunk.state = "queued"
                chunk.checked = True
                self._wake()
            elif not chunk.exited:
                chunk.state = "gone"
                chunk.verdict = Verdict(
                    "lost",
                    "DELETED",
                    None,
                    f"container group {chunk.name} is gone without an outcome "
                    "(deleted outside asyncexec?)",
                )
            return
        chunk.checked = True
        if chunk.state in ("deleting", "gone"):
            return
        properties = group.get("properties", {})
        containers = properties.get("containers") or [{}]
        view = containers[0].get("properties", {}).get("instanceView") or {}
        current = view.get("currentState") or {}
        state = current.get("state", "")
        events = _events(properties.get("instanceView", {}).get("events"), view.get("events"))
        if properties.get("provisioningState") == "Failed":
            self._over(
                chunk,
                Verdict(
                    "refused",
                    "FAILED",
                    None,
                    f"Azure could not run container group {chunk.name}: provisioning failed"
                    + (f": {events}" if events else ""),
                ),
            )
        elif state == "Terminated" and not chunk.exited:
            if chunk.terminated_at is None:  # its last blob may be in the next listing
                chunk.terminated_at = now
                chunk.next_check = now
                return
            exit_code = current.get("exitCode")
            message = (
                f"the container of group {chunk.name} ended without an outcome "
                f"({current.get('detailStatus') or 'Terminated'}, exit code {exit_code})"
            )
            with contextlib.suppress(Exception):
                tail = (await self.arm.logs(chunk.name, "task"))[-LOG_TAIL:].strip()
                if tail:
                    message += ": " + tail
            if events:
                message += f" [{events}]"
            code = exit_code if isinstance(exit_code, int) else None
            self._over(chunk, Verdict("lost", "TERMINATED", code, message))
        elif state == "Running" or state == "Terminated":
            chunk.started = True
        elif now - chunk.created_at >= self.config.stuck_after and not chunk.started:
            waited = round(now - chunk.created_at)
            detail = current.get("detailStatus") or state or properties.get("provisioningState")
            self._over(
                chunk,
                Verdict(
                    "refused",
                    "WAITING",
                    None,
                    f"the container of group {chunk.name} did not start in {waited} s "
                    f"({detail})" + (f": {events}" if events else ""),
                ),
            )

    def _over(self, chunk: _Chunk, verdict: Verdict) -> None:
        chunk.verdict = verdict
        chunk.state = "done"
        self._to_delete.append(chunk)
        self._wake()

    # -- cancellation -------------------------------------------------------------------

    async def cancel(self, ids: Sequence[str]) -> str | None:
        refused = []
        for native_id in ids:
            array = self._arrays.get(native_id.partition("_")[0])
            chunk = None if array is None else array.chunk_of(native_id)
            if chunk is None:
                continue
            if chunk.state == "queued":
                chunk.state = "gone"  # never created
            elif chunk.state == "creating":
                chunk.cancelled = True  # deleted once its PUT returns
            elif chunk.state == "created":
                try:
                    await self._kill(chunk)
                except LaunchError as exc:
                    refused.append(f"{chunk.name}: {exc}")
        return "; ".join(refused) or None

    async def _kill(self, chunk: _Chunk) -> None:
        """DELETE a live chunk's group: in the queue until a GET says 404."""
        gone = not await self.arm.delete_group(chunk.name)
        chunk.state = "gone" if gone else "deleting"
        self._wake()

    async def mark(self, paths: Sequence[str]) -> None:
        changed: set[tuple[str, int]] = set()
        for path in paths:
            workdir, _, task_id = path.rpartition("/cancel/")
            array = self._by_workdir.get(workdir)
            if array is None:
                continue
            for chunk in array.chunks:
                if task_id in chunk.task_ids:
                    self._cancelled.setdefault((workdir, chunk.index), set()).add(task_id)
                    changed.add((workdir, chunk.index))
        for workdir, index in changed:
            names = "\n".join(sorted(self._cancelled[workdir, index])) + "\n"
            await self.blobs.put(f"{self.blob_name(workdir)}/cancel/{index}", names.encode())

    # -- bytes ----------------------------------------------------------------------------

    async def fetch(self, paths: Sequence[str]) -> dict[str, bytes]:
        names = {}
        for path in paths:
            name = self.blob_name(path)
            if name in self._names:  # what the last listing saw: no GET for a 404
                names[name] = path
        if not names:
            return {}
        found = await self.blobs.get_many(list(names))
        return {names[name]: data for name, data in found.items()}

    async def remove(self, directories: Sequence[str]) -> None:
        for workdir in directories:
            array = self._by_workdir.pop(workdir, None)
            if array is not None:
                for chunk in array.chunks:
                    if chunk.state in ("created", "done"):
                        with contextlib.suppress(LaunchError):
                            await self._delete(chunk)
                self._arrays.pop(array.array_id, None)
            for key in [key for key in self._cancelled if key[0] == workdir]:
                del self._cancelled[key]
            await self.blobs.delete_prefix(f"{self.blob_name(workdir)}/")

    async def find(self, staging_dir: str) -> list[tuple[str, str, str]]:
        prefix = self.blob_name(staging_dir) + "/"
        names = await self.blobs.list(prefix)
        runs = sorted({name[len(prefix) :].partition("/")[0] for name in names})
        wanted = [
            f"{prefix}{run}/{file}"
            for run in runs
            for file in ("job_id", "tasks.json")
            if f"{prefix}{run}/job_id" in names
        ]
        found = await self.blobs.get_many(wanted)
        refs = []
        for run in runs:
            job_id = found.get(f"{prefix}{run}/job_id")
            tasks = found.get(f"{prefix}{run}/tasks.json")
            if job_id is not None and tasks is not None:
                refs.append((run, job_id.decode(), tasks.decode()))
        return refs

    async def listing(self, workdir: str) -> tuple[str, set[str]]:
        prefix = self.blob_name(workdir)
        tasks = await self.blobs.get(f"{prefix}/tasks.json")
        names = await self.blobs.list(f"{prefix}/out/")
        return (tasks or b"").decode(), {name.rpartition("/")[2] for name in names}

    # -- closing ----------------------------------------------------------------------------

    async def release(self, ids: Sequence[str]) -> None:
        """Wait until the group of every chunk of ``ids`` has been created (the
        background goes on making them, as room allows), then leave those groups
        to run on: :meth:`aclose` deletes the others only. (A chunk whose group
        ARM never took, the caller gave up waiting for, is lost to a later driver.)

        Cancellation: stops the waiting; the groups not created by then are not.
        """
        chunks = []
        for native_id in ids:
            array = self._arrays.get(native_id.partition("_")[0])
            chunk = None if array is None else array.chunk_of(native_id)
            if chunk is not None:
                chunks.append(chunk)
        self._wake()
        # (Polled: the states change in many places of the background loop.)
        while any(chunk.state in ("queued", "creating") for chunk in chunks):  # noqa: ASYNC110
            await anyio.sleep(0.2)
        for chunk in chunks:
            if chunk.state == "created":
                chunk.state = "released"  # runs on: not ours to delete any more

    async def aclose(self) -> None:
        """Delete every group of ours still there and wait until ARM says they are gone
        (:data:`CLOSE_CONFIRM` at most), then close the connections.

        Cancellation: shielded.
        """
        with anyio.CancelScope(shield=True):
            try:
                left = {
                    chunk.name: chunk
                    for array in self._arrays.values()
                    for chunk in array.chunks
                    if chunk.state in ("creating", "created", "done", "deleting")
                }
                left.update(self._deleted)  # DELETEs sent, or cut short by the closing
                for chunk in left.values():
                    if chunk.state != "deleting" and not chunk.delete_sent:
                        with contextlib.suppress(Exception):
                            await self._delete(chunk)
                names = sorted(left)
                deadline = time.monotonic() + CLOSE_CONFIRM
                for name in names:
                    try:
                        await self.arm.wait_deleted(name, deadline)
                    except Exception as exc:
                        log.warning("ARM did not confirm that group %s is gone: %s", name, exc)
                self._deleted.clear()
            finally:
                with contextlib.suppress(Exception):
                    await self.arm.aclose()
                with contextlib.suppress(Exception):
                    await self.blobs.aclose()


def _events(*lists: Any) -> str:
    """The last few events of a group and its container, as one line."""
    seen = []
    for events in lists:
        for event in events or []:
            text = f"{event.get('name', '')}: {event.get('message', '')}".strip(": ")
            if text and text not in seen:
                seen.append(text)
    return "; ".join(seen[-5:])
