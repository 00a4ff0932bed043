"""The Docker executor, and the ``asyncexec docker`` commands' functions.

:class:`DockerExecutor` is an executor over a :class:`DockerLauncher`: given
one, configured, or made from the same keyword arguments. :func:`check_image`
runs one task in an image to say whether it can run ours;
:func:`prune_containers` removes, by label, what a killed driver left.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import anyio

from ... import BaseExecutor
from ..._aio import require_asyncio
from ..._arguments import remembers_arguments
from ..._hooks import Hook
from ..._options import TaskOptions
from ...abc import Launcher
from .._base import refuse_launcher_arguments
from ._engine import (
    AIOHTTP,
    CALL_TIMEOUT,
    CONFLICT,
    NOT_FOUND,
    close_engine,
    engine_error,
    error_status,
    open_engine,
)
from ._launcher import DockerLauncher
from ._spec import EXECUTOR_LABEL, Mode


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
    require_asyncio("prune_containers", AIOHTTP)
    docker = await open_engine(url)
    label = EXECUTOR_LABEL if executor_id is None else f"{EXECUTOR_LABEL}={executor_id}"
    removed = []
    try:
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                found = await docker.containers.list(all=True, filters={"label": [label]})
        except Exception as exc:
            raise engine_error("list containers", exc) from exc
        for container in found:
            names = container["Names"] if "Names" in container else [container.id[:12]]
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await container.delete(force=True, v=True)
            except Exception as exc:
                if error_status(exc) in (NOT_FOUND, CONFLICT):
                    continue  # gone already, or being removed by its executor
                raise engine_error(f"remove container {names[0]}", exc) from exc
            removed.append(str(names[0]).lstrip("/"))
    finally:
        await close_engine(docker)
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
            default ``os.cpu_count()``, or the given launcher's ``n_workers``.
        mode: ``"oneshot"`` (default: a fresh container per task) or ``"warm"``.
        options: default :class:`TaskOptions` for every task.
        max_pending: queued tasks at most before ``submit`` waits.
        launcher: a configured :class:`DockerLauncher`, in place of ``image``
            and the launcher's arguments (``TypeError`` if some are given
            too); the executor runs ``launcher.n_workers`` tasks at once. A
            launcher serves one executor, once.

    The other arguments are :class:`DockerLauncher`'s: ``python``, ``cpus``,
    ``memory_mb``, ``pids_limit``, ``network`` (``"none"`` by default),
    ``read_only``, ``user``, ``env``, ``volumes``, ``labels``, ``workdir``,
    ``pull``, ``url``, ``setup``, ``teardown``, ``initializer`` (``setup``'s
    former name), ``max_tasks_per_worker``, ``startup_timeout``,
    ``executor_id``.

    Hooks:

    * ``setup``: a callable of no argument that each container's worker runs
      once when it starts, before its first task: once per warm container
      (again in each container that replaces one), once per task in one-shot
      mode (in the task's own container, before it). If it raises, the
      container is removed: entering the executor raises
      :class:`~asyncexec.SetupFailed` in warm mode; in one-shot mode the task
      fails with a :class:`~asyncexec.TaskLaunchError` that is also a
      ``SetupFailed``, naming its exception. It travels pickled.
    * ``teardown``: a callable of no argument that each container's worker
      runs once when it exits normally: a warm container when the executor
      closes (within :attr:`DockerLauncher.CLOSE_GRACE` seconds, or it is
      removed) or retires after ``max_tasks_per_worker`` tasks; a one-shot
      container after its task's outcome is sent. Not in a container that is
      removed while it runs (a cancelled or timed-out task's, an engine that
      went away) nor where setup raised; what it raises is printed on the
      container's stderr, which reaches the driver's.

    ``log_stdout`` / ``log_stderr`` (``TaskOptions``) name files on the
    driver's machine: the worker captures everything the task writes and
    sends it all back with the outcome; the driver appends it to those files
    once the task ends. A file that cannot be opened here fails the task with
    that ``OSError`` before it runs. (A one-shot task re-attached by another
    driver has no log files there: its output is in ``info`` only.)

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

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        image: str | None = None,
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
        setup: Hook | None = None,
        teardown: Hook | None = None,
        initializer: Hook | None = None,
        max_tasks_per_worker: int | None = None,
        startup_timeout: float = 120.0,
        executor_id: str | None = None,
        options: TaskOptions | None = None,
        max_pending: int | None = None,
        launcher: DockerLauncher | None = None,
    ) -> None:
        if launcher is not None:
            if not isinstance(launcher, DockerLauncher):
                raise TypeError(f"launcher must be a DockerLauncher, got {launcher!r}")
            refuse_launcher_arguments(DockerExecutor, locals(), "DockerLauncher")
            if n_workers is not None and n_workers != launcher.n_workers:
                raise ValueError(
                    f"n_workers={n_workers!r} differs from the launcher's "
                    f"n_workers={launcher.n_workers}: leave it out"
                )
            super().__init__(launcher.n_workers, options=options, max_pending=max_pending)
            self._docker_launcher = launcher
            return
        if image is None:
            raise TypeError("DockerExecutor needs an image, or a configured launcher=")
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
            setup=setup,
            teardown=teardown,
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
