"""Process pools from asyncio: asyncexec's ProcessExecutor against its peers, in one run.

Measures, on this machine and in this run, asyncexec's ``ProcessExecutor`` and the
pools an async user would reach for, each driven from asyncio the way such a user
would call it:

* ``concurrent.futures``: ``ProcessPoolExecutor`` through ``loop.run_in_executor``;
* ``multiprocessing``: ``multiprocessing.Pool.apply_async``, bridged to asyncio
  futures by its callbacks and ``loop.call_soon_threadsafe``;
* ``loky``: ``get_reusable_executor`` through ``loop.run_in_executor``;
* ``aiomultiprocess``: ``aiomultiprocess.Pool`` (``apply``; ``starmap`` for bulk);
* ``anyio``: ``anyio.to_process.run_sync`` with a ``CapacityLimiter(2)``;
* ``dask``: ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
  and an asynchronous ``Client`` (``submit``; ``map`` for bulk);
* ``threads``: ``ThreadPoolExecutor`` through ``run_in_executor``, the no-IPC reference;
* ``asyncio-floor``: the least a driver in asyncio does per task over asyncexec's own
  worker loop and wire format (a future and a frame a task, nothing else): what any
  async pool built on this stack costs at least (throughput and latency only);
* ``raw-pipe``: a length-framed ping-pong over OS pipes between two processes,
  without any event loop: the physical limit (for ``cpu``: two forked processes
  taking the tasks from a shared counter, no pool at all).

Two workers everywhere. Workloads: ``throughput`` (no-op tasks submitted at once),
``chunked`` (no-op calls through each pool's chunked map: asyncexec's
``map(chunksize=)``, ``Executor.map(chunksize=)``, ``Pool.map_async``),
``latency`` (sequential submit-and-await round trips), ``payload`` (1 MiB bytes
arguments), ``cold-start`` (create the pool, get the first result), ``memory``
(parent RSS growth per pending task, queued behind blocked workers) and ``cpu``
(~5 ms pure-Python tasks; efficiency against n * 5 ms / 2 workers).

Every measurement runs in a fresh process (``pool.py --one PEER WORKLOAD`` prints
one JSON line); each figure is the median of the repeats. The report (Markdown)
goes to stdout, progress to stderr.

    python benchmarks/pool.py                        # everything, 3 repeats
    python benchmarks/pool.py --smoke                # a tiny run of every workload (CI)
    python benchmarks/pool.py --peers asyncexec,loky --workloads latency --repeats 5
    python benchmarks/pool.py --json results.json    # also the raw results

Exit status: 0, or 1 in ``--smoke`` mode when a measurement failed (an error, not a
timeout), 2 for bad arguments. Timings are never asserted: the machines are noisy.
"""

# Workers import this module to unpickle the task functions (as `pool.noop`, ...):
# keep its top level cheap and free of side effects.
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

WORKERS = 2
MIB = 1 << 20
SPIN_TARGET_S = 0.005
HERE = os.path.dirname(os.path.abspath(__file__))

WORKLOADS = (
    "throughput",
    "script",
    "chunked",
    "latency",
    "payload",
    "cold-start",
    "memory",
    "cpu",
)
PEERS = (
    "asyncexec",
    "concurrent.futures",
    "multiprocessing",
    "loky",
    "aiomultiprocess",
    "anyio",
    "dask",
    "threads",
    "asyncio-floor",
    "raw-pipe",
)
# The modules each peer needs (the standard library's are always there).
PEER_MODULES = {
    "asyncexec": ("asyncexec",),
    "asyncio-floor": ("asyncexec",),
    "loky": ("loky",),
    "aiomultiprocess": ("aiomultiprocess",),
    "anyio": ("anyio",),
    "dask": ("dask", "distributed"),
}
# Neither a real peer nor a pool: not candidates for "the best peer".
REFERENCES = ("threads", "asyncio-floor", "raw-pipe")
# Workloads that hand every task over at once (through bulk APIs where a peer has one).
BULK_WORKLOADS = ("throughput", "script", "memory", "cpu")

FULL_SIZES = {
    "throughput": 20_000,
    "script": 20_000,
    "chunked": 20_000,
    "latency": 2_000,
    "payload": 200,
    "cold-start": 1,
    "memory": 100_000,
    "cpu": 2_000,
}
SMOKE_SIZES = {
    "throughput": 200,
    "script": 200,
    "chunked": 200,
    "latency": 20,
    "payload": 5,
    "cold-start": 1,
    "memory": 1_000,
    "cpu": 20,
}
# Seconds a measurement may take once its pool is started (warm-up included): past
# that, it reports "timeout" and what that bounds. The process running it gets
# GRACE seconds more to start and close its pool before it is killed.
FULL_BUDGETS = {
    "throughput": 30.0,
    "script": 30.0,
    "chunked": 30.0,
    "latency": 60.0,
    "payload": 45.0,
    "cold-start": 30.0,
    "memory": 45.0,
    "cpu": 45.0,
}
SMOKE_BUDGET = 60.0
GRACE = 45.0
CLOSE_GRACE = 20.0
AFTER_GRACE = 5.0  # to drain and close a pool after the memory figure is reported
# What the raw pipe does not measure: it has no pool to queue in or to compute with.
NOT_APPLICABLE = {
    ("aiomultiprocess", "chunked"): "no chunked map (its starmap is the throughput row)",
    ("anyio", "chunked"): "one call per task only",
    ("dask", "chunked"): "no chunked map (Client.map is the throughput row)",
    ("asyncio-floor", "chunked"): "one call per task only",
    ("asyncio-floor", "script"): "a reference for the throughput workload",
    ("raw-pipe", "script"): "no functions to pickle",
    ("asyncio-floor", "payload"): "no large-argument path",
    ("asyncio-floor", "cold-start"): "a reference, not a pool",
    ("asyncio-floor", "memory"): "a reference, not a pool",
    ("asyncio-floor", "cpu"): "a reference, not a pool",
    ("raw-pipe", "chunked"): "no tasks to chunk",
    ("raw-pipe", "memory"): "a pipe has no queue of pending tasks",
}


# -- the task functions (top level: every peer's workers import them) -------------


def noop(i: object = None) -> None:
    """The empty task."""
    return None


def script_noop(i: object = None) -> None:
    """The empty task of the script workload, taken from ``__main__`` (this file run
    as a script): a function defined in the user's script, as most are."""
    return None


def length(data: bytes) -> int:
    """The payload task: the length of its argument."""
    return len(data)


def spin(iterations: int) -> float:
    """Pure-Python work (calibrated to ~5 ms); returns the seconds it took here."""
    start = time.perf_counter()
    total = 0
    for k in range(iterations):
        total += k * k % 7
    return time.perf_counter() - start


