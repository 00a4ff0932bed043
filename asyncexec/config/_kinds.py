"""The values a configuration holds: where a key is (:class:`At`), what it may hold
(a :class:`Kind`), a field of a table (:class:`Field`), and a table of fields.

A kind reads a value from TOML or JSON (``load``: checked, converted) and writes
it back (``dump``: plain str, int, float, bool, list and dict only). The kind of
a constructor's parameter is read from its annotation (:func:`kind_of`), so a
parameter added to an executor is a key of its table without more code here.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._exceptions import AsyncExecError

__all__ = [
    "At",
    "ConfigError",
    "Field",
    "Kind",
    "Table",
    "construct",
    "dataclass_fields",
    "dump_fields",
    "kind_of",
    "parameters",
    "reference",
    "resolve_reference",
    "unknown_key",
]


class ConfigError(AsyncExecError, ValueError):
    """A configuration that cannot make an executor, or an executor that cannot be written.

    The message names where: the file (or ``<dict>``, an environment variable,
    the command line), the table (``[profile.cluster]``) and the key.

    Attributes:
        source: the file, or what else the value came from.
        table: the table in it (None: the top level, or no table at all).
        key: the key, dotted for nested tables (``host.port``, ``hosts[1].host``).
    """

    def __init__(self, message: str, *, source: str, table: str | None, key: str | None) -> None:
        super().__init__(message)
        self.source = source
        self.table = table
        self.key = key


@dataclasses.dataclass(frozen=True)
class At:
    """Where a value is: a source, a table in it, a key in that table."""

    source: str
    table: str | None = None
    key: str | None = None

    def child(self, key: str | int) -> At:
        """The place of ``key`` (a name, or an index of a list) under this one."""
        if isinstance(key, int):
            return dataclasses.replace(self, key=f"{self.key or ''}[{key}]")
        return dataclasses.replace(self, key=key if not self.key else f"{self.key}.{key}")

    def error(self, problem: str) -> ConfigError:
        """A :class:`ConfigError` saying ``problem`` here."""
        where = [self.source]
        if self.table:
            where.append(f"[{self.table}]")
        if self.key:
            where.append(f"key {self.key!r}")
        return ConfigError(
            f"{', '.join(where)}: {problem}", source=self.source, table=self.table, key=self.key
        )


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Kind:
    """What a key may hold: how it is read (``load``) and written (``dump``)."""

    #: Said in messages: "expected {what}".
    what = "a value"

    def load(self, value: Any, at: At) -> Any:
        raise NotImplementedError

    def dump(self, value: Any, at: At) -> Any:
        return value

    def wrong(self, value: Any, at: At) -> ConfigError:
        return at.error(f"expected {self.what}, got {_shown(value)}")

    def from_text(self, text: str, at: At) -> Any:
        """The value an environment variable's text stands for (then ``load``-ed)."""
        return text


class _Str(Kind):
    what = "a string"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, str):
            raise self.wrong(value, at)
        return value

    def dump(self, value: Any, at: At) -> Any:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise at.error(f"cannot write {_shown(value)}: not a string")
        return value


class _Int(Kind):
    what = "an integer"

    def from_text(self, text: str, at: At) -> Any:
        try:
            return int(text)
        except ValueError:
            raise self.wrong(text, at) from None

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.wrong(value, at)
        return value


class _Float(Kind):
    what = "a number"

    def from_text(self, text: str, at: At) -> Any:
        try:
            return float(text)
        except ValueError:
            raise self.wrong(text, at) from None

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.wrong(value, at)
        if not math.isfinite(value):
            raise at.error(f"expected a finite number, got {value!r}")
        return float(value)

    def dump(self, value: Any, at: At) -> Any:
        return float(value)


class _Bool(Kind):
    what = "true or false"

    def from_text(self, text: str, at: At) -> Any:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if text.strip().lower() not in words:
            raise self.wrong(text, at)
        return words[text.strip().lower()]

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, bool):
            raise self.wrong(value, at)
        return value


