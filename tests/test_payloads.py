"""Large arguments: out-of-band pickle buffers, and the pools' shared memory."""

from __future__ import annotations

import importlib
import mmap
import os
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncexec import ProcessExecutor, ThreadExecutor
from asyncexec._codec import dumps_call, loads
from asyncexec._pickle_cache import remembered
from asyncexec.launchers.pool import SharedArena

BIG = 100_000  # above the size at which an argument counts as large


def describe(*args: object, **kwargs: object) -> tuple[object, ...]:
    return args, kwargs


def test_large_bytes_leave_the_pickle_as_buffers() -> None:
    first, second = os.urandom(BIG), os.urandom(BIG + 1)
    mutable, text = bytearray(os.urandom(BIG)), "x" * BIG
    args = (first, b"small", mutable, text)
    _, pickled, buffers = dumps_call(describe, args, {"key": second}, out_of_band=True)
    assert len(buffers) == 2
    assert buffers[0] is first and buffers[1] is second  # the objects, not copies
    # The bytearray and the str stay in the pickle: it is the snapshot taken at submit.
    assert 2 * BIG < len(pickled) < 3 * BIG
    mutable[:4] = b"\0\0\0\0"
    loaded_args, loaded_kwargs = loads(pickled, buffers)
    assert loaded_args[0] == first and type(loaded_args[0]) is bytes
    assert loaded_args[1] == b"small"
    assert type(loaded_args[2]) is bytearray and loaded_args[2][:4] != b"\0\0\0\0"
    assert loaded_args[3] == text
    assert loaded_kwargs == {"key": second}


def test_without_out_of_band_everything_is_in_the_pickle() -> None:
    data = os.urandom(BIG)
    _, pickled, buffers = dumps_call(describe, (data,), {}, out_of_band=False)
    assert buffers == () and len(pickled) > BIG
    assert loads(pickled) == ((data,), {})


def test_buffers_come_out_of_cloudpickle_too() -> None:
    """An argument only cloudpickle pickles (a lambda) beside a large bytes one."""
    data = os.urandom(BIG)
    _, pickled, buffers = dumps_call(describe, (lambda: 7, data), {}, out_of_band=True)
    assert buffers == (data,) and len(pickled) < BIG
    (function, loaded), _ = loads(pickled, buffers)
    assert function() == 7 and loaded == data


def test_loading_without_the_buffers_fails_clearly() -> None:
    from asyncexec import SerializationError

    _, pickled, buffers = dumps_call(describe, (os.urandom(BIG),), {}, out_of_band=True)
    assert buffers
    with pytest.raises(SerializationError, match="cannot unpickle"):
        loads(pickled)


@pytest.mark.skipif(
    not hasattr(os, "memfd_create") and os.environ.get("CI") != "true",
    reason="memory files are Linux's (in CI this runs, and fails without them)",
)
class TestSharedArena:
    def test_regions_are_written_where_another_mapping_reads_them(self) -> None:
        arena = SharedArena(1 << 16)
        try:
            first = arena.put([b"abc", b"defg"])
            second = arena.put([b"x" * 100])
            assert first == 0 and second == 64  # aligned to 64 bytes
            with mmap.mmap(arena.fd, arena.size) as other:  # as a worker maps it
                assert other[0:7] == b"abcdefg"
                assert other[64:164] == b"x" * 100
            assert arena.in_use == 64 + 128
        finally:
            arena.close()

    def test_freed_regions_merge_and_are_used_again_first(self) -> None:
        arena = SharedArena(1024)
        try:
            regions = [arena.put([bytes(256)]) for _ in range(3)]
            assert regions == [0, 256, 512]
            a, b, c = 0, 256, 512
            assert arena.put([bytes(512)]) is None  # 256 bytes left
            arena.free(a)
            arena.free(c)  # merges with the free tail
            assert arena.put([bytes(512)]) == 512
            arena.free(b)
            arena.free(b)  # idempotent
            assert arena.put([bytes(512)]) == 0  # a and b merged
            arena.free(0)
            arena.free(512)
            assert arena.in_use == 0
            assert arena.put([bytes(1024)]) == 0  # all of it merged into one free region
        finally:
            arena.close()

    def test_too_large_and_closed(self) -> None:
        arena = SharedArena(4096)
        assert arena.put([bytes(4097)]) is None
        region = arena.put([b"kept"])
        assert region is not None
        fds_before = len(os.listdir("/proc/self/fd"))
        arena.close()
        arena.close()
        assert len(os.listdir("/proc/self/fd")) < fds_before
        arena.free(region)  # a job that ends after its pool closed
        assert arena.put([b"late"]) is None


