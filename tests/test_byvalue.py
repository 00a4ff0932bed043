"""The user's own modules travel with the task where the work runs without this machine's files.

A temporary project directory (a package of two sibling modules and a top-level
module), imported here and on no container's path, stands for the user's code.
Docker's containers (the test image of scripts/docker-up.sh) have none of its
files: its functions must travel by value, and what cannot travel is refused at
``submit``. The process pool, which shares the files, keeps sending them by name.
"""

from __future__ import annotations

import _pickle
import dataclasses
import importlib
import importlib.machinery
import os
import subprocess
import sys
import sysconfig
import textwrap
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from asyncexec import (
    ProcessExecutor,
    SerializationError,
    SSHShell,
    TaskFailed,
    ThreadExecutor,
    _codec,
    _pickle_cache,
    _travel,
)
from asyncexec.launchers import ProcessLauncher
from asyncexec.launchers.azure import AzureLauncher
from asyncexec.launchers.docker import DockerExecutor, DockerLauncher
from asyncexec.launchers.slurm import SlurmLauncher
from asyncexec.launchers.ssh import SSHLauncher
from asyncexec.launchers.thread import ThreadLauncher
from asyncexec.shells import LocalShell

from .services import check_docker_image

pytestmark = pytest.mark.anyio

IMAGE = os.environ.get(
    "ASYNCEXEC_TEST_IMAGE",
    "{}:py{}.{}".format(
        os.environ.get("ASYNCEXEC_TEST_IMAGE_PREFIX") or "asyncexec-test", *sys.version_info[:2]
    ),
)

#: The user's project: ``bv_project`` (a package: ``core`` uses its sibling
#: ``shapes``), and ``bv_script`` (a module) with ``bv_helper`` beside it.
PROJECT = {
    "bv_project/__init__.py": "",
    "bv_project/shapes.py": """
        import dataclasses

        @dataclasses.dataclass
        class Square:
            side: int

            def area(self):
                return self.side * self.side

        def square_area(side):
            return Square(side).area()
    """,
    "bv_project/core.py": """
        import importlib.util
        import os
        import sys

        from . import shapes
        from .shapes import Square

        SCALE = 1

        def area(side):
            return shapes.square_area(side) * SCALE

        def square(side):
            return Square(side)

        def describe(square):
            return f"{type(square).__name__} of area {square.area()}"

        def loaded_by_name():
            module = sys.modules.get(__name__)
            return module is not None and module.__dict__ is globals()

        def project_importable():
            return importlib.util.find_spec("bv_project") is not None

        def mark_setup():  # a setup hook
            os.environ["BV_SETUP"] = shapes.Square(3).__class__.__name__

        def setup_mark():
            return os.environ.get("BV_SETUP")

        def imports_its_sibling_when_it_runs(side):
            from . import shapes as later
            return later.square_area(side)
    """,
    "bv_script.py": """
        FACTOR = 3

        def scaled(x):
            return x * FACTOR

        def scaled_twice(x):
            return scaled(scaled(x))

        def imports_a_helper_when_it_runs():
            import bv_helper
            return bv_helper.VALUE

        def imports_json_when_it_runs(value):
            import json
            return json.dumps(value)
    """,
    "bv_helper.py": "VALUE = 1\n",
}
MODULES = ("bv_project", "bv_project.shapes", "bv_project.core", "bv_script", "bv_helper")


@dataclasses.dataclass
class Project:
    directory: Path
    core: Any
    shapes: Any
    script: Any


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The project's modules, imported from a temporary directory on this process's path."""
    directory = tmp_path_factory.mktemp("project")
    for name, text in PROJECT.items():
        path = directory / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    sys.path.insert(0, str(directory))
    try:
        import bv_project.core  # type: ignore[import-not-found]
        import bv_project.shapes  # type: ignore[import-not-found]
        import bv_script  # type: ignore[import-not-found]

        yield Project(directory, bv_project.core, bv_project.shapes, bv_script)
    finally:
        sys.path.remove(str(directory))
        for name in MODULES:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """aiodocker runs on asyncio only; one event loop for the module's executor."""
    return "asyncio"


@pytest.fixture(scope="module")
def image() -> str:
    """The test image, made by scripts/docker-up.sh before pytest: checked only."""
    return check_docker_image(IMAGE, built_here="ASYNCEXEC_TEST_IMAGE" not in os.environ)


@pytest.fixture(scope="module")
async def docker(image: str, project: Project) -> AsyncIterator[DockerExecutor]:
    """Warm containers, shared by the module's Docker tests (with a setup hook of the
    project's: hooks travel too)."""
    async with DockerExecutor(image, n_workers=2, mode="warm", setup=project.core.mark_setup) as ex:
        yield ex


