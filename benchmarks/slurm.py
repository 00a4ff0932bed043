"""Slurm over SSH: asyncexec's SlurmExecutor against a hand-written array job and submitit.

Runs ``--tasks`` trivial tasks (default 1,000; each is ``x + 1``) end to end on
the project's single-node cluster (``scripts/slurm-up.sh``), several ways, in
one run:

* ``sbatch --array``: what a user writes by hand: one SSH connection
  (asyncssh, the same key and known_hosts), one upload of the inputs and the
  job script, ``sbatch --parsable --array=0-K job.sh`` (each array task runs
  the cluster venv's python on its ``--chunk-size`` inputs and writes a result
  file), ``squeue -h -j ID`` every ``--hand-poll`` seconds (1) until it prints
  nothing, then all result files back in one ``tar``: the reference;
* ``asyncexec``: ``SlurmExecutor(SSHShell(...), SlurmConfig(python=...,
  chunk_size=--chunk-size))``, ``submit`` every task then ``wait``: from
  entering ``async with`` to holding every value; the default polling
  (``poll_interval=0.25``, ``max_poll_interval=10``), and once more with
  ``max_poll_interval=1``;
* ``submitit``: ``AutoExecutor(folder=...).map_array(fn, inputs)`` then
  ``[job.result() for job in jobs]``, run as the cluster user on the login node
  (this machine) by the python of a venv holding submitit (``--submitit-python``);
  one array task per input, as ``map_array`` does, and again with the inputs
  grouped into calls of ``--chunk-size`` items (the same array size as the
  others). Timed inside that process, from before ``map_array`` to the last
  result; the notes give the process's total wall time too.

Every way checks its results. Each measurement runs in a fresh process (asyncexec
and the hand-written array through ``slurm.py --one WAY``, submitit through
``runuser``); the order of the ways rotates from one repeat to the next; each
figure is the median of ``--repeats``. The report (Markdown) goes to stdout,
progress to stderr.

    python benchmarks/slurm.py                   # 1,000 tasks in chunks of 10, 3 repeats
    python benchmarks/slurm.py --smoke           # 20 tasks, 1 repeat: the harness only (CI)
    python benchmarks/slurm.py --ways asyncexec,"sbatch --array" --repeats 5

The cluster is the one ``cluster.json`` describes (``$ASYNCEXEC_CLUSTER_DIR``,
default ``/var/tmp/asyncexec-cluster``). submitit runs from a venv of the cluster's
Python that ``bash scripts/submitit-up.sh`` makes (as root, idempotently, submitit
at the version of ``locks/bench.txt``; ``nox -s bench`` runs it): without it the
submitit rows say so.
Exit status: 0, 1 when a measurement failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import math
import os
import platform
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from typing import Any

CLUSTER_DIR = os.environ.get("ASYNCEXEC_CLUSTER_DIR", "/var/tmp/asyncexec-cluster")
SUBMITIT_PYTHON = "/opt/asyncexec-cluster/bench-venv/bin/python"
PY = "{}.{}".format(*sys.version_info[:2])

HAND = "sbatch --array"
AE = "asyncexec"
AE_FAST = "asyncexec, max_poll_interval=1"
SUBMITIT = "submitit, 1 input per array task"
SUBMITIT_CHUNKED = "submitit, chunked"
WAYS = (HAND, AE, AE_FAST, SUBMITIT, SUBMITIT_CHUNKED)
SHORT = {
    "hand": HAND,
    "asyncexec": AE,
    "asyncexec-fast": AE_FAST,
    "submitit": SUBMITIT,
    "submitit-chunked": SUBMITIT_CHUNKED,
}
LONG = {value: key for key, value in SHORT.items()}


def add_one(x: int) -> int:
    return x + 1


# -- the cluster ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    client_key: str
    known_hosts: str
    home: str
    python: str  # the cluster venv of this interpreter's minor version

    @classmethod
    def load(cls) -> Cluster:
        path = os.path.join(CLUSTER_DIR, "cluster.json")
        try:
            with open(path) as file:
                data = json.load(file)
        except OSError as exc:
            raise SystemExit(
                f"no cluster ({exc}): run `bash scripts/slurm-up.sh python` first"
            ) from None
        python = data.get("pythons", {}).get(PY)
        if python is None:
            raise SystemExit(f"the cluster has no venv for Python {PY}: run scripts/slurm-up.sh")
        return cls(
            host=data["host"],
            port=int(data["port"]),
            user=data["user"],
            client_key=data["client_key"],
            known_hosts=data["known_hosts"],
            home=data["home"],
            python=python,
        )

    def connect_options(self) -> dict[str, Any]:
        return {"client_keys": [self.client_key], "known_hosts": self.known_hosts}


def elapsed_since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


# -- asyncexec ------------------------------------------------------------------------


async def run_asyncexec(
    cluster: Cluster, tasks: int, chunk: int, max_poll_interval: float
) -> dict[str, Any]:
    """Seconds from entering ``async with SlurmExecutor`` to every value; its commands."""
    import cloudpickle

    from asyncexec import SlurmConfig, SlurmExecutor, SSHShell

    if __name__ != "__main__":  # the cluster cannot import this file
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    shell = SSHShell(
        cluster.host,
        port=cluster.port,
        username=cluster.user,
        connect_options=cluster.connect_options(),
    )
    config = SlurmConfig(
        python=cluster.python, chunk_size=chunk, max_poll_interval=max_poll_interval
    )
    ex = SlurmExecutor(shell, config)
    # A timeline of the launcher's commands (not part of what a user writes): the
    # same calls, each noted with when it started and ended.
    trace: list[dict[str, Any]] = []
    arrays: list[str] = []
    run = ex.slurm._run

    async def traced(name: str, argv: list[str], **options: Any) -> Any:
        begun = elapsed_since(started)
        done = await run(name, argv, **options)
        entry: dict[str, Any] = {"name": name, "start": begun, "end": elapsed_since(started)}
        if name == "sbatch" and done.returncode == 0:
            arrays.append(done.stdout.decode().strip().split(";")[0])
        if name == "squeue":
            entry["queued"] = len(done.stdout.splitlines())
        if name == "fetch":
            entry["bytes"] = len(done.stdout)
        trace.append(entry)
        return done

    setattr(ex.slurm, "_run", traced)  # noqa: B010 (an instance attribute, on purpose)
    started = time.perf_counter()
    async with ex:
        opened = elapsed_since(started)
        futures = [await ex.submit(add_one, i) for i in range(tasks)]
        submitted = elapsed_since(started)
        values = await ex.wait(futures)
        seconds = elapsed_since(started)
    closed = elapsed_since(started)
    if values != [i + 1 for i in range(tasks)]:
        raise AssertionError("asyncexec: wrong results")
    return {
        "seconds": seconds,
        "opened": opened,
        "submitted": submitted,
        "closed": closed,
        "calls": dict(ex.slurm.calls),
        "arrays": arrays,
        "trace": trace,
    }


# -- the hand-written array -----------------------------------------------------------

# Each array task: its slice of input.json, plus one, into out/<index>.json.
HAND_TASK = (
    "import json, sys; i, c = int(sys.argv[1]), int(sys.argv[2]); "
    "xs = json.load(open('input.json'))[i * c:(i + 1) * c]; "
    "json.dump([x + 1 for x in xs], open(f'out/{i}.json', 'w'))"
)


def hand_job_script(workdir: str, python: str, array_tasks: int, chunk: int) -> str:
    return "\n".join(
        [
            "#!/bin/bash",
            "#SBATCH --job-name=hand-array",
            f"#SBATCH --array=0-{array_tasks - 1}",
            f"#SBATCH --output={workdir}/log/%a.out",
            "#SBATCH --cpus-per-task=1",
            f"cd {shlex.quote(workdir)}",
            f"exec {shlex.quote(python)} -c {shlex.quote(HAND_TASK)} "
            f'"$SLURM_ARRAY_TASK_ID" {chunk}',
            "",
        ]
    )


async def run_hand(cluster: Cluster, tasks: int, chunk: int, poll: float) -> dict[str, Any]:
    """Seconds from connecting to holding every result, as a hand-written script does it."""
    import asyncssh

    array_tasks = math.ceil(tasks / chunk)
    workdir = f"{cluster.home}/asyncexec-bench/hand-{uuid.uuid4().hex[:8]}"
    polls: list[dict[str, Any]] = []
    started = time.perf_counter()
    async with asyncssh.connect(
        cluster.host, port=cluster.port, username=cluster.user, **cluster.connect_options()
    ) as conn:
        connected = elapsed_since(started)
        script = hand_job_script(workdir, cluster.python, array_tasks, chunk)
        upload = (
            f"mkdir -p {workdir}/out {workdir}/log && cat > {workdir}/input.json "
            f"&& cat > {workdir}/job.sh <<'EOF'\n{script}EOF\n"
        )
        await conn.run(upload, input=json.dumps(list(range(tasks))), check=True)
        uploaded = elapsed_since(started)
        done = await conn.run(f"cd {workdir} && sbatch --parsable job.sh", check=True)
        job_id = str(done.stdout).strip().split(";")[0]
        submitted = elapsed_since(started)
        trace = [{"name": "sbatch", "start": uploaded, "end": submitted}]
        while True:
            queue = await conn.run(f"squeue -h -j {job_id}", check=True)
            lines = str(queue.stdout).strip()
            polls.append({"t": elapsed_since(started), "queued": len(lines.splitlines())})
            if not lines:
                break
            await asyncio.sleep(poll)
        result = await conn.run(f"tar -C {workdir} -c -f - out", encoding=None, check=True)
        assert isinstance(result.stdout, bytes)
        seconds = elapsed_since(started)
        await conn.run(f"rm -rf {workdir}", check=True)
    values: list[int] = []
    with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:") as tar:
        found = {}
        for member in tar:
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                found[int(os.path.basename(member.name).split(".")[0])] = json.load(extracted)
    for index in range(array_tasks):
        values.extend(found[index])
    if values != [i + 1 for i in range(tasks)]:
        raise AssertionError("sbatch --array: wrong results")
    return {
        "seconds": seconds,
        "opened": connected,
        "submitted": submitted,
        "calls": {"squeue": len(polls), "sbatch": 1},
        "arrays": [job_id],
        "trace": trace + [{"name": "squeue", "end": p["t"], "queued": p["queued"]} for p in polls],
    }


# -- submitit (runs as the cluster user, on the login node) ---------------------------

SUBMITIT_SCRIPT = """
import json, sys, time
started = time.perf_counter()
import submitit
from submitit.slurm.slurm import SlurmJob

