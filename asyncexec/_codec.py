"""Serialization: cloudpickle for callables and values, msgpack frames for envelopes.

A frame is a 4-byte little-endian length followed by one msgpack-encoded
message. Pickling failures become :class:`SerializationError` naming the type
of the object that could not be pickled. Which callables are pickled again and
which are remembered is :mod:`asyncexec._pickle_cache`'s business; how the
user's own modules travel to a place without this machine's files
(``travel_to``) is :mod:`asyncexec._travel`'s.
"""

from __future__ import annotations

import _pickle
import os
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from . import _runtime
from ._exceptions import SerializationError
from ._messages import ErrorInfo, Message, Versions
from ._pickle_cache import ATOMS, LARGE, fast_dumps, pickle_function
from ._runtime import type_name
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


def dumps(obj: object, *, travel_to: str | None = None) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5), or raise SerializationError.

    ``travel_to``: as for :func:`dumps_call`.
    """
    if travel_to is not None:
        from . import _travel

        return _travel.dumps(obj, travel_to)
    import cloudpickle

    try:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle an object of type {type_name(obj)}: {exc}"
        ) from exc


def dumps_call(
    fn: object,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    out_of_band: bool = False,
    travel_to: str | None = None,
) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """Pickle a callable and its arguments, naming the first argument that fails.

    Returns the callable's pickle, the pickle of ``(args, kwargs)`` and its
    out-of-band buffers. What pickles the same with the standard library as
    with cloudpickle goes through ``_pickle`` (several times faster: no
    cloudpickle Pickler per call; see :func:`asyncexec._pickle_cache.fast_dumps`),
    and a plain function pickled by reference (a module's function: its pickle
    is its name) is pickled once and remembered.

    With ``out_of_band``, an argument that is a large ``bytes`` object (``bytes``
    only: it cannot change) is not copied into the pickle: the object itself is
    returned as a buffer (pickle protocol 5), for the launcher to move as it
    likes. Load the arguments with :func:`loads` and these buffers.

    A function cloudpickle pickles by value (one of ``__main__``, a lambda, a
    closure) is pickled again only when what its pickle is made of changed: see
    :mod:`asyncexec._pickle_cache`.

    ``travel_to`` names a launcher whose tasks run without this machine's files
    (``capabilities.shares_files`` false): the user's own modules then travel by
    value, and a module of theirs that cannot travel raises SerializationError
    naming it (see :mod:`asyncexec._travel`). None (a place that shares the
    files): the usual pickles.
    """
    fn_bytes = pickle_function(fn)
    if travel_to is not None:
        return _travelling_call(fn, fn_bytes, args, kwargs, out_of_band, travel_to)
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
    args_bytes = None if large else fast_dumps(call, collect)
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


def _travelling_call(
    fn: object,
    fn_bytes: bytes,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    out_of_band: bool,
    where: str,
) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """:func:`dumps_call` for a place without this machine's files."""
    from . import _travel

    fn_bytes = _travel.pickle_function(fn, fn_bytes, where)
    if not kwargs:
        if not args:
            return fn_bytes, _NO_ARGUMENTS, ()
        if _all_atoms(args):  # no module named in such a pickle
            return fn_bytes, _pickle.dumps((tuple(args), {}), protocol=5), ()
    buffers: list[bytes] = []
    collect = None
    call: tuple[tuple[Any, ...], dict[str, Any]] = (tuple(args), dict(kwargs))
    if out_of_band and _large(args, kwargs):
        call = (tuple(map(_by_buffer, args)), {key: _by_buffer(v) for key, v in kwargs.items()})
        collect = _collect(buffers)
    try:
        args_bytes = _travel.dumps(call, where, what="the arguments", buffer_callback=collect)
    except SerializationError as exc:
        if isinstance(exc.__cause__, Exception):  # not picklable at all: name which one
            for position, value in enumerate(args):
                _check_picklable(value, f"argument {position}")
            for key, value in kwargs.items():
                _check_picklable(value, f"keyword argument {key!r}")
        raise
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
    if type(value) is bytes and len(value) > LARGE:
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


#: The pickle of a call without arguments.
_NO_ARGUMENTS = _pickle.dumps(((), {}), protocol=5)
#: Types that have no ``nbytes`` (asking would raise and catch an AttributeError).
_NO_NBYTES = frozenset({int, float, bool, type(None), complex, tuple, list, dict, set, frozenset})


def _all_atoms(args: Sequence[Any]) -> bool:
    """Whether every argument is a number, None, or a short ``str`` or ``bytes``."""
    for value in args:
        kind = type(value)
        if kind not in ATOMS or ((kind is str or kind is bytes) and len(value) > LARGE):
            return False
    return True


def _large(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Whether an argument is a large buffer or string (or array: ``nbytes``)."""
    for value in (*args, *kwargs.values()) if kwargs else args:
        if type(value) in _NO_NBYTES:
            continue
        if isinstance(value, (bytes, bytearray, memoryview, str)):
            if len(value) > LARGE:
                return True
        elif (getattr(value, "nbytes", 0) or 0) > LARGE:
            return True
    return False


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
    return ErrorInfo(**_runtime.describe_exception(exc, skip_frames=skip_frames))


def hostname() -> str:
    """This machine's name (``platform.node()``, without importing platform)."""
    return os.uname().nodename
