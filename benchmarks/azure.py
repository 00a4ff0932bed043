"""Azure Container Instances: AzureExecutor against a Powerlift-style client, in one run.

Both ways run trivial tasks (``i + 1``) through the same loopback ARM (the test
suite's ``tests/fakeazure``: every request checked against Microsoft's spec,
ACI's quotas and ARM's token buckets enforced, each container group a REAL
Docker container of the test image), with ACI's provisioning latency injected:

* ``asyncexec``: ``AzureExecutor`` with ``chunk_size`` tasks per container
  group (``--tasks`` 1,000 in chunks of 100: 10 groups), outcomes through Blob
  Storage (Azurite), its create and delete windows set to ACI's, scaled;
* ``peer``: what Powerlift's ``AzureContainerInstance`` executor does, written
  here with httpx (plain REST, the same client-credentials token): one group
  per task, its command ``python -c "print(i + 1)"``, a GET of each live group
  every ``--poll`` seconds until its container is ``Terminated``, the value
  read from the container's logs, then DELETE; on 429 (and 503) it waits the
  ``Retry-After`` and tries again, as a well-behaved client does. At most
  ``--peer-concurrency`` groups at once (the region's group quota). Since it
  starts one real container per task it runs ``--peer-tasks`` tasks (200):
  compare its per-task figures.

``--time-scale`` (0.01) shrinks ACI's durations: the quota windows of 5 minutes
and 1 hour last 3 s and 36 s, 30 s of provisioning (``--provisioning``) lasts
0.3 s, and the fake's token buckets refill 100 times faster. The polling is NOT
scaled: Powerlift GETs each group every 1 s of real time and asyncexec lists
the outcomes every 1 s (``--poll`` sets both); asyncexec's ARM checks of its
groups keep their defaults (15 s, doubling to 120 s).

Each figure is the median of ``--repeats`` runs, the ways alternating, each run
on a fresh fake. A run's ARM requests are the fake's requests of kind read,
write and delete (tokens left out); "within the quotas" means the fake refused
nothing: no 429 of any kind and no quota-reached create. The least wall time
the create quota allows is when the last group's create may come, creating as
fast as ACI's sliding windows let, plus the provisioning latency (the tasks
themselves and Docker taken as free). The report (Markdown) goes to stdout,
progress to stderr; the issue's targets are printed, not asserted.

    python benchmarks/azure.py                    # 1,000 and 200 tasks, 3 repeats
    python benchmarks/azure.py --smoke            # 20 and 10 tasks, 1 repeat: the harness only
    python benchmarks/azure.py --ways asyncexec --time-scale 1   # ACI's real durations

Needs Docker and the test image (``scripts/docker-up.sh``), Azurite
(``scripts/azure-up.sh``) and Microsoft's spec (``../shared/azure-spec``).
Exit status: 0, 1 when a measurement failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from http.client import HTTPConnection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncexec.launchers.azure import _blob

if TYPE_CHECKING:
    from tests.fakeazure import FakeAzure, Spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "asyncexec-test:py{}.{}".format(*sys.version_info[:2])
#: The test image keeps its Python at the path it has here (it has no python3 on PATH).
DEFAULT_PYTHON = os.path.realpath(sys.executable)
WAYS = ("asyncexec", "peer")
API_VERSION = "2025-09-01"
#: ACI's container group creates (and deletes): (limit, seconds) per subscription and region.
QUOTA = ((100, 300.0), (300, 3600.0))
#: The region's container groups at once (ACI's default quota; the fake's too).
MAX_GROUPS = 100
#: Azurite's Blob service as scripts/azure-up.sh runs it (tests/services.py); its one
#: account and key are well known, published by Microsoft (not a secret).
AZURITE_HOST = "127.0.0.1"
AZURITE_PORT = int(os.environ.get("ASYNCEXEC_AZURITE_PORT", "10000"))
AZURITE_ACCOUNT = _blob.AZURITE_ACCOUNT  # Azurite's well-known account and key
AZURITE_KEY = _blob.AZURITE_KEY
STORAGE_CONTAINER = "asyncexec-bench"


@dataclasses.dataclass
class Run:
    """One measurement: a way, its tasks, what it took and what the fake saw."""

    way: str
    tasks: int
    wall: float  # seconds from opening to every value in hand and every group deleted
    to_create: float  # seconds from opening to the first create (PUT 201)
    create_to_value: float  # seconds from the first create to the last value
    after_value: float  # seconds from the last value to the end (deletes, closing)
    creates: int
    arm_requests: int  # read, write and delete requests the fake answered
    by_kind: dict[str, int]
    throttled: int  # 429 answers, of any kind
    quota_refused: int  # creates and deletes refused for a quota (429 or 400)
    peak_groups: int

    @property
    def within_quotas(self) -> bool:
        return self.throttled == 0 and self.quota_refused == 0


def least_create_time(groups: int, windows: Sequence[tuple[int, float]]) -> float:
    """When the last of ``groups`` creates may come at the earliest, from the first,
    creating as fast as the sliding ``windows`` (limit, seconds) let."""
    at: list[float] = []
    for k in range(groups):
        at.append(
            max([0.0] + [at[k - limit] + seconds for limit, seconds in windows if k >= limit])
        )
    return at[-1] if at else 0.0


def scaled(windows: Sequence[tuple[int, float]], scale: float) -> tuple[tuple[int, float], ...]:
    return tuple((limit, seconds * scale) for limit, seconds in windows)


# -- asyncexec --------------------------------------------------------------------------


async def run_asyncexec(fake: FakeAzure, options: argparse.Namespace, tasks: int) -> float:
    """Every value through an AzureExecutor; the time.monotonic() of the last value."""
    from asyncexec.launchers.azure import (
        AzureConfig,
        AzureExecutor,
        AzureLauncher,
        ClientSecretCredential,
    )

    windows = scaled(QUOTA, options.time_scale)
    config = AzureConfig(
        subscription_id=fake.subscription_id,
        resource_group=fake.resource_group,
        location=fake.location,
        storage_account=AZURITE_ACCOUNT,
        storage_endpoint=f"http://{AZURITE_HOST}:{AZURITE_PORT}/{AZURITE_ACCOUNT}",
        storage_container=STORAGE_CONTAINER,
        arm_endpoint=fake.url,
        image=options.image,
        python=options.python,
        chunk_size=options.chunk_size,
        create_quota=windows,
        delete_quota=windows,
        poll_interval=options.poll,
        max_poll_interval=options.poll,
    )
    credential = ClientSecretCredential(
        fake.tenant_id, fake.client_id, fake.client_secret, authority=fake.authority
    )
    launcher = AzureLauncher(config, credential, storage_key=AZURITE_KEY)
    async with AzureExecutor(launcher) as executor:
        futures = [await executor.submit(operator.add, i, 1) for i in range(tasks)]
        values = await executor.wait(futures)
        last_value = time.monotonic()
    if values != [i + 1 for i in range(tasks)]:
        raise AssertionError("asyncexec: wrong values")
    return last_value


# -- the peer: one group per task, polled every second ------------------------------------


async def run_peer(fake: FakeAzure, options: argparse.Namespace, tasks: int) -> float:
    """Every value the way Powerlift gets it; the time.monotonic() of the last value."""
    import httpx

    run_id = uuid.uuid4().hex[:8]
    groups = (
        f"{fake.url}/subscriptions/{fake.subscription_id}/resourceGroups/{fake.resource_group}"
        f"/providers/Microsoft.ContainerInstance/containerGroups"
    )
    limiter = asyncio.Semaphore(options.peer_concurrency)
    last_value = 0.0

    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        answer = await client.post(
            f"{fake.authority}/{fake.tenant_id}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "scope": "https://management.azure.com/.default",
            },
        )
        answer.raise_for_status()
        headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}

        async def call(method: str, url: str, body: Any = None) -> httpx.Response:
            """One ARM request; a 429 or 503 waits its Retry-After and goes again."""
            while True:
                response = await client.request(
                    method, url, params={"api-version": API_VERSION}, headers=headers, json=body
                )
                if response.status_code not in (429, 503):
                    return response
                await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

        async def one(i: int) -> int:
            nonlocal last_value
            url = f"{groups}/peer-{run_id}-{i}"
            container = {
                "name": "task",
                "properties": {
                    "image": options.image,
                    "command": [options.python, "-c", f"print({i} + 1)"],
                    "resources": {"requests": {"cpu": 1.0, "memoryInGB": 1.5}},
                },
            }
            body = {
                "location": fake.location,
                "properties": {
                    "osType": "Linux",
                    "restartPolicy": "Never",
                    "containers": [container],
                },
            }
            async with limiter:
                created = await call("PUT", url, body)
                if created.status_code not in (200, 201):
                    raise RuntimeError(f"create {i}: HTTP {created.status_code} {created.text}")
                while True:
                    await asyncio.sleep(options.poll)
                    got = await call("GET", url)
                    got.raise_for_status()
                    properties = got.json()["properties"]
                    if properties.get("provisioningState") == "Failed":
                        raise RuntimeError(f"group {i} failed to provision")
                    view = properties["containers"][0]["properties"].get("instanceView") or {}
                    if (view.get("currentState") or {}).get("state") == "Terminated":
                        break
                logs = await call("GET", f"{url}/containers/task/logs")
                logs.raise_for_status()
                value = int(logs.json()["content"].strip())
                last_value = max(last_value, time.monotonic())
                deleted = await call("DELETE", url)
                if deleted.status_code not in (200, 202, 204):
                    raise RuntimeError(f"delete {i}: HTTP {deleted.status_code} {deleted.text}")
                return value

        values = await asyncio.gather(*(one(i) for i in range(tasks)))
    if list(values) != [i + 1 for i in range(tasks)]:
        raise AssertionError("peer: wrong values")
    return last_value


# -- one measurement ------------------------------------------------------------------------


def measure(way: str, tasks: int, options: argparse.Namespace, spec: Spec) -> Run:
    """Run ``tasks`` tasks ``way`` on a fresh fake ARM; what it took."""
    from tests.fakeazure import FakeAzure

    with FakeAzure(
        time_scale=options.time_scale,
        provisioning_latency=options.provisioning,
        max_groups=MAX_GROUPS,
        creates=QUOTA,
        deletes=QUOTA,
        spec=spec,
    ) as fake:
        runner = run_asyncexec if way == "asyncexec" else run_peer
        started = time.monotonic()
        last_value = asyncio.run(
            asyncio.wait_for(runner(fake, options, tasks), timeout=options.timeout)
        )
        wall = time.monotonic() - started
        left = sorted(fake.groups)
        leftovers = fake.docker_leftovers()
        if left or leftovers:
            raise AssertionError(f"left behind: groups {left}, containers {leftovers}")
        if fake.invalid:
            raise AssertionError(f"bodies that fail Microsoft's spec: {fake.invalid[:3]}")
        requests = [r for r in fake.requests if r.kind in ("read", "write", "delete")]
        creates = [r.at for r in requests if r.method == "PUT" and r.status in (200, 201)]
        if not creates:
            raise AssertionError("no group was created")
        by_kind = {
            kind: sum(r.kind == kind for r in requests) for kind in ("read", "write", "delete")
        }
        return Run(
            way=way,
            tasks=tasks,
            wall=wall,
            to_create=min(creates) - started,
            create_to_value=last_value - min(creates),
            after_value=started + wall - last_value,
            creates=fake.counters["create"],
            arm_requests=len(requests),
            by_kind=by_kind,
            throttled=sum(r.status == 429 for r in requests),
            quota_refused=sum(
                (r.method == "PUT" and r.status in (400, 429))
                or (r.method == "DELETE" and r.status == 429)
                for r in requests
            ),
            peak_groups=fake.peak_groups,
        )


# -- checks before running ------------------------------------------------------------------


def check_services(image: str) -> str | None:
    """Why the benchmark cannot run here, or None."""
    try:
        connection = HTTPConnection(AZURITE_HOST, AZURITE_PORT, timeout=10)
        connection.request("GET", "/")
        server = connection.getresponse().getheader("Server", "")
        connection.close()
    except OSError as exc:
        where = f"{AZURITE_HOST}:{AZURITE_PORT}"
        return f"Azurite does not answer on {where} ({exc}): bash scripts/azure-up.sh"
    if not server.startswith("Azurite-Blob/"):
        return f"what answers on {AZURITE_HOST}:{AZURITE_PORT} is not Azurite ({server!r})"
    found = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    if found.returncode != 0:
        return f"no Docker image {image}: bash scripts/docker-up.sh python"
    return None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    engine = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.system()} "
        f"{platform.release()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Docker Engine {engine}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


# -- the report -----------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 2) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(
    options: argparse.Namespace,
    ways: Sequence[str],
    runs: dict[str, list[Run]],
    lone: dict[str, list[Run]],
    header: str,
) -> None:
    scale = options.time_scale
    windows = scaled(QUOTA, scale)
    latency = options.provisioning * scale
    labels = {
        "asyncexec": f"asyncexec, chunks of {options.chunk_size}",
        "peer": "Powerlift-style, 1 group per task",
    }
    print(f"## azure: trivial tasks through the fake ARM, median of {options.repeats}\n")
    print(header + "\n")
    print(
        f"Time scale {scale:g}: ACI's create windows {QUOTA[0][0]}/{QUOTA[0][1]:g} s and "
        f"{QUOTA[1][0]}/{QUOTA[1][1]:g} s last {windows[0][1]:g} s and {windows[1][1]:g} s; "
        f"provisioning {options.provisioning:g} s lasts {latency:g} s. Polling is not scaled: "
        f"every {options.poll:g} s of real time for both ways (the peer GETs each live group, "
        "asyncexec lists the outcomes). The peer runs fewer tasks than asyncexec (one real "
        "container each): compare the per-task columns.\n"
    )
    print(
        "| way | tasks | groups | wall (s) | ms per task | least the quota allows (s) "
        "| x least | ARM requests | per task | 429s | within quotas |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    medians: dict[str, dict[str, float]] = {}
    for way in ways:
        done = runs[way]
        tasks = done[0].tasks
        groups = statistics.median(r.creates for r in done)
        least = least_create_time(round(groups), windows) + latency
        wall = statistics.median(r.wall for r in done)
        per_task = statistics.median(r.arm_requests / r.tasks for r in done)
        within = all(r.within_quotas for r in done)
        medians[way] = {"wall": wall, "least": least, "per_task": per_task, "tasks": tasks}
        kinds = statistics.median(r.arm_requests for r in done)
        print(
            f"| {labels[way]} | {tasks:,} | {groups:g} | {spread([r.wall for r in done])} "
            f"| {1000 * wall / tasks:,.1f} | {least:.2f} | {wall / least:.1f} | {kinds:g} "
            f"| {per_task:.3f} | {sum(r.throttled for r in done)} "
            f"| {'yes' if within else 'NO'} ({sum(r.quota_refused for r in done)} refused) |"
        )
    print()
    for way in ways:
        r = sorted(runs[way], key=lambda run: run.wall)[len(runs[way]) // 2]
        shown = ", ".join(f"{k} {v}" for k, v in r.by_kind.items())
        print(
            f"- {labels[way]}, the median run: ARM requests {shown}; peak groups "
            f"{r.peak_groups}; open to first create {r.to_create:.2f} s, first create to last "
            f"value {r.create_to_value:.2f} s, last value to closed {r.after_value:.2f} s"
        )
    if "peer" in ways:
        n = options.tasks
        least = least_create_time(n, windows) + latency
        real = least_create_time(n, QUOTA) + options.provisioning
        print(
            f"- the peer at {n:,} tasks ({n:,} groups): the create quota alone allows no less "
            f"than {least:.1f} s here, {real / 3600:.2f} h at ACI's real windows "
            f"(asyncexec's {-(-n // options.chunk_size)} groups: "
            f"{least_create_time(-(-n // options.chunk_size), QUOTA) + options.provisioning:.0f} s)"
        )
    if lone:
        print(
            "\nOne lone group, one task (the fixed cost of a group on this machine: the "
            "provisioning latency, a Docker container's start and, for asyncexec, the "
            "runtime fetched and the outcome listed):\n"
        )
        print(
            "| way | wall (s) | open to create (s) | create to value (s) "
            "| value to closed (s) | ARM requests |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for way in ways:
            done = lone[way]
            print(
                f"| {labels[way]} | {spread([r.wall for r in done])} "
                f"| {spread([r.to_create for r in done])} "
                f"| {spread([r.create_to_value for r in done])} "
                f"| {spread([r.after_value for r in done])} "
                f"| {statistics.median(r.arm_requests for r in done):g} |"
            )
    print("\nTargets (issue 19), checked, not asserted:\n")
    if "asyncexec" in medians:
        per_task = medians["asyncexec"]["per_task"]
        print(
            f"- ARM requests per task <= 0.1 for asyncexec: {per_task:.3f}: "
            f"{'met' if per_task <= 0.1 else 'NOT met'}"
        )
    for way in ways:
        within = all(r.within_quotas for r in runs[way] + lone.get(way, []))
        print(f"- every run within the quotas, {labels[way]}: {'met' if within else 'NOT met'}")
    for way in ways:
        m = medians[way]
        ratio = m["wall"] / m["least"]
        print(
            f"- wall time <= 1.3x the least the create quota allows, {labels[way]}: "
            f"{ratio:.1f}x ({m['wall']:.2f} s against {m['least']:.2f} s): "
            f"{'met' if ratio <= 1.3 else 'NOT met'}"
        )


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="azure.py", description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="what every group runs")
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="the image's interpreter")
    parser.add_argument("--tasks", type=int, help="asyncexec's tasks per run (1000; smoke: 20)")
    parser.add_argument("--peer-tasks", type=int, help="the peer's tasks per run (200; smoke: 10)")
    parser.add_argument(
        "--chunk-size", type=int, help="asyncexec's tasks per group (100; smoke: 10)"
    )
    parser.add_argument(
        "--peer-concurrency", type=int, default=MAX_GROUPS, help="the peer's groups at once"
    )
    parser.add_argument("--repeats", type=int, help="runs per figure (3; smoke: 1)")
    parser.add_argument(
        "--time-scale", type=float, default=0.01, help="ACI's durations multiplied (0.01)"
    )
    parser.add_argument(
        "--provisioning", type=float, default=30.0, help="ACI's provisioning seconds (scaled)"
    )
    parser.add_argument(
        "--poll", type=float, default=1.0, help="real seconds between looks, both ways (1)"
    )
    parser.add_argument("--ways", default=",".join(WAYS), help="asyncexec,peer")
    parser.add_argument("--no-lone", action="store_true", help="skip the one-group runs")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run at most")
    parser.add_argument("--smoke", action="store_true", help="a tiny run: the harness only")
    options = parser.parse_args(argv)
    options.tasks = options.tasks or (20 if options.smoke else 1000)
    options.peer_tasks = options.peer_tasks or (10 if options.smoke else 200)
    options.chunk_size = options.chunk_size or (10 if options.smoke else 100)
    options.repeats = options.repeats or (1 if options.smoke else 3)
    ways = [way.strip() for way in options.ways.split(",") if way.strip()]
    if not ways or any(way not in WAYS for way in ways):
        parser.error(f"--ways: some of {', '.join(WAYS)}")
    if min(options.tasks, options.peer_tasks, options.chunk_size, options.repeats) < 1:
        parser.error("--tasks, --peer-tasks, --chunk-size and --repeats must be positive")
    if options.peer_concurrency < 1 or options.time_scale <= 0 or options.poll <= 0:
        parser.error("--peer-concurrency, --time-scale and --poll must be positive")
    if options.provisioning < 0:
        parser.error("--provisioning must not be negative")

    problem = check_services(options.image)
    if problem is not None:
        print(f"azure.py: {problem}", file=sys.stderr)
        return 1
    sys.path.insert(0, str(ROOT))  # the loopback ARM lives in the test suite
    from tests.fakeazure import load_spec

    try:
        spec = load_spec()
    except Exception as exc:
        print(f"azure.py: Microsoft's spec: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    header = machine()
    runs: dict[str, list[Run]] = {way: [] for way in ways}
    lone: dict[str, list[Run]] = {way: [] for way in ways} if not options.no_lone else {}
    for repeat in range(options.repeats):
        for way in ways:
            plan = [(runs, options.tasks if way == "asyncexec" else options.peer_tasks)]
            if not options.no_lone:
                plan.append((lone, 1))
            for into, tasks in plan:
                try:
                    run = measure(way, tasks, options, spec)
                except Exception as exc:
                    print(
                        f"{way} ({tasks} tasks) failed: {type(exc).__name__}: {exc}",
                        file=sys.stderr,
                    )
                    return 1
                into[way].append(run)
                print(
                    f"repeat {repeat + 1}/{options.repeats} {way}, {tasks} task(s): "
                    f"{run.wall:.2f} s, {run.creates} creates, {run.arm_requests} ARM requests, "
                    f"{run.throttled} 429s; open to create {run.to_create:.2f} s, create to "
                    f"value {run.create_to_value:.2f} s, value to closed {run.after_value:.2f} s",
                    file=sys.stderr,
                )
    report(options, ways, runs, lone, header)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
