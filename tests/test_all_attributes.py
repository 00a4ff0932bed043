from __future__ import annotations

import asyncexec


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(asyncexec) if not name.startswith("_")} - {
        "abc",
        "cli",
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