def test_small_plain_arguments_pickle_as_cloudpickle_pickles_them() -> None:
    """Numbers, None and short strings skip cloudpickle: the bytes must be the same."""
    import enum

    import cloudpickle

    class Level(enum.IntEnum):  # a subclass of int, defined here: cloudpickle's job
        HIGH = 2

    for args in [(1,), (1, 2.5, None, True, "__main__", b"xy"), ("x" * BIG,), (Level.HIGH,)]:
        _, pickled, buffers = dumps_call(describe, args, {})
        assert buffers == ()
        assert pickled == cloudpickle.dumps((args, {}), protocol=5)
        assert loads(pickled) == (args, {})


# -- functions pickled by value ---------------------------------------------------------


def script(source: str) -> dict[str, Any]:
    """The namespace of ``source`` run as a script: its functions are pickled by value."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(textwrap.dedent(source), namespace)
    return namespace


def call(fn: Any, *args: Any) -> Any:
    """Pickle a call as submit does, load it as a worker does, and run it."""
    fn_bytes, args_bytes, buffers = dumps_call(fn, args, {})
    loaded_args, loaded_kwargs = loads(args_bytes, buffers)
    return loads(fn_bytes)(*loaded_args, **loaded_kwargs)


def test_a_function_pickled_by_value_is_pickled_again_only_when_it_changed() -> None:
    namespace = script(
        """
        import math
        SCALE = 2
        def helper(x):
            return x * SCALE
        def fn(x, offset=1):
            return helper(x) + offset + math.floor(0.5)
        """
    )
    fn = namespace["fn"]
    first = dumps_call(fn, (1,), {})[0]
    assert b"helper" in first  # by value, the helper with it
    assert dumps_call(fn, (2,), {})[0] is first  # remembered: pickled once
    assert call(fn, 1) == 3
    namespace["SCALE"] = 3  # a global of a function it calls
    assert call(fn, 1) == 4
    assert call(fn, 1) == 4 and dumps_call(fn, (1,), {})[0] is dumps_call(fn, (1,), {})[0]
    namespace["SCALE"] = True  # equal to 1, but not the same
    assert call(fn, 5) == 6
    namespace["helper"] = lambda x: -x
    assert call(fn, 1) == 0
    fn.__defaults__ = (10,)
    assert call(fn, 1) == 9
    fn.__code__ = (lambda x, offset=1: x * 100).__code__
    assert call(fn, 1) == 100
    fn.tag = "attribute"
    assert loads(dumps_call(fn, (1,), {})[0]).tag == "attribute"


def test_what_can_change_in_place_is_pickled_with_each_call() -> None:
    namespace = script(
        """
        SEEN = []
        class Box:
            value = 1
        def listed():
            return list(SEEN)
        def boxed():
            return Box.value
        """
    )
    for name in ("listed", "boxed"):
        dumps_call(namespace[name], (), {})
        assert remembered(namespace[name]) != "value"
    namespace["SEEN"].append(1)
    namespace["Box"].value = 2
    assert call(namespace["listed"]) == [1]
    assert call(namespace["boxed"]) == 2


def test_closures_and_recursion_by_value() -> None:
    count = 0

    def counted() -> int:
        return count

    def bump() -> None:
        nonlocal count
        count += 1

    assert call(counted) == 0 and remembered(counted) == "value"
    bump()
    assert call(counted) == 1
    namespace = script(
        """
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        """
    )
    assert call(namespace["fib"], 10) == 55
    assert dumps_call(namespace["fib"], (3,), {})[0] is dumps_call(namespace["fib"], (4,), {})[0]


def same_as_cloudpickle(fn: Any) -> bool:
    """Whether the pickle submit sends now behaves as cloudpickle's of this moment."""
    import cloudpickle

    ours = loads(dumps_call(fn, (), {})[0])()
    theirs = cloudpickle.loads(cloudpickle.dumps(fn, protocol=5))()
    return bool(ours == theirs)


