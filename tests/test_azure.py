"""AzureExecutor end to end: real Blob protocol (Azurite), the loopback ARM running each
container group as a real Docker container, checked against Microsoft's spec."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncexec import (
    FutureState,
    JobRef,
    TaskCancelled,
    TaskLaunchError,
    WorkerLost,
)
from asyncexec.launchers.azure import (
    ArmClient,
    AzureConfig,
    AzureExecutor,
    AzureLauncher,
    ClientSecretCredential,
)
from asyncexec.testing import (
    add,
    assert_heartbeat_stopped,
    check_launcher,
    conformance_cases,
    heartbeat,
    print_both,
    sleep_for,
)

from .fakeazure import FakeAzure
from .services import ROOT, Azurite, check_docker_image
from .test_docker import IMAGE

pytestmark = [pytest.mark.anyio, pytest.mark.azure, pytest.mark.docker]


@dataclasses.dataclass
class Azure:
    """A fake ARM and the real Azurite, and what a test's executor needs of them."""

    fake: FakeAzure
    storage: Azurite
    image: str
    share: str  # the "scratch" Azure Files share: the same path in the containers

    def credential(self) -> ClientSecretCredential:
        fake = self.fake
        return ClientSecretCredential(
            fake.tenant_id, fake.client_id, fake.client_secret, authority=fake.authority
        )

    def config(self, **changes: Any) -> AzureConfig:
        fake = self.fake
        settings: dict[str, Any] = {
            "subscription_id": fake.subscription_id,
            "resource_group": fake.resource_group,
            "location": fake.location,
            "storage_account": self.storage.account,
            "storage_endpoint": self.storage.endpoint,
            "storage_container": f"t{uuid.uuid4().hex[:20]}",
            "arm_endpoint": fake.url,
            "image": self.image,
            # The test image keeps its Python at the path it has here.
            "python": os.path.realpath(sys.executable),
            "chunk_size": 1,
            "poll_interval": 0.2,
            "max_poll_interval": 1.0,
            "check_interval": (2.0, 5.0),
            "file_shares": {"scratch": self.share},
        }
        settings.update(changes)
        return AzureConfig(**settings)

    def launcher(self, **changes: Any) -> AzureLauncher:
        return AzureLauncher(
            self.config(**changes), self.credential(), storage_key=self.storage.key
        )

    def arm(self) -> ArmClient:
        fake = self.fake
        return ArmClient(
            self.credential(),
            fake.subscription_id,
            fake.resource_group,
            fake.location,
            endpoint=fake.url,
        )

    def assert_clean(self) -> None:
        """Nothing left: no group in the fake's table, no container in Docker."""
        assert not self.fake.groups, sorted(self.fake.groups)
        assert not self.fake.docker_leftovers(), self.fake.docker_leftovers()
        assert not self.fake.invalid, self.fake.invalid


@pytest.fixture(scope="module")
def share() -> Iterator[str]:
    """The "scratch" Azure Files share: the same directory here and in the containers."""
    with tempfile.TemporaryDirectory(prefix="asyncexec-aci-") as path:
        os.chmod(path, 0o777)
        yield path


@pytest.fixture
def fake_settings() -> dict[str, Any]:
    """What a test's FakeAzure is made with (a test overrides it to change quotas)."""
    return {}


@pytest.fixture
def azure(
    fake_settings: dict[str, Any], azurite: Azurite, image: str, share: str
) -> Iterator[Azure]:
    with FakeAzure(shares={"scratch": share}, **fake_settings) as fake:
        yield Azure(fake, azurite, image, share)


@pytest.fixture(scope="module")
def image() -> str:
    """The Docker test image (scripts/docker-up.sh), which the fake runs groups from."""
    return check_docker_image(IMAGE, built_here=False)  # any build runs `python -c`


@pytest.fixture
def anyio_backend() -> str:
    """Each test here starts real containers: asyncio for all, trio for the test
    below (the ARM client and the credentials run their tests on all three loops)."""
    return "asyncio"


# -- the conformance suite ---------------------------------------------------------------

CASES = conformance_cases(AzureLauncher)


