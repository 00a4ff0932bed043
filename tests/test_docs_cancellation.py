"""Every public coroutine says what cancellation does (trio's habit, STYLE.md).

The walk starts from the ``__all__`` of asyncexec and of each public
submodule, and goes into every public class found there (its own and
inherited members, ``__aenter__``/``__aexit__`` included). A coroutine
function or async generator function defined in asyncexec must have a
docstring in which ``Cancellation:`` starts a line or follows a sentence.
Objects of private classes that the API hands out (a shell's spawned
process) are covered by the ABC they implement (``SpawnedProcess``).

Inheritance: the docstring read is ``inspect.getdoc``'s, so an override
*without* a docstring inherits its base's (an implementation of a seam
behaves as the seam says); an override *with* its own docstring must say
``Cancellation:`` itself, unless it starts with ``As :meth:`Class.method```
(a delegate to that method): then the named method's paragraph applies.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

PUBLIC_MODULES = (
    "asyncexec",
    "asyncexec.abc",
    "asyncexec.cli",
    "asyncexec.experiment",
    "asyncexec.launchers",
    "asyncexec.launchers.batch",
    "asyncexec.launchers.docker",
    "asyncexec.launchers.pool",
    "asyncexec.launchers.process",
    "asyncexec.launchers.slurm",
    "asyncexec.launchers.ssh",
    "asyncexec.launchers.thread",
    "asyncexec.shells",
    "asyncexec.sweep",
    "asyncexec.testing",
    "asyncexec.worker",
)
DUNDERS = ("__aenter__", "__aexit__")
PARAGRAPH = re.compile(r"(^|\n\s*\n|\.\s+)Cancellation:", re.MULTILINE)
DELEGATE = re.compile(r"As :meth:`~?([\w.]+)`")


def is_async(obj: Any) -> bool:
    return inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj)


def ours(obj: Any) -> bool:
    return str(getattr(obj, "__module__", "")).startswith("asyncexec")


def public_coroutines() -> Iterator[tuple[str, Any]]:
    """(qualified name, function) for every public coroutine, each once.

    A method is named after the class that defines it: ``BaseExecutor.cancel``
    once, not again for every executor that inherits it.
    """
    seen: set[int] = set()
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and ours(obj):
                members = [m for m in dir(obj) if not m.startswith("_") or m in DUNDERS]
                # getattr_static runs no property; __func__ unwraps class- and staticmethods.
                statics = [inspect.getattr_static(obj, m) for m in members]
                found = [getattr(attr, "__func__", attr) for attr in statics]
            else:
                found = [obj]
            for func in found:
                if is_async(func) and ours(func) and id(func) not in seen:
                    seen.add(id(func))
                    yield f"{func.__module__}.{func.__qualname__}", func


def test_the_walk_finds_the_seams() -> None:
    # Qualified names only: the modules they live in may move.
    found = {func.__qualname__ for _, func in public_coroutines()}
    for expected in (
        "Launcher.start",
        "Launcher.aclose",
        "Shell.run",
        "SpawnedProcess.wait",
        "Future.get",
        "BaseExecutor.__aexit__",
        "BaseExecutor.as_completed",
        "_TaskMethods.submit",  # BaseExecutor's and ConfiguredExecutor's
        "prune_containers",
        "BatchLauncher.find_refs",
        "BatchAdapter.submit",  # the batch family's seam
        "FrameReader.read",  # the pool family's channel
        "Experiment.run",
        "ParamSweeper.aget_next",
        "check_launcher",
    ):
        assert expected in found


def says_cancellation(func: Any, by_qualname: dict[str, Any]) -> bool:
    doc = inspect.getdoc(func) or ""
    delegate = DELEGATE.match(doc)
    if delegate is not None and delegate.group(1) in by_qualname:
        doc = inspect.getdoc(by_qualname[delegate.group(1)]) or ""
    return PARAGRAPH.search(doc) is not None


def test_every_public_coroutine_documents_cancellation() -> None:
    walked = list(public_coroutines())
    by_qualname = {func.__qualname__: func for _, func in walked}
    missing = [name for name, func in walked if not says_cancellation(func, by_qualname)]
    assert not missing, f"{len(missing)} without a 'Cancellation:' paragraph:\n" + "\n".join(
        missing
    )
