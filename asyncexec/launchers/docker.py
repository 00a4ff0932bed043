"""Run tasks in Docker containers: :class:`DockerLauncher` and :class:`DockerExecutor`.

Every container runs the project's one worker, ``python -m asyncexec.worker
serve --stdio``, and speaks the process pool's framed protocol (handshake with
version check included) over the container's attached stdin and stdout, so
payloads never touch the container's file system and a read-only root works.
What the task prints arrives on the container's stderr and is copied to the
driver's.

Two modes:

* ``"oneshot"`` (the default): a new container for every task, killed and
  removed as soon as its outcome is read. The strongest isolation: nothing a
  task leaves behind reaches another. Re-attachable: the task's JobRef names
  its container, which outlives a killed driver and keeps the outcome in its
  log (the engine's ``local`` driver), where another driver's ``attach``
  reads it before removing the container.
* ``"warm"``: ``n_workers`` long-lived containers, each running one task at a
  time, as the process pool does; starting a container is paid once.

Every container carries the labels ``asyncexec.executor=<executor id>`` and
``asyncexec.worker=<name>`` (plus ``asyncexec.task=<task id>`` in one-shot
mode), and is removed when its work ends, whatever ends it; :func:`prune_containers`
(``asyncexec docker prune``) removes what a killed driver could not.

Resources (``TaskOptions.resources``): a one-shot container gets the task's
``cpus`` exactly (``NanoCpus``, over the launcher's ``cpus=``) and its ``gpus``
(a ``DeviceRequests`` entry for that many GPUs: an engine without them refuses
to start the container, and the task fails with that refusal, a
:class:`~asyncexec.LaunchError`). In a warm container ``cpus`` pins the worker
to whole CPUs while the task runs, as in the process pool, and ``gpus`` is
refused at ``submit``. ``memory_mb`` caps what the task may add to its worker's
address space in both modes (``RLIMIT_AS``), under the container's own
``memory_mb=``.

Docker is reached with aiodocker, which runs on asyncio only.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import msgspec

from .. import BaseExecutor
from .._aio import require_asyncio
from .._codec import take_frames
from .._exceptions import BackendUnavailable, LaunchError, describe_exit
from .._messages import ErrorInfo, JobRef, Outcome, Resources, TaskSpec
from .._options import TaskOptions, check_env
from ..abc import Launcher
from .pool import PoolJob, PoolLauncher, PoolWorker

if TYPE_CHECKING:
    import aiodocker
    from aiodocker.containers import DockerContainer
    from aiodocker.stream import Stream

__all__ = [
    "EXECUTOR_LABEL",
    "DockerExecutor",
    "DockerLauncher",
    "check_image",
    "prune_containers",
]

log = logging.getLogger("asyncexec")

#: The label naming the executor that made a container.
EXECUTOR_LABEL = "asyncexec.executor"
#: The label naming the container, as a worker of its executor.
WORKER_LABEL = "asyncexec.worker"
#: The label naming the task of a one-shot container.
TASK_LABEL = "asyncexec.task"

Mode = Literal["oneshot", "warm"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_NOT_FOUND = 404
_AIOHTTP = "aiodocker is built on aiohttp"
_CONFLICT = 409
#: Seconds to connect to the engine, and to wait for one API call that cleans up.
_CONNECT_TIMEOUT = 30.0
_CALL_TIMEOUT = 60.0
#: Times to ask again while the engine says another removal is under way (~1 min).
_CONFLICT_RETRIES = 64


def _import_aiodocker() -> Any:
    """aiodocker, or the install hint when it or aiohttp (its transport) is missing."""
    try:
        import aiodocker
        import aiohttp  # noqa: F401  (aiodocker imports it too: either missing lands here)
    except ImportError as exc:
        raise ImportError(
            f"the Docker backend needs aiodocker and aiohttp ({exc}): "
            "pip install 'asyncexec[docker]'"
        ) from exc
    return aiodocker


def _docker_error_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _maybe_done(exc: BaseException) -> bool:
    """Whether the engine may have done what a call that raised ``exc`` asked.

    Not when it answered (an HTTP status), nor when no connection was made; yes
    when the request may have reached it and its answer did not reach us (a
    timeout, a connection lost midway: aiodocker's status 900 for those too).
    """
    import aiohttp

    status = _docker_error_status(exc)
    if status is not None and status < 900:
        return False
    return not isinstance(exc.__context__, aiohttp.ClientConnectorError)


def _unreachable(exc: BaseException) -> bool:
    """Whether a Docker error says the engine itself could not be reached."""
    status = _docker_error_status(exc)
    return status == 900 or isinstance(exc, OSError)  # aiodocker's code for "cannot connect"


def _engine_error(doing: str, exc: BaseException) -> LaunchError:
    """The error to raise when the engine failed us while we were ``doing`` something."""
    if _unreachable(exc):
        return BackendUnavailable(f"cannot {doing}: the Docker engine is unreachable: {exc}")
    return LaunchError(f"cannot {doing}: {exc}")


async def _open_engine(url: str | None, connections: int = 0) -> aiodocker.Docker:
    """A client for the engine at ``url`` (default: DOCKER_HOST or the local socket).

    Every attached container holds one connection for its whole life, so the
    client must allow ``connections`` of them beside its API calls: aiohttp's
    default cap of 100 would deadlock a pool of 100 containers.
    """
    module = _import_aiodocker()  # the install hint when aiodocker or aiohttp is missing
    import aiohttp

    timeout = aiohttp.ClientTimeout(connect=_CONNECT_TIMEOUT, sock_connect=_CONNECT_TIMEOUT)
    where = url or os.environ.get("DOCKER_HOST") or "the local socket"
    try:
        docker: aiodocker.Docker = module.Docker(url=url, timeout=timeout)
        if isinstance(docker.connector, aiohttp.UnixConnector):
            path = docker.connector.path
            await docker.close()
            unlimited = aiohttp.UnixConnector(path, limit=0)
            docker = module.Docker(url="unix://localhost", connector=unlimited, timeout=timeout)
        elif docker.connector.limit and connections + 8 > docker.connector.limit:
            await docker.close()
            raise BackendUnavailable(
                f"{connections} containers need more connections than the client's "
                f"{docker.connector.limit} to {where}: use fewer workers"
            )
    except BackendUnavailable:
        raise
    except Exception as exc:  # aiodocker asserts when no socket exists and DOCKER_HOST is unset
        detail = str(exc) or "no DOCKER_HOST and no Docker socket"
        raise BackendUnavailable(f"no Docker engine to connect to at {where}: {detail}") from exc
    try:
        await docker.version()
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _close_engine(docker)
        if isinstance(exc, Exception):
            raise BackendUnavailable(f"cannot reach the Docker engine at {where}: {exc}") from exc
        raise
    return docker


async def _close_engine(docker: aiodocker.Docker) -> None:
    """Close the client and its connections (aiodocker leaves a connector it was given open)."""
    try:
        await docker.close()
    finally:
        await docker.connector.close()


def _attach(docker: aiodocker.Docker, container: DockerContainer) -> Stream:
    """A stream attached to the container's stdin, stdout and stderr.

    (aiodocker's ``attach`` first asks the engine whether the container has a
    TTY; ours never has, and that round trip is a tenth of a one-shot task's.)
    """
    from aiodocker.stream import Stream
    from yarl import URL

    query: dict[str, str | int] = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
    query.update(logs=0, detachKeys="")

    async def setup() -> tuple[URL, bytes | None, bool]:
        return URL(f"containers/{container.id}/attach").with_query(query), None, False

    return Stream(docker, setup, None)


def _binds(volumes: Mapping[str, str] | Sequence[str]) -> list[str]:
    """Docker ``Binds`` from ``{host: container}`` or ``"host:container[:ro]"`` strings."""
    if isinstance(volumes, Mapping):
        items = [f"{host}:{container}" for host, container in volumes.items()]
    elif isinstance(volumes, str):
        raise TypeError("volumes must be a mapping or a list of 'host:container[:mode]' strings")
    else:
        items = list(volumes)
    for item in items:
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise ValueError(f"a volume must read 'host:container[:ro|rw]', got {item!r}")
        if not parts[1].startswith("/"):
            raise ValueError(f"a volume's container path must be absolute, got {item!r}")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise ValueError(f"a volume's mode must be 'ro' or 'rw', got {item!r}")
    return items


class _AttachedOutput(anyio.abc.ByteReceiveStream):
    """The container's stdout (the protocol); its stderr is copied to ours."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._pending = b""
        self._stderr = codecs.getincrementaldecoder("utf-8")("replace")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._pending:
            try:
                message = await self._stream.read_out()
            except Exception as exc:  # aiohttp's errors when the engine goes away
                raise anyio.BrokenResourceError from exc
            if message is None:
                raise anyio.EndOfStream
            if message.stream == 2:
                self._copy_stderr(message.data)
            else:
                self._pending = message.data
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def _copy_stderr(self, data: bytes) -> None:
        text = self._stderr.decode(data)
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, AttributeError, ValueError):  # no stderr, or a closed one
            log.debug("a container's stderr: %s", text.rstrip())

    async def aclose(self) -> None:
        await self._stream.close()


class _AttachedInput(anyio.abc.ByteSendStream):
    """The container's stdin."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def send(self, item: bytes) -> None:
        try:
            await self._stream.write_in(item)
        except Exception as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        await self._stream.close()


class _Container(PoolWorker):
    """One container running the long-lived worker, reached through ``docker attach``."""

    def __init__(
        self,
        launcher: DockerLauncher,
        container: DockerContainer,
        stream: Stream,
        name: str,
    ) -> None:
        super().__init__(_AttachedInput(stream), _AttachedOutput(stream))
        self.launcher = launcher
        self.container = container
        self.stream = stream
        self.name = name
        self.oom_killed = False
        self._removal: anyio.Event | None = None  # set once our removal attempt ended

    def __repr__(self) -> str:
        return f"<container {self.name}>"

    def kill(self) -> None:
        self.dead = True
        if self._removal is None:
            self.launcher._background(self._remove)

    async def _remove(self) -> None:
        """Kill and remove the container (one call: a forced removal), once.

        If the engine refuses, the attach stream is closed all the same, so the
        reader ends and nobody waits for a container we could not stop; what is
        left is removed by the sweep when the launcher closes.
        """
        if self._removal is not None:
            await self._removal.wait()
            return
        self._removal = anyio.Event()
        try:
            # Shielded: a removal cut short by a cancellation would leave the container.
            with anyio.CancelScope(shield=True):
                if not await self.launcher._remove(self.container, self.name):
                    with contextlib.suppress(Exception):
                        await self.stream.close()
        finally:
            self._removal.set()

    async def close_input(self) -> None:
        self.kill()  # an idle container holds no work: removing it loses nothing

    async def wait_exit(self) -> int | None:
        if self._removal is not None and not self.jobs:
            return None  # we are removing it, and nobody needs its exit status
        try:
            status = await self.container.wait()
            with anyio.fail_after(_CALL_TIMEOUT):
                state = (await self.container.show())["State"]
        except Exception as exc:  # removed already, or the engine is gone
            log.debug("waiting for container %s: %s", self.name, exc)
            return None
        self.oom_killed = bool(state.get("OOMKilled"))
        code = status.get("StatusCode")
        return code if isinstance(code, int) else None

    def describe_exit(self, exit_code: int | None) -> tuple[str, str | None]:
        limit = self.launcher.memory_mb
        if self.oom_killed:
            cap = f" of {limit} MiB" if limit is not None else ""
            return (
                f"container {self.name} ran out of memory: the kernel killed it at its "
                f"memory limit{cap} (OOMKilled)",
                "OOMKilled",
            )
        if exit_code is None:
            return f"container {self.name} vanished (is the Docker engine running?)", None
        if exit_code > 128:  # the shell's convention: 128 + the signal
            _, name = describe_exit(128 - exit_code)
            return f"container {self.name} was killed by {name} (exit {exit_code})", name
        if exit_code in (126, 127):  # its init could not run the worker's interpreter
            python = self.launcher._python
            why = "not found" if exit_code == 127 else "not executable"
            return (
                f"the worker in container {self.name} could not start: {python!r} is "
                f"{why} in the image (exit {exit_code}; see python=)",
                None,
            )
        return f"the worker in container {self.name} exited with status {exit_code}", None

    async def aclose(self) -> None:
        try:
            await self.stream.close()
        except Exception as exc:
            log.debug("closing the stream of %s: %s", self.name, exc)
        await self._remove()


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
        if not isinstance(image, str) or not image:
            raise ValueError(f"image must be a non-empty string, got {image!r}")
        if mode == "oneshot" and max_tasks_per_worker is not None:
            raise ValueError("max_tasks_per_worker applies to mode='warm' only")
        for name, value in (("cpus", cpus), ("memory_mb", memory_mb), ("pids_limit", pids_limit)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not network:
            raise ValueError("network must name a network ('none' for no network)")
        super().__init__(
            n_workers,
            initializer=initializer,
            max_tasks_per_worker=1 if mode == "oneshot" else max_tasks_per_worker,
            eager=mode == "warm",
            startup_timeout=startup_timeout,
        )
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
        if executor_id is not None and not _NAME.fullmatch(executor_id):
            raise ValueError(
                f"executor_id must be letters, digits, '_', '.' or '-' (at most 64), "
                f"got {executor_id!r}"
            )
        self.executor_id = executor_id or uuid.uuid4().hex[:12]
        self.url = url
        self._python = python
        self._cpus = cpus
        self._pids_limit = pids_limit
        self._network = network
        self._read_only = read_only
        self._user = user
        self._env = check_env(env)
        self._binds = _binds(volumes)
        self._labels = {str(key): str(value) for key, value in (labels or {}).items()}
        for reserved in (EXECUTOR_LABEL, WORKER_LABEL, TASK_LABEL):
            if reserved in self._labels:
                raise ValueError(f"the label {reserved!r} is asyncexec's own")
        self._workdir = workdir
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

    # -- lifecycle ------------------------------------------------------------------

    async def _open(self) -> None:
        require_asyncio("the Docker backend", _AIOHTTP)
        self._docker = await _open_engine(self.url, self._n_workers)
        await self._check_image()
        with contextlib.suppress(Exception), anyio.fail_after(_CALL_TIMEOUT):
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
        if self._cpus is not None and cpus > self._cpus:
            return (
                f"DockerLauncher's warm containers may use cpus={self._cpus:g} each, fewer than "
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
            if _docker_error_status(exc) != _NOT_FOUND:
                raise _engine_error(f"inspect the image {self.image!r}", exc) from exc
        if not self._pull:
            raise LaunchError(
                f"the Docker engine has no image {self.image!r}: build it (see the Docker "
                "guide) or pass pull=True to pull it from a registry"
            )
        try:
            await self._docker.images.pull(self.image)
        except Exception as exc:
            raise _engine_error(f"pull the image {self.image!r}", exc) from exc

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
                    await _close_engine(docker)

    async def _sweep(self) -> None:
        """Remove what removal missed (the engine was away): ours by label only."""
        assert self._docker is not None
        try:
            with anyio.fail_after(_CALL_TIMEOUT):
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
        assert isinstance(worker, _Container)
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
            return await self._collect(ref)
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

    async def _collect(self, ref: JobRef) -> Outcome:
        """Wait for a one-shot container another driver started, read the task's
        Outcome from its stdout (its log), then remove it."""
        if self._docker is None:
            raise LaunchError("the Docker launcher is not open")
        name, task_id = ref.native_id, ref.task_id
        assert task_id is not None
        container = self._docker.containers.container(name)
        try:
            status = await container.wait()
        except Exception as exc:
            if _docker_error_status(exc) != _NOT_FOUND:
                raise _engine_error(f"wait for container {name}", exc) from exc
            return _lost(task_id, f"container {name} is gone, and its outcome with it", None)
        # Shielded: once read, the outcome is the caller's; only then does its container go.
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(_CALL_TIMEOUT):
                    output = await _stdout_of(self._docker, name)
            except Exception as exc:
                raise _engine_error(f"read the output of container {name}", exc) from exc
            await self._remove(container, name)
        outcome = _outcome_in(output, task_id)
        if outcome is not None:
            return outcome
        code = status.get("StatusCode")
        code = code if isinstance(code, int) else None
        text = f"container {name} ended (status {code}) without the task's outcome"
        return _lost(task_id, text, code)

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

    def _config(
        self,
        name: str,
        task_id: str | None,
        request: tuple[float | None, int | None] | None = None,
    ) -> dict[str, Any]:
        """A container's configuration; ``request``: its one task's CPUs and GPUs."""
        labels = {**self._labels, EXECUTOR_LABEL: self.executor_id, WORKER_LABEL: name}
        if task_id is not None:
            labels[TASK_LABEL] = task_id
        cpus, gpus = request or (None, None)
        if cpus is None:
            cpus = self._cpus
        # Init: the worker runs under the engine's init (docker-init, tini), not as PID 1,
        # which ignores signals it has no handler for (a task's SIGKILL to itself).
        host: dict[str, Any] = {"NetworkMode": self._network, "Binds": self._binds, "Init": True}
        if self.memory_mb is not None:
            host["Memory"] = host["MemorySwap"] = self.memory_mb * 2**20
        if cpus is not None:
            host["NanoCpus"] = round(cpus * 1e9)
        if gpus is not None:
            host["DeviceRequests"] = [{"Driver": "", "Count": gpus, "Capabilities": [["gpu"]]}]
        if self._pids_limit is not None:
            host["PidsLimit"] = self._pids_limit
        if task_id is not None:
            # The engine keeps what the worker writes to stdout (the protocol, the Outcome
            # included) byte for byte in a "local" log (json-file's mangles what is not
            # UTF-8): should the driver die, another collects the Outcome there.
            host["LogConfig"] = {"Type": "local", "Config": {}}
        if self._read_only:
            host["ReadonlyRootfs"] = True
            host["Tmpfs"] = {"/tmp": "rw,exec,mode=1777"}
        config: dict[str, Any] = {
            "Image": self.image,
            # One-shot, the task outlives a killed driver (--finish), for another to collect.
            "Cmd": [
                self._python,
                "-m",
                "asyncexec.worker",
                "serve",
                "--stdio",
                *(["--finish"] if task_id is not None else []),
            ],
            "Env": [f"{key}={value}" for key, value in self._env.items()],
            "Labels": labels,
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": True,
            # When the driver's connection goes (a killed driver), the worker reads
            # the end of its input and exits: a warm one killing the task it runs, a
            # one-shot one once its task's outcome is written out (--finish).
            "StdinOnce": True,
            "Tty": False,
            "HostConfig": host,
        }
        if self._network == "none":
            config["NetworkDisabled"] = True
        if self._user is not None:
            config["User"] = self._user
        if self._workdir is not None:
            config["WorkingDir"] = self._workdir
        return config

    async def _connect(self, task_id: str | None) -> PoolWorker:
        if self._docker is None:
            raise LaunchError("the Docker launcher is not open")
        name = f"asyncexec-{self.executor_id}-{self._token}-{next(self._names)}"
        job = self._jobs.get(task_id) if task_id is not None else None
        config = self._config(name, task_id, job.request if job is not None else None)
        try:
            # Shielded: a request cancelled midway may still create the container, and
            # we would not know its id. A cancellation is seen at the next await below.
            with anyio.CancelScope(shield=True), anyio.fail_after(_CALL_TIMEOUT):
                container = await self._docker.containers.create(config, name=name)
        except Exception as exc:
            if _docker_error_status(exc) == _NOT_FOUND:
                raise LaunchError(f"the Docker engine has no image {self.image!r}") from exc
            if _maybe_done(exc):
                # No answer (a timeout, a connection lost after the request was sent):
                # the engine may have made it all the same, or make it later still.
                # Its name finds it: removed now, and watched for a while.
                with anyio.CancelScope(shield=True):
                    if not await self._remove_made(name):
                        self._unsure[name] = anyio.current_time() + _CALL_TIMEOUT
                        self._background(lambda: self._watch(name))
            raise _engine_error(f"create a container from {self.image!r}", exc) from exc
        try:
            stream = _attach(self._docker, container)
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
                raise _engine_error(doing, exc) from exc
            raise
        return _Container(self, container, stream, name)

    async def _remove_made(self, name: str) -> bool:
        """Remove the container named ``name``: True if the engine had made it."""
        assert self._docker is not None
        container = self._docker.containers.container(name)
        try:
            with anyio.fail_after(_CALL_TIMEOUT):
                await container.delete(force=True, v=True)
        except Exception as exc:
            if _docker_error_status(exc) == _NOT_FOUND:
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
                    with anyio.fail_after(_CALL_TIMEOUT):
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
                with anyio.fail_after(_CALL_TIMEOUT):
                    await container.delete(force=True, v=True)
            except Exception as exc:
                status = _docker_error_status(exc)
                if status == _NOT_FOUND:  # gone
                    break
                log.debug("could not remove container %s: %s", name, exc)
                if status == _CONFLICT and conflicts < _CONFLICT_RETRIES:
                    # Another removal is under way (ours, from elsewhere): it may fail,
                    # so "gone" is only what the engine says once it is over.
                    conflicts += 1
                    await anyio.sleep(min(0.05 * 2**conflicts, 1.0))
                    continue
                failures += 1
                if _unreachable(exc) or failures == 3 or status == _CONFLICT:
                    self._leftovers[container.id] = name
                    return False
                await anyio.sleep(0.5 * failures)
            else:
                break
        self._leftovers.pop(container.id, None)
        return True


async def _stdout_of(docker: aiodocker.Docker, name: str) -> bytes:
    """What a container wrote to its stdout, from its log (the engine's multiplexed stream)."""
    async with docker._query(
        f"containers/{name}/logs", params={"stdout": "1", "stderr": "0"}
    ) as response:
        data = await response.read()
    out = bytearray()
    at = 0
    while at + 8 <= len(data):  # frames: stream (1 byte), 3 zero bytes, size (4, big-endian)
        size = int.from_bytes(data[at + 4 : at + 8], "big")
        if data[at] == 1:
            out += data[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)


def _outcome_in(output: bytes, task_id: str) -> Outcome | None:
    """The Outcome of ``task_id`` among a worker's frames (None: not there, or cut short)."""
    try:
        messages = take_frames(bytearray(output))
    except Exception:  # a log cut by rotation: not frames from the start
        return None
    for message in messages:
        if isinstance(message, Outcome) and message.task_id == task_id:
            return message
    return None


def _lost(task_id: str, text: str, exit_code: int | None) -> Outcome:
    error = ErrorInfo(type_name="WorkerLost", message=text, traceback="")
    return Outcome(task_id=task_id, status="lost", error=error, exit_code=exit_code)


async def prune_containers(
    executor_id: str | None = None, *, every: bool = False, url: str | None = None
) -> list[str]:
    """Kill and remove what a killed driver left: one executor's containers, or all of ours.

    Only containers labelled ``asyncexec.executor`` are touched: those of
    ``executor_id``, or with ``every=True`` those of every executor, including
    executors still running in other drivers (so ``every`` is for a machine you
    own). A running executor removes its own containers itself. Returns the
    names of the containers removed.

    Raises:
        ValueError: neither ``executor_id`` nor ``every`` was given.
        BackendUnavailable: the engine cannot be reached.
        LaunchError: the engine refused to list or remove containers.

    Cancellation: stops the removals where they are: the containers removed
    so far stay removed (their names are not returned), the others stay; the
    engine client is closed. Safe to call again (what is gone is skipped).
    """
    if (executor_id is None) == (not every):
        raise ValueError("name one executor_id, or pass every=True for all of asyncexec's")
    require_asyncio("prune_containers", _AIOHTTP)
    docker = await _open_engine(url)
    label = EXECUTOR_LABEL if executor_id is None else f"{EXECUTOR_LABEL}={executor_id}"
    removed = []
    try:
        try:
            with anyio.fail_after(_CALL_TIMEOUT):
                found = await docker.containers.list(all=True, filters={"label": [label]})
        except Exception as exc:
            raise _engine_error("list containers", exc) from exc
        for container in found:
            names = container["Names"] if "Names" in container else [container.id[:12]]
            try:
                with anyio.fail_after(_CALL_TIMEOUT):
                    await container.delete(force=True, v=True)
            except Exception as exc:
                if _docker_error_status(exc) in (_NOT_FOUND, _CONFLICT):
                    continue  # gone already, or being removed by its executor
                raise _engine_error(f"remove container {names[0]}", exc) from exc
            removed.append(str(names[0]).lstrip("/"))
    finally:
        await _close_engine(docker)
    return removed


async def check_image(image: str, *, python: str = "python3", url: str | None = None) -> str:
    """Check that ``image`` can run our tasks: start a worker in it and run one task.

    Returns a one-line description (the image's Python and where it is).
    Raises :class:`LaunchError` saying what is wrong (no such image, no Python,
    no asyncexec, a version mismatch...).

    Cancellation: as leaving a cancelled :class:`DockerExecutor`: the probe
    task is cancelled and its container removed (shielded) before the
    cancellation propagates.
    """
    async with DockerExecutor(image, n_workers=1, python=python, url=url) as executor:
        return str(await executor.run(_describe_interpreter))


def _describe_interpreter() -> str:
    import asyncexec

    return (
        f"Python {sys.version.split()[0]} at {sys.executable}, "
        f"asyncexec {asyncexec.__version__} in {os.path.dirname(asyncexec.__file__)}"
    )


class DockerExecutor(BaseExecutor):
    """Run tasks in Docker containers.

    Args:
        image: the image (Python of the driver's minor version, with asyncexec
            and cloudpickle installed; see the Docker guide).
        n_workers: tasks running at once (containers in ``"warm"`` mode);
            default ``os.cpu_count()``.
        mode: ``"oneshot"`` (default: a fresh container per task) or ``"warm"``.
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.

    The other arguments are :class:`DockerLauncher`'s: ``python``, ``cpus``,
    ``memory_mb``, ``pids_limit``, ``network`` (``"none"`` by default),
    ``read_only``, ``user``, ``env``, ``volumes``, ``labels``, ``workdir``,
    ``pull``, ``url``, ``initializer``, ``max_tasks_per_worker``,
    ``startup_timeout``, ``executor_id``.

    Resources (``TaskOptions.resources``):

    * ``cpus``: one-shot, the task's container gets exactly that many
      (``NanoCpus``; fractions too), instead of ``cpus=``; warm, the worker is
      pinned to ``ceil(cpus)`` CPUs while the task runs, as in
      :class:`ProcessExecutor`. More than the engine has (warm: more than
      ``cpus=``) is refused at ``submit`` (:class:`LaunchError`).
    * ``memory_mb``: what the task may add to its worker's address space
      (``RLIMIT_AS``), within the container's ``memory_mb=``.
    * ``gpus``: one-shot, the container asks the engine for that many GPUs
      (``DeviceRequests``, capability ``gpu``); an engine without them refuses
      to start it and the task fails with that :class:`LaunchError` (no
      container is left). Warm: refused at ``submit``.
    """

    def __init__(
        self,
        image: str,
        n_workers: int | None = None,
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
        options: TaskOptions | None = None,
        max_pending: int | None = None,
    ) -> None:
        if n_workers is None:
            n_workers = os.cpu_count() or 1
        super().__init__(n_workers, options=options, max_pending=max_pending)
        # Made (and so validated) now rather than on entering the executor.
        self._docker_launcher = DockerLauncher(
            image,
            self.n_workers,
            mode=mode,
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
            pull=pull,
            url=url,
            initializer=initializer,
            max_tasks_per_worker=max_tasks_per_worker,
            startup_timeout=startup_timeout,
            executor_id=executor_id,
        )

    @property
    def executor_id(self) -> str:
        """The value of the ``asyncexec.executor`` label on this executor's containers."""
        return self._docker_launcher.executor_id

    def _create_launcher(self) -> Launcher:
        return self._docker_launcher