# -- which modules travel --------------------------------------------------------------


def test_the_users_modules_are_told_from_installed_ones(project: Project) -> None:
    for name in MODULES[:4]:
        assert _travel.module_home(name) == "own", name
    for name in ("json", "_pickle", "sys", "pytest", "cloudpickle", "asyncexec._travel", "tests"):
        expected = "own" if name == "tests" else "installed"  # (tests: this checkout's files)
        assert _travel.module_home(name) == expected, name
    made_here = types.ModuleType("bv_made_at_run_time")
    sys.modules[made_here.__name__] = made_here
    try:
        assert _travel.module_home(made_here.__name__) == "own"
    finally:
        del sys.modules[made_here.__name__]


def test_launchers_say_whether_they_share_this_machines_files() -> None:
    local, remote = LocalShell(), SSHShell("127.0.0.1", verify_host_key=False)
    shared = SSHShell("127.0.0.1", verify_host_key=False, shares_files=True)
    assert local.shares_files and not remote.shares_files and shared.shares_files
    assert ProcessLauncher(1).capabilities.shares_files
    assert ThreadLauncher(1).capabilities.shares_files
    assert not DockerLauncher("any-image").capabilities.shares_files
    assert not AzureLauncher.shares_files  # (an instance needs a subscription)
    assert SlurmLauncher(local).capabilities.shares_files
    assert not SlurmLauncher(remote).capabilities.shares_files
    assert SlurmLauncher(shared).capabilities.shares_files
    assert SSHLauncher([local]).capabilities.shares_files
    assert not SSHLauncher([local, remote]).capabilities.shares_files
    assert SSHLauncher([shared]).capabilities.shares_files


# -- pickles ---------------------------------------------------------------------------


def test_the_travelling_pickle_leaves_the_usual_one_and_cloudpickles_registry_alone(
    project: Project,
) -> None:
    registry = cloudpickle.list_registry_pickle_by_value()
    by_name = _pickle.dumps(project.core.area, protocol=5)
    assert _codec.dumps_call(project.core.area, (2,), {})[0] == by_name
    travelling, _, _ = _codec.dumps_call(project.core.area, (2,), {}, travel_to="DockerLauncher")
    assert b"cloudpickle" in travelling and b"square_area" in travelling  # by value
    assert _codec.dumps_call(project.core.area, (2,), {})[0] == by_name
    assert _pickle_cache.remembered(project.core.area) == "reference"
    assert cloudpickle.list_registry_pickle_by_value() == registry
    # Installed modules stay by name.
    import json

    assert _codec.dumps_call(json.dumps, ([1],), {}, travel_to="X")[0] == _pickle.dumps(
        json.dumps, protocol=5
    )