def pause(seconds: float) -> int:
    """Holds a worker for a while (warm-up: makes every worker start)."""
    time.sleep(seconds)
    return os.getpid()


def block(directory: str, token: str, timeout: float = 120.0) -> str:
    """Holds a worker until ``directory/release`` exists; announces itself first."""
    with open(os.path.join(directory, f"started-{token}"), "w"):
        pass
    release = os.path.join(directory, "release")
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)
    return token


async def acall(fn: Any, *args: Any) -> Any:
    """aiomultiprocess runs coroutine functions only: this runs a plain one."""
    return fn(*args)


# -- the peers, as an async user drives them ---------------------------------------


class Peer:
    """One pool behind the same small async interface."""

    name = ""
    bulk_note = ""

    def __init__(self) -> None:
        import asyncio

        self.asyncio = asyncio
        self.loop = asyncio.get_running_loop()
        self.abort = False  # close without finishing what is queued
        self.after: Any = None  # what to do once the figure is reported

    @staticmethod
    def load() -> None:
        """Import the peer's library (timed apart, for cold start)."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def submit(self, fn: Any, *args: Any) -> Any:
        """Submit one task; return something awaitable for its result."""
        raise NotImplementedError

    async def gather(self, handles: list[Any]) -> list[Any]:
        return list(await self.asyncio.gather(*handles))

    async def bulk(self, fn: Any, items: range) -> list[Any]:
        """Submit ``fn(i)`` for every item at once; wait for all the results."""
        return await self.gather([await self.submit(fn, i) for i in items])

    async def chunked(self, fn: Any, items: range, chunksize: int) -> list[Any]:
        """``fn(i)`` for every item, sent in chunks of ``chunksize`` calls a task."""
        raise NotImplementedError

    async def queue(self, fn: Any, items: range) -> list[Any]:
        """Submit ``fn(i)`` for every item; return without waiting."""
        return [await self.submit(fn, i) for i in items]

    async def drain(self, handles: list[Any]) -> None:
        """Cancel what :meth:`queue` queued (as far as the peer can)."""
        for handle in handles:
            handle.cancel()
        await self.asyncio.sleep(0)

    async def __aenter__(self) -> Peer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncexecPeer(Peer):
    name = "asyncexec"

    @staticmethod
    def load() -> None:
        # The package loads its executors on first use: import the one measured, as
        # the other peers' load() imports theirs, so cold start times the pool alone.
        from asyncexec import ProcessExecutor  # noqa: F401

    async def start(self) -> None:
        import asyncexec

        self.ex = asyncexec.ProcessExecutor(n_workers=WORKERS)
        await self.ex.__aenter__()

    async def close(self) -> None:
        if self.abort:
            await self.ex.aclose(cancel_pending=True)
        await self.ex.__aexit__(None, None, None)

    async def submit(self, fn: Any, *args: Any) -> Any:
        return await self.ex.submit(fn, *args)

    async def gather(self, handles: list[Any]) -> list[Any]:
        return await self.ex.wait(handles)

    async def chunked(self, fn: Any, items: range, chunksize: int) -> list[Any]:
        return [value async for value in self.ex.map(fn, items, chunksize=chunksize)]

    async def drain(self, handles: list[Any]) -> None:
        await self.ex.cancel(handles)


class ExecutorPeer(Peer):
    """A concurrent.futures executor, through ``loop.run_in_executor``."""

    executor: Any

    async def submit(self, fn: Any, *args: Any) -> Any:
        return self.loop.run_in_executor(self.executor, fn, *args)

    async def chunked(self, fn: Any, items: range, chunksize: int) -> list[Any]:
        # Executor.map blocks until it has submitted every chunk: in a thread.
        def run() -> list[Any]:
            return list(self.executor.map(fn, items, chunksize=chunksize))

        return await self.loop.run_in_executor(None, run)

    async def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class ConcurrentFuturesPeer(ExecutorPeer):
    name = "concurrent.futures"

    async def start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.executor = ProcessPoolExecutor(max_workers=WORKERS)


class ThreadsPeer(ExecutorPeer):
    name = "threads"

    async def start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(max_workers=WORKERS)


class LokyPeer(ExecutorPeer):
    name = "loky"

    @staticmethod
    def load() -> None:
        import loky  # noqa: F401

    async def start(self) -> None:
        import loky

        self.executor = loky.get_reusable_executor(max_workers=WORKERS)

    async def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=self.abort)


class MultiprocessingPeer(Peer):
    name = "multiprocessing"

    async def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.Pool(WORKERS)

    async def close(self) -> None:
        if self.abort:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()

    def _callbacks(self) -> tuple[Any, dict[str, Any]]:
        """An asyncio future, and the callbacks that settle it from the pool's thread."""
        loop = self.loop
        future = loop.create_future()

        def settle(value: Any) -> None:
            if not future.done():
                future.set_result(value)

        def fail(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        return future, {
            "callback": lambda value: loop.call_soon_threadsafe(settle, value),
            "error_callback": lambda error: loop.call_soon_threadsafe(fail, error),
        }

    async def submit(self, fn: Any, *args: Any) -> Any:
        future, callbacks = self._callbacks()
        self.pool.apply_async(fn, args, **callbacks)
        return future

    async def chunked(self, fn: Any, items: range, chunksize: int) -> list[Any]:
        future, callbacks = self._callbacks()
        self.pool.map_async(fn, items, chunksize, **callbacks)
        return list(await future)

    async def drain(self, handles: list[Any]) -> None:
        """Pool.apply_async cannot be cancelled: close() terminates the pool."""
        self.abort = True


class AiomultiprocessPeer(Peer):
    name = "aiomultiprocess"
    bulk_note = "all at once: Pool.starmap"

    @staticmethod
    def load() -> None:
        import aiomultiprocess  # noqa: F401

    async def start(self) -> None:
        import aiomultiprocess

        self.pool = aiomultiprocess.Pool(processes=WORKERS)

    async def close(self) -> None:
        if self.abort:
            for tx, _ in self.pool.queues.values():
                tx.cancel_join_thread()  # or exiting waits to feed killed workers
            self.pool.terminate()
        else:
            self.pool.close()
        await self.pool.join()

    async def submit(self, fn: Any, *args: Any) -> Any:
        return self.asyncio.ensure_future(self.pool.apply(acall, (fn, *args)))

    async def bulk(self, fn: Any, items: range) -> list[Any]:
        return list(await self.pool.starmap(acall, [(fn, i) for i in items]))

    async def queue(self, fn: Any, items: range) -> list[Any]:
        return [self.pool.starmap(acall, [(fn, i) for i in items])]

    async def drain(self, handles: list[Any]) -> None:
        """Queued work cannot be cancelled: close() terminates the pool."""
        self.abort = True


class AnyioPeer(Peer):
    name = "anyio"

    @staticmethod
    def load() -> None:
        import anyio.to_process  # noqa: F401

    async def start(self) -> None:
        import anyio

        self.limiter = anyio.CapacityLimiter(WORKERS)

    async def close(self) -> None:
        """anyio closes its worker processes when the event loop ends."""

    async def submit(self, fn: Any, *args: Any) -> Any:
        from anyio import to_process

        return self.asyncio.ensure_future(to_process.run_sync(fn, *args, limiter=self.limiter))

    async def queue(self, fn: Any, items: range) -> list[Any]:
        handles = await super().queue(fn, items)
        for _ in range(3):  # let every task reach the limiter
            await self.asyncio.sleep(0)
        return handles

    async def drain(self, handles: list[Any]) -> None:
        for handle in handles:
            handle.cancel()
        await self.asyncio.gather(*handles, return_exceptions=True)


class DaskPeer(Peer):
    name = "dask"
    bulk_note = "all at once: Client.map"

    @staticmethod
    def load() -> None:
        import distributed  # noqa: F401

    async def start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = await LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            asynchronous=True,
            dashboard_address=None,
        )
        self.client = await Client(self.cluster, asynchronous=True)

    async def close(self) -> None:
        await self.client.close()
        await self.cluster.close()

    async def submit(self, fn: Any, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    async def gather(self, handles: list[Any]) -> list[Any]:
        return list(await self.client.gather(handles))

    async def bulk(self, fn: Any, items: range) -> list[Any]:
        return await self.gather(self.client.map(fn, list(items), pure=False))

    async def queue(self, fn: Any, items: range) -> list[Any]:
        handles: list[Any] = self.client.map(fn, list(items), pure=False)
        scheduler = getattr(self.cluster, "scheduler", None)  # in this process
        if scheduler is not None:
            while len(scheduler.tasks) < len(items):  # until the scheduler holds them all
                await self.asyncio.sleep(0.01)
        return handles

    async def drain(self, handles: list[Any]) -> None:
        await self.client.cancel(handles)


class FloorPeer(Peer):
    """The least a driver in asyncio can do per task, over asyncexec's own worker loop
    and wire format: a reference, not a pool anyone would use.

    One asyncio future and one ``TaskSpec`` frame per task; frames written to the
    least loaded worker (at most ``1 + QUEUED`` tasks at each, as asyncexec's
    prefetch for short tasks), those of one turn of the loop in one write; outcomes
    read in the socket's readiness callback. Nothing else: no options, time limits,
    cancellation, retries, crash handling or task records. What asyncexec's
    ``ProcessExecutor`` costs beyond this is the price of those.
    """

    name = "asyncio-floor"
    QUEUED = 64

    @staticmethod
    def load() -> None:
        from asyncexec import _codec  # noqa: F401

    async def start(self) -> None:
        import collections
        import itertools

        from asyncexec import _codec, _messages

        self.codec, self.messages = _codec, _messages
        self.ids = itertools.count()
        self.waiting: collections.deque[tuple[Any, bytes, str]] = collections.deque()
        self.flush_due = False
        self.workers: list[dict[str, Any]] = []
        for _ in range(WORKERS):
            worker = await self.loop.run_in_executor(None, self.spawn)
            self.workers.append(worker)
            self.loop.add_reader(worker["socket"].fileno(), self.readable, worker)

    def spawn(self) -> dict[str, Any]:
        """A worker, set up: ``python -m asyncexec.worker serve`` on a socket (blocks)."""
        import socket
        import subprocess

        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "asyncexec.worker", "serve", "--fd", str(fd)],
            pass_fds=(fd,),
        )
        theirs.close()
        worker = {"socket": ours, "process": process, "jobs": {}, "out": [], "buffer": bytearray()}
        ours.settimeout(60)  # the handshake: Hello, Setup, Ready
        self.read_messages(worker, at_least=1)
        setup = self.messages.Setup(sys_path=[entry for entry in sys.path if entry])
        ours.sendall(self.codec.encode_frame(setup))
        self.read_messages(worker, at_least=1)
        ours.setblocking(False)
        return worker

    def read_messages(self, worker: dict[str, Any], at_least: int = 0) -> list[Any]:
        messages: list[Any] = []
        while True:
            try:
                data = worker["socket"].recv(1 << 16)
            except BlockingIOError:
                data = None
            if data == b"":
                raise EOFError("a worker has gone")
            if data:
                worker["buffer"] += data
            messages += self.codec.take_frames(worker["buffer"])
            if len(messages) >= at_least and (data is None or len(data) < 1 << 16):
                return messages

    def readable(self, worker: dict[str, Any]) -> None:
        jobs = worker["jobs"]
        loads = self.codec.loads
        for outcome in self.read_messages(worker):
            future = jobs.pop(outcome.task_id)
            if outcome.status == "ok":
                future.set_result(loads(outcome.value))
            else:
                future.set_exception(RuntimeError(f"{outcome.status}: {outcome.error}"))
        self.pump()

    def pump(self) -> None:
        waiting = self.waiting
        while waiting:
            worker = min(self.workers, key=lambda w: len(w["jobs"]))
            if len(worker["jobs"]) > self.QUEUED:
                return
            future, frame, task_id = waiting.popleft()
            worker["jobs"][task_id] = future
            worker["out"].append(frame)
            if not self.flush_due:
                self.flush_due = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_due = False
        for worker in self.workers:
            if worker["out"]:
                data, worker["out"] = b"".join(worker["out"]), []
                sock = worker["socket"]
                sent = sock.send(data)
                if sent < len(data):  # a full socket (rare: a few frames): block for the rest
                    sock.setblocking(True)
                    try:
                        sock.sendall(data[sent:])
                    finally:
                        sock.setblocking(False)

    async def submit(self, fn: Any, *args: Any) -> Any:
        fn_bytes, args_bytes, _ = self.codec.dumps_call(fn, args, {})
        task_id = f"floor-{next(self.ids)}"
        spec = self.messages.TaskSpec(task_id=task_id, fn=fn_bytes, args=args_bytes)
        future = self.loop.create_future()
        self.waiting.append((future, self.codec.encode_frame(spec), task_id))
        self.pump()
        return future

    async def close(self) -> None:
        for worker in self.workers:
            self.loop.remove_reader(worker["socket"].fileno())
            worker["socket"].close()  # the worker exits at the end of its input
        for worker in self.workers:
            await self.loop.run_in_executor(None, worker["process"].wait, 10)


