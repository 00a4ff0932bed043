"""The module graph flows downward only (DESIGN.md, "Layers"), read from the source.

* The executor's core (``asyncexec/_*.py``, ``abc.py``, ``shells/``) knows no
  launcher, sweep, experiment or CLI.
* Launchers (``asyncexec/launchers/``) use the runtime below them (codec,
  messages, worker, options...) but not the executor's internals: no
  ``asyncexec._executor``, ``asyncexec._dispatch`` nor ``asyncexec._future``
  (``BaseExecutor``, which their executors extend, comes from ``asyncexec``),
  and nothing above them.
* Sweeps, experiments, the CLI and ``asyncexec.testing`` use the public API
  like any user: public modules and public names only (besides their own
  package's modules), and no ``obj._private`` attribute of something another
  module defines (``testing`` is checked for imports).

No module is imported: the files are parsed with ``ast``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncexec

PACKAGE = Path(asyncexec.__file__).parent
ROOT = PACKAGE.parent

#: The user-level layer: it sees what a user sees.
USERS = ("asyncexec.sweep", "asyncexec.experiment", "asyncexec.cli")
#: What sits above the launchers (besides the CLI's entry points). ``asyncexec.config``
#: makes every executor, and reads what they were made with (``asyncexec._arguments``).
ABOVE_LAUNCHERS = (*USERS, "asyncexec.testing", "asyncexec.config")
#: Core modules that call up into a layer above, and why (the import is in the call).
CALLS_UP = {
    # BaseExecutor.to_dict and .from_dict are asyncexec.config's to_dict and from_dict.
    ("asyncexec._executor", "asyncexec.config"),
}
#: The executor's internals, which launchers do not import.
EXECUTOR_INTERNALS = ("asyncexec._executor", "asyncexec._dispatch", "asyncexec._future")
#: Private modules the user-level layer may import, and why.
SHARED_PRIVATE = {
    # SQLite connection and transaction helpers shared by the sweeper's and the
    # results store's databases: no executor state behind them.
    "asyncexec._sqlite",
}
#: ``module._name`` attributes that are public API despite the underscore.
PUBLIC_UNDERSCORED = {("os", "_exit")}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


MODULES = dict(_modules())


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path) -> Iterator[tuple[int, str, str | None]]:
    """(line, module imported, name taken from it or None) for every asyncexec import.

    ``from pkg import sub`` where ``sub`` is a module counts as importing
    ``pkg.sub``. Imports inside functions and ``TYPE_CHECKING`` blocks count too.
    """
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "asyncexec":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(module, path).split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.split(".")[0] != "asyncexec":
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    yield node.lineno, f"{source}.{alias.name}", None
                else:
                    yield node.lineno, source, alias.name


def _private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_the_modules_are_found() -> None:
    assert {"asyncexec._executor", "asyncexec.launchers.slurm", "asyncexec.cli"} <= set(MODULES)
    assert "asyncexec.experiment._runner" in MODULES


def test_the_core_imports_no_launcher_and_nothing_above() -> None:
    wrong = []
    for module, path in MODULES.items():
        if _within(module, ("asyncexec.launchers", *ABOVE_LAUNCHERS)) or module in (
            "asyncexec",  # the table of public names
            "asyncexec.__main__",
        ):
            continue
        for line, imported, _ in _imports(module, path):
            if (module, imported) in CALLS_UP:
                continue
            if _within(imported, ("asyncexec.launchers", *ABOVE_LAUNCHERS)):
                wrong.append(f"{_where(path, line)} imports {imported}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_launchers_import_no_executor_internals_and_nothing_above() -> None:
    wrong = []
    for module, path in MODULES.items():
        if not _within(module, ("asyncexec.launchers",)):
            continue
        for line, imported, name in _imports(module, path):
            if _within(imported, (*EXECUTOR_INTERNALS, *ABOVE_LAUNCHERS)):
                wrong.append(f"{_where(path, line)} imports {imported}")
            elif (
                name is not None
                and name.startswith("_")
                and not _within(imported, ("asyncexec.launchers",))
            ):
                wrong.append(f"{_where(path, line)} imports the private {imported}.{name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


#: The launcher families: what their backends build on, which none of them knows.
FAMILIES = ("asyncexec.launchers.batch", "asyncexec.launchers.pool")
#: What a family may use of the launchers: their common base.
LAUNCHERS_BASE = "asyncexec.launchers._base"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_knows_no_backend_built_on_it(family: str) -> None:
    """``launchers/batch/`` imports no Slurm module and ``launchers/pool/`` no
    process, SSH or Docker one (nor any other launcher, nor a concrete shell): a
    backend builds on its family, and the next one needs none of the others."""
    assert family in MODULES
    wrong = []
    for module, path in MODULES.items():
        if not _within(module, (family,)):
            continue
        for line, imported, _ in _imports(module, path):
            if _within(imported, (family, LAUNCHERS_BASE)):
                continue
            if _within(imported, ("asyncexec.launchers", "asyncexec.shells")):
                wrong.append(f"{_where(path, line)} imports {imported}")
    assert not wrong, "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("layer", [*USERS, "asyncexec.testing"])
def test_sweeps_experiments_and_the_cli_import_only_public_names(layer: str) -> None:
    wrong = []
    for module, path in MODULES.items():
        if not _within(module, (layer,)):
            continue
        for line, imported, name in _imports(module, path):
            if _within(imported, (layer,)):
                continue  # its own package's modules
            if _private(imported) and imported not in SHARED_PRIVATE:
                wrong.append(f"{_where(path, line)} imports {imported}")
            elif name is not None and name.startswith("_") and name != "__version__":
                wrong.append(f"{_where(path, line)} imports the private {imported}.{name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def _defined_here(tree: ast.Module) -> set[str]:
    """Underscored names this module defines: its functions, classes and attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


@pytest.mark.parametrize("layer", USERS)
def test_no_private_attribute_of_another_module(layer: str) -> None:
    """``x._name`` only where this module defines ``_name`` (its own classes')."""
    wrong = []
    for module, path in MODULES.items():
        if not _within(module, (layer,)):
            continue
        tree = ast.parse(path.read_text(), str(path))
        own = _defined_here(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or name.startswith("__") or name in own:
                continue
            owner = ast.unparse(node.value)
            if owner in ("self", "cls") or (owner, name) in PUBLIC_UNDERSCORED:
                continue
            wrong.append(f"{_where(path, node.lineno)} reads {owner}.{name}")
    assert not wrong, "\n".join(sorted(set(wrong)))
