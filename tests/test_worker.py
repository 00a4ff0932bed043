"""The worker's version command, run as a real process."""

from __future__ import annotations

import subprocess
import sys

from asyncexec._codec import versions


def test_version_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asyncexec.worker", "version"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    current = versions()
    assert done.stdout.decode().split() == [
        "python",
        current.python,
        "cloudpickle",
        current.cloudpickle,
        "asyncexec",
        current.asyncexec,
    ]
    via_cli = subprocess.run(
        [sys.executable, "-m", "asyncexec", "worker", "version"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert via_cli.stdout == done.stdout


def test_cloudpickle_version_is_read_without_importing_it() -> None:
    import cloudpickle

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from asyncexec._codec import versions; "
            "print(versions().cloudpickle, 'cloudpickle' in sys.modules)",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.decode().split() == [cloudpickle.__version__, "False"]
