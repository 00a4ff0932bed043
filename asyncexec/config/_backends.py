"""Each backend's table: its keys, the executor made from it, the table written from one.

The keys are the constructors' own parameters, read from their signatures (and
:class:`SlurmConfig`'s or :class:`AzureConfig`'s fields, in the same table), so
a parameter added to an executor is a key here with no more code; a name given
to two parts of one table is refused when the backend is first used. What the
tables inside hold (hosts, options, credentials) is :mod:`._parts`'.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._kinds import (
    REQUIRED,
    At,
    ConfigError,
    Field,
    Kind,
    construct,
    dataclass_fields,
    dump_fields,
    parameters,
    unknown_key,
)
from ._parts import (
    SECRETS,
    Credential,
    Host,
    Hosts,
    Secret,
    SecretKind,
    given,
    local_table,
    options_table,
    parse_host,
)

if TYPE_CHECKING:
    from .. import BaseExecutor

__all__ = ["BACKENDS", "Backend", "backend_named", "backend_of", "parse_host", "unknown_backend"]

#: Where: the place of the table a key is in (resolve's keys come from several).
Where = Callable[[str], At]

#: The backends, and the executor class of each (its module imported on first use).
_CLASSES = {
    "process": ("asyncexec.launchers.process", "ProcessExecutor"),
    "thread": ("asyncexec.launchers.thread", "ThreadExecutor"),
    "docker": ("asyncexec.launchers.docker", "DockerExecutor"),
    "ssh": ("asyncexec.launchers.ssh", "SSHExecutor"),
    "slurm": ("asyncexec.launchers.slurm", "SlurmExecutor"),
    "azure": ("asyncexec.launchers.azure", "AzureExecutor"),
}
BACKENDS = tuple(_CLASSES)


class Backend:
    """A backend's table: its keys, and how an executor is made from it and written.

    Args:
        name: ``backend = "..."``.
        cls: its executor class (exactly: a subclass has arguments of its own).
        fields: the table's keys (all but ``backend``).
        groups: the keys handed to each part made (``"executor"``, ``"config"``...).
        build: makes the executor from the loaded values.
        write: an executor's values (as given to its constructors), to be written.
        hints: said with an error at these keys (an easy confusion).
    """

    def __init__(
        self,
        name: str,
        cls: type,
        groups: dict[str, dict[str, Field]],
        build: Callable[[dict[str, dict[str, Any]], Where], Any],
        write: Callable[[Any, At], dict[str, dict[str, Any]]],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.hints = dict(hints or {})
        self.cls = cls
        self.groups = groups
        self.fields: dict[str, Field] = {}
        for group in groups.values():
            clash = self.fields.keys() & group.keys()
            if clash:  # a parameter added to two parts of one table
                raise AssertionError(f"backend {name}: {sorted(clash)} are keys of two parts")
            self.fields.update(group)
        self._build = build
        self._write = write

    def load(self, data: Mapping[str, Any], where: Where) -> dict[str, Any]:
        """Every key of ``data`` (but ``backend``) checked and converted."""
        loaded = {}
        for key, value in data.items():
            if key == "backend":
                continue
            field = self.fields.get(key)
            hint = f" ({self.hints[key]})" if key in self.hints else ""
            if field is None or field.kind is None:
                of = f" for backend {self.name}{hint}"
                raise unknown_key(str(key), self.fields, where(key), of)
            try:
                loaded[key] = (
                    None if value is None else field.kind.load(value, where(key).child(key))
                )
            except ConfigError as exc:
                if not hint:
                    raise
                raise ConfigError(
                    f"{exc}{hint}", source=exc.source, table=exc.table, key=exc.key
                ) from None
        for key, field in self.fields.items():
            if field.required and loaded.get(key) is None:
                raise where(key).child(key).error(f"missing: backend {self.name} needs it")
        return loaded

    def build(self, loaded: Mapping[str, Any], where: Where) -> BaseExecutor:
        """The executor (not entered) made from loaded values."""
        parts = {
            group: {
                field.name: loaded[key]
                for key, field in fields.items()
                if loaded.get(key) is not None
            }
            for group, fields in self.groups.items()
        }
        executor: BaseExecutor = self._build(parts, where)
        return executor

    def write(self, executor: Any) -> dict[str, Any]:
        """The table of ``executor`` (``backend`` first, values at their default left out)."""
        at = At(type(executor).__name__)
        values = self._write(executor, at)
        written: dict[str, Any] = {"backend": self.name}
        for group, fields in self.groups.items():
            written.update(dump_fields(fields, values.get(group, {}), at))
        return written


def _executor_class(name: str) -> type:
    module, attribute = _CLASSES[name]
    cls: type = getattr(importlib.import_module(module), attribute)
    return cls


def unknown_backend(value: object, at: At) -> ConfigError:
    """The error for a ``backend`` that is none of :data:`BACKENDS`."""
    close = difflib.get_close_matches(value, BACKENDS, n=1) if isinstance(value, str) else []
    said = f" (did you mean {close[0]!r}?)" if close else ""
    return at.child("backend").error(
        f"unknown backend {value!r}{said}: one of {', '.join(BACKENDS)}"
    )


@functools.cache
def backend_named(name: str) -> Backend:
    """The backend called ``name`` (one of :data:`BACKENDS`)."""
    return _MAKERS[name]()


def backend_of(executor: object) -> Backend:
    """The backend of ``executor``, an instance of exactly one of the executor classes."""
    cls = type(executor)
    for name, (module, attribute) in _CLASSES.items():
        loaded = sys.modules.get(module)
        if loaded is not None and getattr(loaded, attribute, None) is cls:
            return backend_named(name)
    known = ", ".join(attribute for _, attribute in _CLASSES.values())
    raise At(cls.__name__).error(
        f"cannot write a {cls.__name__}: asyncexec.config writes {known}"
        + (" (not their subclasses, which take arguments of their own)" if _is_ours(cls) else "")
    )


def _is_ours(cls: type) -> bool:
    return any(
        getattr(sys.modules.get(module), attribute, None) in cls.__mro__
        for module, attribute in _CLASSES.values()
    )


def _special() -> dict[str, Kind]:
    return {"TaskOptions": options_table()}


def _pool_backend(name: str) -> Backend:
    """process and thread: the executor's own parameters, nothing else."""
    cls = _executor_class(name)
    fields = parameters(cls, special=_special())  # (its __init__'s, but self)

    def build(parts: dict[str, dict[str, Any]], where: Where) -> Any:
        return construct(cls.__name__, cls, parts["executor"], where)

    def write(executor: Any, at: At) -> dict[str, dict[str, Any]]:
        arguments = given(executor, cls, at)
        arguments["n_workers"] = executor.n_workers
        return {"executor": arguments}

    return Backend(name, cls, {"executor": fields}, build, write)


