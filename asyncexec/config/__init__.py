"""Executors from configuration: ``to_dict`` / ``from_dict``, TOML profiles, precedence.

An executor's configuration is a table: ``backend`` (``"process"``,
``"thread"``, ``"docker"``, ``"ssh"``, ``"slurm"`` or ``"azure"``) and its
constructor's arguments, by name, at their default left out::

    {"backend": "slurm", "n_workers": 1000, "host": {"host": "login.example.org",
     "username": "me", "client_keys": ["~/.ssh/id_ed25519"]}, "partition": "debug",
     "time": "1:00:00", "chunk_size": 10, "venv": "/shared/me/venv"}

* ``slurm``: :class:`~asyncexec.SlurmConfig`'s fields, ``staging_dir``,
  ``n_workers``..., and ``host``, the login node over SSH (a table, or
  ``"user@host:port"``; without it, the cluster is this machine's).
* ``ssh``: ``hosts``, a list of such hosts, and ``slots``, ``python``...
* ``azure``: :class:`~asyncexec.AzureConfig`'s fields, ``credential``
  (``"cli"``, ``"managed_identity"``, or ``{type = "client_secret",
  tenant_id = ..., client_id = ..., client_secret = {env = "NAME"}}``) and
  ``storage_key = {env = "NAME"}`` (default: ``AZURE_STORAGE_KEY``).
* Every backend: ``options`` (a table of :class:`~asyncexec.TaskOptions`,
  with ``resources``), ``max_pending``; callables (``initializer``) as
  ``"module:name"``.

An SSH host is a table of :class:`~asyncexec.SSHShell`'s arguments, with
``client_keys`` (paths) and ``known_hosts`` (a path); its host key is checked
unless ``verify_host_key = false``. Secrets are never written: a client secret
or a storage key is read from the environment variable named, and a password
or passphrase has no place in a configuration.

Profiles live in ``asyncexec.toml`` (``[profile.NAME]`` tables) or in
``pyproject.toml`` (``[tool.asyncexec.profile.NAME]``), found from the working
directory upwards. :func:`resolve` takes flags over ``ASYNCEXEC_*`` variables
(:data:`ENVIRONMENT`) over the file over the defaults; every error is a
:class:`ConfigError` naming the file, the table and the key.

The CLI records the configuration an experiment ran with in
``DIR/executor.json`` (:func:`save_config`); :func:`executor_of` makes that
executor again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._backends import BACKENDS, backend_named, backend_of, unknown_backend
from ._files import EXECUTOR_FILE, find_config_file, load_config, read_profile, save_config
from ._kinds import At, ConfigError
from ._parts import parse_host as _parse_host
from ._resolve import ENVIRONMENT, FILE_VARIABLE, PROFILE_VARIABLE, resolve

if TYPE_CHECKING:
    from .. import BaseExecutor

__all__ = [
    "BACKENDS",
    "ENVIRONMENT",
    "EXECUTOR_FILE",
    "FILE_VARIABLE",
    "PROFILE_VARIABLE",
    "ConfigError",
    "executor_of",
    "find_config_file",
    "from_dict",
    "load_config",
    "load_profile",
    "parse_host",
    "resolve",
    "save_config",
    "to_dict",
]


def to_dict(executor: BaseExecutor) -> dict[str, Any]:
    """The configuration ``executor`` was made with: JSON and TOML values only.

    ``from_dict(to_dict(ex))`` makes an executor like ``ex`` (not entered), and
    ``to_dict`` of it is ``to_dict(ex)`` again.

    Raises:
        ConfigError: ``executor`` holds what a configuration cannot: a secret
            given in Python (a client secret, a storage key, a password), a
            callable with no importable name (a lambda, a nested function,
            something of ``__main__``), a shell other than SSHShell and
            LocalShell; or it is a subclass of an executor class.
    """
    return backend_of(executor).write(executor)


def from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", table: str | None = None
) -> BaseExecutor:
    """A new executor (not entered) made from a configuration.

    Args:
        data: the table: ``backend`` and the executor's keys.
        source: where ``data`` comes from (a file's path), said in errors.
        table: the table it is in that source (``profile.cluster``), said in errors.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or one the
            executor refuses (its own validation), named by source, table and key;
            a secret's environment variable that is not set.
    """
    at = At(source, table)
    if not isinstance(data, Mapping):
        raise at.error(f"expected a table, got {type(data).__name__}")
    if "backend" not in data:
        raise at.child("backend").error(f"missing: one of {', '.join(BACKENDS)}")
    name = data["backend"]
    if name not in BACKENDS:
        raise unknown_backend(name, at)
    backend = backend_named(name)
    return backend.build(backend.load(data, lambda key: at), lambda key: at)


def load_profile(
    name: str | None = None, *, path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """The profile ``name`` (checked) of ``asyncexec.toml`` or ``pyproject.toml``.

    The file is ``path``, else the first ``asyncexec.toml`` (or ``pyproject.toml``
    with a ``[tool.asyncexec]`` table) in the working directory or above it.
    ``name=None``: the profile called ``default``, or ``{}`` if there is none.
    It is checked by making its executor (and dropping it): it must be whole
    (:func:`resolve` takes a profile that flags complete).

    Raises:
        ConfigError: no such file or profile, not TOML, or a wrong key or value
            (naming the file, the table and the key).
    """
    found = read_profile(name, None if path is None else os.fspath(path))
    if found is None:
        return {}
    at = found.at
    values = found.values
    if "backend" not in values:
        raise at.child("backend").error(f"missing: one of {', '.join(BACKENDS)}")
    if values["backend"] not in BACKENDS:
        raise unknown_backend(values["backend"], at)
    backend = backend_named(values["backend"])
    backend.build(backend.load(values, lambda key: at), lambda key: at)  # made, to check it
    return dict(values)


def executor_of(directory: str | os.PathLike[str]) -> BaseExecutor:
    """The executor (not entered) an experiment directory's ``executor.json`` records.

    Raises:
        ConfigError: the directory has no ``executor.json`` (an experiment not run
            by ``asyncexec run``), or it cannot make an executor.
    """
    config = load_config(directory)
    path = os.path.join(os.fspath(directory), EXECUTOR_FILE)
    if config is None:
        raise At(path).error(
            "no such file: the experiment was not run by `asyncexec run`, which records "
            "its executor's configuration there"
        )
    return from_dict(config, source=path)


def parse_host(text: str, *, source: str = "<host>") -> dict[str, Any]:
    """``"host"``, ``"user@host"`` or ``"user@host:port"`` as a host table
    (``{"host": ..., "username": ..., "port": ...}``).

    Raises:
        ConfigError: ``text`` is none of those (``source`` says where it was).
    """
    return _parse_host(text, At(source))
