"""What an object was made with: the arguments its constructor was given.

:func:`remembers_arguments` decorates an ``__init__``; :func:`given_arguments`
answers, for an object, the arguments that ``__init__`` was called with (those
passed, not the defaults). ``asyncexec.config`` writes an executor's
configuration from them (``to_dict``): an executor keeps what it needs to run,
in forms made for running (a pickled initializer, a merged environment), not
what it was asked for.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["given_arguments", "remembers_arguments"]

_Init = TypeVar("_Init", bound=Callable[..., None])

#: The instance attribute holding, per decorated ``__init__``, the arguments it was given.
_ATTRIBUTE = "_asyncexec_arguments"


def remembers_arguments(init: _Init) -> _Init:
    """Decorate ``__init__`` so that :func:`given_arguments` can tell what it was given."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        arguments = dict(signature.bind(self, *args, **kwargs).arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        self.__dict__.setdefault(_ATTRIBUTE, {})[__init__] = arguments

    return __init__  # type: ignore[return-value]


def given_arguments(obj: object, cls: type) -> dict[str, Any] | None:
    """The arguments ``cls.__init__`` (decorated) was given to make ``obj``; None if
    it was not made by that ``__init__`` (another class's, or an undecorated one)."""
    init = cls.__dict__.get("__init__")
    recorded = getattr(obj, "__dict__", {}).get(_ATTRIBUTE, {})
    arguments = recorded.get(init)
    return None if arguments is None else dict(arguments)