def _docker() -> Backend:
    from ..launchers.docker import DockerExecutor, DockerLauncher

    fields = parameters(DockerExecutor.__init__, skip={"launcher"}, special=_special())
    fields["image"] = dataclasses.replace(fields["image"], default=REQUIRED)  # (or a launcher)

    def build(parts: dict[str, dict[str, Any]], where: Where) -> Any:
        return construct("DockerExecutor", DockerExecutor, parts["executor"], where)

    def write(executor: Any, at: At) -> dict[str, dict[str, Any]]:
        arguments = given(executor, DockerExecutor, at)
        launcher = arguments.pop("launcher", None)
        if launcher is not None:  # configured: its arguments are the executor's keys
            arguments = {**given(launcher, DockerLauncher, at.child("launcher")), **arguments}
        arguments["n_workers"] = executor.n_workers
        return {"executor": arguments}

    return Backend("docker", DockerExecutor, {"executor": fields}, build, write)


def _ssh() -> Backend:
    from ..launchers.ssh import SSHExecutor, SSHLauncher

    hosts = {"hosts": Field("hosts", Hosts(Host()))}
    fields = parameters(SSHExecutor.__init__, skip={"shells", "launcher"}, special=_special())

    def build(parts: dict[str, dict[str, Any]], where: Where) -> Any:
        shells = parts["hosts"]["hosts"]
        return construct("SSHExecutor", SSHExecutor, {"shells": shells, **parts["executor"]}, where)

    def write(executor: Any, at: At) -> dict[str, dict[str, Any]]:
        arguments = given(executor, SSHExecutor, at)
        launcher = arguments.pop("launcher", None)
        if launcher is not None:
            arguments = {**given(launcher, SSHLauncher, at.child("launcher")), **arguments}
        return {"hosts": {"hosts": arguments.pop("shells")}, "executor": arguments}

    hints = {"n_workers": "an SSH executor runs `slots` workers per host"}
    return Backend("ssh", SSHExecutor, {"hosts": hosts, "executor": fields}, build, write, hints)