def test_a_travelling_pickle_is_remembered_until_what_it_is_made_of_changes(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    for function, before, after in [
        (project.script.scaled, 3, 5),
        (project.script.scaled_twice, 9, 25),  # (what it calls is followed)
    ]:
        first, _, _ = _codec.dumps_call(function, (1,), {}, travel_to="X")
        assert _codec.dumps_call(function, (1,), {}, travel_to="X")[0] is first
        assert _pickle.loads(first)(1) == before
        with monkeypatch.context() as patch:
            patch.setattr(project.script, "FACTOR", 5)
            again, _, _ = _codec.dumps_call(function, (1,), {}, travel_to="X")
        assert again != first and _pickle.loads(again)(1) == after


def test_what_cannot_be_found_where_the_work_runs_is_refused_with_its_name(
    project: Project,
) -> None:
    with pytest.raises(SerializationError, match=r"imports bv_project\.shapes when it runs"):
        _codec.dumps_call(project.core.imports_its_sibling_when_it_runs, (1,), {}, travel_to="X")
    with pytest.raises(SerializationError, match=r"imports bv_helper when it runs") as caught:
        _codec.dumps_call(project.script.imports_a_helper_when_it_runs, (), {}, travel_to="X")
    assert str(project.directory / "bv_helper.py") in str(caught.value)
    # The same function as an argument (map's chunks), and in a lambda sent by value.
    with pytest.raises(SerializationError, match="bv_helper"):
        _codec.dumps_call(map, (project.script.imports_a_helper_when_it_runs,), {}, travel_to="X")
    with pytest.raises(SerializationError, match="bv_helper"):
        _codec.dumps_call(lambda: __import__("os") and _import_helper(), (), {}, travel_to="X")
    # Installed modules imported at run time are fine; so is all of it where files are shared.
    _codec.dumps_call(project.script.imports_json_when_it_runs, (1,), {}, travel_to="X")
    _codec.dumps_call(project.script.imports_a_helper_when_it_runs, (), {})


NATIVE = """
#include <Python.h>
static PyObject *answer(PyObject *self, PyObject *unused) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "bv_native", NULL, -1, methods};
PyMODINIT_FUNC PyInit_bv_native(void) { return PyModule_Create(&module); }
"""


def test_a_compiled_module_of_yours_is_refused_where_it_cannot_travel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "bv_native.c"
    source.write_text(NATIVE)
    built = tmp_path / ("bv_native" + importlib.machinery.EXTENSION_SUFFIXES[0])
    include = sysconfig.get_paths()["include"]
    compiled = subprocess.run(
        ["gcc", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(built)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bv_native", raising=False)
    native: Any = importlib.import_module("bv_native")
    assert native.answer() == 42 and _travel.module_home("bv_native") == "compiled"
    with pytest.raises(SerializationError, match=r"it uses bv_native \(.*bv_native\.") as caught:
        _codec.dumps_call(native.answer, (), {}, travel_to="DockerLauncher")
    assert "compiled module of yours" in str(caught.value)
    with pytest.raises(SerializationError, match="bv_native"):  # as an argument too
        _codec.dumps_call(map, (native.answer, []), {}, travel_to="DockerLauncher")
    assert _codec.dumps_call(native.answer, (), {})[0] == _pickle.dumps(native.answer, protocol=5)


def _import_helper() -> object:
    import bv_helper  # type: ignore[import-not-found]

    return bv_helper.VALUE


# -- in containers ---------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.infra
async def test_your_function_runs_in_a_container_without_your_files(
    docker: DockerExecutor, project: Project
) -> None:
    assert await docker.run(project.core.project_importable) is False  # not on its path
    assert await docker.run(project.core.loaded_by_name) is False  # so: by value
    assert await docker.run(project.core.area, 3) == 9  # its sibling module came along
    assert await docker.run(project.script.scaled, 2) == 6
    assert await docker.run(project.core.setup_mark) == "Square"  # the hook ran there


@pytest.mark.docker
@pytest.mark.infra
async def test_your_classes_travel_both_ways(docker: DockerExecutor, project: Project) -> None:
    square = await docker.run(project.core.square, 4)
    assert isinstance(square, project.shapes.Square) and square.area() == 16
    described = await docker.run(project.core.describe, project.shapes.Square(2))  # an argument
    assert described == "Square of area 4"
    values = [value async for value in docker.map(project.core.area, range(5), chunksize=2)]
    assert values == [0, 1, 4, 9, 16]


@pytest.mark.docker
@pytest.mark.infra
async def test_a_changed_global_travels_with_the_next_task(
    docker: DockerExecutor, project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(project.core, "SCALE", 10)
    monkeypatch.setattr(project.script, "FACTOR", 7)
    assert await docker.run(project.core.area, 2) == 40
    assert await docker.run(project.script.scaled, 2) == 14


@pytest.mark.docker
@pytest.mark.infra
async def test_a_module_only_this_machine_has_is_refused_at_submit(
    docker: DockerExecutor, project: Project
) -> None:
    before = docker.stats()
    with pytest.raises(SerializationError, match=r"bv_project\.shapes") as caught:
        await docker.submit(project.core.imports_its_sibling_when_it_runs, 2)
    assert not isinstance(caught.value, TaskFailed)  # refused at submit: no future
    assert "DockerLauncher" in str(caught.value)
    assert docker.stats() == before


@pytest.mark.docker
@pytest.mark.infra
async def test_one_shot_containers_too(image: str, project: Project) -> None:
    async with DockerExecutor(image, n_workers=1) as ex:
        assert await ex.run(project.core.area, 2) == 4


# -- where the files are shared ----------------------------------------------------------


async def test_the_process_pool_still_sends_your_functions_by_name(project: Project) -> None:
    by_name = _pickle.dumps(project.core.loaded_by_name, protocol=5)
    _codec.dumps_call(project.core.loaded_by_name, (), {}, travel_to="X")  # (made before)
    async with ProcessExecutor(1) as ex:
        assert await ex.run(project.core.loaded_by_name) is True
        assert await ex.run(project.core.area, 3) == 9
    assert _codec.dumps_call(project.core.loaded_by_name, (), {})[0] == by_name
    assert _pickle_cache.remembered(project.core.loaded_by_name) == "reference"
    async with ThreadExecutor(1) as threads:  # (a run-time import is fine where files are)
        assert await threads.run(project.core.imports_its_sibling_when_it_runs, 2) == 4
