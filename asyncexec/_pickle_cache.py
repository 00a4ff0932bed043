"""Pickles of functions, remembered: pickled (and loaded) again only when they changed.

A task's callable is pickled at every ``submit``; most are the same function
again. The driver side (:func:`pickle_function`) keeps the pickle of a plain
function sent by reference (its pickle is its name) while its name still leads
to it, and the pickle of a function sent by value (one of ``__main__``, a
lambda, a closure) while every object that pickle is made of is still the same
object (:func:`_made_from`). The worker side (:class:`LoadedFunctions`) keeps
what it loaded from such pickles under the same rule, so a task that rebinds a
global of its function makes the next task load it afresh, as it would if
nothing were kept.

Whether the standard library pickles an object as cloudpickle would
(:func:`fast_dumps`) is decided here too: a pickle by reference is only
remembered where that holds.
"""

from __future__ import annotations

import _pickle
import operator
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._exceptions import SerializationError
from ._runtime import type_name

if TYPE_CHECKING:
    from pickle import PickleBuffer  # (at run time _pickle's: pickle costs a worker ~1.4 ms)

__all__ = [
    "ATOMS",
    "LARGE",
    "LoadedFunctions",
    "fast_dumps",
    "lookup",
    "made_from",
    "named",
    "pickle_function",
    "remembered",
    "still_made_of",
]

#: Bytes beyond which an argument goes straight to cloudpickle: looking for
#: ``__main__`` in its pickle would cost as much as pickling it (~0.5 ms a MiB).
LARGE = 1 << 16
#: Exact types whose values pickle the same with ``_pickle`` and cloudpickle (no
#: reference to look for in the pickle), when not large.
ATOMS = frozenset({int, float, bool, type(None), str, bytes})


def pickle_function(fn: object) -> bytes:
    """The pickle of a task's callable, remembered where it would pickle the same again.

    What pickles the same with the standard library as with cloudpickle goes
    through ``_pickle`` (see :func:`fast_dumps`); a plain function pickled by
    reference is pickled once and kept while its name leads to it; a function
    cloudpickle pickles by value is pickled again only when what its pickle is
    made of changed (see :func:`_made_from`). Raises SerializationError.
    """
    remembered = _by_reference.get(id(fn))
    if (
        remembered is not None
        and remembered[0] is fn
        # Its name may name another object now (rebound, reloaded): see named().
        and lookup(remembered[2], remembered[3]) is fn
        and not _names_by_value(remembered[1])
    ):
        return remembered[1]
    by_value = _remembered_by_value(fn)
    if by_value is not None:
        return by_value
    fast = fast_dumps(fn)
    if fast is None:
        return _pickle_by_value(fn)
    if _is_plain_function(fn):
        if len(_by_reference) >= _BY_REFERENCE_MAX:
            _by_reference.clear()
        module = getattr(fn, "__module__", None) or ""
        path = tuple(getattr(fn, "__qualname__", "").split("."))
        _by_reference[id(fn)] = (fn, fast, module, path)
    return fast


def remembered(fn: object) -> Literal["reference", "value"] | None:
    """How :func:`pickle_function` remembers ``fn``'s pickle now: by ``"reference"``
    (a plain function its name leads to), by ``"value"`` (with what the pickle was
    made of), or None (not yet pickled, or pickled again at every call)."""
    by_reference = _by_reference.get(id(fn))
    if by_reference is not None and by_reference[0] is fn:
        return "reference"
    by_value = _by_value.get(id(fn))
    if by_value is not None and by_value[0] is fn:
        return "value"
    return None


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
#: the pickle. Only pickles of up to ``LARGE`` bytes, ``_BY_VALUE_MAX`` of them.
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


def still_made_of(
    fn: types.FunctionType, old: list[object], *, own: Callable[[str], bool] | None = None
) -> bool:
    """Whether ``fn`` is made of the very objects :func:`_made_from` found before
    (with the same ``own``)."""
    made = _made_from(fn, own)
    # (Identity: 1 == True == 1.0, but they pickle apart.)
    return made is not None and len(made) == len(old) and all(map(operator.is_, made, old))