def test_objects_that_travel_with_a_function_by_value_are_followed() -> None:
    """What a review found: bound builtins, modules pickled by value, submodules
    imported later, annotations and keyword defaults changed in place."""
    import random
    import sys
    import types

    import cloudpickle

    namespace = script(
        """
        from random import random as draw
        TABLE = {"k": 1}
        lookup = TABLE.get
        def drawn():
            return draw()
        def looked_up():
            return lookup("k")
        def keywords(*, a=0, b=1):
            return (a, b)
        def annotated(x: int) -> int:
            return annotated.__annotations__["x"]
        """
    )
    # A bound builtin method carries its object (the dict, the hidden Random).
    for name in ("drawn", "looked_up"):
        dumps_call(namespace[name], (), {})
        random.random()
        namespace["TABLE"]["k"] = 2
        assert same_as_cloudpickle(namespace[name]), name
    # Keyword defaults and annotations changed in place.
    keywords, annotated = namespace["keywords"], namespace["annotated"]
    for fn in (keywords, annotated):
        dumps_call(fn, (), {})
        assert remembered(fn) == "value"
    assert keywords.__kwdefaults__ is not None
    keywords.__kwdefaults__["a"], keywords.__kwdefaults__["b"] = 1, 0
    assert call(keywords) == (1, 0)
    annotated.__annotations__["x"] = str
    assert loads(dumps_call(annotated, (), {})[0]).__annotations__["x"] is str

    # A module registered to be pickled by value travels with its dict.
    config = types.ModuleType("ae_test_config")
    config.LEVEL = 1  # type: ignore[attr-defined]
    sys.modules[config.__name__] = config
    try:
        cloudpickle.register_pickle_by_value(config)
        level = script("import ae_test_config\ndef level():\n    return ae_test_config.LEVEL")
        assert call(level["level"]) == 1
        config.LEVEL = 2  # type: ignore[attr-defined]
        assert call(level["level"]) == 2
    finally:
        cloudpickle.unregister_pickle_by_value(config)
        del sys.modules[config.__name__]

    # A package's submodules go with the function once imported (cloudpickle sends them).
    package = types.ModuleType("ae_test_package")
    package.__path__ = []
    package.__package__ = package.__name__  # cloudpickle looks for submodules of packages
    sys.modules[package.__name__] = package
    try:
        uses = script("import ae_test_package\ndef f():\n    return ae_test_package.sub.X")
        first = dumps_call(uses["f"], (), {})[0]
        assert b"ae_test_package.sub" not in first
        sub = types.ModuleType("ae_test_package.sub")
        sys.modules[sub.__name__] = package.sub = sub  # type: ignore[attr-defined]
        assert b"ae_test_package.sub" in dumps_call(uses["f"], (), {})[0]
    finally:
        sys.modules.pop("ae_test_package.sub", None)
        del sys.modules[package.__name__]


def test_large_pickles_are_not_remembered() -> None:
    namespace = script("def big(data=bytes(100_000)):\n    return len(data)")
    assert call(namespace["big"]) == 100_000
    assert remembered(namespace["big"]) != "value"


# -- a function's name rebound: the caches never change what runs --------------------

REBIND_MODULE = """
def f():
    return "{version}"


def g():
    return "replacement"


def rebind():
    global f
    f = g
"""


@pytest.fixture
def rebind_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A module of this test's own (``ae_rebind_<n>``), importable by workers too."""
    name = f"ae_rebind_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(REBIND_MODULE.format(version="original"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.mark.anyio
async def test_a_rebound_or_reloaded_name_never_runs_another_function(
    rebind_module: Any,
) -> None:
    """The driver remembers the pickle of a function sent by reference (its name);
    once that name holds another object, the function goes by value, as cloudpickle
    would send it. (In threads the name is looked up in this very process.)"""
    original = rebind_module.f
    async with ThreadExecutor(1) as ex:
        assert await ex.run(original) == "original"  # remembered by reference
        rebind_module.f = rebind_module.g  # as monkeypatch.setattr does
        assert await ex.run(original) == "original"
        assert await ex.run(rebind_module.f) == "replacement"
        rebind_module.f = original
        assert await ex.run(original) == "original"
        # A reload: the module holds a new f, of another body.
        Path(rebind_module.__file__ or "").write_text(REBIND_MODULE.format(version="reloaded"))
        importlib.invalidate_caches()
        reloaded = importlib.reload(rebind_module)
        assert await ex.run(original) == "original"
        assert await ex.run(reloaded.f) == "reloaded"


def test_a_function_whose_name_was_rebound_is_pickled_as_cloudpickle_would(
    rebind_module: Any,
) -> None:
    import cloudpickle

    original = rebind_module.f
    by_name = dumps_call(original, (), {})[0]
    assert by_name == cloudpickle.dumps(original, protocol=5) and len(by_name) < 100
    rebind_module.f = rebind_module.g
    try:
        moved = dumps_call(original, (), {})[0]
        assert moved == cloudpickle.dumps(original, protocol=5) != by_name
        assert loads(moved)() == "original"
    finally:
        rebind_module.f = original
    assert dumps_call(original, (), {})[0] == by_name


@pytest.mark.anyio
async def test_a_worker_runs_what_a_name_holds_now(rebind_module: Any) -> None:
    """A worker looks a function sent by reference up once, and again when a task
    rebound the name in the worker since: what loading the name gives now."""
    async with ProcessExecutor(1) as ex:
        assert await ex.run(rebind_module.f) == "original"
        await ex.run(rebind_module.rebind)  # in the worker only
        assert await ex.run(rebind_module.f) == "replacement"
        assert rebind_module.f() == "original"  # (the driver's module is as it was)