@pytest.mark.parametrize("case", [c for c in CASES if c != "many_concurrent"])
async def test_conformance(azure: Azure, case: str) -> None:
    await check_launcher(azure.launcher, only=[case], tmp_root=azure.share, n_workers=4)
    azure.assert_clean()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio(azure: Azure) -> None:
    await check_launcher(
        azure.launcher, only=["value", "cancel_running"], tmp_root=azure.share, n_workers=4
    )
    azure.assert_clean()


@pytest.mark.infra
async def test_300_tasks_in_chunks_of_10_take_30_creates(azure: Azure) -> None:
    async with AzureExecutor(azure.launcher(chunk_size=10)) as executor:
        futures = [await executor.submit(add, i, 1) for i in range(300)]
        assert await executor.wait(futures) == [i + 1 for i in range(300)]
    creates = [r for r in azure.fake.requests if r.method == "PUT"]
    assert len(creates) <= 30, len(creates)
    arm = [r for r in azure.fake.requests if r.kind in ("read", "write", "delete")]
    print(f"ARM requests per task: {len(arm) / 300:.3f} ({len(creates)} creates)")
    azure.assert_clean()


# -- failures the ARM checks catch ---------------------------------------------------------


async def test_a_failed_provisioning_refuses_its_tasks_with_azures_events(azure: Azure) -> None:
    azure.fake.faults.fail_provisioning = lambda name: True
    async with AzureExecutor(azure.launcher()) as executor:
        future = await executor.submit(add, 1, 2)
        with pytest.raises(TaskLaunchError) as caught:
            await future
    assert "provisioning failed" in str(caught.value)
    azure.assert_clean()


async def test_an_image_that_never_pulls_is_refused_after_stuck_after(azure: Azure) -> None:
    launcher = azure.launcher(image="asyncexec-no-such-image:1", stuck_after=4.0)
    async with AzureExecutor(launcher) as executor:
        future = await executor.submit(add, 1, 2)
        with pytest.raises(TaskLaunchError) as caught:
            await future
    assert "did not start" in str(caught.value)
    assert "pull" in str(caught.value).lower()
    azure.assert_clean()


@pytest.mark.infra
async def test_throttling_and_unavailability_are_waited_out(azure: Azure) -> None:
    async with AzureExecutor(azure.launcher(chunk_size=2)) as executor:
        azure.fake.faults.throttle_next = 3
        azure.fake.faults.unavailable_next = 3
        futures = [await executor.submit(add, i, i) for i in range(6)]
        assert await executor.wait(futures) == [2 * i for i in range(6)]
    statuses = [r.status for r in azure.fake.requests]
    assert 429 in statuses and 503 in statuses
    azure.assert_clean()


@pytest.mark.infra
async def test_a_token_that_expires_mid_run_is_refreshed(azure: Azure) -> None:
    azure.fake.faults.token_lifetime = 2.0
    async with AzureExecutor(azure.launcher(chunk_size=1)) as executor:
        first = await executor.submit(sleep_for, 3.0)
        assert await first == 3.0
        assert await (await executor.submit(add, 1, 1)) == 2
    tokens = [r for r in azure.fake.requests if r.kind == "token"]
    assert len(tokens) >= 2
    azure.assert_clean()


@pytest.mark.infra
@pytest.mark.parametrize("fake_settings", [{"max_groups": 3}])
async def test_quota_of_groups_is_waited_for_politely(azure: Azure) -> None:
    launcher = azure.launcher(chunk_size=1, max_groups=3)
    async with AzureExecutor(launcher) as executor:
        futures = [await executor.submit(sleep_for, 0.5) for _ in range(8)]
        assert await executor.wait(futures) == [0.5] * 8
    assert azure.fake.peak_groups <= 3, azure.fake.peak_groups
    azure.assert_clean()


async def test_a_container_killed_outside_is_a_worker_lost_with_its_exit_code(
    azure: Azure,
) -> None:
    async with AzureExecutor(azure.launcher()) as executor:
        future = await executor.submit(sleep_for, 60.0)
        with anyio.fail_after(60):
            while not azure.fake.docker_running():
                await anyio.sleep(0.1)
        [container] = azure.fake.docker_running()
        await anyio.run_process(["docker", "kill", container])
        with pytest.raises(WorkerLost) as caught:
            await future
    assert "ended without an outcome" in str(caught.value)
    assert caught.value.exit_code == 137, caught.value.exit_code
    azure.assert_clean()


