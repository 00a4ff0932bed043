"""The Docker launcher: a pool of containers, warm or one per task (re-attachable).

:class:`DockerLauncher` is a launcher of the pool family: each container
(:class:`~._container.ContainerWorker`) runs the project's one worker. Warm,
``n_workers`` long-lived containers run one task at a time each; one-shot,
every task gets a container of its own (with its CPUs and GPUs), whose JobRef
names it so that another driver can collect its outcome (:mod:`._reattach`).

This module also owns the life of the containers on the engine: creating and
starting one (attached before it starts), removing it (once, shielded, and
retried while another removal is under way), watching for one whose create
call lost its answer, and the sweep at close that removes, by label, what
removal missed.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ..._aio import require_asyncio
from ..._exceptions import LaunchError
from ..._messages import JobRef, Outcome, Resources, TaskSpec
from .._pool import PoolJob, PoolLauncher, PoolWorker
from ._container import ContainerWorker
from ._engine import (
    AIOHTTP,
    CALL_TIMEOUT,
    CONFLICT,
    CONFLICT_RETRIES,
    NOT_FOUND,
    attach,
    close_engine,
    engine_error,
    error_status,
    log,
    maybe_done,
    open_engine,
    unreachable,
)
from ._reattach import collect
from ._spec import EXECUTOR_LABEL, NAME, ContainerSpec, Mode

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer


class DockerLauncher(PoolLauncher):
    """Runs each task in a Docker container (see the module's documentation).

    Args:
        image: the image; it must hold Python (same minor version as the
            driver) with asyncexec and cloudpickle installed.
        n_workers: warm containers (``mode="warm"``).
        mode: ``"oneshot"`` (a container per task) or ``"warm"``.
        python: the interpreter inside the image.
        cpus: CPUs per container (a fraction is fine); in one-shot mode a
            task's ``Resources(cpus=...)`` replaces it for its container.
        memory_mb: memory per container, swap included; a task that passes
            it is killed by the kernel and fails with ``WorkerLost``
            (state ``"OOMKilled"``).
        pids_limit: processes per container at most.
        network: the container's network: ``"none"`` (default: no network at
            all), ``"bridge"``, ``"host"`` or a network's name.
        read_only: a read-only root file system (``/tmp`` is then a tmpfs).
        user: ``"uid:gid"`` or a user name known to the image.
        env: environment variables of the containers.
        volumes: ``{host_path: container_path}``, or Docker's
            ``"host:container[:ro]"`` strings.
        labels: more labels for every container.
        workdir: the working directory inside the container.
        pull: pull the image when the engine does not have it (else a missing
            image is a :class:`LaunchError` naming it).
        url: the engine (default: ``DOCKER_HOST``, else the local socket).
        initializer: a callable each container's worker runs once at start.
        max_tasks_per_worker: replace a warm container after this many tasks.
        startup_timeout: seconds a container may take to start its worker.
        executor_id: the ``asyncexec.executor`` label (default: a new id).

    ``honours_resources``: ``cpus``, ``memory_mb`` and, in one-shot mode,
    ``gpus`` (see the module's documentation). :meth:`check_resources` also
    refuses more CPUs than the engine has, and in warm mode more than each
    container's ``cpus=``.
    """

    kind = "docker"

    def __init__(
        self,
        image: str,
        n_workers: int = 1,
        *,
        mode: Mode = "oneshot",
        python: str = "python3",
        cpus: float | None = None,
        memory_mb: int | None = None,
        pids_limit: int | None = None,
        network: str = "none",
        read_only: bool = False,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        volumes: Mapping[str, str] | Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        workdir: str | None = None,
        pull: bool = False,
        url: str | None = None,
        initializer: Callable[[], object] | None = None,
        max_tasks_per_worker: int | None = None,
        startup_timeout: float = 120.0,
        executor_id: str | None = None,
    ) -> None:
        if mode not in ("oneshot", "warm"):
            raise ValueError(f"mode must be 'oneshot' or 'warm', got {mode!r}")
        if mode == "oneshot" and max_tasks_per_worker is not None:
            raise ValueError("max_tasks_per_worker applies to mode='warm' only")
        self._spec = ContainerSpec(
            image,
            python=python,
            cpus=cpus,
            memory_mb=memory_mb,
            pids_limit=pids_limit,
            network=network,
            read_only=read_only,
            user=user,
            env=env,
            volumes=volumes,
            labels=labels,
            workdir=workdir,
        )
        super().__init__(
            n_workers,
            initializer=initializer,
            max_tasks_per_worker=1 if mode == "oneshot" else max_tasks_per_worker,
            eager=mode == "warm",
            startup_timeout=startup_timeout,
        )
        #: Containers at once: warm ones, or one-shot ones (one per running task).
        self.n_workers = n_workers
        self.image = image
        self.mode: Mode = mode
        self.fast_start = mode == "warm"  # one-shot: every task waits for its container
        if mode == "oneshot":  # each task's container gets its CPUs and GPUs
            self.honours_resources = frozenset({"cpus", "memory_mb", "gpus"})
        self._engine_cpus: int | None = None  # how many the engine has (read on opening)
        self._engine_id: str | None = None  # the engine's own ID (read on opening)
        # A one-shot container outlives a killed driver, and keeps the task's Outcome:
        # another driver can collect it (see ``wait``).
        self.reattachable = mode == "oneshot"
        self._container_of: dict[str, str] = {}  # task id -> its one-shot container's name
        self.memory_mb = memory_mb
        if executor_id is not None and not NAME.fullmatch(executor_id):
            raise ValueError(
                f"executor_id must be letters, digits, '_', '.' or '-' (at most 64), "
                f"got {executor_id!r}"
            )
        self.executor_id = executor_id or uuid.uuid4().hex[:12]
        self.url = url
        self._pull = pull
        self._names = itertools.count(1)
        self._token = uuid.uuid4().hex[:6]  # a reused executor_id never clashes with old names
        self._docker: aiodocker.Docker | None = None
        self._leftovers: dict[str, str] = {}  # container id -> name, not yet removed
        #: Names of containers whose create call lost its answer -> until when the
        #: engine may still make them (watched, and removed if it does).
        self._unsure: dict[str, float] = {}
        self._unsure_done: anyio.Event | None = None  # set when none is watched

    def __repr__(self) -> str:
        return (
            f"<DockerLauncher {self.image!r} {self.mode} executor={self.executor_id} "
            f"{len(self._workers)} containers>"
        )

    def _where(self) -> str:
        return f"image {self.image!r}"

    @property
    def connection_limit(self) -> int | None:
        """How many connections the open engine client may hold at once; None: no cap.

        Every attached container holds one for its whole life, so over a unix
        socket the client has no cap (aiohttp's default of 100 would deadlock
        a pool of 100 containers); over another transport it keeps its cap,
        and opening refuses a pool that needs more.

        Raises:
            RuntimeError: the launcher is not open (it has no client).
        """
        if self._docker is None:
            raise RuntimeError("the Docker launcher is not open: it has no engine client")
        limit = self._docker.connector.limit
        return limit or None

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        require_asyncio("the Docker backend", AIOHTTP)
        self._docker = await open_engine(self.url, self.n_workers)
        await self._check_image()
        with contextlib.suppress(Exception), anyio.fail_after(CALL_TIMEOUT):
            info = await self._docker.system.info()
            cpus = info.get("NCPU")
            self._engine_cpus = cpus if isinstance(cpus, int) and cpus > 0 else None
            engine = info.get("ID")
            self._engine_id = engine if isinstance(engine, str) and engine else None
        await super()._open()

    def check_resources(self, resources: Resources) -> str | None:
        problem = super().check_resources(resources)
        if problem is not None and resources.gpus is not None and self.mode == "warm":
            return f"{problem}: in mode='oneshot' it does (a container per task, with its GPUs)"
        cpus = resources.cpus
        if problem is not None or cpus is None:
            return problem
        engine = self._engine_cpus
        if self.mode == "oneshot":
            if engine is not None and cpus > engine:
                return (
                    f"DockerLauncher gives a one-shot container Resources.cpus={cpus:g} CPUs "
                    f"(NanoCpus), and the Docker engine has {engine}; ask for at most {engine}"
                )
            return None
        if engine is not None and math.ceil(cpus) > engine:
            return (
                f"DockerLauncher pins a task in a warm container to whole CPUs, and "
                f"Resources.cpus asks for {math.ceil(cpus)} (rounded up) where the Docker "
                f"engine has {engine}; ask for at most {engine}"
            )
        each = self._spec.cpus
        if each is not None and cpus > each:
            return (
                f"DockerLauncher's warm containers may use cpus={each:g} each, fewer than "
                f"Resources.cpus={cpus:g}; raise the executor's cpus=, or use mode='oneshot' "
                "(a container with the task's own cpus)"
            )
        return None

    async def _check_image(self) -> None:
        assert self._docker is not None
        try:
            await self._docker.images.inspect(self.image)
            return
        except Exception as exc:
            if error_status(exc) != NOT_FOUND:
                raise engine_error(f"inspect the image {self.image!r}", exc) from exc
        if not self._pull:
            raise LaunchError(
                f"the Docker engine has no image {self.image!r}: build it (see the Docker "
                "guide) or pass pull=True to pull it from a registry"
            )
        try:
            await self._docker.images.pull(self.image)
        except Exception as exc:
            raise engine_error(f"pull the image {self.image!r}", exc) from exc

    async def aclose(self) -> None:
        """Kill and remove every container of ours, then close the connection.

        Cancellation: shielded: a cancelled close must not strand containers.
        Every engine call in it is bounded in time.
        """
        with anyio.CancelScope(shield=True):
            try:
                await super().aclose()
                while self._unsure and self._docker is not None:  # (for a minute at most)
                    if self._unsure_done is None or self._unsure_done.is_set():
                        self._unsure_done = anyio.Event()
                    await self._unsure_done.wait()
                if self._docker is not None:
                    await self._sweep()
            finally:
                docker, self._docker = self._docker, None
                if docker is not None:
                    await close_engine(docker)

    async def _sweep(self) -> None:
        """Remove what removal missed (the engine was away): ours by label only."""
        assert self._docker is not None
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                found = await self._docker.containers.list(
                    all=True, filters={"label": [f"{EXECUTOR_LABEL}={self.executor_id}"]}
                )
        except Exception as exc:
            problem = str(exc) or type(exc).__name__
        else:
            for container in found:
                await self._remove(container, container.id[:12])
            # Named, never seen (a create whose answer was lost): gone now, or removed now.
            for key, name in list(self._leftovers.items()):
                if key == name:
                    await self._remove(self._docker.containers.container(name), name)
            problem = "the engine refused"
        if self._leftovers:
            log.warning(
                "could not remove %d container(s) of executor %s (%s); run "
                "`asyncexec docker prune --executor %s` once the engine is back",
                len(self._leftovers),
                self.executor_id,
                problem,
                self.executor_id,
            )

    # -- the seam -------------------------------------------------------------------

    async def _dispatch(self, job: PoolJob) -> None:
        if self.mode == "warm":
            await super()._dispatch(job)
            return
        if self._closed:
            raise LaunchError("the Docker launcher is closed")
        assert job.frame is not None
        # A container for this task alone; should it die first, its reader moves the job.
        worker = await self._spawn(job.task_id)
        assert isinstance(worker, ContainerWorker)
        self._container_of[job.task_id] = worker.name
        if job.finished:  # cancelled while its container started
            worker.kill()
            return
        self._hand(job, worker)

    async def start(self, task: TaskSpec) -> JobRef:
        """Start the task; one-shot, the JobRef names its container (re-attachable).

        Cancellation: the task is not handed over, and no container made for
        it is left: one being created or started is removed (shielded); one
        whose create lost its answer is watched and removed should the engine
        make it later. Warm, a worker started meanwhile joins the pool.
        """
        ref = await super().start(task)
        if self.mode == "warm":
            return ref
        name = self._container_of.get(task.task_id, task.task_id)
        return JobRef(kind=self.kind, native_id=name, host=self._engine_id, task_id=task.task_id)

    def can_follow(self, ref: JobRef) -> bool:
        """Whether ``ref`` names a one-shot container of ours on this engine (re-attach)."""
        return (
            super().can_follow(ref)
            and ref.task_id is not None
            and ref.host is not None
            and ref.host == self._engine_id
            and ref.native_id.startswith("asyncexec-")
        )

    def _local(self, ref: JobRef) -> JobRef | None:
        """The pool's ref of a one-shot task of this launcher still in its hands."""
        if self.mode == "warm" or ref.task_id is None or ref.task_id not in self._jobs:
            return None
        return JobRef(kind=self.kind, native_id=ref.task_id, host=ref.host)

    async def wait(self, ref: JobRef) -> Outcome:
        """The task's outcome; for a container another driver started, read from it.

        Cancellation: stops the waiting only.
        """
        local = self._local(ref)
        if local is not None:
            outcome = await super().wait(local)
            self._container_of.pop(ref.task_id or "", None)
            return outcome
        if self.mode == "oneshot" and self.can_follow(ref):
            if self._docker is None:
                raise LaunchError("the Docker launcher is not open")
            assert ref.task_id is not None
            return await collect(self._docker, ref.native_id, ref.task_id, self._remove)
        return await super().wait(ref)

    async def cancel(self, ref: JobRef) -> None:
        """Kill the task; a container another driver started is removed (idempotent).

        Cancellation: for a task of this launcher, as ``PoolLauncher.cancel``
        (its container is removed all the same once the kill is under way).
        For a re-attached container, the removal may be cut short and the
        container left; calling ``cancel`` again removes it.
        """
        local = self._local(ref)
        if local is not None:
            self._container_of.pop(ref.task_id or "", None)
            await super().cancel(local)
        elif self.mode == "oneshot" and self.can_follow(ref) and self._docker is not None:
            await self._remove(self._docker.containers.container(ref.native_id), ref.native_id)
        else:
            await super().cancel(ref)

    # -- containers -----------------------------------------------------------------

    def _background(self, fn: Callable[[], Any]) -> None:
        if self._tg is not None:
            self._tg.start_soon(fn)

    def _new_job(self, task: TaskSpec) -> PoolJob:
        if self.mode == "warm" or (task.cpus is None and task.gpus is None):
            return super()._new_job(task)
        # Its own container gets its CPUs and GPUs: its worker has nothing to pin.
        job = super()._new_job(msgspec.structs.replace(task, cpus=None, gpus=None))
        job.request = (task.cpus, task.gpus)
        return job

    async def _connect(self, task_id: str | None) -> PoolWorker:
        if self._docker is None:
            raise LaunchError("the Docker launcher is not open")
        name = f"asyncexec-{self.executor_id}-{self._token}-{next(self._names)}"
        job = self._jobs.get(task_id) if task_id is not None else None
        request = job.request if job is not None else None
        config = self._spec.config(name, self.executor_id, task_id, request)
        try:
            # Shielded: a request cancelled midway may still create the container, and
            # we would not know its id. A cancellation is seen at the next await below.
            with anyio.CancelScope(shield=True), anyio.fail_after(CALL_TIMEOUT):
                container = await self._docker.containers.create(config, name=name)
        except Exception as exc:
            if error_status(exc) == NOT_FOUND:
                raise LaunchError(f"the Docker engine has no image {self.image!r}") from exc
            if maybe_done(exc):
                # No answer (a timeout, a connection lost after the request was sent):
                # the engine may have made it all the same, or make it later still.
                # Its name finds it: removed now, and watched for a while.
                with anyio.CancelScope(shield=True):
                    if not await self._remove_made(name):
                        self._unsure[name] = anyio.current_time() + CALL_TIMEOUT
                        self._background(lambda: self._watch(name))
            raise engine_error(f"create a container from {self.image!r}", exc) from exc
        try:
            stream = attach(self._docker, container)
            await stream.__aenter__()  # attached before it starts: no output is missed
            try:
                await container.start()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await stream.close()
                raise
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._remove(container, name)
            if isinstance(exc, Exception) and not isinstance(exc, LaunchError):
                doing = f"start container {name}"
                if "DeviceRequests" in config["HostConfig"]:  # the likeliest reason, where none
                    gpus = config["HostConfig"]["DeviceRequests"][0]["Count"]
                    doing += f" with the {gpus} GPU(s) its task asks for (Resources(gpus={gpus}))"
                raise engine_error(doing, exc) from exc
            raise
        return ContainerWorker(self, container, stream, name)

    async def _remove_made(self, name: str) -> bool:
        """Remove the container named ``name``: True if the engine had made it."""
        assert self._docker is not None
        container = self._docker.containers.container(name)
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                await container.delete(force=True, v=True)
        except Exception as exc:
            if error_status(exc) == NOT_FOUND:
                return False  # not made, or not yet
            await self._remove(container, name)  # (retried, or left to the closing sweep)
        return True

    async def _watch(self, name: str) -> None:
        """Remove the container named ``name`` should the engine make it after its
        create call lost its answer, until the engine could still be making it."""
        try:
            while anyio.current_time() < self._unsure[name] and self._docker is not None:
                await anyio.sleep(0.5)
                try:
                    with anyio.fail_after(CALL_TIMEOUT):
                        await self._docker.containers.container(name).show()
                except Exception as exc:
                    log.debug("watching for container %s: %s", name, exc)
                    continue  # not made (yet), or the engine is away: look again
                with anyio.CancelScope(shield=True):
                    await self._remove(self._docker.containers.container(name), name)
                return
        finally:
            del self._unsure[name]
            if not self._unsure and self._unsure_done is not None:
                self._unsure_done.set()

    async def _remove(self, container: DockerContainer, name: str) -> bool:
        """Kill and remove a container (a forced removal). False when that failed.

        What could not be removed is remembered for the sweep at close.
        """
        failures = 0
        conflicts = 0
        while True:
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await container.delete(force=True, v=True)
            except Exception as exc:
                status = error_status(exc)
                if status == NOT_FOUND:  # gone
                    break
                log.debug("could not remove container %s: %s", name, exc)
                if status == CONFLICT and conflicts < CONFLICT_RETRIES:
                    # Another removal is under way (ours, from elsewhere): it may fail,
                    # so "gone" is only what the engine says once it is over.
                    conflicts += 1
                    await anyio.sleep(min(0.05 * 2**conflicts, 1.0))
                    continue
                failures += 1
                if unreachable(exc) or failures == 3 or status == CONFLICT:
                    self._leftovers[container.id] = name
                    return False
                await anyio.sleep(0.5 * failures)
            else:
                break
        self._leftovers.pop(container.id, None)
        return True
