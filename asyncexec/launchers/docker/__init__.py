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

A :class:`DockerExecutor` takes the :class:`DockerLauncher` it runs on,
configured (``DockerExecutor(launcher=DockerLauncher(image, 4, mode="warm"))``),
or the same keyword arguments, from which it makes one.

Docker is reached with aiodocker, which runs on asyncio only.

Where each part lives:

* ``_engine``: the engine client (HTTP over the unix socket or
  ``DOCKER_HOST``, no cap on connections), error translation, attached
  streams, a container's log;
* ``_spec``: labels, :data:`Mode` and :class:`ContainerSpec` (a container's
  create request);
* ``_container``: one container running the worker, as a pool worker;
* ``_lifecycle``: the containers' life on the engine (create and start
  attached, remove, watch for what a lost create made, sweep at close);
* ``_launcher``: :class:`DockerLauncher`, warm and one-shot;
* ``_reattach``: collecting a one-shot container another driver started;
* ``_executor``: :class:`DockerExecutor`, :func:`check_image`,
  :func:`prune_containers`.
"""

from ._executor import DockerExecutor as DockerExecutor
from ._executor import check_image as check_image
from ._executor import prune_containers as prune_containers
from ._launcher import DockerLauncher as DockerLauncher
from ._spec import EXECUTOR_LABEL as EXECUTOR_LABEL
from ._spec import TASK_LABEL as TASK_LABEL
from ._spec import WORKER_LABEL as WORKER_LABEL
from ._spec import Mode as Mode

__all__ = [
    "EXECUTOR_LABEL",
    "DockerExecutor",
    "DockerLauncher",
    "check_image",
    "prune_containers",
]
