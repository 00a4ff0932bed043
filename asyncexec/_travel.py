"""The user's own modules travel with the task where the work runs without this machine's files.

A launcher whose ``shares_files`` is false (Docker containers, Azure Container
Instances, SSH hosts and Slurm clusters reached over SSH: see
:class:`~asyncexec.abc.Launcher`) runs tasks where only what is installed can be
imported: the standard library, asyncexec and the packages of the image or the
venv. cloudpickle sends a module's functions and classes by reference (their
names), which such a place cannot import when the module is one of the user's
files (``SerializationError: ... No module named 'experiment'``). For those
launchers the executor pickles each task with :class:`TravellingPickler`:

* The user's own modules (:func:`module_home`: a module whose file is neither in
  the standard library nor in a ``site-packages`` or ``dist-packages`` directory,
  and that is not asyncexec or cloudpickle, which every worker has) travel by
  value: their functions and classes as ``cloudpickle.register_pickle_by_value``
  would send them, with the globals they use (a sibling module's function that
  one calls travels too); a module used as a global (``import helpers`` at the
  top, ``helpers.f()`` in the function) travels with its namespace. This holds
  for the task's pickle only: cloudpickle's registry is left alone, so a process
  pool in the same driver goes on sending the same functions by name, and the
  caches of :mod:`asyncexec._pickle_cache` keep theirs.
* Installed modules stay by reference: the place must have them.
* What cannot travel is refused at ``submit`` with a :class:`SerializationError`
  naming the module, rather than failing where the task runs (where the same
  failure would be a :class:`~asyncexec.TaskSerializationError`, or a
  ``ModuleNotFoundError`` the task raised): a compiled extension module of the
  user's, and a module of the user's that a function sent by value imports when
  it runs (``import helpers`` inside its body: that import happens where the task
  runs, which has no such file). Imports made by name at run time
  (``importlib.import_module``) cannot be seen.

Unlike Ray's ``working_dir`` or Dask's ``upload_file``, which send files and have
the place import them (running their top-level code, which may need what only
the driver has), values travel: the task's own module is not imported where it
runs, only what its functions use goes. A module that travels as a global goes
whole, though, and its own imports (by reference) must be installed there.

The function's pickle is remembered as :mod:`asyncexec._pickle_cache` remembers
one sent by value, while every object it is made of is the same (with the user's
functions it calls followed, and never where a class or a module of the user's
travels with it: those can change in place).
"""

from __future__ import annotations

import dis
import importlib.machinery
import importlib.util
import io
import os
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, Literal

import cloudpickle
import cloudpickle.cloudpickle as _cloudpickle_module

from ._exceptions import SerializationError
from ._pickle_cache import LARGE, made_from, named, still_made_of
from ._runtime import type_name

if TYPE_CHECKING:
    from pickle import PickleBuffer

__all__ = [
    "Home",
    "TravellingPickler",
    "describe",
    "dumps",
    "module_home",
    "needs_travel",
    "pickle_function",
    "travels",
]

#: Where a module's code is: installed where the tasks run too (the standard
#: library, ``site-packages``, asyncexec itself), the user's own (it travels), or
#: the user's own but compiled (it cannot travel).
Home = Literal["installed", "own", "compiled"]

#: Top-level packages every worker has (and ``__main__``, which cloudpickle
#: already sends by value).
_EVERYWHERE = frozenset({"asyncexec", "cloudpickle", "__main__", "__mp_main__"})
_INSTALLED_DIRECTORIES = frozenset({"site-packages", "dist-packages"})
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def module_home(name: str) -> Home:
    """Where the module imported as ``name`` comes from (see :data:`Home`).

    A module that is not imported here is ``"installed"`` (nothing of it is in a
    pickle). Decided once per module object.
    """
    module = sys.modules.get(name)
    known = _homes.get(name)
    if known is not None and known[0] is module:
        return known[1]
    home = _home_of(name, module)
    _homes[name] = (module, home)
    return home


#: Modules by name: the module object and its home.
_homes: dict[str, tuple[object, Home]] = {}


def travels(name: str) -> bool:
    """Whether the module named ``name`` is the user's own (compiled or not)."""
    return module_home(name) != "installed"


def _home_of(name: str, module: object) -> Home:
    if not isinstance(module, types.ModuleType) or name.partition(".")[0] in _EVERYWHERE:
        return "installed"  # (not imported, or a stand-in some library put there)
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return _home_of_file(file)
    spec = getattr(module, "__spec__", None)
    if name in sys.builtin_module_names or getattr(spec, "origin", None) in ("built-in", "frozen"):
        return "installed"
    path = getattr(module, "__path__", None)
    if path is not None:  # a namespace package: the user's if one of its directories is
        try:
            entries = [entry for entry in path if isinstance(entry, str)]
        except Exception:  # an exotic path object: leave it to cloudpickle
            return "installed"
        return "own" if any(not _installed(entry) for entry in entries) else "installed"
    return "own"  # made at run time (types.ModuleType): only this process has it


