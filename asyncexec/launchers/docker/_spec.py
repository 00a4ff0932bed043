"""What a container of ours is: its labels, limits, mounts and command.

:class:`ContainerSpec` holds what every container of a launcher shares (the
image, the interpreter, the limits, the network, the mounts...), checked when
the launcher is made, and turns it into the engine's create request for one
container: a warm one, or the one-shot container of one task, with that
task's CPUs and GPUs and a ``local`` log that keeps its outcome.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..._options import check_env

#: The label naming the executor that made a container.
EXECUTOR_LABEL = "asyncexec.executor"
#: The label naming the container, as a worker of its executor.
WORKER_LABEL = "asyncexec.worker"
#: The label naming the task of a one-shot container.
TASK_LABEL = "asyncexec.task"

Mode = Literal["oneshot", "warm"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def binds(volumes: Mapping[str, str] | Sequence[str]) -> list[str]:
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


class ContainerSpec:
    """What every container of a launcher shares, checked (see :class:`DockerLauncher`).

    Raises ``ValueError`` (``TypeError`` for a wrongly typed ``env`` or
    ``volumes``) for what the engine would refuse, or take wrongly, later.
    """

    def __init__(
        self,
        image: str,
        *,
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
    ) -> None:
        if not isinstance(image, str) or not image:
            raise ValueError(f"image must be a non-empty string, got {image!r}")
        for name, value in (("cpus", cpus), ("memory_mb", memory_mb), ("pids_limit", pids_limit)):
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not network:
            raise ValueError("network must name a network ('none' for no network)")
        self.image = image
        self.python = python
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.pids_limit = pids_limit
        self.network = network
        self.read_only = read_only
        self.user = user
        self.env = check_env(env)
        self.binds = binds(volumes)
        self.labels = {str(key): str(value) for key, value in (labels or {}).items()}
        for reserved in (EXECUTOR_LABEL, WORKER_LABEL, TASK_LABEL):
            if reserved in self.labels:
                raise ValueError(f"the label {reserved!r} is asyncexec's own")
        self.workdir = workdir

    def config(
        self,
        name: str,
        executor_id: str,
        task_id: str | None,
        request: tuple[float | None, int | None] | None = None,
    ) -> dict[str, Any]:
        """The create request of container ``name`` of executor ``executor_id``.

        ``task_id``: the one task of a one-shot container (None: a warm one);
        ``request``: that task's CPUs and GPUs.
        """
        labels = {**self.labels, EXECUTOR_LABEL: executor_id, WORKER_LABEL: name}
        if task_id is not None:
            labels[TASK_LABEL] = task_id
        cpus, gpus = request or (None, None)
        if cpus is None:
            cpus = self.cpus
        # Init: the worker runs under the engine's init (docker-init, tini), not as PID 1,
        # which ignores signals it has no handler for (a task's SIGKILL to itself).
        host: dict[str, Any] = {"NetworkMode": self.network, "Binds": self.binds, "Init": True}
        if self.memory_mb is not None:
            host["Memory"] = host["MemorySwap"] = self.memory_mb * 2**20
        if cpus is not None:
            host["NanoCpus"] = round(cpus * 1e9)
        if gpus is not None:
            host["DeviceRequests"] = [{"Driver": "", "Count": gpus, "Capabilities": [["gpu"]]}]
        if self.pids_limit is not None:
            host["PidsLimit"] = self.pids_limit
        if task_id is not None:
            # The engine keeps what the worker writes to stdout (the protocol, the Outcome
            # included) byte for byte in a "local" log (json-file's mangles what is not
            # UTF-8): should the driver die, another collects the Outcome there.
            host["LogConfig"] = {"Type": "local", "Config": {}}
        if self.read_only:
            host["ReadonlyRootfs"] = True
            host["Tmpfs"] = {"/tmp": "rw,exec,mode=1777"}
        config: dict[str, Any] = {
            "Image": self.image,
            # One-shot, the task outlives a killed driver (--finish), for another to collect.
            "Cmd": [
                self.python,
                "-m",
                "asyncexec.worker",
                "serve",
                "--stdio",
                *(["--finish"] if task_id is not None else []),
            ],
            "Env": [f"{key}={value}" for key, value in self.env.items()],
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
        if self.network == "none":
            config["NetworkDisabled"] = True
        if self.user is not None:
            config["User"] = self.user
        if self.workdir is not None:
            config["WorkingDir"] = self.workdir
        return config
