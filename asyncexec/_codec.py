"""Serialization: cloudpickle for user objects, msgpack frames for envelopes.

A frame is a 4-byte little-endian length followed by one msgpack-encoded
message. Pickling failures become :class:`SerializationError` naming the type
of the object that could not be pickled.
"""

from __future__ import annotations

import _pickle
import operator
import os
import struct
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from . import _oneshot
from ._exceptions import SerializationError
from ._messages import ErrorInfo, Message, Versions
from ._oneshot import type_name
from ._version import __version__

if TYPE_CHECKING:
    from pickle import PickleBuffer  # (at run time _pickle's: pickle costs a worker ~1.4 ms)

__all__ = [
    "HEADER",
    "decode_message",
    "describe_exception",
    "dumps",
    "dumps_call",
    "encode_frame",
    "loads",
    "type_name",
    "versions",
]

HEADER = struct.Struct("<I")
MAX_FRAME = 2**32 - 1

_encoder = msgspec.msgpack.Encoder()
_message_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def versions() -> Versions:
    """The versions a worker must share with its driver."""
    major, minor = sys.version_info[:2]
    return Versions(
        python=f"{major}.{minor}", cloudpickle=cloudpickle_version(), asyncexec=__version__
    )


def cloudpickle_version() -> str:
    """cloudpickle's version, read from its source where it is not imported yet.

    A worker says it in its Hello before it runs anything; importing cloudpickle
    costs a start about 20 ms (dataclasses, logging, typing...), and a worker
    needs it only for what it cannot pickle or load without it.
    """
    global _cloudpickle_source_version
    if "cloudpickle" not in sys.modules:
        if _cloudpickle_source_version is None:  # read once: the driver asks per batch file
            _cloudpickle_source_version = _read_cloudpickle_version()
        if _cloudpickle_source_version:
            return _cloudpickle_source_version
    import cloudpickle

    return str(cloudpickle.__version__)


#: What cloudpickle's source says its version is ("" where that cannot be read).
_cloudpickle_source_version: str | None = None


