"""Serialization: cloudpickle for user objects, msgpack frames for envelopes.

A frame is a 4-byte little-endian length followed by one msgpack-encoded
message. Pickling failures become :class:`SerializationError` naming the type
of the object that could not be pickled.
"""

from __future__ import annotations

import platform
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle
import msgspec

from . import _oneshot
from ._exceptions import SerializationError
from ._messages import ErrorInfo, Message, Versions
from ._oneshot import type_name
from ._version import __version__

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
        python=f"{major}.{minor}",
        cloudpickle=str(cloudpickle.__version__),
        asyncexec=__version__,
    )


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` with cloudpickle (protocol 5), or raise SerializationError."""
    try:
        return cloudpickle.dumps(obj, protocol=5)  # type: ignore[no-any-return]
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle an object of type {type_name(obj)}: {exc}"
        ) from exc


def dumps_call(fn: object, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Pickle a callable and its arguments, naming the first argument that fails."""
    try:
        fn_bytes = cloudpickle.dumps(fn, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the function {fn!r} of type {type_name(fn)}: {exc}"
        ) from exc
    try:
        args_bytes = cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=5)
    except Exception as exc:
        for position, value in enumerate(args):
            _check_picklable(value, f"argument {position}")
        for key, value in kwargs.items():
            _check_picklable(value, f"keyword argument {key!r}")
        raise SerializationError(f"cannot pickle the arguments: {exc}") from exc
    return fn_bytes, args_bytes


def _check_picklable(value: object, what: str) -> None:
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what} of type {type_name(value)}: {exc}") from exc


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Unpickle bytes made by :func:`dumps`, or raise SerializationError."""
    try:
        return cloudpickle.loads(data)
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


def describe_exception(exc: BaseException, *, skip_frames: int = 0) -> ErrorInfo:
    """Describe an exception so it can be shown where its class does not exist."""
    return ErrorInfo(**_oneshot.describe_exception(exc, skip_frames=skip_frames))


def hostname() -> str:
    return platform.node()