@pytest.mark.infra
async def test_output_travels_in_the_outcome_not_in_the_truncated_logs(azure: Azure) -> None:
    azure.fake.faults.logs_truncated = 1000  # ACI keeps 16 KB once a container stopped
    async with AzureExecutor(azure.launcher()) as executor:
        future = await executor.with_options(capture_output=True).submit(print_both, "x" * 50_000)
        assert await future == 50_000
    assert len(future.info.stdout) > 50_000 and "out:" + "x" * 50_000 in future.info.stdout
    azure.assert_clean()


@pytest.mark.infra
async def test_no_secret_in_logs_or_reprs(azure: Azure, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    launcher = azure.launcher(chunk_size=2)
    async with AzureExecutor(launcher) as executor:
        futures = [await executor.submit(add, i, i) for i in range(4)]
        assert await executor.wait(futures) == [0, 2, 4, 6]
        shown = [repr(launcher), repr(launcher.adapter), repr(executor)]
    text = "\n".join(shown + [record.getMessage() for record in caplog.records])
    assert "sig=" not in text
    secrets = [azure.storage.key, azure.fake.client_secret, *azure.fake.issued_tokens]
    assert len(secrets) >= 3
    for secret in secrets:
        assert secret not in text
    assert any("PUT" in record.getMessage() for record in caplog.records)  # it did log
    azure.assert_clean()


# -- cancel --------------------------------------------------------------------------------


async def test_cancel_inside_a_running_chunk_interrupts_that_task_only(azure: Azure) -> None:
    beat = os.path.join(azure.share, f"{uuid.uuid4().hex}.beat")
    async with AzureExecutor(azure.launcher(chunk_size=2)) as executor:
        running = await executor.submit(heartbeat, beat)
        other = await executor.submit(add, 20, 22)
        with anyio.fail_after(60):
            while not os.path.exists(beat):
                await anyio.sleep(0.1)
        assert await running.cancel() is True
        await assert_heartbeat_stopped(beat)
        assert await other == 42
        with pytest.raises(TaskCancelled):
            await running
    azure.assert_clean()


async def test_cancel_deletes_the_group_and_waits_for_arm_to_confirm(azure: Azure) -> None:
    azure.fake.faults.delete_accepted = True  # 202, then 204 once the container is gone
    beat = os.path.join(azure.share, f"{uuid.uuid4().hex}.beat")
    async with AzureExecutor(azure.launcher()) as executor:
        future = await executor.submit(heartbeat, beat)
        with anyio.fail_after(60):
            while not os.path.exists(beat):
                await anyio.sleep(0.1)
        assert await future.cancel() is True
        assert not azure.fake.groups
        await assert_heartbeat_stopped(beat)
    azure.assert_clean()


async def test_closing_with_tasks_running_leaves_no_group(azure: Azure) -> None:
    async with AzureExecutor(azure.launcher(chunk_size=3)) as executor:
        futures = [await executor.submit(sleep_for, 60.0) for _ in range(7)]
        with anyio.fail_after(60):
            while len(azure.fake.docker_running()) < 3:
                await anyio.sleep(0.1)
        with anyio.fail_after(30):
            await executor.aclose(cancel_pending=True)
        assert all(future.state is FutureState.CANCELLED for future in futures)
    azure.assert_clean()


# -- re-attach and prune ---------------------------------------------------------------------

_DRIVER = """
import json, sys, anyio
from asyncexec.launchers.azure import (
    AzureConfig, AzureExecutor, AzureLauncher, ClientSecretCredential,
)
from asyncexec.testing import sleep_for

async def main():
    settings = json.loads(sys.argv[1])
    tenant, client, secret, authority = settings.pop("credential")
    credential = ClientSecretCredential(tenant, client, secret, authority=authority)
    key = settings.pop("storage_key")
    for name in ("create_quota", "delete_quota"):
        settings.pop(name)
    launcher = AzureLauncher(AzureConfig(**settings), credential, storage_key=key)
    async with AzureExecutor(launcher) as executor:
        futures = [await executor.submit(sleep_for, 1.0 + i / 10) for i in range(8)]
        print("SUBMITTED", flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


@pytest.mark.infra
async def test_a_killed_driver_is_reattached_and_every_value_recovered(azure: Azure) -> None:
    """The driver dies with one group of three created (``max_concurrent=1``): the
    launcher that re-attaches creates the other two and reads every value."""
    config = azure.config(chunk_size=3, max_concurrent=1)
    settings = dataclasses.asdict(config)
    fake = azure.fake
    settings["credential"] = [fake.tenant_id, fake.client_id, fake.client_secret, fake.authority]
    settings["storage_key"] = azure.storage.key
    script = Path(azure.share) / f"driver-{uuid.uuid4().hex}.py"
    script.write_text(_DRIVER)
    command = [sys.executable, str(script), json.dumps(settings)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process(command, env=env, stderr=None) as driver:
        assert driver.stdout is not None
        with anyio.fail_after(60):
            line = await driver.stdout.receive()
        assert b"SUBMITTED" in line
        with anyio.fail_after(60):
            while not fake.docker_running():
                await anyio.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        await driver.wait()
    launcher = AzureLauncher(config, azure.credential(), storage_key=azure.storage.key)
    async with AzureExecutor(launcher) as executor:
        refs = await launcher.find_refs()
        assert len(refs) == 8
        assert all(isinstance(ref, JobRef) for ref in refs)
        futures = [await executor.attach(ref) for ref in refs]
        values = sorted(await executor.wait(futures))
    assert values == sorted(1.0 + i / 10 for i in range(8))
    assert fake.counters["create"] == 3  # one by the dead driver, two by the new one
    azure.assert_clean()


@pytest.mark.infra
async def test_prune_lists_then_deletes_what_a_driver_left(azure: Azure) -> None:
    arm = azure.arm()
    try:
        container = {
            "name": "task",
            "properties": {
                "image": azure.image,
                "command": ["python3", "-c", "print('left behind')"],
                "resources": {"requests": {"cpu": 1, "memoryInGB": 0.5}},
            },
        }
        tags = {
            "asyncexec": "1",
            "asyncexec-created": "2026-01-01T00:00:00Z",
            "asyncexec-expires": "2026-01-02T00:00:00Z",
            "asyncexec-workdir": "/x/aci/old",
        }
        body = {
            "location": azure.fake.location,
            "tags": tags,
            "properties": {"osType": "Linux", "restartPolicy": "Never", "containers": [container]},
        }
        young = {**body, "tags": {**tags, "asyncexec-expires": "2999-01-01T00:00:00Z"}}
        await arm.create_group("asyncexec-young-0", young)
        await arm.create_group("asyncexec-left-0", body)
    finally:
        await arm.aclose()
    fake = azure.fake
    env = {
        **os.environ,
        "AZURE_TENANT_ID": fake.tenant_id,
        "AZURE_CLIENT_ID": fake.client_id,
        "AZURE_CLIENT_SECRET": fake.client_secret,
    }
    common = [
        sys.executable,
        "-m",
        "asyncexec",
        "azure",
        "prune",
        "--subscription",
        fake.subscription_id,
        "--resource-group",
        fake.resource_group,
        "--location",
        fake.location,
        "--arm-endpoint",
        fake.url,
        "--authority",
        fake.authority,
    ]
    listed = await anyio.run_process(common, env=env)
    assert b"1 container group(s)" in listed.stdout and b"asyncexec-left-0" in listed.stdout
    assert "asyncexec-left-0" in fake.groups
    assert fake.client_secret.encode() not in listed.stdout + listed.stderr
    deleted = await anyio.run_process([*common, "--yes"], env=env)
    assert b"deleted 1 container group(s)" in deleted.stdout
    assert sorted(fake.groups) == ["asyncexec-young-0"]  # its TTL has not passed
    every = await anyio.run_process([*common, "--yes", "--all"], env=env)
    assert b"deleted 1 container group(s)" in every.stdout
    azure.assert_clean()
