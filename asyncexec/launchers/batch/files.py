"""What travels between the driver and a batch system's nodes, as files.

* In: an array's archive — its job script, the one-shot runner
  (:mod:`asyncexec._runtime`, standard library only), one input file per
  array task (:func:`batch_file`) and ``tasks.json`` (which task is in which
  array task, what :meth:`BatchLauncher.find_refs` reads back).
* Out: one outcome file per task, written atomically by the runner and read
  here with :func:`read_outcome` (builtins only, types checked).
"""

from __future__ import annotations

import importlib.resources
import io
import pickle
import shlex
import tarfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from ... import _runtime
from ..._codec import versions
from ..._hooks import Hooks
from ..._messages import ErrorInfo, Outcome, TaskSpec

__all__ = ["batch_file", "job_script", "read_outcome", "tar", "untar"]

#: The runner's source, shipped with every array (read once).
_RUNNER_SOURCE = importlib.resources.files("asyncexec").joinpath("_runtime.py").read_bytes()


def batch_file(tasks: Sequence[TaskSpec], hooks: Hooks | None = None) -> bytes:
    """An array task's input for the one-shot runner: builtins only, pickled, with
    the executor's ``setup`` and ``teardown`` hooks (see :mod:`asyncexec._runtime`)."""
    current = versions()
    batch = {
        "format": _runtime.FORMAT,
        "python": current.python,
        "cloudpickle": current.cloudpickle,
        "tasks": [msgspec.structs.asdict(task) for task in tasks],
    }
    if hooks is not None and hooks.setup is not None:
        batch["setup"] = hooks.setup
    if hooks is not None and hooks.teardown is not None:
        batch["teardown"] = hooks.teardown
    return pickle.dumps(batch, protocol=5)


class _BuiltinsOnly(pickle.Unpickler):
    """An outcome file holds builtins only: refuse anything that names a class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an outcome file may not name {module}.{name}")


def read_outcome(data: bytes) -> Outcome:
    """An outcome file the runner wrote, as an :class:`Outcome` (types checked)."""
    fields = _BuiltinsOnly(io.BytesIO(data)).load()
    if not isinstance(fields, dict):
        raise ValueError(f"an outcome file holds a {type(fields).__name__}, not a dict")
    row: list[Any] = ["outcome", *(fields.get(name) for name in _runtime.OUTCOME_FIELDS)]
    error = fields.get("error")
    if isinstance(error, dict):
        row[1 + _runtime.OUTCOME_FIELDS.index("error")] = [
            error.get(name) for name in ErrorInfo.__struct_fields__
        ]
    return msgspec.convert(row, Outcome)


def job_script(
    directives: Sequence[str], prologue: Sequence[str], python: str, workdir: str, index: str
) -> str:
    """An array task's bash script: ``directives`` (``#SBATCH ...``), then ``prologue``
    under an ``ERR`` trap, then the one-shot runner, run by ``python``, on the array
    task's input file.

    ``index`` is the shell expression of the array task's index (Slurm's
    ``$SLURM_ARRAY_TASK_ID``). A failing setup line (module load, activate,
    the user's own) ends the script before the runner starts, and says which
    line failed in ``log/<index>.setup``, where the poller looks.
    """
    runner = shlex.join([python, "-c", _runtime.BOOT, workdir])
    setup_failed = shlex.quote(f"{workdir}/log/") + f'"{index}.setup"'
    on_error = f'rc=$?; printf "%s\\t%s\\n" "$rc" "$BASH_COMMAND" > {setup_failed}; exit $rc'
    return "\n".join(
        [
            "#!/bin/bash",
            *directives,
            f"trap {shlex.quote(on_error)} ERR",
            "umask 077",
            *prologue,
            "trap - ERR",
            f'exec {runner} {shlex.quote(workdir + "/in/")}"{index}.bin" '
            f"{shlex.quote(workdir + '/out')} {shlex.quote(workdir + '/cancel')}",
            "",
        ]
    )


def tar(files: Mapping[str, bytes], directories: Sequence[str] = ()) -> bytes:
    """A tar archive of ``files`` (0600, ``job.sh`` 0700) and empty ``directories`` (0700)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in directories:
            directory = tarfile.TarInfo(name)
            directory.type = tarfile.DIRTYPE
            directory.mode = 0o700
            archive.addfile(directory)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o700 if path == "job.sh" else 0o600
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def untar(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar archive by absolute path (empty input: none)."""
    files: dict[str, bytes] = {}
    if not data:
        return files
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive:
            extracted = archive.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files["/" + member.name.lstrip("/")] = extracted.read()
    return files