def _read_cloudpickle_version() -> str:
    try:
        from importlib.util import find_spec

        spec = find_spec("cloudpickle")
        if spec is not None and spec.origin:
            with open(spec.origin, encoding="utf-8") as source:
                for line in source:
                    if line.startswith("__version__ = "):
                        return line.split("=", 1)[1].strip().strip("\"'")
    except (OSError, ImportError, ValueError):
        pass
    return ""


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5), or raise SerializationError."""
    import cloudpickle

    try:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle an object of type {type_name(obj)}: {exc}"
        ) from exc


def dumps_call(
    fn: object, args: Sequence[Any], kwargs: Mapping[str, Any], *, out_of_band: bool = False
) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """Pickle a callable and its arguments, naming the first argument that fails.

    Returns the callable's pickle, the pickle of ``(args, kwargs)`` and its
    out-of-band buffers. What pickles the same with the standard library as
    with cloudpickle goes through ``_pickle`` (several times faster: no
    cloudpickle Pickler per call; see :func:`_fast_dumps`), and a plain function
    pickled by reference (a module's function: its pickle is its name) is
    pickled once and remembered.

    With ``out_of_band``, an argument that is a large ``bytes`` object (``bytes``
    only: it cannot change) is not copied into the pickle: the object itself is
    returned as a buffer (pickle protocol 5), for the launcher to move as it
    likes. Load the arguments with :func:`loads` and these buffers.

    A function cloudpickle pickles by value (one of ``__main__``, a lambda, a
    closure) is pickled again only when what its pickle is made of changed: see
    :func:`_made_from`.
    """
    remembered = _by_reference.get(id(fn))
    if (
        remembered is not None
        and remembered[0] is fn
        # Its name may name another object now (rebound, reloaded): see named().
        and lookup(remembered[2], remembered[3]) is fn
        and not _names_by_value(remembered[1])
    ):
        fn_bytes = remembered[1]
    elif (by_value := _remembered_by_value(fn)) is not None:
        fn_bytes = by_value
    else:
        fast = _fast_dumps(fn)
        if fast is None:
            fn_bytes = _pickle_by_value(fn)
        else:
            fn_bytes = fast
            if _is_plain_function(fn):
                if len(_by_reference) >= _BY_REFERENCE_MAX:
                    _by_reference.clear()
                module = getattr(fn, "__module__", None) or ""
                path = tuple(getattr(fn, "__qualname__", "").split("."))
                _by_reference[id(fn)] = (fn, fast, module, path)
    if not kwargs:
        if not args:
            return fn_bytes, _NO_ARGUMENTS, ()
        if _all_atoms(args):  # the standard library pickles these as cloudpickle does
            return fn_bytes, _pickle.dumps((tuple(args), {}), protocol=5), ()
    buffers: list[bytes] = []
    collect = None
    call: tuple[tuple[Any, ...], dict[str, Any]] = (tuple(args), dict(kwargs))
    large = _large(args, kwargs)
    if out_of_band and large:
        call = (tuple(map(_by_buffer, args)), {key: _by_buffer(v) for key, v in kwargs.items()})
        collect = _collect(buffers)
        large = _large(*call)  # what is left in band
    args_bytes = None if large else _fast_dumps(call, collect)
    if args_bytes is None:
        buffers.clear()
        try:
            import cloudpickle

            args_bytes = cloudpickle.dumps(call, protocol=5, buffer_callback=collect)
        except Exception as exc:
            for position, value in enumerate(args):
                _check_picklable(value, f"argument {position}")
            for key, value in kwargs.items():
                _check_picklable(value, f"keyword argument {key!r}")
            raise SerializationError(f"cannot pickle the arguments: {exc}") from exc
    return fn_bytes, args_bytes, tuple(buffers) if buffers else ()


class _OutOfBand:
    """A large ``bytes`` argument, pickled as an out-of-band buffer (loads as itself)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # Loaded with the buffer given back: bytes(the bytes) is that very object.
        return bytes, (_pickle.PickleBuffer(self.data),)


def _by_buffer(value: Any) -> Any:
    """A large exact ``bytes`` value wrapped to travel out of band; anything else as is."""
    if type(value) is bytes and len(value) > _LARGE:
        return _OutOfBand(value)
    return value


def _collect(buffers: list[bytes]) -> Callable[[PickleBuffer], bool]:
    """A ``buffer_callback`` that keeps the ``bytes`` objects behind ``_OutOfBand`` buffers.

    Other buffers (a NumPy array's, a ``bytearray``'s) stay in the pickle: they may
    change after submit, and the pickle is the snapshot taken at submit.
    """

    def collect(buffer: PickleBuffer) -> bool:
        with buffer.raw() as view:
            obj = view.obj
        if type(obj) is bytes:
            buffers.append(obj)
            return False  # out of band
        return True

    return collect


#: Plain functions pickled by reference, by id (the function kept, so the id stays its).
#: With each, its module's name and its qualified name's parts (see :func:`named`).
_by_reference: dict[int, tuple[object, bytes, str, tuple[str, ...]]] = {}
_BY_REFERENCE_MAX = 1024


def _is_plain_function(fn: object) -> bool:
    """A function whose pickle by reference holds no state (not a bound method...)."""
    if isinstance(fn, types.FunctionType):
        return True
    return isinstance(fn, types.BuiltinFunctionType) and isinstance(
        getattr(fn, "__self__", None), types.ModuleType
    )


#: Functions pickled by value, by id: the function, what its pickle was made from
#: (:func:`_made_from`: the objects themselves, kept, so their ids stay theirs) and
#: the pickle. Only pickles of up to ``_LARGE`` bytes, ``_BY_VALUE_MAX`` of them.
_by_value: dict[int, tuple[types.FunctionType, list[object], bytes]] = {}
_BY_VALUE_MAX = 256
#: Functions pickled by value whose pickle could not be remembered (a global that can
#: change in place...), by id: pickled at every call without looking again.
_unremembered: dict[int, object] = {}
#: Functions and classes by id: the object and its pickle by reference, or None
#: where cloudpickle pickles it by value.
_by_name: dict[int, tuple[object, bytes | None]] = {}
#: The names the code of a function (and the code nested in it) reads or writes as
#: globals, as cloudpickle finds them, by code object.
_code_names: dict[types.CodeType, tuple[str, ...]] = {}
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"})
#: What cloudpickle takes from a by-value function's globals besides those it reads.
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")
#: A name the function's globals do not hold (a builtin's).
_UNBOUND = object()
#: ``len(sys.modules)`` and an object standing for it (compared by identity): the
#: submodules cloudpickle sends with a by-value function that uses a package
#: depend on what is imported.
_imported: tuple[int, object] = (0, object())


def _remembered_by_value(fn: object) -> bytes | None:
    """The pickle of a function pickled by value earlier, if it would pickle the same."""
    entry = _by_value.get(id(fn))
    if entry is None or entry[0] is not fn:
        return None
    return entry[2] if still_made_of(entry[0], entry[1]) else None


def still_made_of(fn: types.FunctionType, old: list[object]) -> bool:
    """Whether ``fn`` is made of the very objects :func:`_made_from` found before."""
    made = _made_from(fn)
    # (Identity: 1 == True == 1.0, but they pickle apart.)
    return made is not None and len(made) == len(old) and all(map(operator.is_, made, old))


def made_from(fn: object) -> list[object] | None:
    """What a function is made of (see :func:`_made_from`), or None where that cannot
    be told or it is no plain function."""
    return _made_from(fn) if type(fn) is types.FunctionType else None


def _pickle_by_value(fn: object) -> bytes:
    """cloudpickle's pickle of ``fn``, remembered when it can be told when it changes."""
    made = None
    if type(fn) is types.FunctionType and _unremembered.get(id(fn)) is not fn:
        # What it is made of is read first: a thread that rebinds a global meanwhile
        # makes the next call see a change, never the reverse.
        made = _made_from(fn)
        if made is None:  # not to be told again at every call
            if len(_unremembered) >= _BY_VALUE_MAX:
                _unremembered.clear()
            _unremembered[id(fn)] = fn
    data = _slow_dumps(fn, what=f"the function {fn!r}")
    if made is not None and len(data) <= _LARGE:
        if len(_by_value) >= _BY_VALUE_MAX:
            _by_value.clear()
        _by_value[id(fn)] = (fn, made, data)  # type: ignore[assignment]
    return data


def _made_from(fn: types.FunctionType) -> list[object] | None:
    """What cloudpickle's pickle of ``fn`` by value is made of: the same objects (by
    identity), the same pickle.

    That is the function's code, names, defaults, annotations, attributes and
    closure, and the globals its code uses, with the same for the functions among
    them it pickles by value. None where that cannot be told: a value that can
    change in place (a list, a dict, an instance, a bound method, a class or module
    pickled by value).
    """
    made: list[object] = []
    return made if _add_function(fn, made, set()) else None


def _add_function(fn: types.FunctionType, made: list[object], seen: set[int]) -> bool:
    made.append(fn)
    if id(fn) in seen:
        return True  # recursion: already added
    seen.add(id(fn))
    code = fn.__code__
    made += (code, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__)
    defaults = fn.__defaults__
    if defaults is not None and not _add_value(defaults, made, seen):
        return False
    for mapping in (fn.__kwdefaults__, fn.__annotations__, fn.__dict__):
        made.append(mapping)
        if mapping:
            for key, value in mapping.items():
                made.append(key)
                if not _add_value(value, made, seen):
                    return False
    closure = fn.__closure__
    if closure is not None:
        for cell in closure:
            try:
                value = cell.cell_contents
            except ValueError:  # not bound yet
                value = _UNBOUND
            if not _add_value(value, made, seen):
                return False
    names = _code_names.get(code)
    if names is None:
        if len(_code_names) >= _BY_REFERENCE_MAX:
            _code_names.clear()
        names = _code_names[code] = _global_names(code)
    namespace = fn.__globals__
    for name in _BASE_GLOBALS:
        if name in namespace and not _add_value(namespace[name], made, seen):
            return False
    for name in names:
        value = namespace.get(name, _UNBOUND)
        if type(value) in _ATOMS or value is _UNBOUND:
            made.append(value)
        elif not _add_value(value, made, seen):
            return False
    return True


def _add_value(value: object, made: list[object], seen: set[int]) -> bool:
    """Add what ``value``'s pickle is made of, or say it cannot be told (False)."""
    global _imported
    kind = type(value)
    made.append(value)
    if kind in _ATOMS or kind is complex or value is _UNBOUND:
        return True
    if kind is tuple or kind is frozenset:
        for item in value:  # type: ignore[attr-defined]
            if type(item) in _ATOMS:
                made.append(item)
            elif not _add_value(item, made, seen):
                return False
        return True
    if kind is types.ModuleType:
        name = value.__name__  # type: ignore[attr-defined]
        if sys.modules.get(name) is not value or _registered_by_value(name):
            return False  # pickled by value, its dict with it
        count = len(sys.modules)
        if _imported[0] != count:
            _imported = (count, object())
        made.append(_imported[1])
        return True
    if kind is types.BuiltinFunctionType:
        owner = getattr(value, "__self__", None)
        if owner is not None and type(owner) is not types.ModuleType:
            return False  # a bound method (dict.get, random.random): its object goes too
        return _pickled_by_name(value)
    if kind is types.FunctionType:
        if _pickled_by_name(value):
            return True
        return _add_function(value, made, seen)  # type: ignore[arg-type]
    if isinstance(value, type):
        return _pickled_by_name(value)
    return False


def _registered_by_value(module: str) -> bool:
    """Whether cloudpickle pickles ``module`` (or a package of it) by value."""
    cloudpickle = sys.modules.get("cloudpickle.cloudpickle")
    registered = getattr(cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if not registered:
        return False
    return any(module == name or module.startswith(name + ".") for name in registered)


def _pickled_by_name(obj: object) -> bool:
    """Whether cloudpickle pickles a function or class by reference (its name): the
    standard library pickles it as the object its module holds under its name."""
    known = _by_name.get(id(obj))
    if known is None or known[0] is not obj:
        if len(_by_name) >= _BY_REFERENCE_MAX:
            _by_name.clear()
        known = _by_name[id(obj)] = (obj, _fast_dumps(obj))
    data = known[1]
    if data is None or _names_by_value(data):
        return False
    return named(obj)


def named(obj: object) -> bool:
    """Whether ``obj``'s module still holds it under its qualified name.

    What a pickle by reference (a name) loads, and so what it runs: a function
    whose name was rebound since (monkeypatched, or its module reloaded) must
    travel some other way.
    """
    module = getattr(obj, "__module__", None) or ""
    return lookup(module, getattr(obj, "__qualname__", "").split(".")) is obj


def lookup(module: str, path: Sequence[str]) -> object:
    """What the module named ``module`` holds at ``path`` (None if nothing)."""
    found: object = sys.modules.get(module)
    for part in path:
        found = getattr(found, part, None)
    return found


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` and the code nested in it read or write as globals."""
    import dis

    names = dict.fromkeys(
        instruction.argval
        for instruction in dis.get_instructions(code)
        if instruction.opname in _GLOBAL_OPS
    )
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(_global_names(const)))
    return tuple(names)


#: Bytes beyond which an argument goes straight to cloudpickle: looking for
#: ``__main__`` in its pickle would cost as much as pickling it (~0.5 ms a MiB).
_LARGE = 1 << 16


#: The pickle of a call without arguments.
_NO_ARGUMENTS = _pickle.dumps(((), {}), protocol=5)
#: Types that have no ``nbytes`` (asking would raise and catch an AttributeError).
_NO_NBYTES = frozenset({int, float, bool, type(None), complex, tuple, list, dict, set, frozenset})


#: Exact types whose values pickle the same with ``_pickle`` and cloudpickle (no
#: reference to look for in the pickle), when not large.
_ATOMS = frozenset({int, float, bool, type(None), str, bytes})


def _all_atoms(args: Sequence[Any]) -> bool:
    """Whether every argument is a number, None, or a short ``str`` or ``bytes``."""
    for value in args:
        kind = type(value)
        if kind not in _ATOMS or ((kind is str or kind is bytes) and len(value) > _LARGE):
            return False
    return True


def _large(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether an argument is a large buffer or string (or array: ``nbytes``)."""
    for value in (*args, *kwargs.values()) if kwargs else args:
        if type(value) in _NO_NBYTES:
            continue
        if isinstance(value, (bytes, bytearray, memoryview, str)):
            if len(value) > _LARGE:
                return True
        elif (getattr(value, "nbytes", 0) or 0) > _LARGE:
            return True
    return False


def _fast_dumps(
    obj: object, buffer_callback: Callable[[PickleBuffer], bool] | None = None
) -> bytes | None:
    """``_pickle.dumps(obj)``, or None where cloudpickle would pickle differently.

    cloudpickle pickles by value what the standard library pickles by reference
    only when it lives in ``__main__`` (or in a module registered to be pickled
    by value): such pickles name ``__main__`` and are left to cloudpickle. What
    the standard library cannot pickle at all (lambdas, local functions,
    modules...) is left to cloudpickle too.
    """
    try:
        data = _pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)
    except Exception:
        return None
    return None if b"__main__" in data or _names_by_value(data) else data


def _names_by_value(data: bytes) -> bool:
    """Whether a pickle names a module registered with ``register_pickle_by_value``.

    (Or a submodule of one, or merely the same text: then cloudpickle pickles it.)
    """
    cloudpickle = sys.modules.get("cloudpickle.cloudpickle")
    if cloudpickle is None:
        return False  # not imported: nothing can be registered
    registered: set[str] = getattr(cloudpickle, "_PICKLE_BY_VALUE_MODULES", None) or set()
    return bool(registered) and any(name.encode() in data for name in registered)


def _slow_dumps(obj: object, *, what: str) -> bytes:
    import cloudpickle

    try:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what} of type {type_name(obj)}: {exc}") from exc


def _check_picklable(value: object, what: str) -> None:
    import cloudpickle

    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what} of type {type_name(value)}: {exc}") from exc


def loads(data: bytes | bytearray | memoryview, buffers: Sequence[bytes] = ()) -> Any:
    """Unpickle bytes made by :func:`dumps` (or :func:`dumps_call`, with its buffers).

    Raises SerializationError. (What cloudpickle pickles, pickle loads:
    cloudpickle is imported only when the bytes name it.)
    """
    try:
        return _pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot unpickle: {type_name(exc)}: {exc}") from exc


def encode_frame(message: Message) -> bytes:
    """One length-prefixed msgpack frame."""
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise SerializationError(f"message of {len(body)} bytes exceeds the 4 GiB frame limit")
    return HEADER.pack(len(body)) + body


def decode_message(body: bytes | bytearray | memoryview) -> Message:
    """Decode a frame body (without its header)."""
    return _message_decoder.decode(body)


def take_frames(buffer: bytearray) -> list[Message]:
    """Decode the whole frames at the start of ``buffer`` and remove them from it."""
    messages: list[Message] = []
    start = 0
    available = len(buffer)
    with memoryview(buffer) as view:
        while available - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if end > available:
                break
            messages.append(_message_decoder.decode(view[start + HEADER.size : end]))
            start = end
    if start:
        del buffer[:start]
    return messages


def describe_exception(exc: BaseException, *, skip_frames: int = 0) -> ErrorInfo:
    """Describe an exception so it can be shown where its class does not exist."""
    return ErrorInfo(**_oneshot.describe_exception(exc, skip_frames=skip_frames))


def hostname() -> str:
    """This machine's name (``platform.node()``, without importing platform)."""
    return os.uname().nodename