def made_from(fn: object, *, own: Callable[[str], bool] | None = None) -> list[object] | None:
    """What a function is made of (see :func:`_made_from`), or None where that cannot
    be told or it is no plain function.

    ``own`` says which modules are sent by value although importable (the user's
    own, for a place without this machine's files: see :mod:`asyncexec._travel`):
    their functions are followed, and a class or module of theirs makes it None.
    """
    return _made_from(fn, own) if type(fn) is types.FunctionType else None


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
    if made is not None and len(data) <= LARGE:
        if len(_by_value) >= _BY_VALUE_MAX:
            _by_value.clear()
        _by_value[id(fn)] = (fn, made, data)  # type: ignore[assignment]
    return data


def _made_from(
    fn: types.FunctionType, own: Callable[[str], bool] | None = None
) -> list[object] | None:
    """What cloudpickle's pickle of ``fn`` by value is made of: the same objects (by
    identity), the same pickle.

    That is the function's code, names, defaults, annotations, attributes and
    closure, and the globals its code uses, with the same for the functions among
    them it pickles by value. None where that cannot be told: a value that can
    change in place (a list, a dict, an instance, a bound method, a class or module
    pickled by value).
    """
    made: list[object] = []
    return made if _add_function(fn, made, set(), own) else None


def _add_function(
    fn: types.FunctionType,
    made: list[object],
    seen: set[int],
    own: Callable[[str], bool] | None,
) -> bool:
    made.append(fn)
    if id(fn) in seen:
        return True  # recursion: already added
    seen.add(id(fn))
    code = fn.__code__
    made += (code, fn.__name__, fn.__qualname__, fn.__module__, fn.__doc__)
    defaults = fn.__defaults__
    if defaults is not None and not _add_value(defaults, made, seen, own):
        return False
    for mapping in (fn.__kwdefaults__, fn.__annotations__, fn.__dict__):
        made.append(mapping)
        if mapping:
            for key, value in mapping.items():
                made.append(key)
                if not _add_value(value, made, seen, own):
                    return False
    closure = fn.__closure__
    if closure is not None:
        for cell in closure:
            try:
                value = cell.cell_contents
            except ValueError:  # not bound yet
                value = _UNBOUND
            if not _add_value(value, made, seen, own):
                return False
    names = _code_names.get(code)
    if names is None:
        if len(_code_names) >= _BY_REFERENCE_MAX:
            _code_names.clear()
        names = _code_names[code] = _global_names(code)
    namespace = fn.__globals__
    for name in _BASE_GLOBALS:
        if name in namespace and not _add_value(namespace[name], made, seen, own):
            return False
    for name in names:
        value = namespace.get(name, _UNBOUND)
        if type(value) in ATOMS or value is _UNBOUND:
            made.append(value)
        elif not _add_value(value, made, seen, own):
            return False
    return True


def _add_value(
    value: object, made: list[object], seen: set[int], own: Callable[[str], bool] | None
) -> bool:
    """Add what ``value``'s pickle is made of, or say it cannot be told (False)."""
    global _imported
    kind = type(value)
    made.append(value)
    if kind in ATOMS or kind is complex or value is _UNBOUND:
        return True
    if kind is tuple or kind is frozenset:
        for item in value:  # type: ignore[attr-defined]
            if type(item) in ATOMS:
                made.append(item)
            elif not _add_value(item, made, seen, own):
                return False
        return True
    if kind is types.ModuleType:
        name = value.__name__  # type: ignore[attr-defined]
        if (
            sys.modules.get(name) is not value
            or _registered_by_value(name)
            or (own is not None and own(name))
        ):
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
        return _pickled_by_name(value, own)
    if kind is types.FunctionType:
        if _pickled_by_name(value, own):
            return True
        return _add_function(value, made, seen, own)  # type: ignore[arg-type]
    if isinstance(value, type):
        return _pickled_by_name(value, own)
    return False


