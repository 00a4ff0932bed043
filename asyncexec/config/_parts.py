"""The tables inside a backend's table: SSH hosts, a local shell, task options,
Azure credentials and secrets (written as references only).

What an object was made with is read back from its constructor's recorded
arguments (``asyncexec._arguments``), never from its running state. Secrets are
never written: an Azure client secret and a storage key are read from the
environment variable the table names (``{env = "NAME"}``); one given in Python
has no reference to write, and writing it is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import weakref
from collections.abc import Mapping
from typing import Any

from .._arguments import given_arguments
from ._kinds import (
    At,
    Field,
    Kind,
    Table,
    construct,
    dataclass_fields,
    dump_fields,
    kind_of,
    parameters,
)

__all__ = [
    "SECRETS",
    "Credential",
    "Host",
    "Hosts",
    "Secret",
    "SecretKind",
    "given",
    "local_table",
    "options_table",
    "parse_host",
]

#: Where the secrets of objects made here come from: object -> {argument: reference}.
SECRETS: weakref.WeakKeyDictionary[object, dict[str, dict[str, str]]] = weakref.WeakKeyDictionary()


def given(obj: object, cls: type, at: At) -> dict[str, Any]:
    arguments = given_arguments(obj, cls)
    if arguments is None:
        raise at.error(f"cannot write {obj!r}: it was not made by {cls.__name__}(...) itself")
    return arguments


# -- secrets and credentials ------------------------------------------------------------


class SecretKind(Kind):
    """A secret, as where to read it: ``{env = "NAME"}``; loaded as a :class:`Secret`."""

    what = 'a reference {env = "NAME"} (secrets are never written in a configuration)'

    def load(self, value: Any, at: At) -> Any:
        if not (isinstance(value, Mapping) and set(value) == {"env"}):
            raise self.wrong("a string" if isinstance(value, str) else value, at)
        name = value["env"]
        if not isinstance(name, str) or not name:
            raise self.wrong(value, at)
        secret = os.environ.get(name)
        if not secret:
            raise at.error(f"the environment variable {name} is not set (it holds the secret)")
        return Secret({"env": name}, secret)

    def dump(self, value: Any, at: At) -> Any:
        assert isinstance(value, Secret)
        return dict(value.reference)


class Secret:
    """A secret's reference (what is written), and its value once read (never written)."""

    def __init__(self, reference: dict[str, str], value: str | None = None) -> None:
        self.reference = reference
        self.value = value


_SECRET = SecretKind()
_CLIENT_SECRET_DEFAULT = {"env": "AZURE_CLIENT_SECRET"}


class Credential(Kind):
    """An Azure credential: ``"cli"``, ``"managed_identity"``, or a table with ``type``."""

    what = '"cli", "managed_identity" or a table with type = "client_secret" (or those two)'

    @functools.cached_property
    def types(self) -> dict[str, tuple[type, dict[str, Field]]]:
        from ..launchers import azure

        secret = parameters(azure.ClientSecretCredential.__init__)
        secret["client_secret"] = Field("client_secret", _SECRET, _CLIENT_SECRET_DEFAULT)
        return {
            "client_secret": (azure.ClientSecretCredential, secret),
            "managed_identity": (
                azure.ManagedIdentityCredential,
                parameters(azure.ManagedIdentityCredential.__init__),
            ),
            "cli": (azure.AzureCliCredential, parameters(azure.AzureCliCredential.__init__)),
        }

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, Mapping) or value.get("type") not in self.types:
            raise self.wrong(value, at)
        cls, fields = self.types[value["type"]]
        table = Table(cls.__name__, fields, cls, lambda value, at: {})
        loaded = table.load_fields({k: v for k, v in value.items() if k != "type"}, at)
        secret = loaded.pop("client_secret", None)
        if value["type"] == "client_secret" and secret is None:
            secret = _SECRET.load(_CLIENT_SECRET_DEFAULT, at.child("client_secret"))
        if secret is not None:
            loaded["client_secret"] = secret.value
        values = {k: v for k, v in loaded.items() if v is not None}
        credential = construct(cls.__name__, cls, values, lambda key: at)
        if secret is not None:
            SECRETS[credential] = {"client_secret": secret.reference}
        return credential

    def dump(self, value: Any, at: At) -> Any:
        found = [name for name, (cls, _) in self.types.items() if type(value) is cls]
        if not found:
            raise at.error(f"cannot write {value!r}: not one of asyncexec's Azure credentials")
        name = found[0]
        fields = self.types[name][1]
        values = {}
        for key in fields:
            if key == "client_secret":
                continue
            if not hasattr(value, key):
                raise at.child(key).error(f"cannot write {value!r}: it has no {key} to read")
            values[key] = getattr(value, key)
        written: dict[str, Any] = {"type": name, **dump_fields(fields, values, at)}
        if name == "client_secret":
            source = SECRETS.get(value, {}).get("client_secret")
            if source is None:
                raise at.child("client_secret").error(
                    "cannot write a client secret given in Python: secrets are never written; "
                    "make the executor from a configuration whose credential has client_secret = "
                    '{env = "NAME"} (asyncexec.config.from_dict)'
                )
            written["client_secret"] = dict(source)
        return written if len(written) > 1 else name