def _home_of_file(file: str) -> Home:
    if _installed(os.path.abspath(file)) or _installed(os.path.realpath(file)):
        return "installed"
    return "compiled" if file.endswith(_EXTENSION_SUFFIXES) else "own"


def _installed(path: str) -> bool:
    """Whether a file or directory is in the standard library or a site-packages."""
    if not _INSTALLED_DIRECTORIES.isdisjoint(path.split(os.sep)):
        return True
    return any(path == root or path.startswith(root + os.sep) for root in _standard_library())


def _standard_library() -> tuple[str, ...]:
    global _stdlib
    if _stdlib is None:
        base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
        base.update(installed_base=sys.base_prefix, installed_platbase=sys.base_exec_prefix)
        paths = sysconfig.get_paths(vars=base)
        roots = {paths["stdlib"], paths["platstdlib"], os.path.dirname(os.__file__)}
        _stdlib = tuple(sorted({os.path.realpath(root) for root in roots} | roots))
    return _stdlib


_stdlib: tuple[str, ...] | None = None


# -- which pickles need the travelling pickler ----------------------------------------


def needs_travel(data: bytes) -> bool:
    """Whether a pickle made the usual way may not load where the user's modules are
    not: it names one of them (or merely the same text), or cloudpickle made it (a
    function sent by value, whose imports must be checked), or it is too large to
    look into cheaply."""
    if len(data) > LARGE or b"cloudpickle" in data:
        return True
    return any(name in data for name in _own_names())


def _own_names() -> tuple[bytes, ...]:
    """The names of the user's own modules imported now (looked for again when
    ``sys.modules`` grew or shrank)."""
    global _own
    count = len(sys.modules)
    if _own[0] != count:
        names = tuple(
            name.encode()
            for name, module in list(sys.modules.items())
            if isinstance(module, types.ModuleType) and travels(name)
        )
        _own = (count, names)
    return _own[1]


_own: tuple[int, tuple[bytes, ...]] = (-1, ())


# -- the pickler ---------------------------------------------------------------------


class TravellingPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, sending the user's own modules by value (see the module).

    After :meth:`dump`, :attr:`compiled` names the compiled modules of the user's
    that the pickle names (they cannot travel) and :attr:`by_value` holds the
    functions it sends by value (whose imports :func:`dumps` checks).
    """

    def __init__(
        self, file: IO[bytes], *, buffer_callback: Callable[[PickleBuffer], Any] | None = None
    ) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.by_value: list[types.FunctionType] = []
        self.compiled: dict[str, str] = {}

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is types.FunctionType:
            if _travels_by_value(obj):
                self.by_value.append(obj)
                return self._dynamic_function_reduce(obj)
            reduced = super().reducer_override(obj)
            if reduced is NotImplemented:
                self._by_name(obj)
            else:  # a lambda, a closure, a function of __main__: by value anyway
                self.by_value.append(obj)
            return reduced
        if kind is types.ModuleType:
            name = obj.__name__
            if sys.modules.get(name) is obj:
                home = module_home(name)
                if home == "own":
                    namespace = obj.__dict__.copy()
                    namespace.pop("__builtins__", None)  # (as cloudpickle does)
                    return _cloudpickle_module.dynamic_subimport, (name, namespace)
                if home == "compiled":
                    self._by_name(obj)
            return super().reducer_override(obj)
        try:
            is_class = issubclass(kind, type)
        except TypeError:  # (as cloudpickle guards it)
            is_class = False
        if is_class:
            if _travels_by_value(obj):
                return _cloudpickle_module._dynamic_class_reduce(obj)
            reduced = super().reducer_override(obj)
            if reduced is NotImplemented:
                self._by_name(obj)
            return reduced
        if kind is types.BuiltinFunctionType:
            self._by_name(obj)
        return super().reducer_override(obj)

    def _by_name(self, obj: Any) -> None:
        """Note ``obj``, pickled by name, if its module is a compiled one of the user's."""
        name = obj.__name__ if type(obj) is types.ModuleType else getattr(obj, "__module__", None)
        if isinstance(name, str) and module_home(name) == "compiled":
            self.compiled.setdefault(name, getattr(sys.modules[name], "__file__", None) or "")


def _travels_by_value(obj: Any) -> bool:
    """Whether cloudpickle would send ``obj`` by name and its module is the user's own."""
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and module_home(module) == "own" and named(obj)


