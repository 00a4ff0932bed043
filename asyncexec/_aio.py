"""Helpers for backends whose client libraries run on asyncio only."""

from __future__ import annotations

__all__ = ["require_asyncio"]


def require_asyncio(what: str, library: str) -> None:
    """Raise a clear RuntimeError unless an asyncio event loop runs this code.

    Args:
        what: the backend, as the user knows it ("the Docker launcher").
        library: what ties it to asyncio ("aiodocker is built on aiohttp").
    """
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} runs on asyncio only ({library}), not on trio or outside an event loop"
        ) from None
