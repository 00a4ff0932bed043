"""stopit, imported lazily and quietly (it imports the deprecated pkg_resources)."""

from __future__ import annotations

import warnings
from types import ModuleType

__all__ = ["async_raise", "load_stopit"]


def load_stopit() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import stopit
    module: ModuleType = stopit
    return module


def async_raise(thread_id: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in the thread ``thread_id`` at its next bytecode."""
    load_stopit().async_raise(thread_id, exception)