class _IntOrStr(Kind):
    what = "an integer or a string"

    def load(self, value: Any, at: At) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.wrong(value, at)
        return value


class _StrMap(Kind):
    what = "a table of strings"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, Mapping):
            raise self.wrong(value, at)
        for name, item in value.items():
            if not isinstance(item, str):
                raise at.child(str(name)).error(f"expected a string, got {_shown(item)}")
        return dict(value)

    def dump(self, value: Any, at: At) -> Any:
        return {str(name): str(item) for name, item in value.items()}


class _StrList(Kind):
    what = "a list of strings"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, list | tuple):
            raise self.wrong(value, at)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise at.child(index).error(f"expected a string, got {_shown(item)}")
        return list(value)

    def dump(self, value: Any, at: At) -> Any:
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise at.error(f"cannot write {_shown(value)}: not a list of strings")
        return [_STR.dump(item, at) for item in value]


class _Volumes(Kind):
    what = "a table {host path = container path} or a list of 'host:container[:ro]'"

    def load(self, value: Any, at: At) -> Any:
        return (_STR_MAP if isinstance(value, Mapping) else _STR_LIST).load(value, at)

    def dump(self, value: Any, at: At) -> Any:
        return (_STR_MAP if isinstance(value, Mapping) else _STR_LIST).dump(value, at)


class _NumberPair(Kind):
    what = "a list of two numbers"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise self.wrong(value, at)
        return tuple(_FLOAT.load(item, at.child(i)) for i, item in enumerate(value))

    def dump(self, value: Any, at: At) -> Any:
        return [float(item) for item in value]


class _Quotas(Kind):
    what = "a list of [count, seconds] windows"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, list | tuple):
            raise self.wrong(value, at)
        windows = []
        for index, window in enumerate(value):
            where = at.child(index)
            if not isinstance(window, list | tuple) or len(window) != 2:
                raise where.error(f"expected [count, seconds], got {_shown(window)}")
            windows.append(
                (_INT.load(window[0], where.child(0)), _FLOAT.load(window[1], where.child(1)))
            )
        return tuple(windows)

    def dump(self, value: Any, at: At) -> Any:
        return [[int(count), float(seconds)] for count, seconds in value]


# -- references to code ------------------------------------------------------------------


