"""The worker: its version command, run as a real process, and its channel and loading."""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from asyncexec._codec import dumps_call, encode_frame, loads, versions
from asyncexec._messages import Cancel, TaskSpec
from asyncexec._pickle_cache import LoadedFunctions
from asyncexec._worker_channel import WorkerChannel

from .test_payloads import script


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


def test_a_function_sent_by_reference_is_looked_up_once_and_nothing_else_is_reused() -> None:
    functions = LoadedFunctions(loads)
    by_name = dumps_call(json.dumps, (), {})[0]
    assert functions.load(by_name) is json.dumps
    assert functions.load(by_name) is json.dumps
    assert functions.stats() == {"by_reference": 1, "by_value": 0}
    # A partial loads as a new object every time (a task may change its keywords).
    data = dumps_call(functools.partial(json.dumps, indent=1), (), {})[0]
    assert functions.load(data) is not functions.load(data)
    assert functions.stats() == {"by_reference": 1, "by_value": 0}


def test_a_function_sent_by_value_is_loaded_again_only_when_a_task_changed_it() -> None:
    functions = LoadedFunctions(loads)
    namespace = script(
        """
        COUNT = 0
        ITEMS = []
        def bump():
            global COUNT
            COUNT += 1
            return COUNT
        def plain(x):
            return x + COUNT
        def listed():
            ITEMS.append(1)
            return len(ITEMS)
        """
    )
    plain = dumps_call(namespace["plain"], (1,), {})[0]
    assert functions.load(plain) is functions.load(plain)
    assert functions.stats() == {"by_reference": 0, "by_value": 1}
    # A task that rebinds a global of its function's copy: the next one loads afresh,
    # and sees what was sent, as it would if nothing were kept.
    bump = dumps_call(namespace["bump"], (), {})[0]
    first = functions.load(bump)
    assert first() == 1
    second = functions.load(bump)
    assert second is not first and second() == 1
    third = functions.load(bump)
    assert third is not second and third() == 1
    assert functions.stats() == {"by_reference": 0, "by_value": 2}
    # A global that can change in place: never kept.
    listed = dumps_call(namespace["listed"], (), {})[0]
    assert functions.load(listed)() == 1
    assert functions.load(listed)() == 1
    assert functions.stats() == {"by_reference": 0, "by_value": 2}


