"""An executor's ``setup`` and ``teardown`` hooks: checked, and pickled once.

Every executor takes ``setup=`` and ``teardown=``: callables of no argument
run where its tasks run (the process pool's ``initializer``, generalised),
``setup`` before the first task a worker (an array task, a container group)
runs and ``teardown`` once it has run its last. Each backend's docstring says
what a worker is there; :class:`Hooks` is what travels to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ._codec import dumps

__all__ = ["Hook", "Hooks", "make_hooks"]

#: A hook: called with no argument where the tasks run; what it returns is ignored.
Hook = Callable[[], object]


class Hooks(NamedTuple):
    """An executor's hooks, pickled (None: no such hook)."""

    setup: bytes | None = None
    teardown: bytes | None = None


def make_hooks(
    setup: Hook | None,
    teardown: Hook | None,
    *,
    initializer: Hook | None = None,
    travel_to: str | None = None,
) -> Hooks:
    """Check and pickle an executor's hooks (``initializer``: ``setup``'s former name).

    ``travel_to``: the launcher's name where it does not share this machine's
    files: the user's own modules travel with the hooks by value (see
    :mod:`asyncexec._travel`).

    Raises:
        TypeError: a hook is not callable, or both ``initializer`` and ``setup``
            are given.
        SerializationError: a hook cannot be pickled (or, with ``travel_to``, it
            needs a module of the user's that cannot travel).
    """
    if initializer is not None:
        if setup is not None:
            raise TypeError("initializer is setup's former name: give one of them, not both")
        setup, name = initializer, "initializer"
    else:
        name = "setup"
    for what, hook in ((name, setup), ("teardown", teardown)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{what} must be callable, got {hook!r}")
    return Hooks(
        dumps(setup, travel_to=travel_to) if setup is not None else None,
        dumps(teardown, travel_to=travel_to) if teardown is not None else None,
    )
