"""The Docker launcher: a pool of containers, warm or one per task (re-attachable).

:class:`DockerLauncher` is a launcher of the pool family: each container
(:class:`~._container.ContainerWorker`) runs the project's one worker. Warm,
``n_workers`` long-lived containers run one task at a time each; one-shot,
every task gets a container of its own (with its CPUs and GPUs), whose JobRef
names it so that another driver can collect its outcome (:mod:`._reattach`).

Making and removing the containers on the engine is :mod:`._lifecycle`'s;
what a container's create request holds is :mod:`._spec`'s.

Each container's worker runs the ``setup`` hook when it starts and the
``teardown`` hook when its input ends while it is idle (see
:class:`~asyncexec.DockerExecutor`): with a teardown hook, a container the
pool lets go is told no more tasks come and exits by itself before it is
removed; without one it is removed at once.
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
from ..._arguments import remembers_arguments
from ..._exceptions import LaunchError
from ..._hooks import Hook
from ..._messages import JobRef, Outcome, Resources, TaskSpec
from ..pool import PoolJob, PoolLauncher, PoolWorker
from ..pool._launcher import tails
from ._container import ContainerWorker
from ._engine import (
    AIOHTTP,
    CALL_TIMEOUT,
    NOT_FOUND,
    close_engine,
    engine_error,
    error_status,
    open_engine,
)
from ._lifecycle import Containers
from ._reattach import collect
from ._spec import EXECUTOR_LABEL, NAME, ContainerSpec, Mode

if TYPE_CHECKING:
    import aiodocker


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
        setup: a callable each container's worker runs once at start (see
            :class:`~asyncexec.DockerExecutor`).
        teardown: a callable each container's worker runs once when it exits
            normally.
        initializer: ``setup``'s former name (give one or the other).
        max_tasks_per_worker: replace a warm container after this many tasks.
        startup_timeout: seconds a container may take to start its worker.
        executor_id: the ``asyncexec.executor`` label (default: a new id).

    ``honours_resources``: ``cpus``, ``memory_mb`` and, in one-shot mode,
    ``gpus`` (see the module's documentation). :meth:`check_resources` also
    refuses more CPUs than the engine has, and in warm mode more than each
    container's ``cpus=``.
    """

    kind = "docker"
    #: A container holds the image's files only: the user's modules travel by value.
    shares_files = False

    @remembers_arguments  # (for asyncexec.config.to_dict)
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
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
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
            setup=setup,
            teardown=teardown,
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
        self._containers = Containers(self.executor_id, self._background)

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
        self._docker = self._containers.docker = await open_engine(self.url, self.n_workers)
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
                await self._containers.close()
            finally:
                docker, self._docker = self._docker, None
                self._containers.docker = None
                if docker is not None:
                    await close_engine(docker)

    async def release(self) -> None:
        """One-shot: close, leaving the container of every task still running (each
        finishes its task and keeps the outcome in its log, for ``attach``); the
        others go as :meth:`aclose` removes them. Warm: raises, as for any launcher
        whose work ends with it.

        Raises:
            LaunchError: the launcher is warm.

        Cancellation: shielded, as :meth:`aclose`.
        """
        if self.mode != "oneshot":
            await super().release()
        with anyio.CancelScope(shield=True):
            for worker in list(self._workers):
                if isinstance(worker, ContainerWorker) and worker.jobs:
                    self._containers.kept.add(worker.name)
                    worker.let_go()
            await self.aclose()

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

    async def states(self, refs: Sequence[JobRef]) -> list[str]:
        """Where each one-shot task's container is, from one listing of asyncexec's
        containers: ``"queued"`` (created, not started), ``"running"``, or
        ``"ended"`` (exited, its outcome in its log; or gone).

        Raises:
            LaunchError: the engine could not be asked.

        Cancellation: the listing is stopped; it only reads.
        """
        if self._docker is None:
            raise LaunchError("the Docker launcher is not open")
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                found = await self._docker.containers.list(
                    all=True, filters={"label": [EXECUTOR_LABEL]}
                )
        except Exception as exc:
            raise engine_error("list containers", exc) from exc
        state_of: dict[str, str] = {}
        for container in found:
            for name in container["Names"] or ():
                state_of[str(name).lstrip("/")] = str(container["State"])
        words = {"created": "queued", "running": "running", "paused": "running"}
        return [
            words.get(state_of.get(ref.native_id, ""), "ended")
            if self.mode == "oneshot" and self.can_follow(ref)
            else "unknown"
            for ref in refs
        ]

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
            collected = await collect(
                self._docker, ref.native_id, ref.task_id, self._containers.remove
            )
            # Its log files, if it had any, were the driver's that started it: the
            # whole output its worker may have sent is not kept, only the tails.
            return tails(collected)
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
            container = self._docker.containers.container(ref.native_id)
            await self._containers.remove(container, ref.native_id)
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
        container, stream = await self._containers.create(name, config)
        return ContainerWorker(self, container, stream, name)
