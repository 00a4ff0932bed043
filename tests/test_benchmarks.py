"""The benchmark harnesses run and report every workload. No timing is asserted.

The peers that are not in the standard library come from the locks (submitit, for
the Slurm harness, in a venv of the cluster's Python that ``scripts/submitit-up.sh``
makes, run by the nox sessions before pytest); the machines are shared and noisy,
so the figures are not looked at.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from .cluster import Cluster
from .services import Azurite, check_docker_image, check_submitit_venv
from .test_docker import IMAGE

# The harnesses run the same on every Python: once per CI run, in the tests session.
pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parent.parent


def benchmark_module(name: str) -> ModuleType:
    """``benchmarks/NAME.py``, imported (for its constants)."""
    spec = importlib.util.spec_from_file_location(
        f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


WORKLOADS: tuple[str, ...] = benchmark_module("pool").WORKLOADS
STDLIB_PEERS = "asyncexec,concurrent.futures,multiprocessing,threads,asyncio-floor,raw-pipe"


def run_benchmark(script: str, *args: str) -> str:
    """Run ``benchmarks/SCRIPT`` as CI would; its report, once it exited with 0."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, (
        f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    return completed.stdout


def sections(report: str) -> dict[str, str]:
    """The report's ``## workload: ...`` sections, by workload."""
    found: dict[str, str] = {}
    for chunk in report.split("\n## ")[1:]:
        name = chunk.split(":", 1)[0].strip()
        found[name] = chunk
    return found


def test_pool_benchmark_smoke() -> None:
    report = run_benchmark("pool.py", "--smoke", "--peers", STDLIB_PEERS)
    by_workload = sections(report)
    assert sorted(by_workload) == sorted(WORKLOADS), report
    for workload in WORKLOADS:
        rows = [
            line for line in by_workload[workload].splitlines() if line.startswith("| asyncexec |")
        ]
        assert len(rows) == 1, f"no asyncexec row for {workload}:\n{by_workload[workload]}"
        cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
        assert cells[1] not in ("error", "timeout", "unavailable", "n/a"), rows[0]
    for peer in STDLIB_PEERS.split(","):
        assert f"\n| {peer} |" in by_workload["latency"], f"no {peer} row"
    for workload in ("throughput", "latency"):  # the floor's two workloads, measured
        row = next(
            line
            for line in by_workload[workload].splitlines()
            if line.startswith("| asyncio-floor |")
        )
        assert row.split("|")[2].strip()[:1].isdigit(), row
        assert "asyncio-floor / best peer" in by_workload[workload]
    bare = next(line for line in by_workload["cpu"].splitlines() if line.startswith("| raw-pipe |"))
    assert bare.split("|")[2].strip()[:1].isdigit(), bare  # two bare processes, measured


def test_sweeper_benchmark_smoke() -> None:
    report = run_benchmark("sweeper.py", "--smoke")
    rows = [line for line in report.splitlines() if line.startswith("|")]
    assert any("asyncexec" in line for line in rows), report
    assert any(line[1:].strip()[:1].isdigit() for line in rows), report


def test_experiment_benchmark_smoke() -> None:
    """The runner harness on 20 and 3,000 runs: every peer installed is measured (Hydra
    is in the bench lock only: the smoke run leaves it out where it is missing), each
    cell a rate, or on 3,000 runs a rate or a capped window; the pending runs measured."""
    bench = benchmark_module("experiment")
    installed = [peer for peer in bench.PEERS if bench.missing(peer) is None]
    assert {"raw", "runner", "futures", "execo"} <= set(installed)  # execo: in the test lock
    report = run_benchmark("experiment.py", "--smoke")
    tables = [block.splitlines() for block in report.split("\n\n") if block.startswith("| ")]
    rates = next(table for table in tables if "runs/s" in table[0])
    columns = [cell.strip() for cell in rates[0].strip("|").split("|")]
    assert columns[2:] == [f"{bench.LABELS[peer]} runs/s" for peer in installed], rates[0]
    rows = {
        tuple(cells[:2]): cells[2:]
        for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in rates[2:])
    }
    for workload in ("noop", "sleep"):
        for size in ("20", "3,000"):
            for peer, cell in zip(installed, rows[workload, size], strict=True):
                capped = cell.startswith("< ") and "capped at" in cell and size != "20"
                assert cell[:1].isdigit() or capped, f"{peer} {workload} {size}: {cell}"
    pending = next(table for table in tables if "first run started" in table[0])
    cells = [cell.strip() for cell in pending[2].strip("|").split("|")]
    assert cells[0] == "2,000" and all(cell[:1].isdigit() for cell in cells), pending[2]
    for peer in set(bench.PEERS) - set(installed):
        assert f"- not run: {peer} (" in report, report
    assert "failed" not in report, report


@pytest.mark.slurm
@pytest.mark.ssh
def test_slurm_benchmark_smoke(cluster: Cluster) -> None:
    """The Slurm harness on 20 tasks: by hand, asyncexec and submitit (from the venv
    ``scripts/submitit-up.sh`` makes, as ``nox -s tests`` and ``nox -s bench`` do)."""
    check_submitit_venv(benchmark_module("slurm").SUBMITIT_PYTHON)
    report = run_benchmark("slurm.py", "--smoke")
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for way in ("sbatch --array", "asyncexec", "submitit, 1 input per array task"):
        assert any(line.startswith(f"| {way} |") for line in rows), report
    assert "not run" not in report, report


@pytest.mark.slurm
@pytest.mark.ssh
@pytest.mark.infra
def test_indexed_benchmark_smoke(cluster: Cluster) -> None:
    """The indexed-arrays harness on 2,000 runs: detached, status, followed to the end."""
    report = run_benchmark("indexed.py", "--smoke")
    assert "- complete: True (2,000 done, 0 wrong or missing)" in report, report
    for measure in (
        "`sbatch` calls",
        "files per array task",
        "peak RSS of",
        "`asyncexec status DIR` of",
    ):
        assert f"| {measure}" in report, report


def test_array_task_start_benchmark_smoke() -> None:
    report = run_benchmark("array_task_start.py", "--smoke")
    for way in ("python -c pass", "by hand (json)", "asyncexec runner", "pool worker's start"):
        assert f"\n| {way} |" in report, report


@pytest.mark.azure
@pytest.mark.docker
def test_azure_benchmark_smoke(azurite: Azurite) -> None:
    """The ACI harness on 20 tasks in chunks of 10 (asyncexec) and 10 tasks of one group
    each (the Powerlift-style peer), through the loopback ARM and Azurite, with the
    test image the fake runs its groups from (the harness's default, any build of it)."""
    check_docker_image(IMAGE, built_here=False)
    report = run_benchmark("azure.py", "--smoke", "--image", IMAGE)
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for way, tasks, groups in (
        ("asyncexec, chunks of 10", "20", "2"),
        ("Powerlift-style, 1 group per task", "10", "10"),
    ):
        found = [row for row in rows if row.startswith(f"| {way} |")]
        assert len(found) == 2, f"no {way} rows (runs, lone group):\n{report}"
        cells = [cell.strip() for cell in found[0].strip("|").split("|")]
        assert cells[1:3] == [tasks, groups], found[0]
        assert cells[-1].startswith("yes"), found[0]  # within ACI's quotas
        assert cells[3][:1].isdigit(), found[0]  # a wall time
    for target in ("ARM requests per task <= 0.1", "within the quotas", "<= 1.3x the least"):
        assert target in report, report
