"""Which value wins: command-line flags, then ``ASYNCEXEC_*`` variables, then the
file's profile (or an experiment's recorded configuration), then the defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._backends import BACKENDS, Backend, backend_named, parse_host, unknown_backend
from ._files import Profile, read_profile
from ._kinds import At

__all__ = ["ENVIRONMENT", "FILE_VARIABLE", "PROFILE_VARIABLE", "resolve"]

#: The environment variables :func:`resolve` reads, and the key each one sets.
#: ``ASYNCEXEC_HOST`` is a comma-separated list for the ssh backend. A variable
#: whose key the chosen backend does not have is left alone.
ENVIRONMENT: dict[str, str] = {
    "ASYNCEXEC_BACKEND": "backend",
    "ASYNCEXEC_WORKERS": "n_workers",
    "ASYNCEXEC_IMAGE": "image",
    "ASYNCEXEC_HOST": "host",
    "ASYNCEXEC_PARTITION": "partition",
    "ASYNCEXEC_TIME": "time",
    "ASYNCEXEC_CHUNK_SIZE": "chunk_size",
    "ASYNCEXEC_PYTHON": "python",
    "ASYNCEXEC_STAGING_DIR": "staging_dir",
}
#: The variables naming the profile and the file (``profile=`` and ``path=`` win).
PROFILE_VARIABLE = "ASYNCEXEC_PROFILE"
FILE_VARIABLE = "ASYNCEXEC_CONFIG"


@dataclasses.dataclass
class _Layer:
    """One source of values, and where each of its keys is (for errors)."""

    values: dict[str, Any]
    where: Callable[[str], At]
    #: The profile asked for by name: one for another backend is an error, not skipped.
    named: str | None = None


def _deep_merge(lower: Any, higher: Any) -> Any:
    if isinstance(lower, Mapping) and isinstance(higher, Mapping):
        merged = dict(lower)
        for key, value in higher.items():
            merged[key] = _deep_merge(lower.get(key), value) if key in lower else value
        return merged
    return higher


def resolve(
    flags: Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    base: Mapping[str, Any] | None = None,
    base_source: str = "<base>",
    flags_source: str = "the command line",
) -> dict[str, Any]:
    """The configuration of an executor from every source, checked: the table
    :func:`~asyncexec.config.to_dict` writes of the executor it makes.

    Precedence, highest first: ``flags``; the environment variables of
    :data:`ENVIRONMENT`; the profile (``profile``, else ``ASYNCEXEC_PROFILE``,
    else the file's ``default`` profile if it has one) of the file at ``path``
    (else ``ASYNCEXEC_CONFIG``, else the one found from the working directory);
    ``base``, a configuration recorded earlier (an experiment's
    ``executor.json``: then only a profile named explicitly is read); the
    constructors' defaults. Tables (``options``, ``host``) merge key by key.

    The backend is the highest source's ``backend`` (``"process"`` if none
    names one). A lower source made for another backend is left out, but a
    profile named explicitly is an error then. ``flags`` may name the SSH host(s)
    as ``host`` (``"user@host:port"`` or a table, or a list of them): for the ssh
    backend they are its ``hosts``.

    Raises:
        ConfigError: naming the source (file and table, environment variable,
            ``flags_source``) and the key of a wrong value.
    """
    name = profile or environ.get(PROFILE_VARIABLE) or None
    file = path if path is not None else environ.get(FILE_VARIABLE) or None
    layers: list[_Layer] = []
    if base is not None:
        at = At(base_source)
        layers.append(_Layer(dict(base), lambda key: at))
    if name is not None or base is None:
        found = read_profile(name, None if file is None else os.fspath(file))
        if found is not None:
            layers.append(_profile_layer(found, named=name))
    environment = {
        key: (variable, environ[variable])
        for variable, key in ENVIRONMENT.items()
        if environ.get(variable)
    }
    if "backend" in environment:
        variable, text = environment["backend"]
        layers.append(_Layer({"backend": text}, lambda key: At(f"environment variable {variable}")))
    if flags:
        at = At(flags_source)
        layers.append(_Layer(dict(flags), lambda key: at))
    backend, layers, chosen_by = _choose_backend(layers)
    layers.insert(-1 if flags else len(layers), _environment_layer(backend, environment))
    merged: dict[str, Any] = {}
    origins: dict[str, Callable[[str], At]] = {}
    for layer in layers:
        for key, value in _hosts_of(backend, layer).items():
            if key == "backend":
                continue
            merged[key] = _deep_merge(merged[key], value) if key in merged else value
            origins[key] = layer.where

    def where(key: str) -> At:  # (a key missing: where the backend was chosen)
        return origins[key](key) if key in origins else chosen_by(key)

    loaded = backend.load(merged, where)
    return backend.write(backend.build(loaded, where))


def _profile_layer(found: Profile, named: str | None) -> _Layer:
    at = found.at
    if "backend" not in found.values:
        raise at.child("backend").error(f"missing: one of {', '.join(BACKENDS)}")
    return _Layer(found.values, lambda key: at, named)


def _choose_backend(
    layers: list[_Layer],
) -> tuple[Backend, list[_Layer], Callable[[str], At]]:
    """The backend the highest layer names (else process), the layers that apply, and
    where the backend was chosen."""
    chosen, index = "process", -1
    for index in range(len(layers) - 1, -1, -1):
        if "backend" in layers[index].values:
            chosen = layers[index].values["backend"]
            break
    if index >= 0 and chosen not in BACKENDS:
        raise unknown_backend(chosen, layers[index].where("backend"))
    kept = []
    for position, layer in enumerate(layers):
        other = layer.values.get("backend", chosen)
        if position < index and other != chosen:
            if layer.named is not None:
                at = layer.where("backend")
                raise at.child("backend").error(
                    f"profile {layer.named!r} is for backend {other}, but backend {chosen} "
                    "was asked for above it (flags or ASYNCEXEC_BACKEND)"
                )
            continue  # made for another backend: not this one's
        kept.append(layer)
    chosen_by = layers[index].where if index >= 0 else (lambda key: At("the defaults"))
    return backend_named(chosen), kept, chosen_by


def _environment_layer(backend: Backend, environment: dict[str, tuple[str, str]]) -> _Layer:
    """The ``ASYNCEXEC_*`` variables that set a key of ``backend``, as values."""
    values: dict[str, Any] = {}
    places: dict[str, At] = {}
    for key, (variable, text) in environment.items():
        at = At(f"environment variable {variable}")
        if key == "backend":
            continue
        if key == "host" and backend.name == "ssh":
            key, value = "hosts", [part.strip() for part in text.split(",") if part.strip()]
        elif key not in backend.fields or backend.fields[key].kind is None:
            continue
        else:
            kind = backend.fields[key].kind
            assert kind is not None
            value = kind.from_text(text, at.child(key))
        values[key] = value
        places[key] = at
    return _Layer(values, lambda key: places.get(key, At("the environment")))


def _hosts_of(backend: Backend, layer: _Layer) -> dict[str, Any]:
    """The layer's values, its ``host`` as the backend takes it (a table for slurm,
    ``hosts`` for ssh), so that tables merge key by key."""
    values = dict(layer.values)
    if "host" not in values:
        return values
    host = values["host"]
    at = layer.where("host").child("host")
    if backend.name == "ssh":
        values["hosts"] = host if isinstance(host, list) else [host]
        del values["host"]
    elif backend.name == "slurm":
        if isinstance(host, list):
            if len(host) != 1:
                raise at.error(f"a Slurm cluster is reached through one host, got {len(host)}")
            host = host[0]
        values["host"] = parse_host(host, at) if isinstance(host, str) else host
    else:
        raise at.error(f"backend {backend.name} has no SSH host (ssh and slurm have)")
    return values