def reference(obj: object, at: At) -> str:
    """``module:qualname`` naming ``obj``, checked to import back as ``obj`` itself.

    Raises:
        ConfigError: ``obj`` has no importable name (a lambda, a nested function,
            something of ``__main__``, or a name that imports something else).
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise at.error(f"cannot write {_shown(obj)}: it has no module and name to import it by")
    if "<" in qualname:
        raise at.error(
            f"cannot write {module}.{qualname}: a lambda or a function defined inside "
            "another one cannot be imported; define it at the top level of a module"
        )
    if module == "__main__":
        raise at.error(
            f"cannot write __main__:{qualname}: a script's own names cannot be imported "
            "elsewhere; move it to a module"
        )
    text = f"{module}:{qualname}"
    try:
        found = resolve_reference(text, at)
    except ConfigError:
        found = None
    if found is not obj:
        raise at.error(f"cannot write {_shown(obj)}: {text} does not import back as it")
    return text


def resolve_reference(text: str, at: At) -> Any:
    """What ``module:qualname`` names.

    Raises:
        ConfigError: not of that form, or it does not import.
    """
    module_name, sep, qualname = text.partition(":")
    if not sep or not module_name or not qualname:
        raise at.error(f"expected 'module:name', got {text!r}")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise at.error(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise at.error(f"{module_name} has no {qualname}") from None
    return found


class _Reference(Kind):
    what = "a reference 'module:name'"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, str):
            raise self.wrong(value, at)
        found = resolve_reference(value, at)
        if not callable(found):
            raise at.error(f"{value} is not callable")
        return found

    def dump(self, value: Any, at: At) -> Any:
        return reference(value, at)


class _Exceptions(Kind):
    what = "a list of exception classes, as 'module:name'"

    def load(self, value: Any, at: At) -> Any:
        if not isinstance(value, list | tuple):
            raise self.wrong(value, at)
        classes = []
        for index, item in enumerate(value):
            where = at.child(index)
            if not isinstance(item, str):
                raise self.wrong(item, where)
            found = resolve_reference(item, where)
            if not (isinstance(found, type) and issubclass(found, BaseException)):
                raise where.error(f"{item} is not an exception class")
            classes.append(found)
        return tuple(classes)

    def dump(self, value: Any, at: At) -> Any:
        return [reference(item, at.child(index)) for index, item in enumerate(value)]


_STR, _INT, _FLOAT, _BOOL = _Str(), _Int(), _Float(), _Bool()
_STR_MAP, _STR_LIST = _StrMap(), _StrList()

#: The kind of each annotation the executors' parameters and configs use (None left out).
_KINDS: dict[str, Kind] = {
    "str": _STR,
    "int": _INT,
    "float": _FLOAT,
    "bool": _BOOL,
    "Mode": _STR,  # Literal["oneshot", "warm"]: the constructor says what it takes
    "str | os.PathLike[str]": _STR,
    "int | str": _IntOrStr(),
    "Mapping[str, str]": _STR_MAP,
    "Sequence[str]": _STR_LIST,
    "Mapping[str, str] | Sequence[str]": _Volumes(),
    "tuple[float, float]": _NumberPair(),
    "Sequence[tuple[int, float]]": _Quotas(),
    "tuple[type[BaseException], ...]": _Exceptions(),
    "Hook": _Reference(),  # Callable[[], object]: setup= and teardown=
}
_REFERENCE = _KINDS["Hook"]


def _alternatives(annotation: str) -> list[str]:
    """``annotation`` split at its top-level ``|``."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(annotation):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(annotation[start:index].strip())
            start = index + 1
    parts.append(annotation[start:].strip())
    return parts


def kind_of(annotation: object, special: Mapping[str, Kind] | None = None) -> Kind | None:
    """The kind of a parameter annotated ``annotation`` (a string: the modules use
    postponed annotations); None when the configuration cannot hold it."""
    if not isinstance(annotation, str):
        return None
    rest = " | ".join(part for part in _alternatives(annotation) if part != "None")
    if rest.startswith("Callable"):
        return _REFERENCE
    return (special or {}).get(rest) or _KINDS.get(rest)


# -- tables -------------------------------------------------------------------------------

#: A field without a default (a key the table must have).
REQUIRED: Any = inspect.Parameter.empty


@dataclasses.dataclass(frozen=True)
class Field:
    """A key of a table: its kind and the default its value is left out at."""

    name: str
    kind: Kind | None  # None: a parameter the configuration cannot hold
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def written(self, value: Any, at: At) -> Any:
        """``value`` as written, or None when it is left out (None, or what the
        default is written as: ``60`` where the default is ``60.0``)."""
        if value is None:
            return None
        if self.kind is None:
            if not self.required and value is self.default:
                return None
            raise at.error(f"cannot write {_shown(value)}: asyncexec.config cannot hold this key")
        dumped = self.kind.dump(value, at)
        if self.default is None or self.required:
            return None if dumped in ({}, []) else dumped
        try:
            default = self.kind.dump(self.default, at)
        except ConfigError:
            default = None
        return None if dumped == default and type(dumped) is type(default) else dumped