def _slurm() -> Backend:
    from ..launchers.slurm import SlurmConfig, SlurmExecutor
    from ..shells import LocalShell, SSHShell

    host = Host()
    local = local_table()
    shells = {"host": Field("host", host, None), "local": Field("local", local, None)}
    # SlurmConfig.setup, shell lines, is key setup_lines: setup is the executor's hook
    # (a callable) on every backend.
    config_keys = {"setup": "setup_lines"}
    executor_fields = parameters(
        SlurmExecutor.__init__, skip={"shell", "config"}, special=_special()
    )
    config_fields = {
        config_keys.get(name, name): field for name, field in dataclass_fields(SlurmConfig).items()
    }

    def build(parts: dict[str, dict[str, Any]], where: Where) -> Any:
        shell = parts["shell"]
        if len(shell) > 1:
            raise (
                where("host")
                .child("host")
                .error("give host (over SSH) or local (on a login node), not both")
            )
        config = construct("SlurmConfig", SlurmConfig, parts["config"], where, config_keys)
        made = shell.get("host") or shell.get("local") or LocalShell()
        return construct(
            "SlurmExecutor",
            SlurmExecutor,
            {"shell": made, "config": config, **parts["executor"]},
            where,
        )

    def write(executor: Any, at: At) -> dict[str, dict[str, Any]]:
        arguments = given(executor, SlurmExecutor, at)
        arguments.pop("shell", None)
        arguments.pop("config", None)
        arguments["n_workers"] = executor.n_workers
        shell = executor.slurm.shell
        config = executor.slurm.config

        return {
            "shell": {"host": shell} if isinstance(shell, SSHShell) else {"local": shell},
            "executor": arguments,
            "config": {
                field.name: getattr(config, field.name) for field in dataclasses.fields(config)
            },
        }

    return Backend(
        "slurm",
        SlurmExecutor,
        {"shell": shells, "executor": executor_fields, "config": config_fields},
        build,
        write,
        {"setup": "SlurmConfig's shell lines are setup_lines; setup is a Python hook"},
    )


def _azure() -> Backend:
    from ..launchers.azure import AzureConfig, AzureExecutor, AzureLauncher

    secrets = {
        "credential": Field("credential", Credential(), REQUIRED),
        "storage_key": Field("storage_key", SecretKind(), None),
    }
    launcher_fields = parameters(
        AzureLauncher.__init__, skip={"config", "credential", "storage_key"}, special=_special()
    )
    executor_fields = parameters(AzureExecutor.__init__, skip={"launcher"}, special=_special())

    def build(parts: dict[str, dict[str, Any]], where: Where) -> Any:
        config = construct("AzureConfig", AzureConfig, parts["config"], where)
        key = parts["secrets"].get("storage_key")
        launcher = construct(
            "AzureLauncher",
            AzureLauncher,
            {
                "config": config,
                "credential": parts["secrets"]["credential"],
                "storage_key": None if key is None else key.value,
                **parts["launcher"],
            },
            where,
        )
        if key is not None:
            SECRETS[launcher] = {"storage_key": key.reference}
        executor = {"launcher": launcher, **parts["executor"]}
        return construct("AzureExecutor", AzureExecutor, executor, where)

    def write(executor: Any, at: At) -> dict[str, dict[str, Any]]:
        arguments = given(executor, AzureExecutor, at)
        launcher = arguments.pop("launcher")
        arguments["n_workers"] = executor.n_workers
        made_with = given(launcher, AzureLauncher, at.child("launcher"))
        config = made_with.pop("config")
        written: dict[str, Any] = {"credential": made_with.pop("credential")}
        if made_with.pop("storage_key", None) is not None:
            source = SECRETS.get(launcher, {}).get("storage_key")
            if source is None:
                raise at.child("storage_key").error(
                    "cannot write a storage key given in Python: secrets are never written; "
                    "leave it out (AZURE_STORAGE_KEY is read) or make the executor from a "
                    'configuration with storage_key = {env = "NAME"}'
                )
            written["storage_key"] = Secret(source)
        return {
            "config": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
            "secrets": written,
            "launcher": made_with,
            "executor": arguments,
        }

    groups = {
        "config": dataclass_fields(AzureConfig),
        "secrets": secrets,
        "launcher": launcher_fields,
        "executor": executor_fields,
    }
    return Backend("azure", AzureExecutor, groups, build, write)


_MAKERS: dict[str, Callable[[], Backend]] = {
    "process": lambda: _pool_backend("process"),
    "thread": lambda: _pool_backend("thread"),
    "docker": _docker,
    "ssh": _ssh,
    "slurm": _slurm,
    "azure": _azure,
}
