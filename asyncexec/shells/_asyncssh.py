"""asyncssh, adapted: imported quietly, its errors told apart, a channel's streams as anyio's."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

if TYPE_CHECKING:
    import asyncssh

__all__ = ["ChannelReceiveStream", "ChannelSendStream", "connection_failure", "import_asyncssh"]

#: The warning cryptography (48 and later) raises when asyncssh, importing its DSA
#: support, merely names the DSA classes: nothing a user can act on. A DSA key in
#: use still warns, from where it is used.
_DSA_WARNING = r"DSA is deprecated"


def import_asyncssh() -> Any:
    """The asyncssh module, imported without the DSA warning (see ``_DSA_WARNING``)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_DSA_WARNING, category=UserWarning)
            import asyncssh
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("SSH needs asyncssh: pip install 'asyncexec[ssh]'") from exc
    return asyncssh


def connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself is gone (not a refused channel)."""
    asyncssh = import_asyncssh()
    return isinstance(
        exc,
        asyncssh.ConnectionLost | asyncssh.DisconnectError | ConnectionError | EOFError,
    ) and not isinstance(exc, asyncssh.ChannelOpenError)


class ChannelReceiveStream(anyio.abc.ByteReceiveStream):
    """The stdout or stderr of an SSH channel; a lost connection is BrokenResourceError."""

    def __init__(self, reader: asyncssh.SSHReader[bytes]) -> None:
        self._reader = reader

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._reader.read(max_bytes)
        except Exception as exc:
            if connection_failure(exc):
                raise anyio.BrokenResourceError(str(exc)) from exc
            raise
        if not data:
            raise anyio.EndOfStream
        return data

    async def aclose(self) -> None:
        pass


class ChannelSendStream(anyio.abc.ByteSendStream):
    """The stdin of an SSH channel; closing it sends EOF."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes]) -> None:
        self._writer = writer

    async def send(self, item: bytes) -> None:
        try:
            self._writer.write(item)
            await self._writer.drain()
        except Exception as exc:
            if connection_failure(exc) or isinstance(exc, BrokenPipeError):
                raise anyio.BrokenResourceError(str(exc)) from exc
            raise

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            if self._writer.can_write_eof():
                self._writer.write_eof()