def test_the_channel_reads_what_follows_a_frame_sent_with_file_descriptors() -> None:
    """A read stops after data that came with file descriptors: the worker must read on,
    or a Cancel right behind a task would be read only after that task ran."""
    driver, worker = socket.socketpair()
    passed_r, passed_w = os.pipe()
    channel = WorkerChannel(worker.fileno(), worker.fileno(), is_socket=True)
    assert channel.socket is not None
    try:
        assert channel.take(wait=False) == []  # nothing yet: no waiting
        task = encode_frame(TaskSpec(task_id="t", fn=b"", args=b""))
        driver.sendmsg([task], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", passed_r))])
        driver.send(encode_frame(Cancel(task_id="t")))
        messages = channel.take(wait=False)
        assert messages is not None
        assert [type(message) for message in messages] == [TaskSpec, Cancel]
        assert len(channel.fds) == 1
        os.close(channel.fds.popleft())
        driver.close()
        assert channel.take(wait=True) is None  # the driver is gone
    finally:
        channel.socket.close()  # (its own duplicate of the worker's end)
        worker.close()
        os.close(passed_r)
        os.close(passed_w)


def test_the_channel_over_pipes_reads_without_waiting_and_sees_the_end() -> None:
    read_fd, write_fd = os.pipe()
    try:
        channel = WorkerChannel(read_fd, write_fd)
        assert channel.take(wait=False) == []
        frames = [encode_frame(Cancel(task_id=str(i))) for i in range(3)]
        os.write(write_fd, b"".join(frames))
        messages = channel.take(wait=False)
        assert messages is not None
        assert [message.task_id for message in messages] == ["0", "1", "2"]
        os.close(write_fd)
        write_fd = -1
        assert channel.take(wait=True) is None
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def mark_then_sleep(path: str, seconds: float) -> str:
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return path


def test_a_cancel_is_answered_while_a_task_runs_and_a_bad_message_spares_that_task(
    tmp_path: Path,
) -> None:
    """A real worker: a Cancel for a task queued behind a running one is answered
    before the running one ends; a message it cannot take, arriving while a task
    runs, ends the worker only once that task's outcome is out."""
    from asyncexec._codec import take_frames
    from asyncexec._messages import Outcome, Setup

    driver, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "asyncexec.worker", "serve", "--fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stderr=subprocess.PIPE,
    )
    theirs.close()
    driver.settimeout(60)
    buffer = bytearray()

    def receive() -> Any:
        while True:
            messages = take_frames(buffer)
            if messages:
                assert len(messages) == 1, messages
                return messages[0]
            data = driver.recv(1 << 16)
            if not data:
                return None
            buffer.extend(data)

    def task(task_id: str, fn: Any, *args: Any) -> bytes:
        fn_bytes, args_bytes, _ = dumps_call(fn, args, {})
        return encode_frame(TaskSpec(task_id=task_id, fn=fn_bytes, args=args_bytes))

    def until_exists(path: Path) -> None:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.01)

    try:
        receive()  # Hello
        driver.sendall(encode_frame(Setup(sys_path=[entry for entry in sys.path if entry])))
        receive()  # Ready
        first, second = tmp_path / "first", tmp_path / "second"
        driver.sendall(task("long", mark_then_sleep, str(first), 3.0) + task("queued", len, "ab"))
        until_exists(first)  # running: the Cancel reaches it while it runs
        driver.sendall(encode_frame(Cancel(task_id="queued")))
        cancelled = receive()
        answered = time.time()
        assert (cancelled.task_id, cancelled.status) == ("queued", "cancelled")
        long = receive()
        assert isinstance(long, Outcome) and (long.task_id, long.status) == ("long", "ok")
        assert long.finished is not None and answered < long.finished, "answered at its end"
        # A task pointing into shared memory never sent: the worker cannot take it.
        driver.sendall(task("again", mark_then_sleep, str(second), 1.0))
        until_exists(second)
        bad = TaskSpec(task_id="bad", fn=b"", args=b"", outside=[3], outside_at=0)
        driver.sendall(encode_frame(bad))
        again = receive()
        assert (again.task_id, again.status) == ("again", "ok")  # not lost with the worker
        assert receive() is None  # then it ends
        assert process.wait(60) != 0
        assert process.stderr is not None
        assert b"shared memory that was never sent" in process.stderr.read()
    finally:
        driver.close()
        if process.poll() is None:
            process.kill()
        process.wait(60)
        if process.stderr is not None:
            process.stderr.close()


def test_the_channel_fails_when_file_descriptors_sent_with_a_frame_are_dropped() -> None:
    """Out of file descriptors, the kernel drops those passed with a frame: the
    channel must say so, not hand the next task someone else's memory file."""
    script = r"""
import os, resource, socket, struct
from asyncexec._codec import encode_frame
from asyncexec._worker_channel import WorkerChannel
from asyncexec._messages import Cancel
driver, worker = socket.socketpair()
channel = WorkerChannel(worker.fileno(), worker.fileno(), is_socket=True)
passed, _ = os.pipe()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    while True:
        os.open(os.devnull, os.O_RDONLY)
except OSError:
    pass  # no file descriptor left
rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", passed))]
driver.sendmsg([encode_frame(Cancel(task_id="t"))], rights)
try:
    channel.take(wait=True)
except OSError as exc:
    print("raised:", exc)
else:
    print("took it")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "raised: file descriptors sent with a task were dropped" in done.stdout, done.stdout