def dumps(
    obj: object,
    where: str,
    *,
    what: str | None = None,
    buffer_callback: Callable[[PickleBuffer], Any] | None = None,
) -> bytes:
    """Pickle ``obj`` for ``where`` (a launcher without this machine's files): the
    user's own modules by value, installed ones by name.

    Raises:
        SerializationError: ``obj`` cannot be pickled, or it needs a module of the
            user's that cannot travel (the message names it, and ``what``: by
            default the object's type).
    """
    what = what or f"an object of type {type_name(obj)}"
    with io.BytesIO() as file:
        pickler = TravellingPickler(file, buffer_callback=buffer_callback)
        try:
            pickler.dump(obj)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {what}: {exc}") from exc
        data = file.getvalue()
    if pickler.compiled:
        module, path = next(iter(pickler.compiled.items()))
        raise SerializationError(
            f"cannot send {what} to {where}: it uses {module} ({path}), a compiled module "
            f"of yours, which {where} cannot import (its tasks run without this machine's "
            "files) and which cannot travel by value: install it where the tasks run"
        )
    for function in pickler.by_value:
        for imported in _imports_of(function):
            own = [name for name in imported if _home_of_name(name) not in (None, "installed")]
            if own:
                module, user = own[-1], describe(function)
                raise SerializationError(
                    f"cannot send {what} to {where}: {user} imports {module} when it runs, and "
                    f"{module} ({_file_of(module)}) is a module of yours, which {where} cannot "
                    "import (its tasks run without this machine's files). Import it at the top "
                    f"of {function.__module__} instead (what a function uses travels with it), "
                    "or install it where the tasks run"
                )
    return data


def describe(obj: object) -> str:
    """A function's (or class's) qualified name with its module's, else its repr."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(name, str):
        return f"{module}.{name}"
    return repr(obj)


def _home_of_name(name: str) -> Home | None:
    """Where the module ``name`` is, imported here or not (None: not found here)."""
    if name in sys.modules:
        return module_home(name)
    parent, _, _ = name.rpartition(".")
    if parent and parent not in sys.modules:
        return None  # (its parent would be imported first: it was checked)
    try:
        path = getattr(sys.modules[parent], "__path__", None) if parent else None
        if parent and path is None:
            return None  # an attribute of a module, not a module
        spec = importlib.machinery.PathFinder.find_spec(name, path)
    except Exception:  # a broken path entry, a finder that raises: not ours to judge
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None if spec is None else "installed"
    if name.partition(".")[0] in _EVERYWHERE:
        return "installed"
    return _home_of_file(spec.origin)


def _file_of(name: str) -> str:
    module = sys.modules.get(name)
    if module is not None:
        return str(getattr(module, "__file__", None) or "made at run time")
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        return "?"
    return str(spec.origin) if spec is not None else "?"


def _imports_of(function: types.FunctionType) -> Iterator[list[str]]:
    """What each ``import`` of ``function`` imports when it runs: the packages above
    the module, the module, then what ``from ... import`` takes (modules or not)."""
    namespace = function.__globals__
    package = namespace.get("__package__")
    if not isinstance(package, str):
        name = namespace.get("__name__")
        package = name.rpartition(".")[0] if isinstance(name, str) else ""
    for name, level, fromlist in _code_imports(function.__code__):
        if level:
            try:
                name = importlib.util.resolve_name("." * level + name, package)
            except (ImportError, ValueError):
                continue  # fails here as it would there
        if not name:
            continue
        parts = name.split(".")
        imported = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]
        imported += (f"{name}.{item}" for item in fromlist if item != "*")
        yield imported


def _code_imports(code: types.CodeType) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """``(name, level, fromlist)`` of each ``import`` in ``code`` and the code nested in it."""
    known = _imports_cache.get(code)
    if known is not None:
        return known
    found: list[tuple[str, int, tuple[str, ...]]] = []
    before: list[object] = [None, None]  # the arguments of the two instructions before
    for instruction in dis.get_instructions(code):
        if instruction.opname == "IMPORT_NAME":
            level, fromlist = before
            found.append(
                (
                    str(instruction.argval),
                    level if type(level) is int else 0,
                    tuple(str(item) for item in fromlist) if type(fromlist) is tuple else (),
                )
            )
        before = [before[1], instruction.argval]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(_code_imports(const))
    if len(_imports_cache) >= 1024:
        _imports_cache.clear()
    result = _imports_cache[code] = tuple(found)
    return result


_imports_cache: dict[types.CodeType, tuple[tuple[str, int, tuple[str, ...]], ...]] = {}


# -- a task's callable ---------------------------------------------------------------


def pickle_function(fn: object, usual: bytes, where: str) -> bytes:
    """The pickle of a task's callable for ``where``: ``usual`` (what
    :func:`asyncexec._pickle_cache.pickle_function` made) where that loads without
    the user's files, else the travelling pickle, remembered while ``fn`` is made
    of the same objects.

    Raises:
        SerializationError: as :func:`dumps`.
    """
    if not needs_travel(usual):
        return usual
    entry = _by_value.get(id(fn))
    if entry is not None and entry[0] is fn and still_made_of(entry[0], entry[1], own=travels):
        return entry[2]
    # What it is made of is read first: a thread that rebinds a global meanwhile
    # makes the next call see a change, never the reverse.
    made = made_from(fn, own=travels)
    data = dumps(fn, where, what=describe(fn))
    if made is not None and len(data) <= LARGE:
        if len(_by_value) >= _BY_VALUE_MAX:
            _by_value.clear()
        _by_value[id(fn)] = (fn, made, data)  # type: ignore[assignment]
    return data


#: Travelling pickles of functions, by id: the function (kept, so the id stays its),
#: what the pickle was made of, the pickle.
_by_value: dict[int, tuple[types.FunctionType, list[object], bytes]] = {}
_BY_VALUE_MAX = 256