def _registered_by_value(module: str) -> bool:
    """Whether cloudpickle pickles ``module`` (or a package of it) by value."""
    cloudpickle = sys.modules.get("cloudpickle.cloudpickle")
    registered = getattr(cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if not registered:
        return False
    return any(module == name or module.startswith(name + ".") for name in registered)


def _pickled_by_name(obj: object, own: Callable[[str], bool] | None = None) -> bool:
    """Whether cloudpickle pickles a function or class by reference (its name): the
    standard library pickles it as the object its module holds under its name (and,
    with ``own``, its module is not one of those sent by value)."""
    known = _by_name.get(id(obj))
    if known is None or known[0] is not obj:
        if len(_by_name) >= _BY_REFERENCE_MAX:
            _by_name.clear()
        known = _by_name[id(obj)] = (obj, fast_dumps(obj))
    data = known[1]
    if data is None or _names_by_value(data):
        return False
    if own is not None and own(getattr(obj, "__module__", None) or ""):
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


def fast_dumps(
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


class LoadedFunctions:
    """A worker's task callables, by their pickle: loaded again only where that would
    give something else.

    A function sent by reference (a module's function: its pickle is its name) is
    looked up once, and again only when a task rebound the name; one sent by value
    is kept while every part of it is still the same object, so a task that
    rebinds one of its globals, defaults or attributes makes the next task load
    it afresh. Anything else (a partial, a bound method: a new object every time,
    which a task may change) is loaded every time.
    """

    def __init__(self, loads: Callable[[bytes], Any]) -> None:
        self._loads = loads
        #: Functions loaded by reference, by their pickle, with where their name leads
        #: (its module's name and its qualified name's parts).
        self._by_reference: dict[bytes, tuple[Any, str, tuple[str, ...]]] = {}
        #: Functions loaded by value, by their pickle: the function and what it is made of.
        self._by_value: dict[bytes, tuple[Any, list[object]]] = {}

    def load(self, data: bytes) -> Any:
        """Unpickle a task's callable (with the ``loads`` given), or take it as kept."""
        known = self._by_reference.get(data)
        if known is not None and lookup(known[1], known[2]) is known[0]:
            return known[0]  # (unless a task rebound the name since: then loaded again)
        loaded = self._by_value.get(data)
        if loaded is not None and still_made_of(*loaded):
            return loaded[0]
        fn = self._loads(data)
        # Only a pickle made of a module name and a qualified name, nothing else (a
        # partial makes a new object every time, which a task may change): reusing
        # what it names is what loading it again does.
        if _names_only(data):
            module = getattr(fn, "__module__", None) or ""
            path = tuple(getattr(fn, "__qualname__", "").split("."))
            if lookup(module, path) is fn:  # else the name leads elsewhere: load it each time
                if len(self._by_reference) >= _LOADED_MAX:
                    self._by_reference.clear()
                self._by_reference[data] = (fn, module, path)
        elif len(data) <= LARGE and (made := made_from(fn)) is not None:
            # A function by value made of what cannot change in place (as the driver
            # remembers its pickle): kept while every part of it is still the same
            # object, so a task that rebinds one of its globals, defaults or attributes
            # makes the next task load it afresh, as it would without this.
            if len(self._by_value) >= _LOADED_MAX:
                self._by_value.clear()
            self._by_value[data] = (fn, made)
        return fn

    def stats(self) -> dict[str, int]:
        """How many functions are kept: ``by_reference`` and ``by_value``."""
        return {"by_reference": len(self._by_reference), "by_value": len(self._by_value)}


_LOADED_MAX = 256
#: How a pickle of a name ends: STACK_GLOBAL, MEMOIZE, STOP.
_GLOBAL_END = b"\x93\x94."


def _names_only(data: bytes) -> bool:
    """Whether a pickle holds a global's two names and nothing else: PROTO, maybe
    FRAME, two SHORT_BINUNICODE each memoized, then ``_GLOBAL_END``."""
    if data[:1] != b"\x80":
        return False
    at = 11 if data[2:3] == b"\x95" else 2
    for _ in range(2):
        if data[at : at + 1] != b"\x8c" or len(data) < at + 2:
            return False
        at += 2 + data[at + 1]
        if data[at : at + 1] != b"\x94":
            return False
        at += 1
    return data[at:] == _GLOBAL_END
