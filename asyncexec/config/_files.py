"""The files a configuration lives in: profiles in TOML, an experiment's ``executor.json``.

Profiles are tables ``[profile.NAME]`` of ``asyncexec.toml``, or
``[tool.asyncexec.profile.NAME]`` of ``pyproject.toml``: the first of them found
in the working directory or above it (``asyncexec.toml`` first in each
directory), or the file named.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from ._kinds import At, unknown_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (3.10)
    import tomli as tomllib

__all__ = [
    "EXECUTOR_FILE",
    "Profile",
    "find_config_file",
    "load_config",
    "read_profile",
    "save_config",
]

#: The file of an experiment directory that holds its executor's configuration.
EXECUTOR_FILE = "executor.json"

#: The keys of the asyncexec table of a configuration file.
_TOP_KEYS = ("profile",)


class Profile:
    """A profile read from a file: its table and where it is."""

    def __init__(self, name: str, values: dict[str, Any], at: At) -> None:
        self.name = name
        self.values = values
        self.at = at


def find_config_file(start: str | os.PathLike[str] | None = None) -> str | None:
    """The configuration file for ``start`` (default: the working directory): the
    first ``asyncexec.toml``, or ``pyproject.toml`` with a ``[tool.asyncexec]``
    table, in it or a directory above it; None if there is none."""
    directory = os.path.abspath(start if start is not None else os.getcwd())
    while True:
        candidate = os.path.join(directory, "asyncexec.toml")
        if os.path.isfile(candidate):
            return candidate
        candidate = os.path.join(directory, "pyproject.toml")
        if os.path.isfile(candidate) and "asyncexec" in _read_toml(candidate).get("tool", {}):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            document: dict[str, Any] = tomllib.load(file)
            return document
    except tomllib.TOMLDecodeError as exc:
        raise At(path).error(f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise At(path).error(f"cannot read it: {exc.strerror or exc}") from None


def read_profile(name: str | None, path: str | None = None) -> Profile | None:
    """The profile ``name`` of the file at ``path`` (or the one found from the working
    directory); ``name=None``: the profile called ``default``, if there is one.

    Returns None when ``name`` is None and there is no file or no default profile.

    Raises:
        ConfigError: the file cannot be read, is not TOML, has unknown keys, or has
            no profile ``name`` (the message lists those it has).
    """
    if path is None:
        path = find_config_file()
        if path is None:
            if name is None:
                return None
            raise At(os.getcwd()).error(
                f"no profile {name!r}: no asyncexec.toml, nor pyproject.toml with a "
                "[tool.asyncexec] table, here or in a directory above"
            )
    document = _read_toml(path)
    if os.path.basename(path) == "pyproject.toml":
        prefix = "tool.asyncexec"
        table = document.get("tool", {}).get("asyncexec", {})
    else:
        prefix, table = None, document
    at = At(path, prefix)
    if not isinstance(table, Mapping):
        raise at.error("expected a table")
    for key in table:
        if key not in _TOP_KEYS:
            raise unknown_key(str(key), _TOP_KEYS, at, " (profiles are [profile.NAME] tables)")
    profiles = table.get("profile", {})
    if not isinstance(profiles, Mapping):
        raise at.child("profile").error("expected tables [profile.NAME]")
    wanted = "default" if name is None else name
    found = profiles.get(wanted)
    if found is None:
        if name is None:
            return None
        listed = ", ".join(sorted(profiles)) or "none"
        raise at.error(f"no profile {name!r} (profiles: {listed})")
    where = At(path, f"{prefix}.profile.{wanted}" if prefix else f"profile.{wanted}")
    if not isinstance(found, Mapping):
        raise where.error("expected a table")
    return Profile(wanted, dict(found), where)


def save_config(directory: str | os.PathLike[str], config: Mapping[str, Any]) -> str:
    """Write ``config`` to ``DIRECTORY/executor.json`` (mode 0600, replaced atomically);
    return its path."""
    path = os.path.join(os.fspath(directory), EXECUTOR_FILE)
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(config, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)  # (a umask cannot widen it, but an older file's mode...)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def load_config(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The configuration in ``DIRECTORY/executor.json``; None if there is none.

    Raises:
        ConfigError: it cannot be read, or is not a JSON object.
    """
    path = os.path.join(os.fspath(directory), EXECUTOR_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise At(path).error(f"cannot read it: {exc}") from None
    if not isinstance(config, dict):
        raise At(path).error("expected a JSON object")
    return config