def add_one(x):
    return x + 1

def add_one_each(xs):
    return [x + 1 for x in xs]

tasks, chunk, mode, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
executor.update_parameters(slurm_array_parallelism=tasks, timeout_min=10, cpus_per_task=1)
made = time.perf_counter()
xs = list(range(tasks))
if mode == "chunked":
    jobs = executor.map_array(add_one_each, [xs[i:i + chunk] for i in range(0, tasks, chunk)])
    submitted = time.perf_counter()
    values = [v for job in jobs for v in job.result()]
else:
    jobs = executor.map_array(add_one, xs)
    submitted = time.perf_counter()
    values = [job.result() for job in jobs]
ended = time.perf_counter()
assert values == [x + 1 for x in xs], "submitit: wrong results"
print(json.dumps({
    "seconds": round(ended - made, 4),
    "submitted": round(submitted - made, 4),
    "setup": round(made - started, 4),
    "array_tasks": len(jobs),
    "sacct_calls": SlurmJob.watcher.num_calls,
    "arrays": sorted({job.job_id.split("_")[0] for job in jobs}),
}))
"""


def run_submitit(
    cluster: Cluster, python: str, tasks: int, chunk: int, mode: str, timeout: float
) -> dict[str, Any]:
    """submitit in a fresh process of the cluster user: its own timing and the process's."""
    user = pwd.getpwnam(cluster.user)
    base = f"{cluster.home}/asyncexec-bench"
    folder = f"{base}/submitit-{uuid.uuid4().hex[:8]}"
    prefix: list[str] = []
    if os.geteuid() != user.pw_uid:
        os.makedirs(base, exist_ok=True)
        os.chown(base, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        prefix = [runuser, "-u", cluster.user, "--"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": cluster.home,
        "USER": cluster.user,
        "LOGNAME": cluster.user,
        "LC_ALL": "C.UTF-8",
    }
    argv = [*prefix, python, "-", str(tasks), str(chunk), mode, folder]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv,
            input=SUBMITIT_SCRIPT,
            capture_output=True,
            text=True,
            env=env,
            cwd=cluster.home,
            timeout=timeout,
        )
        total = elapsed_since(started)
    finally:
        subprocess.run(["rm", "-rf", folder], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"submitit ({mode}) failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["total"] = total
    result["calls"] = {"sacct": result.pop("sacct_calls")}
    return result


# -- one measurement, in a fresh process ----------------------------------------------


def one_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slurm.py --one")
    parser.add_argument("--one", choices=["hand", "asyncexec", "asyncexec-fast"], required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--chunk-size", type=int, required=True)
    parser.add_argument("--hand-poll", type=float, default=1.0)
    options = parser.parse_args(argv)
    cluster = Cluster.load()
    if options.one == "hand":
        result = asyncio.run(
            run_hand(cluster, options.tasks, options.chunk_size, options.hand_poll)
        )
    else:
        ceiling = 1.0 if options.one == "asyncexec-fast" else 10.0
        result = asyncio.run(run_asyncexec(cluster, options.tasks, options.chunk_size, ceiling))
    print(json.dumps(result))
    return 0


def measure(
    way: str, cluster: Cluster, options: argparse.Namespace, tasks: int, timeout: float
) -> dict[str, Any]:
    if way in (SUBMITIT, SUBMITIT_CHUNKED):
        mode = "chunked" if way == SUBMITIT_CHUNKED else "each"
        return run_submitit(
            cluster, options.submitit_python, tasks, options.chunk_size, mode, timeout
        )
    argv = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        LONG[way],
        "--tasks",
        str(tasks),
        "--chunk-size",
        str(options.chunk_size),
        "--hand-poll",
        str(options.hand_poll),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-2000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def slurm_side(arrays: list[str]) -> dict[str, float] | None:
    """Slurm's own account of the arrays (1 s resolution): submit to first start, last end."""
    if not arrays:
        return None
    done = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(arrays), "-o", "Submit,Start,End"],
        capture_output=True,
        text=True,
    )
    stamps = []
    for line in done.stdout.splitlines():
        fields = line.split("|")
        if len(fields) != 3 or "Unknown" in fields or "None" in fields:
            continue
        stamps.append([time.mktime(time.strptime(f, "%Y-%m-%dT%H:%M:%S")) for f in fields])
    if not stamps:
        return None
    submit = min(s[0] for s in stamps)
    return {
        "first_start": min(s[1] for s in stamps) - submit,
        "last_end": max(s[2] for s in stamps) - submit,
    }