def parameters(
    init: Callable[..., Any],
    skip: Iterable[str] = (),
    special: Mapping[str, Kind] | None = None,
) -> dict[str, Field]:
    """The fields of a constructor's keyword parameters (but ``self`` and ``skip``)."""
    left_out = {"self", *skip}
    return {
        name: Field(name, kind_of(parameter.annotation, special), parameter.default)
        for name, parameter in inspect.signature(init).parameters.items()
        if name not in left_out
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def dataclass_fields(cls: type, special: Mapping[str, Kind] | None = None) -> dict[str, Field]:
    """The fields of a dataclass (its default factories called)."""
    fields = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = REQUIRED
        fields[field.name] = Field(field.name, kind_of(field.type, special), default)
    return fields


def unknown_key(name: str, known: Iterable[str], at: At, of: str = "") -> ConfigError:
    """The error for a key that is not one of ``known`` (of ``of``): with the closest name."""
    close = difflib.get_close_matches(name, list(known), n=1)
    said = f" (did you mean {close[0]!r}?)" if close else ""
    return at.child(name).error(f"unknown key{of}{said}")


class Table(Kind):
    """A table of fields, made into an object by ``make`` and read back by ``read``.

    Args:
        name: said in messages (``"TaskOptions"``).
        fields: its keys.
        make: builds the object from the loaded fields (its errors are the
            constructor's own validation, reported at the key they name).
        read: the object's field values, for writing it (given where it is written).
    """

    what = "a table"

    def __init__(
        self,
        name: str,
        fields: Mapping[str, Field],
        make: Callable[..., Any],
        read: Callable[[Any, At], Mapping[str, Any]],
    ) -> None:
        self.name = name
        self.fields = dict(fields)
        self.make = make
        self.read = read

    def load_fields(self, value: Any, at: At) -> dict[str, Any]:
        """The table's values, each checked and converted (not made into the object)."""
        if not isinstance(value, Mapping):
            raise self.wrong(value, at)
        loaded = {}
        for name, item in value.items():
            field = self.fields.get(name)
            if field is None or field.kind is None:
                raise unknown_key(str(name), self.fields, at, f" of {self.name}")
            loaded[name] = None if item is None else field.kind.load(item, at.child(name))
        for name, field in self.fields.items():
            if field.required and loaded.get(name) is None:
                raise at.child(name).error(f"missing: {self.name} needs it")
        return loaded

    def load(self, value: Any, at: At) -> Any:
        loaded = self.load_fields(value, at)
        values = {k: v for k, v in loaded.items() if v is not None}
        return construct(self.name, self.make, values, lambda key: at)

    def dump(self, value: Any, at: At) -> Any:
        return dump_fields(self.fields, self.read(value, at), at)


def dump_fields(fields: Mapping[str, Field], values: Mapping[str, Any], at: At) -> dict[str, Any]:
    """The written form of ``values`` (arguments by name; those at their default left
    out), by the keys of ``fields``, in their order."""
    names = {field.name for field in fields.values()}
    for name, value in values.items():
        if name not in names and value is not None:
            raise at.child(name).error(
                f"cannot write {_shown(value)}: asyncexec.config does not know this argument"
            )
    out = {}
    for key, field in fields.items():
        if field.name in values:
            written = field.written(values[field.name], at.child(key))
            if written is not None:
                out[key] = written
    return out


def construct(
    what: str,
    make: Callable[..., Any],
    values: Mapping[str, Any],
    where: Callable[[str], At],
    keys: Mapping[str, str] | None = None,
) -> Any:
    """``make(**values)``: its ValueError or TypeError (the constructor's own
    validation) reported at the key(s) its message names, else at the table.

    ``where(key)`` is the place of the table holding ``key`` (``""``: any);
    ``keys`` the table's key of an argument whose key is not its name.
    """
    try:
        return make(**values)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        message = str(exc)
        # As words: "poll_interval" is not named by "max_poll_interval".
        named = [k for k in values if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", message)]
        named = [(keys or {}).get(name, name) for name in named]
        at = where(named[0]).child(", ".join(named)) if named else where("")
        raise at.error(f"{what} refused it: {message}") from None