# -- shells -------------------------------------------------------------------------------

_TARGET = re.compile(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:@]+)(?::(?P<port>\d+))?")


class Host(Table):
    """An SSH host: a table of :class:`SSHShell`'s arguments, or ``"user@host:port"``.

    ``client_keys`` (paths) and ``known_hosts`` (a path) are the
    ``connect_options`` a configuration holds; host keys are verified unless
    ``verify_host_key = false``.
    """

    what = 'a table with host = "..." or a string "user@host:port"'

    def __init__(self) -> None:
        from ..shells import SSHShell

        fields = parameters(SSHShell.__init__, skip={"connect_options"})
        fields["client_keys"] = Field("client_keys", kind_of("Sequence[str]"), None)
        fields["known_hosts"] = Field("known_hosts", kind_of("str"), None)
        super().__init__("SSHShell", fields, self._make, self._read)

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, str):
            value = self.parse(value, at)
        return super().load(value, at)

    @staticmethod
    def parse(text: str, at: At) -> dict[str, Any]:
        """``user@host:port`` as a table."""
        match = _TARGET.fullmatch(text.strip())
        if match is None:
            raise at.error(f"expected 'host', 'user@host' or 'user@host:port', got {text!r}")
        table: dict[str, Any] = {"host": match["host"].strip("[]")}
        if match["user"]:
            table["username"] = match["user"]
        if match["port"]:
            table["port"] = int(match["port"])
        return table

    @staticmethod
    def _make(**values: Any) -> Any:
        from ..shells import SSHShell

        options: dict[str, Any] = {
            name: values.pop(name) for name in ("client_keys", "known_hosts") if name in values
        }
        return SSHShell(**values, connect_options=options or None)

    @staticmethod
    def _read(shell: Any, at: At) -> dict[str, Any]:
        from ..shells import SSHShell

        if type(shell) is not SSHShell:
            raise at.error("cannot write this shell: only SSHShell hosts can be written")
        arguments = given(shell, SSHShell, at)
        options = dict(arguments.pop("connect_options", None) or {})
        for name in ("client_keys", "known_hosts"):
            if name in options:
                value = options.pop(name)
                if name == "client_keys" and isinstance(value, str | os.PathLike):
                    value = [value]
                arguments[name] = value
        if options:
            raise at.child("connect_options").error(
                f"cannot write {', '.join(sorted(options))}: a configuration holds "
                "client_keys and known_hosts (paths) only, and never a password or passphrase"
            )
        return arguments


class Hosts(Kind):
    what = "a list of hosts (tables, or 'user@host:port' strings)"

    def __init__(self, host: Host) -> None:
        self.host = host

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, str) or not isinstance(value, list | tuple) or not value:
            raise self.wrong(value, at)
        return [self.host.load(item, at.child(index)) for index, item in enumerate(value)]

    def dump(self, value: Any, at: At) -> Any:
        return [self.host.dump(shell, at.child(index)) for index, shell in enumerate(value)]


def parse_host(text: str, at: At) -> dict[str, Any]:
    """``"user@host:port"`` as a host table."""
    return Host.parse(text, at)


def local_table() -> Table:
    from ..shells import LocalShell

    def read(shell: Any, at: At) -> dict[str, Any]:
        if type(shell) is not LocalShell:
            raise at.error("cannot write this shell: only SSHShell and LocalShell can be written")
        return given(shell, LocalShell, at)

    return Table("LocalShell", parameters(LocalShell.__init__), LocalShell, read)


@functools.cache
def options_table() -> Table:
    """``options``: a table of :class:`TaskOptions` (with ``resources``, a table too)."""
    from .. import Resources, TaskOptions

    resources = Table(
        "Resources",
        {
            name: Field(name, kind_of(annotation), getattr(Resources(), name))
            for name, annotation in Resources.__annotations__.items()
        },
        Resources,
        lambda value, at: {name: getattr(value, name) for name in Resources.__struct_fields__},
    )
    fields = dataclass_fields(TaskOptions, {"Resources": resources})
    return Table(
        "TaskOptions",
        fields,
        TaskOptions,
        lambda value, at: {f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
    )