PEER_CLASSES: dict[str, type[Peer]] = {
    cls.name: cls
    for cls in (
        AsyncexecPeer,
        ConcurrentFuturesPeer,
        MultiprocessingPeer,
        LokyPeer,
        AiomultiprocessPeer,
        AnyioPeer,
        DaskPeer,
        ThreadsPeer,
        FloorPeer,
    )
}


# -- the workloads, on a started peer ------------------------------------------------


async def warm_up(peer: Peer) -> None:
    """Every worker started and used once, outside the measurement."""
    await peer.gather([await peer.submit(pause, 0.05) for _ in range(WORKERS)])
    await peer.gather([await peer.submit(noop, i) for i in range(20)])


async def w_throughput(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    await warm_up(peer)
    return await all_at_once(peer, noop, n)


async def w_script(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """Throughput of a function defined in ``__main__``: what cloudpickle-based pools
    pickle by value, and the standard library's by name (fork and spawn workers run
    this file as their main module too, where it is defined)."""
    fn = sys.modules["__main__"].script_noop
    assert fn.__module__ == "__main__", fn.__module__
    await warm_up(peer)
    await peer.gather([await peer.submit(fn, i) for i in range(20)])
    return await all_at_once(peer, fn, n)


async def all_at_once(peer: Peer, fn: Any, n: int) -> dict[str, Any]:
    """``fn(i)`` for ``n`` items submitted at once, then all awaited: tasks/s, CPU."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    results = await peer.bulk(fn, range(n))
    seconds = time.perf_counter() - start
    assert len(results) == n, f"{len(results)} results for {n} tasks"
    return {"tasks_per_s": n / seconds, "seconds": seconds, **cpu_per_task(cpu, n)}


def chunk_size(n: int) -> int:
    """multiprocessing.Pool.map's own default: about 4 chunks per worker."""
    return max(1, -(-n // (4 * WORKERS)))


async def w_chunked(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    await warm_up(peer)
    start = time.perf_counter()
    results = await peer.chunked(noop, range(n), chunk_size(n))
    seconds = time.perf_counter() - start
    assert len(results) == n, f"{len(results)} results for {n} tasks"
    return {"tasks_per_s": n / seconds, "seconds": seconds}


async def w_latency(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    await warm_up(peer)
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        handle = await peer.submit(noop, i)
        await handle
        samples.append(time.perf_counter_ns() - start)
    return latency_summary(samples)


async def w_payload(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    data = os.urandom(MIB)
    await warm_up(peer)
    start = time.perf_counter()
    results = await peer.gather([await peer.submit(length, data) for _ in range(n)])
    seconds = time.perf_counter() - start
    assert results == [MIB] * n, "wrong payload lengths"
    return {"mb_per_s": n * MIB / seconds / 1e6, "seconds": seconds}


async def w_memory(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    import gc
    import shutil
    import tempfile

    await warm_up(peer)
    directory = tempfile.mkdtemp(prefix="blockers-", dir=params.get("scratch"))
    blockers = []
    handles: list[Any] = []
    peer.abort = True

    async def clean_up() -> None:  # after the figure is reported: it may take a while
        try:
            await peer.drain(handles)
            touch(os.path.join(directory, "release"))
            await peer.asyncio.wait_for(peer.gather(blockers), 60)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    peer.after = clean_up
    for k in range(WORKERS):  # one at a time: each must land on a worker of its own
        blockers.append(await peer.submit(block, directory, str(k)))
        await wait_started(peer, directory, k + 1)
    gc.collect()
    before = rss()
    start = time.perf_counter()
    handles = await peer.queue(noop, range(n))
    queue_seconds = time.perf_counter() - start
    gc.collect()
    after = rss()
    return {
        "bytes_per_task": (after - before) / n,
        "rss_before": before,
        "rss_after": after,
        "queue_seconds": queue_seconds,
    }


async def w_cpu(peer: Peer, n: int, params: dict[str, Any]) -> dict[str, Any]:
    iterations = params["spin_iterations"]
    await warm_up(peer)
    start = time.perf_counter()
    task_seconds = await peer.bulk(SpinFor(iterations), range(n))
    seconds = time.perf_counter() - start
    return cpu_result(n, params["spin_seconds"], seconds, sum(task_seconds))


def cpu_result(n: int, spin_seconds: float, seconds: float, busy: float) -> dict[str, Any]:
    """The cpu workload's figures: ``n`` tasks took ``seconds``, ``busy`` of them in tasks."""
    ideal = n * spin_seconds / WORKERS
    return {
        "efficiency": ideal / seconds,
        "seconds": seconds,
        "ideal_seconds": ideal,
        "task_ms": 1e3 * busy / n,
        # The share of the workers' time spent in the tasks, whatever a task took.
        "busy": busy / (WORKERS * seconds),
    }


class SpinFor:
    """``spin(iterations)`` as a one-argument function of the item (for map APIs)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, item: object) -> float:
        return spin(self.iterations)


async def cold_start(peer_class: type[Peer]) -> tuple[dict[str, Any], Peer]:
    """Import the library, then time: create the pool, submit, get the first result."""
    start = time.perf_counter()
    peer_class.load()
    imported = time.perf_counter()
    peer = peer_class()
    await peer.start()
    handle = await peer.submit(noop, 0)
    await handle
    done = time.perf_counter()
    return {"ms": 1e3 * (done - imported), "import_ms": 1e3 * (imported - start)}, peer


async def wait_started(peer: Peer, directory: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while started(directory) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {started(directory)} of {count} blockers started")
        await peer.asyncio.sleep(0.005)


def started(directory: str) -> int:
    return sum(name.startswith("started-") for name in os.listdir(directory))


def touch(path: str) -> None:
    with open(path, "w"):
        pass


def cpu_seconds() -> tuple[float, dict[int, float] | None]:
    """CPU seconds (user and system) used so far by this process (all its threads),
    and by each of its live descendants, by pid (None without psutil)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        import psutil
    except ImportError:
        return usage.ru_utime + usage.ru_stime, None
    descendants: dict[int, float] = {}
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        descendants[child.pid] = times.user + times.system
    return usage.ru_utime + usage.ru_stime, descendants


def cpu_per_task(before: tuple[float, dict[int, float] | None], n: int) -> dict[str, float]:
    """The CPU µs a task cost this process (the driver) and its descendants (the
    workers) since ``before`` (``cpu_seconds()``). A worker started meanwhile counts
    in full; one that exited meanwhile is missed (neither happens in a pool at work)."""
    mine, theirs = cpu_seconds()
    workers = math.nan
    if theirs is not None and before[1] is not None:
        earlier = before[1]
        workers = sum(used - earlier.get(pid, 0.0) for pid, used in theirs.items())
    return {"driver_us": 1e6 * (mine - before[0]) / n, "workers_us": 1e6 * workers / n}


def rss() -> int:
    """This process's resident set size in bytes (psutil, else /proc)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


def latency_summary(samples_ns: list[int]) -> dict[str, Any]:
    ordered = sorted(samples_ns)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3

    return {
        "p50_us": quantile(0.50),
        "p99_us": quantile(0.99),
        "mean_us": sum(ordered) / len(ordered) / 1e3,
    }


WORKLOAD_FUNCTIONS = {
    "throughput": w_throughput,
    "script": w_script,
    "chunked": w_chunked,
    "latency": w_latency,
    "payload": w_payload,
    "memory": w_memory,
    "cpu": w_cpu,
}


# -- the raw pipe: the physical limit ----------------------------------------------

# The other end: a fresh interpreter, reading frames (4-byte little-endian length,
# then the body) from stdin, after saying it is ready (one frame). echo: answers each
# frame with itself; len: with a frame holding the body's length; sink N: reads N
# frames, then answers once.
PIPE_CHILD = r"""
import os, struct, sys
header = struct.Struct("<I")
stdin = os.fdopen(0, "rb", buffering=1 << 16)
def send(data):
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
def frame():
    head = stdin.read(4)
    if len(head) < 4:
        sys.exit(0)
    return stdin.read(header.unpack(head)[0])
mode = sys.argv[1]
send(header.pack(4) + header.pack(0))  # ready
if mode == "sink":
    count = int(sys.argv[2])
    for _ in range(count):
        frame()
    send(header.pack(4) + header.pack(count))
while True:
    body = frame()
    if mode == "echo":
        send(header.pack(len(body)) + body)
    else:
        send(header.pack(4) + header.pack(len(body)))
"""


class PipePeer:
    """A child process at the other end of two pipes."""

    def __init__(self, *mode: str) -> None:
        import struct
        import subprocess

        self.header = struct.Struct("<I")
        self.process = subprocess.Popen(
            [sys.executable, "-c", PIPE_CHILD, *mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.out = self.process.stdin.fileno()
        self.inp = self.process.stdout.fileno()
        self.receive()  # ready

    def send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view) :]

    def receive(self) -> bytes:
        (size,) = self.header.unpack(self.read_exactly(4))
        return self.read_exactly(size)

    def read_exactly(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.inp, size)
            if not chunk:
                raise EOFError("the pipe's other end is gone")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()
        self.process.wait(10)


def pipe_measure(workload: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    if workload == "cpu":
        return bare_cpu(n, params["spin_iterations"], params["spin_seconds"])
    message = os.urandom(64)  # a small task message
    if workload == "cold-start":
        start = time.perf_counter()
        peer = PipePeer("echo")
        peer.send(peer.header.pack(len(message)) + message)
        peer.receive()
        result = {"ms": 1e3 * (time.perf_counter() - start), "import_ms": 0.0}
        peer.close()
        return result
    if workload == "throughput":  # framed small messages, one way, one write each
        peer = PipePeer("sink", str(n))
        frame = peer.header.pack(len(message)) + message
        cpu = cpu_seconds()
        start = time.perf_counter()
        for _ in range(n):
            peer.send(frame)
        count = peer.header.unpack(peer.receive())[0]
        seconds = time.perf_counter() - start
        assert count == n
        used = cpu_per_task(cpu, n)
        peer.close()
        return {"tasks_per_s": n / seconds, "seconds": seconds, **used}
    if workload == "latency":
        peer = PipePeer("echo")
        frame = peer.header.pack(len(message)) + message
        for _ in range(20):  # warm up
            peer.send(frame)
            peer.receive()
        samples = []
        for _ in range(n):
            start_ns = time.perf_counter_ns()
            peer.send(frame)
            peer.receive()
            samples.append(time.perf_counter_ns() - start_ns)
        peer.close()
        return latency_summary(samples)
    if workload == "payload":
        data = os.urandom(MIB)
        peer = PipePeer("len")
        head = peer.header.pack(len(data))
        start = time.perf_counter()
        for _ in range(n):
            peer.send(head)
            peer.send(data)
        lengths = [peer.header.unpack(peer.receive())[0] for _ in range(n)]
        seconds = time.perf_counter() - start
        assert lengths == [MIB] * n
        peer.close()
        return {"mb_per_s": n * MIB / seconds / 1e6, "seconds": seconds}
    raise ValueError(f"raw-pipe does not measure {workload}")


def bare_cpu(n: int, iterations: int, spin_seconds: float) -> dict[str, Any]:
    """The cpu workload without a pool: two forked processes, each taking the next
    task from a shared counter. What the machine itself allows two workers here."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    results = context.Queue()
    processes = [
        context.Process(target=bare_worker, args=(counter, n, iterations, results))
        for _ in range(WORKERS)
    ]
    start = time.perf_counter()
    for process in processes:
        process.start()
    busy = sum(results.get(timeout=600) for _ in processes)
    seconds = time.perf_counter() - start
    for process in processes:
        process.join(60)
    return cpu_result(n, spin_seconds, seconds, busy)


def bare_worker(counter: Any, n: int, iterations: int, results: Any) -> None:
    busy = 0.0
    while True:
        with counter.get_lock():
            task = counter.value
            counter.value += 1
        if task >= n:
            break
        busy += spin(iterations)
    results.put(busy)


# -- one measurement, in this (fresh) process ----------------------------------------


def run_one(peer_name: str, workload: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    record: dict[str, Any] = {"peer": peer_name, "workload": workload, "n": n}
    if peer_name == "raw-pipe":
        return {**record, "status": "ok", **pipe_measure(workload, n, params)}
    peer_class = PEER_CLASSES[peer_name]
    missing = available(peer_name)  # not imported here: cold start times the import
    if missing is not None:
        return {**record, "status": "unavailable", "reason": missing}
    profile = params.get("profile")
    budget = params["budget"]
    timed_out = {**record, "status": "timeout", "reason": over_budget(workload, n, budget)}

    async def main() -> None:
        if workload == "cold-start":

            async def cold() -> None:  # one task: asyncexec's pool closes where it opened
                result, peer = await cold_start(peer_class)
                emit({**record, "status": "ok", **result})
                await peer.close()

            try:
                await asyncio.wait_for(cold(), budget)
            except asyncio.TimeoutError:
                emit(timed_out)
            return
        async with peer_class() as peer:
            profiler = None
            if profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            measurement = WORKLOAD_FUNCTIONS[workload](peer, n, params)
            try:
                result = await asyncio.wait_for(measurement, budget)
            except asyncio.TimeoutError:
                peer.abort = True
                emit(timed_out)
                return
            if profiler is not None:
                profiler.disable()
                report_profile(profiler, str(profile))
            emit({**record, "status": "ok", **result})
            if peer.after is not None:
                # Some pools take minutes to drop 100,000 queued tasks, blocking the event
                # loop: the figure is out, so a thread ends this process past AFTER_GRACE
                # seconds, and the runner kills what it started.
                import threading

                watchdog = threading.Timer(AFTER_GRACE, hard_exit)
                watchdog.daemon = True
                watchdog.start()
                await peer.after()

    asyncio.run(main())
    return {}


def hard_exit() -> None:
    print(f"clean-up still running after {AFTER_GRACE:g} s: exiting", file=sys.stderr)
    sys.stderr.flush()
    os._exit(0)


def over_budget(workload: str, n: int, budget: float) -> str:
    """What a measurement that ran out of time says."""
    bound = {
        "throughput": f" (< {n / budget:,.0f} tasks/s)",
        "script": f" (< {n / budget:,.0f} tasks/s)",
        "chunked": f" (< {n / budget:,.0f} tasks/s)",
        "payload": f" (< {n * MIB / budget / 1e6:,.1f} MB/s)",
        "cpu": f" (efficiency < {n * SPIN_TARGET_S / WORKERS / budget:.2f})",
    }.get(workload, "")
    return f"{n:,} tasks not done within {budget:g} s{bound}"


def report_profile(profiler: Any, path: str) -> None:
    """Save the profile to ``path``; the top 15 functions by tottime go to stderr."""
    import pstats

    profiler.dump_stats(path)
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)


def emit(record: dict[str, Any]) -> None:
    """The measurement's one JSON line, printed as soon as it is known."""
    import json

    print(json.dumps(record), flush=True)


def one_main(argv: list[str]) -> int:
    import argparse
    import json
    import traceback

    parser = argparse.ArgumentParser(prog="pool.py --one")
    parser.add_argument("--one", nargs=2, metavar=("PEER", "WORKLOAD"), required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--spin-iterations", type=int, default=0)
    parser.add_argument("--spin-seconds", type=float, default=SPIN_TARGET_S)
    parser.add_argument("--budget", type=float, default=FULL_BUDGETS["throughput"])
    parser.add_argument("--profile", metavar="FILE", help="cProfile the measured part")
    parser.add_argument("--scratch", metavar="DIR", help="for temporary files")
    args = parser.parse_args(argv)
    peer_name, workload = args.one
    params = {
        "spin_iterations": args.spin_iterations,
        "spin_seconds": args.spin_seconds,
        "profile": args.profile,
        "budget": args.budget,
        "scratch": args.scratch,
    }
    try:
        record = run_one(peer_name, workload, args.n, params)
    except BaseException as exc:
        traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else ""
        record = {
            "peer": peer_name,
            "workload": workload,
            "status": "error",
            "reason": f"{type(exc).__name__}: {message}"[:200],
        }
    if record:
        print(json.dumps(record), flush=True)
    return 0


# -- the runner: every measurement in a fresh process, then the report --------------


def calibrate(target: float = SPIN_TARGET_S) -> tuple[int, float]:
    """How many iterations make ``spin`` take ``target`` seconds here, and how long.

    The fastest rate seen in 45 runs counts: on a shared machine, interference
    only adds time.
    """
    rate = 0.0  # iterations per second
    iterations = 20_000
    for _ in range(5):
        for _ in range(9):
            rate = max(rate, iterations / spin(iterations))
        iterations = max(1, round(rate * target))
    return iterations, iterations / rate


def measure(
    peer: str,
    workload: str,
    n: int,
    spin: tuple[int, float],
    budget: float,
) -> dict[str, Any]:
    """Run ``pool.py --one PEER WORKLOAD`` in a fresh process; its record.

    The process gets ``budget + GRACE`` seconds in all, and CLOSE_GRACE seconds to
    exit once it reported; then its process group is killed.
    """
    import json
    import queue
    import signal
    import subprocess
    import tempfile
    import threading

    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        peer,
        workload,
        "--n",
        str(n),
        "--spin-iterations",
        str(spin[0]),
        "--spin-seconds",
        repr(spin[1]),
        "--budget",
        str(budget),
    ]
    env = dict(os.environ)
    # Every peer's workers must import this module (spawned ones too).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    deadline = start + budget + GRACE
    found: list[dict[str, Any]] = []
    killed = ""
    with (
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory(
            prefix="asyncexec-bench-", ignore_cleanup_errors=True
        ) as scratch,
    ):
        process = subprocess.Popen(
            [*command, "--scratch", scratch],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            start_new_session=True,  # its whole process group can be killed
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                killed = "closing" if found else "measuring"
                with_suppressed_kill(process.pid, signal.SIGKILL)
                break
            try:
                line = lines.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                if process.poll() is not None:
                    # Exited: what it started and left behind (its process group) goes too.
                    with_suppressed_kill(process.pid, signal.SIGKILL)
                continue
            if line is None:
                break  # every process holding its stdout has exited
            if line.startswith("{"):
                try:
                    candidate = json.loads(line)
                except ValueError:
                    continue
                if isinstance(candidate, dict) and candidate.get("workload") == workload:
                    found.append(candidate)
                    deadline = min(deadline, time.perf_counter() + CLOSE_GRACE)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with_suppressed_kill(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        err.seek(0)
        err_tail = err.read()[-3000:]
    wall = time.perf_counter() - start
    # A result, and maybe an error after it (closing the pool): the result stands.
    ok = [r for r in found if r.get("status") == "ok"]
    record = ok[0] if ok else (found[-1] if found else None)
    if ok and found[-1] is not ok[0]:
        ok[0]["note"] = f"after measuring: {found[-1].get('reason', '')}"
    if record is None:
        if killed:
            reason = f"no result within {budget + GRACE:g} s (killed)"
            record = {"status": "timeout", "reason": reason}
        else:
            tail = " / ".join(err_tail.strip().splitlines()[-3:])[-300:]
            record = {"status": "error", "reason": f"exit {process.returncode}: {tail}"}
    elif "clean-up still running" in err_tail:
        record["note"] = f"the pool was still closing {AFTER_GRACE:g} s after reporting (killed)"
    elif killed == "closing":
        record["note"] = (
            f"{record.get('note', '')}; " if record.get("note") else ""
        ) + f"the pool was still closing {CLOSE_GRACE:g} s after reporting (killed)"
    record.update(peer=peer, workload=workload, wall_seconds=wall)
    return record


def with_suppressed_kill(pgid: int, sig: int) -> None:
    import contextlib

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def available(peer: str) -> str | None:
    """None if the peer's modules are installed, else which one is missing."""
    import importlib.util

    for module in PEER_MODULES.get(peer, ()):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


def describe(spin_iterations: int, spin_ms: float, argv: list[str]) -> list[str]:
    """The run's header: command, machine, Python, versions, date."""
    import datetime
    import importlib.metadata
    import multiprocessing
    import platform
    import shlex
    import subprocess

    try:
        uname = subprocess.run(
            ["uname", "-srm"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        uname = f"{platform.system()} {platform.release()} {platform.machine()}"
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    versions = []
    for dist in (
        "asyncexec",
        "cloudpickle",
        "msgspec",
        "anyio",
        "loky",
        "aiomultiprocess",
        "dask",
        "distributed",
        "psutil",
    ):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    script = os.path.relpath(os.path.abspath(__file__))
    return [
        f"- Command: `python {shlex.join([script, *argv])}`",
        f"- Date: {now:%Y-%m-%d %H:%M %Z}",
        f"- Machine: `{uname}`, nproc {usable}, CPU: {model}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}, "
        "every peer driven from the default asyncio event loop",
        f"- Versions: {', '.join(versions)}",
        f"- Start methods: multiprocessing default `{multiprocessing.get_start_method()}` "
        "(concurrent.futures, multiprocessing.Pool); aiomultiprocess `spawn`; loky its own "
        "`loky` (fresh interpreters); asyncexec and anyio fresh interpreters via subprocess; "
        "dask nanny-spawned workers",
        f"- Method: {WORKERS} workers everywhere; each repeat of each (peer, workload) in a "
        "fresh process (`pool.py --one PEER WORKLOAD`); figures are medians over the "
        "repeats; pool start-up is outside every measurement but cold start; "
        f"`spin` calibrated once to {spin_iterations:,} iterations = {spin_ms:.2f} ms "
        "(at the fastest rate seen in 45 runs), the task time in the cpu workload's ideal",
    ]


# Per workload: heading, [(key, label, format)], higher is better?, extra columns.
TABLES: dict[str, tuple[str, list[tuple[str, str]], bool, list[tuple[str, str]]]] = {
    "throughput": (
        "{n:,} no-op tasks submitted at once, then all awaited (tasks/s; higher is better); "
        "CPU per task (user + system) of the driving process (all its threads: the "
        "threads peer's workers too) and of its child processes (the workers)",
        [("tasks_per_s", "tasks/s")],
        True,
        [("driver_us", "driver CPU µs/task"), ("workers_us", "workers' CPU µs/task")],
    ),
    "script": (
        "{n:,} no-op tasks as in throughput, of a function defined in the script that "
        "runs (`__main__`): cloudpickle-based pools (asyncexec, loky, dask) pickle it by "
        "value, the others by name (their workers run the script as their main module) "
        "(tasks/s; higher is better)",
        [("tasks_per_s", "tasks/s")],
        True,
        [("driver_us", "driver CPU µs/task"), ("workers_us", "workers' CPU µs/task")],
    ),
    "chunked": (
        "{n:,} no-op calls through each pool's chunked map, chunksize = n / (4 x 2 "
        "workers) as multiprocessing.Pool.map picks it (asyncexec: `map(chunksize=)`; "
        "concurrent.futures, loky, threads: `Executor.map` in a thread; multiprocessing: "
        "`Pool.map_async`) (calls/s; higher is better)",
        [("tasks_per_s", "calls/s")],
        True,
        [],
    ),
    "latency": (
        "{n:,} sequential submit-and-await round trips of a no-op (µs; lower is better)",
        [("p50_us", "p50 µs"), ("p99_us", "p99 µs")],
        False,
        [("mean_us", "mean µs")],
    ),
    "payload": (
        "{n:,} tasks taking a 1 MiB bytes argument and returning its length, submitted at "
        "once (MB/s, MB = 10^6 bytes; higher is better)",
        [("mb_per_s", "MB/s")],
        True,
        [],
    ),
    "cold-start": (
        "create the pool, submit a no-op and get its result, in a fresh process with the "
        "library already imported (ms; lower is better)",
        [("ms", "ms")],
        False,
        [("import_ms", "import ms")],
    ),
    "memory": (
        "parent RSS growth per pending task, {n:,} no-op tasks queued while both workers "
        "are blocked (bytes/task; lower is better)",
        [("bytes_per_task", "bytes/task")],
        False,
        [("queue_seconds", "queueing s")],
    ),
    "cpu": (
        "{n:,} pure-Python tasks of ~5 ms submitted at once; efficiency = "
        "(n x 5 ms / 2 workers) / measured time (higher is better)",
        [("efficiency", "efficiency")],
        True,
        [
            ("seconds", "seconds"),
            ("task_ms", "ms per task in the worker"),
            ("busy", "workers busy in tasks"),
        ],
    ),
}


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "—"


def table(
    workload: str,
    n: int,
    peers: list[str],
    records: list[dict[str, Any]],
    unavailable: dict[str, str],
) -> list[str]:
    import statistics

    heading, metrics, higher, extras = TABLES[workload]
    lines = [f"## {workload}: {heading.format(n=n)}", ""]
    header = ["peer", *(f"median {label}" for _, label in metrics), "repeats"]
    header += [f"asyncexec / peer ({label})" for _, label in metrics]
    header += [label for _, label in extras] + ["notes"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|")

    medians: dict[str, dict[str, float]] = {}
    summary: dict[str, tuple[str, str]] = {}  # peer -> (status text, notes)
    for peer in peers:
        mine = [r for r in records if r["peer"] == peer and r["workload"] == workload]
        ok = [r for r in mine if r["status"] == "ok"]
        notes: list[str] = sorted({r["note"] for r in mine if r.get("note")})
        if peer in unavailable:
            summary[peer] = ("unavailable", unavailable[peer])
        elif (peer, workload) in NOT_APPLICABLE:
            summary[peer] = ("n/a", NOT_APPLICABLE[peer, workload])
        elif ok:
            keys = [key for key, _ in metrics + extras]
            medians[peer] = {k: statistics.median(r[k] for r in ok) for k in keys}
            failed = [r for r in mine if r["status"] != "ok"]
            notes += [f"{r['status']}: {r.get('reason', '')}" for r in failed[:1]]
            summary[peer] = ("ok", "; ".join(notes))
        elif mine:
            first = mine[0]
            summary[peer] = (first["status"], str(first.get("reason", "")))
        else:
            summary[peer] = ("n/a", "not measured")

    mine_ae = medians.get("asyncexec")
    for peer in peers:
        status, note = summary[peer]
        cls = PEER_CLASSES.get(peer)
        uses_bulk = workload in BULK_WORKLOADS
        bulk = cls.bulk_note if cls is not None and uses_bulk else ""
        note = "; ".join(filter(None, [bulk, note])).replace("|", "/")
        if status != "ok":
            cells = [peer, *([status] * len(metrics)), "0"]
            cells += ["—"] * len(metrics) + ["—"] * len(extras) + [note]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        values = medians[peer]
        ok_runs = [
            r
            for r in records
            if r["peer"] == peer and r["workload"] == workload and r["status"] == "ok"
        ]
        first_key = metrics[0][0]
        spread = [r[first_key] for r in ok_runs]
        repeats = f"{len(ok_runs)}"
        if len(spread) > 1:
            repeats += f" ({fmt(min(spread))} to {fmt(max(spread))})"
        cells = [peer, *(fmt(values[key]) for key, _ in metrics), repeats]
        cells += [ratio(mine_ae[key], values[key]) if mine_ae else "—" for key, _ in metrics]
        cells += [fmt(values[key]) for key, _ in extras] + [note]
        lines.append("| " + " | ".join(cells) + " |")

    lines.append("")
    key, label = metrics[0]
    candidates = [p for p in medians if p != "asyncexec" and p not in REFERENCES]
    pick = max if higher else min
    better = "above" if higher else "below"
    top = pick(candidates, key=lambda p: medians[p][key]) if candidates else None
    if mine_ae and top is not None:
        best = top
        lines.append(
            f"asyncexec / best peer ({best}, {fmt(medians[best][key])} {label}): "
            f"**{ratio(mine_ae[key], medians[best][key])}** ({better} 1: asyncexec is better)"
        )
        uses_bulk = workload in BULK_WORKLOADS
        if uses_bulk and PEER_CLASSES[best].bulk_note:
            # The same comparison among the peers that take one task per call.
            one_by_one = [p for p in candidates if not PEER_CLASSES[p].bulk_note]
            if one_by_one:
                best = pick(one_by_one, key=lambda p: medians[p][key])
                lines.append(
                    f"asyncexec / best peer submitting one task per call ({best}, "
                    f"{fmt(medians[best][key])} {label}): "
                    f"**{ratio(mine_ae[key], medians[best][key])}**"
                )
    if workload == "cpu":
        lines.append(
            '(The efficiency counts each task as the calibrated 5 ms; "ms per task in the '
            'worker" is what a task took in this run, CPU contention included; "workers '
            'busy in tasks" = time in tasks / (2 x elapsed), which does not depend on the '
            "calibration.)"
        )
    if mine_ae and "asyncio-floor" in medians:
        floor = medians["asyncio-floor"][key]
        lines.append(
            f"asyncexec / asyncio-floor ({fmt(floor)} {label}: a future and a frame a task, "
            f"nothing else): {ratio(mine_ae[key], floor)}"
        )
        if top is not None:
            lines.append(
                f"asyncio-floor / best peer ({top}): {ratio(floor, medians[top][key])} "
                "(what no driver in asyncio over this worker loop and wire format can pass)"
            )
    if mine_ae and "raw-pipe" in medians:
        lines.append(
            f"asyncexec / raw-pipe physical limit ({fmt(medians['raw-pipe'][key])} {label}): "
            f"{ratio(mine_ae[key], medians['raw-pipe'][key])}"
        )
    lines.append("")
    return lines


def runner_main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="pool.py",
        description="asyncexec's ProcessExecutor against other process pools, from asyncio.",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run of every workload")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated workloads"
    )
    parser.add_argument("--repeats", type=int, help="repeats per figure (3; smoke: 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results there")
    args = parser.parse_args(argv)

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [p for p in peers if p not in PEERS] + [w for w in workloads if w not in WORKLOADS]
    if unknown or not peers or not workloads:
        parser.error(
            f"unknown or no peers/workloads: {unknown}; peers: {', '.join(PEERS)}; "
            f"workloads: {', '.join(WORKLOADS)}"
        )
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES

    unavailable: dict[str, str] = {}
    skipped_lines = []
    for peer in list(peers):
        missing = available(peer)
        if missing is None:
            continue
        if args.smoke:
            peers.remove(peer)
            skipped_lines.append(f"- skipped in smoke mode: {peer} ({missing})")
        else:
            unavailable[peer] = missing

    spin_iterations, spin_seconds = calibrate()

    plan = [
        (repeat, workload, peer)
        for repeat in range(repeats)  # repeats interleaved: noise spreads over every peer
        for workload in workloads
        for peer in peers
        if peer not in unavailable and (peer, workload) not in NOT_APPLICABLE
    ]
    records: list[dict[str, Any]] = []
    given_up: set[tuple[str, str]] = set()
    started_at = time.perf_counter()
    load_before = load_average()
    for index, (repeat, workload, peer) in enumerate(plan, 1):
        if (peer, workload) in given_up:
            continue
        budget = SMOKE_BUDGET if args.smoke else FULL_BUDGETS[workload]
        record = measure(peer, workload, sizes[workload], (spin_iterations, spin_seconds), budget)
        record["repeat"] = repeat + 1
        records.append(record)
        if record["status"] in ("timeout", "unavailable"):
            given_up.add((peer, workload))  # the other repeats would do the same
        shown = record.get("reason", "")
        if record["status"] == "ok":
            key = TABLES[workload][1][0][0]
            shown = f"{fmt(record[key])} {TABLES[workload][1][0][1]}"
        print(
            f"[{index}/{len(plan)} {time.perf_counter() - started_at:.0f}s] {peer} {workload} "
            f"#{repeat + 1}: {record['status']} {shown} ({record['wall_seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    report = ["# asyncexec ProcessExecutor vs. process pools, from asyncio", ""]
    report += describe(spin_iterations, 1e3 * spin_seconds, argv)
    report += [
        f"- Repeats: {repeats}" + ("; smoke sizes: the figures mean nothing" if args.smoke else "")
    ]
    report += [
        f"- Total time: {time.perf_counter() - started_at:.0f} s; load average (1, 5, 15 min) "
        f"at start {load_before}, at end {load_average()} (other work on the machine)",
        *skipped_lines,
        "",
    ]
    for workload in workloads:
        report += table(workload, sizes[workload], peers, records, unavailable)
    print("\n".join(report))

    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "argv": argv,
                    "smoke": args.smoke,
                    "repeats": repeats,
                    "sizes": sizes,
                    "spin_iterations": spin_iterations,
                    "spin_seconds": spin_seconds,
                    "unavailable": unavailable,
                    "records": records,
                },
                out,
                indent=1,
            )
    errors = [r for r in records if r["status"] == "error"]
    return 1 if args.smoke and errors else 0


def main(argv: list[str]) -> int:
    if "--one" in argv:
        return one_main(argv)
    return runner_main(argv)


if __name__ == "__main__":
    # Run the code as the module `pool`, not `__main__`, so that the task functions
    # pickle by reference (`pool.noop`) and every peer's workers import them.
    sys.path.insert(0, HERE)
    import pool

    sys.exit(pool.main(sys.argv[1:]))
