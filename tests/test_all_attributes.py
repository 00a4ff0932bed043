from __future__ import annotations

import ast
import importlib
import inspect

import asyncexec


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(asyncexec) if not name.startswith("_")} - {
        "abc",
        "cli",
        "config",
        "experiment",
        "launchers",
        "shells",
        "sweep",
        "testing",
        "worker",
    }
    assert asyncexec.__all__ == sorted(asyncexec.__all__)
    assert set(asyncexec.__all__) - {"__version__"} == public


def test_every_name_in_all_exists() -> None:
    for name in asyncexec.__all__:
        assert hasattr(asyncexec, name), name


def _public_table() -> tuple[dict[str, str], dict[str, str]]:
    """``_PUBLIC`` of ``__init__.py``, and the names its TYPE_CHECKING block imports."""
    tree = ast.parse(inspect.getsource(asyncexec))
    (table,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and ast.unparse(node.target) == "_PUBLIC"
        and node.value is not None
    ]
    (guard,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "_typing.TYPE_CHECKING"
    ]
    imported = {}
    for node in guard.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1, ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, ast.unparse(node)  # an explicit re-export
            imported[alias.name] = f".{node.module}"
    return table, imported


def test_one_list_of_public_names() -> None:
    """``__all__`` is the table's names; type checkers' imports say the same."""
    table, imported = _public_table()
    assert asyncexec.__all__ == sorted(table)
    assert imported == table


def test_each_name_comes_from_its_module() -> None:
    for name, module in _public_table()[0].items():
        defined = importlib.import_module(module, "asyncexec")
        assert getattr(asyncexec, name) is getattr(defined, name), name