def queue_length() -> int:
    done = subprocess.run(["squeue", "-h", "-r"], capture_output=True, text=True)
    return len(done.stdout.splitlines())


# -- the report -----------------------------------------------------------------------


def describe_calls(calls: dict[str, int]) -> str:
    order = ["scontrol", "sbatch", "squeue", "sacct", "fetch", "rm"]
    names = sorted(calls, key=lambda n: (order.index(n) if n in order else len(order), n))
    return ", ".join(f"{name} {calls[name]}" for name in names)


def notes(way: str, runs: list[dict[str, Any]], options: argparse.Namespace) -> str:
    median_run = sorted(runs, key=lambda r: float(r["seconds"]))[(len(runs) - 1) // 2]
    calls = describe_calls(median_run["calls"])
    if way == HAND:
        return f"`squeue` every {options.hand_poll:g} s; calls: {calls}"
    if way in (AE, AE_FAST):
        ranges = {
            name: f"{min(r['calls'].get(name, 0) for r in runs)}-"
            f"{max(r['calls'].get(name, 0) for r in runs)}"
            for name in ("squeue", "fetch")
        }
        ceiling = "1" if way == AE_FAST else "10"
        return (
            f"poll 0.25 s growing to {ceiling} s; calls (median run): {calls}; "
            f"squeue {ranges['squeue']}, fetch {ranges['fetch']} over the repeats; "
            f"`async with` exit {median_run['closed'] - median_run['seconds']:.2f} s more"
        )
    totals = statistics.median(float(r["total"]) for r in runs)
    return (
        f"{median_run['array_tasks']} array tasks; process wall time {totals:.1f} s "
        f"(median); sacct calls: {median_run['calls']['sacct']}"
    )


def timeline(way: str, runs: list[dict[str, Any]]) -> str:
    """Where the time of the median run went."""
    run = sorted(runs, key=lambda r: float(r["seconds"]))[(len(runs) - 1) // 2]
    parts = []
    trace = run.get("trace", [])
    for entry in trace:
        if entry["name"] == "scontrol":
            parts.append(f"connected + scontrol {entry['end']:.2f}")
    if "opened" in run and not any(entry["name"] == "scontrol" for entry in trace):
        parts.append(f"connected {run['opened']:.2f}")
    sbatch = next((entry for entry in trace if entry["name"] == "sbatch"), None)
    if sbatch is not None:
        parts.append(f"sbatch {sbatch['start']:.2f}-{sbatch['end']:.2f}")
    else:
        parts.append(f"submitted {run['submitted']:.2f}")
    side = run.get("slurm")
    if side is not None:
        parts.append(
            f"Slurm: first array task started +{side['first_start']:.0f}, "
            f"last ended +{side['last_end']:.0f} after sbatch"
        )
    squeues = [t for t in trace if t["name"] == "squeue"]
    if squeues:
        empty = next((t for t in squeues if t.get("queued") == 0), None)
        if empty is not None:
            parts.append(f"squeue first empty at {empty['end']:.2f}")
    fetches = [t for t in trace if t["name"] == "fetch"]
    if fetches:
        parts.append(f"{len(fetches)} fetches, the last ending at {fetches[-1]['end']:.2f}")
    parts.append(f"all values {run['seconds']:.2f}")
    return f"| {way} | " + "; ".join(parts) + " |"


def main(argv: list[str]) -> int:
    if "--one" in argv:
        return one_main(argv)
    parser = argparse.ArgumentParser(prog="slurm.py", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, help="trivial tasks per run (1,000; smoke: 20)")
    parser.add_argument("--chunk-size", type=int, default=10, help="tasks per array task (10)")
    parser.add_argument("--repeats", type=int, help="runs per figure (3; smoke: 1)")
    parser.add_argument("--hand-poll", type=float, default=1.0, help="squeue interval, by hand")
    parser.add_argument(
        "--ways",
        default=",".join(LONG[w] for w in WAYS),
        help="comma-separated, of: " + ", ".join(SHORT),
    )
    parser.add_argument("--submitit-python", default=SUBMITIT_PYTHON)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the harness only")
    options = parser.parse_args(argv)
    tasks = options.tasks or (20 if options.smoke else 1000)
    repeats = options.repeats or (1 if options.smoke else 3)
    if tasks < 1 or repeats < 1 or options.chunk_size < 1 or options.hand_poll <= 0:
        parser.error("--tasks, --repeats, --chunk-size and --hand-poll must be positive")
    try:
        ways = [SHORT[name.strip()] for name in options.ways.split(",") if name.strip()]
    except KeyError as exc:
        parser.error(f"unknown way {exc}; choose from {', '.join(SHORT)}")
    if HAND not in ways:
        ways.insert(0, HAND)  # the reference of every ratio
    cluster = Cluster.load()
    skipped: dict[str, str] = {}
    if not os.access(options.submitit_python, os.X_OK):
        for way in (SUBMITIT, SUBMITIT_CHUNKED):
            if way in ways:
                ways.remove(way)
                skipped[way] = f"not run: no {options.submitit_python} (see the docstring)"
        print(f"submitit skipped: no {options.submitit_python}", file=sys.stderr)

    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    loads = []
    failed = False
    for repeat in range(repeats):
        order = ways[repeat % len(ways) :] + ways[: repeat % len(ways)]
        for way in order:
            before = {"load": os.getloadavg()[0], "queued": queue_length()}
            loads.append(before["load"])
            try:
                result = measure(way, cluster, options, tasks, options.timeout)
            except Exception as exc:
                print(f"{way} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed = True
                continue
            result["slurm"] = slurm_side(result.get("arrays", []))
            result["before"] = before
            runs[way].append(result)
            extra = f" (process {result['total']:.1f} s)" if "total" in result else ""
            print(
                f"repeat {repeat + 1}/{repeats} {way}: {result['seconds']:.2f} s{extra}; "
                f"calls {describe_calls(result['calls'])}; load {before['load']:.1f}, "
                f"{before['queued']} array tasks queued before",
                file=sys.stderr,
            )
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"tasks": tasks, "chunk_size": options.chunk_size, "runs": runs}, file)

    done_ways = [way for way in ways if runs[way]]
    medians = {way: statistics.median(float(r["seconds"]) for r in runs[way]) for way in done_ways}
    baseline = medians.get(HAND)
    array_tasks = math.ceil(tasks / options.chunk_size)
    print(
        f"## Slurm over SSH: {tasks:,} trivial tasks, {array_tasks} array tasks of "
        f"{options.chunk_size}, median of {repeats}\n"
    )
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{version.stdout.strip()}, Python {platform.python_version()}, load average "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} before the measurements\n"
    )
    print("| way | median (s) | min (s) | x the hand-written array | notes |")
    print("|---|---:|---:|---:|---|")
    for way in ways:
        if way not in medians:
            print(f"| {way} | failed | | | |")
            continue
        seconds = medians[way]
        ratio = f"{seconds / baseline:.2f}" if baseline else "n/a"
        fastest = min(float(r["seconds"]) for r in runs[way])
        print(
            f"| {way} | {seconds:.2f} | {fastest:.2f} | {ratio} | "
            f"{notes(way, runs[way], options)} |"
        )
    for way, why in skipped.items():
        print(f"| {way} | | | | {why} |")
    print("\nWhere the time went (the median run; seconds from the start of the timing):\n")
    print("| way | timeline |")
    print("|---|---|")
    for way in done_ways:
        print(timeline(way, runs[way]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
