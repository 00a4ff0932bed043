"""The ARM client and the credentials, against the loopback fake Azure (tests/fakeazure).

The fake speaks ARM's REST API for container groups, the identity platform's token
endpoint and IMDS, checks every body against Microsoft's spec, and runs each group as
a real Docker container of the test image: hence the ``docker`` marker beside
``azure``. Timings are checked from below only (Retry-After honoured), never from
above.
"""

from __future__ import annotations

import email.utils
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from asyncexec import BackendUnavailable, LaunchError
from asyncexec.launchers.azure._arm import (
    API_VERSION,
    ArmClient,
    ArmError,
    ArmUnavailable,
    retry_after,
)
from asyncexec.launchers.azure._auth import (
    AzureCliCredential,
    ClientSecretCredential,
    Credential,
    ManagedIdentityCredential,
)
from asyncexec.launchers.azure._limits import ArmLimits

from .conftest import ASYNCIO, TRIO, UVLOOP, loops
from .fakeazure import FakeAzure, SpecMissing
from .services import check_docker_image, missing

pytestmark = [pytest.mark.anyio, pytest.mark.azure, pytest.mark.docker]


@pytest.fixture(params=loops(ASYNCIO, TRIO, UVLOOP))
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio, trio and uvloop: the package's code is anyio only."""
    return request.param


IMAGE = os.environ.get(
    "ASYNCEXEC_TEST_IMAGE", "asyncexec-test:py{}.{}".format(*sys.version_info[:2])
)
#: The image holds this interpreter at its host path (scripts/docker_image.py), no `python`.
PYTHON = os.path.realpath(sys.executable)
#: A secret that travels as a secureValue: it must show nowhere.
SECURE = "s3cr3t-secure-value-0f9d"
#: Group names unique to this run (the fake is per test, names only need to be valid).
RUN = f"t{os.getpid()}"


@pytest.fixture(scope="session")
def image() -> str:
    """The test image, made by scripts/docker-up.sh before pytest: checked only. Its groups
    run plain ``python -c`` (nothing of asyncexec), so any build of it serves."""
    return check_docker_image(IMAGE, built_here=False)


@pytest.fixture
def fake(image: str) -> Iterator[FakeAzure]:
    """A fake Azure of its own for each test (time shrunk a hundredfold); every response
    it sent must match the spec, and no container of it may be left."""
    try:
        server = FakeAzure(time_scale=0.01)
    except SpecMissing as exc:
        missing(str(exc), "see ../shared/azure-spec/README.md")
    with server:
        yield server
        bad = [problem for problem in server.invalid if not problem.startswith("request ")]
        assert not bad, bad
    assert not server.docker_leftovers()


def secret_credential(fake: FakeAzure) -> ClientSecretCredential:
    return ClientSecretCredential(
        fake.tenant_id, fake.client_id, fake.client_secret, authority=fake.authority
    )


def arm(fake: FakeAzure, credential: Credential | None = None, **settings: Any) -> ArmClient:
    """A client of the fake with limits of its own and short backoffs."""
    settings = {"backoff": 0.05, "poll_interval": 0.05, "max_poll_interval": 0.5, **settings}
    return ArmClient(
        credential if credential is not None else secret_credential(fake),
        fake.subscription_id,
        fake.resource_group,
        fake.location,
        endpoint=fake.url,
        limits=ArmLimits(),
        **settings,
    )


def group_body(fake: FakeAzure, code: str, *, image: str = IMAGE) -> dict[str, Any]:
    """A one-container group that runs ``python -c code`` once."""
    return {
        "location": fake.location,
        "tags": {"asyncexec": "test"},
        "properties": {
            "osType": "Linux",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "properties": {
                        "image": image,
                        "command": [PYTHON, "-c", code],
                        "resources": {"requests": {"cpu": 1, "memoryInGB": 0.5}},
                        "environmentVariables": [
                            {"name": "GREETING", "value": "hello from aci"},
                            {"name": "SECURE", "secureValue": SECURE},
                        ],
                    },
                }
            ],
        },
    }


def kinds(fake: FakeAzure, kind: str) -> int:
    return sum(1 for request in fake.requests if request.kind == kind)


async def terminated(client: ArmClient, name: str) -> dict[str, Any]:
    """The group's container's currentState once it is Terminated."""
    with anyio.fail_after(60):
        while True:
            group = await client.get_group(name)
            assert group is not None
            container = group["properties"]["containers"][0]["properties"]
            state: dict[str, Any] = container.get("instanceView", {}).get("currentState", {})
            if state.get("state") == "Terminated":
                return state
            await anyio.sleep(0.2)


async def test_a_group_runs_to_its_exit_code_and_is_deleted(fake: FakeAzure) -> None:
    client = arm(fake)
    name = f"{RUN}-run"
    code = (
        "import os; print(os.environ['GREETING']); assert os.environ['SECURE']; raise SystemExit(3)"
    )
    try:
        made = await client.create_group(name, group_body(fake, code))
        assert made["name"] == name
        assert SECURE not in str(made)  # ARM never echoes a secureValue
        assert await client.usages() == {"ContainerGroups": (1, 100), "StandardCores": (1, 100)}
        state = await terminated(client, name)
        # Provisioning Succeeded means running; the end is Terminated with an exit code.
        assert state["exitCode"] == 3
        assert "hello from aci" in await client.logs(name, "main")
        assert "hello from aci" in await client.logs(name, "main", tail=1)
        assert [g["name"] for g in await client.list_groups()] == [name]
        assert await client.delete_group(name) is True
        assert await client.get_group(name) is None
        assert await client.delete_group(name) is False  # 204: gone already
    finally:
        await client.aclose()
    assert kinds(fake, "token") == 1  # one token served every call
    assert client.calls["write"] == 1
    assert client.calls["delete"] == 2
    assert client.calls["read"] >= 5
    assert not fake.groups


@pytest.mark.parametrize("style", ["Azure-AsyncOperation", "Location"])
async def test_follow_either_header_style(fake: FakeAzure, style: str) -> None:
    fake.faults.async_header = style
    fake.provisioning_latency = 50  # 0.5 s, scaled
    client = arm(fake)
    name = f"{RUN}-follow"
    try:
        body = group_body(fake, "import time; time.sleep(30)")
        response = await client.request("PUT", client.group_path(name), json=body, ok=(201,))
        assert style.lower() in {key.lower() for key in response.headers}
        started = time.monotonic()
        final = await client.follow(response, time.monotonic() + 60)
        # Retry-After: 1 (the fake's, rounded up) before the first poll.
        assert time.monotonic() - started >= 1.0
        assert final["name"] == name
        assert final["properties"]["provisioningState"] == "Succeeded"
        segment = "/operations/" if style == "Azure-AsyncOperation" else "/operationResults/"
        assert any(segment in request.path for request in fake.requests)
        # The same with create_group's deadline.
        fake.faults.delete_accepted = True
        assert await client.delete_group(name) is True
        await client.wait_deleted(name, time.monotonic() + 60)
        again = await client.create_group(name, body, deadline=time.monotonic() + 60)
        assert again["properties"]["provisioningState"] == "Succeeded"
    finally:
        if await client.delete_group(name):
            await client.wait_deleted(name, time.monotonic() + 60)
        await client.aclose()


@pytest.mark.parametrize("style", ["Azure-AsyncOperation", "Location"])
async def test_a_failed_provisioning_is_an_arm_error(fake: FakeAzure, style: str) -> None:
    fake.faults.async_header = style
    fake.faults.fail_provisioning = lambda name: True
    client = arm(fake)
    name = f"{RUN}-fails"
    try:
        with pytest.raises(ArmError) as caught:
            await client.create_group(
                name, group_body(fake, "pass"), deadline=time.monotonic() + 60
            )
        assert caught.value.code == "ResourceDeploymentFailure"
        assert not isinstance(caught.value, BackendUnavailable)
        # Provisioning Failed does not remove the group.
        group = await client.get_group(name)
        assert group is not None
        assert group["properties"]["provisioningState"] == "Failed"
    finally:
        await client.delete_group(name)
        await client.wait_deleted(name, time.monotonic() + 60)
        await client.aclose()


async def test_delete_accepted_then_gone(fake: FakeAzure) -> None:
    fake.faults.delete_accepted = True
    fake.delete_latency = 50  # 0.5 s, scaled
    client = arm(fake)
    name = f"{RUN}-delete"
    try:
        await client.create_group(name, group_body(fake, "import time; time.sleep(60)"))
        assert await client.delete_group(name) is True  # 202
        assert await client.delete_group(name) is True  # 202 again: still going
        await client.wait_deleted(name, time.monotonic() + 60)
        assert await client.delete_group(name) is False  # 204
    finally:
        await client.aclose()
    statuses = [r.status for r in fake.requests if r.kind == "delete"]
    assert statuses == [202, 202, 204]
    assert not fake.docker_leftovers()


async def test_wait_deleted_times_out_clearly(fake: FakeAzure) -> None:
    client = arm(fake)
    name = f"{RUN}-stays"
    try:
        await client.create_group(name, group_body(fake, "import time; time.sleep(60)"))
        with pytest.raises(TimeoutError, match=f"{name} still exists"):
            await client.wait_deleted(name, time.monotonic() + 0.3)
    finally:
        await client.delete_group(name)
        await client.aclose()


async def test_throttled_requests_wait_their_retry_after(fake: FakeAzure) -> None:
    client = arm(fake)
    await client.get_group(f"{RUN}-warm")  # the token, beforehand
    fake.faults.throttle_next = 2
    fake.faults.retry_after = 1.0
    started = time.monotonic()
    try:
        assert await client.get_group(f"{RUN}-absent") is None
    finally:
        await client.aclose()
    assert time.monotonic() - started >= 2.0  # two answers asking for a second each
    assert client.calls["429"] == 2
    assert client.calls["retry"] == 2
    assert [r.status for r in fake.requests if r.kind == "read"][-3:] == [429, 429, 404]


async def test_unavailable_answers_are_retried(fake: FakeAzure) -> None:
    client = arm(fake, max_attempts=3)
    fake.faults.unavailable_next = 2
    fake.faults.retry_after = 0.0
    try:
        assert await client.list_groups() == []
        assert client.calls["retry"] == 2
        fake.faults.unavailable_next = 3
        with pytest.raises(ArmUnavailable) as caught:
            await client.list_groups()
    finally:
        await client.aclose()
    assert isinstance(caught.value, BackendUnavailable)
    assert caught.value.status == 503
    assert caught.value.code == "ServiceUnavailable"


async def test_an_unreachable_arm_is_unavailable(fake: FakeAzure) -> None:
    with SocketNobodyListens() as port:
        client = ArmClient(
            secret_credential(fake),
            fake.subscription_id,
            fake.resource_group,
            fake.location,
            endpoint=f"http://127.0.0.1:{port}",
            limits=ArmLimits(),
            max_attempts=3,
            backoff=0.01,
        )
        try:
            with pytest.raises(BackendUnavailable, match="cannot reach"):
                await client.get_group(f"{RUN}-x")
        finally:
            await client.aclose()
    assert client.calls["retry"] == 2


class SocketNobodyListens:
    """A loopback port nobody listens on (bound, not listening: connections are refused)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return int(self._socket.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


async def test_an_expired_token_is_refreshed_once_for_concurrent_calls(fake: FakeAzure) -> None:
    client = arm(fake)
    try:
        assert await client.get_group(f"{RUN}-a") is None
        fake.expire_tokens()  # ARM now answers 401 to the token the credential caches

        async def get(i: int) -> None:
            assert await client.get_group(f"{RUN}-{i}") is None

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(get, i)
        assert client.calls["401"] >= 1
        assert kinds(fake, "token") == 2  # the first, and ONE refresh for all
        # A token refused again after the refresh is not retried twice.
        fake.expire_tokens()
        fake.faults.token_lifetime = 0  # every new token is born expired
        with pytest.raises(ArmUnavailable) as caught:
            await client.get_group(f"{RUN}-b")
        assert caught.value.status == 401
        assert caught.value.code == "ExpiredAuthenticationToken"
    finally:
        await client.aclose()


async def test_a_token_is_refreshed_ahead_of_expiry(fake: FakeAzure) -> None:
    fake.faults.token_lifetime = 2  # seconds: refreshed after 1.8 s (a tenth before expiry)
    credential = secret_credential(fake)
    client = arm(fake, credential)
    try:
        assert await client.get_group(f"{RUN}-a") is None
        assert credential.expires_on == pytest.approx(time.time() + 2, abs=1.5)
        await anyio.sleep(1.9)
        assert await client.get_group(f"{RUN}-a") is None
    finally:
        await client.aclose()
    assert kinds(fake, "token") == 2
    assert client.calls["401"] == 0  # refreshed before ARM refused it


async def test_managed_identity_retries_what_imds_says_to(fake: FakeAzure) -> None:
    fake.faults.imds_errors = [404, 429, 500, 503, 410]
    credential = ManagedIdentityCredential(endpoint=fake.imds, backoff=0.01)
    client = arm(fake, credential)
    try:
        assert await client.list_groups() == []
    finally:
        await client.aclose()
    assert kinds(fake, "imds") == 6
    # expires_on came as a string of epoch seconds.
    assert credential.expires_on == pytest.approx(time.time() + 3600, abs=60)


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_managed_identity_never_retries_a_refusal(fake: FakeAzure, status: int) -> None:
    fake.faults.imds_errors = [status, 404]
    credential = ManagedIdentityCredential(endpoint=fake.imds, backoff=0.01)
    async with httpx.AsyncClient() as http:
        with pytest.raises(BackendUnavailable, match=f"HTTP {status}"):
            await credential.token(http)
    assert kinds(fake, "imds") == 1


async def test_managed_identity_retries_410_for_a_while_only(fake: FakeAzure) -> None:
    fake.faults.imds_errors = [410] * 1000
    credential = ManagedIdentityCredential(endpoint=fake.imds, backoff=0.01, gone_for=0.5)
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        with pytest.raises(BackendUnavailable, match="HTTP 410"):
            await credential.token(http)
    assert time.monotonic() - started >= 0.5
    assert kinds(fake, "imds") > 2


async def test_managed_identity_of_a_user_assigned_identity(fake: FakeAzure) -> None:
    good = ManagedIdentityCredential(endpoint=fake.imds, client_id=fake.managed_identity_client_id)
    wrong = ManagedIdentityCredential(endpoint=fake.imds, client_id="not-an-identity")
    async with httpx.AsyncClient() as http:
        assert await good.token(http)
        with pytest.raises(BackendUnavailable, match="not-an-identity"):
            await wrong.token(http)
    assert fake.managed_identity_client_id in repr(good)


async def test_an_invalid_body_is_arm_s_error(fake: FakeAzure) -> None:
    client = arm(fake)
    body = group_body(fake, "pass")
    del body["properties"]["containers"][0]["properties"]["resources"]
    body["properties"]["containers"][0]["properties"]["ports"] = [{"port": "eighty"}]
    try:
        with pytest.raises(ArmError) as caught:
            await client.create_group(f"{RUN}-bad", body)
        fake.faults.quota_exceeded = True
        with pytest.raises(ArmError) as quota:
            await client.create_group(f"{RUN}-many", group_body(fake, "pass"))
    finally:
        await client.aclose()
    error = caught.value
    assert (error.status, error.code) == (400, "InvalidRequestContent")
    assert isinstance(error, LaunchError)
    assert not isinstance(error, BackendUnavailable)
    assert SECURE not in str(error)
    assert any(problem.startswith("request PUT") for problem in fake.invalid)
    assert quota.value.code == "ContainerGroupQuotaReached"  # ARM's code, kept
    assert not fake.groups


async def test_list_groups_reads_every_page(
    fake: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    fake.page_size = 2
    client = arm(fake)
    names = [f"{RUN}-page{i}" for i in range(5)]
    try:
        for name in names:
            await client.create_group(name, group_body(fake, "pass"))
        with caplog.at_level(logging.DEBUG, logger="asyncexec"):
            listed = await client.list_groups()
        assert sorted(g["name"] for g in listed) == names
        pages = [r for r in fake.requests if r.path.endswith("/containerGroups")]
        assert len(pages) == 3
        lines = [r.getMessage() for r in caplog.records if "containerGroups" in r.getMessage()]
        assert len(lines) == 3
        # The path with the api-version only: no skip token in the log.
        for line in lines:
            assert f"/containerGroups?api-version={API_VERSION} -> 200" in line
            assert "skipToken" not in line
            assert "remaining reads=" in line
            assert "correlation=" in line and "correlation=-" not in line
    finally:
        for name in names:
            await client.delete_group(name)
        await client.aclose()


async def test_no_secret_in_logs_reprs_or_errors(
    fake: FakeAzure, caplog: pytest.LogCaptureFixture
) -> None:
    credential = secret_credential(fake)
    client = arm(fake, credential)
    name = f"{RUN}-secret"
    with caplog.at_level(logging.DEBUG):
        try:
            await client.create_group(
                name, group_body(fake, "pass"), deadline=time.monotonic() + 60
            )
            await terminated(client, name)
            fake.expire_tokens()
            await client.get_group(name)  # a 401, a refresh
            token = await credential.token(client.client)
            wrong = ClientSecretCredential(
                fake.tenant_id, fake.client_id, "wrong-" + fake.client_secret,
                authority=fake.authority,
            )  # fmt: skip
            with pytest.raises(BackendUnavailable) as refused:
                await wrong.token(client.client)
        finally:
            await client.delete_group(name)
            await client.aclose()
    assert "invalid_client" in str(refused.value)
    shown = [
        *(record.getMessage() for record in caplog.records),
        *(str(record.args) for record in caplog.records),
        repr(credential),
        repr(wrong),
        repr(client),
        str(refused.value),
        repr(refused.value),
    ]
    assert caplog.records
    for secret in (fake.client_secret, token, SECURE):
        assert not [text for text in shown if secret in text]
    assert fake.tenant_id in repr(credential) and fake.client_id in repr(credential)


def test_retry_after_reads_seconds_and_dates() -> None:
    def answer(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert retry_after(answer()) is None
    assert retry_after(answer(**{"Retry-After": "7"})) == 7.0
    assert retry_after(answer(**{"retry-after": "0"})) == 0.0
    assert retry_after(answer(**{"x-ms-retry-after-ms": "1500"})) == 1.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after(answer(**{"Retry-After": date}), now=now) == pytest.approx(30, abs=1)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert retry_after(answer(**{"Retry-After": past}), now=now) == 0.0
    assert retry_after(answer(**{"Retry-After": "soon"})) is None


# -- Azure CLI --------------------------------------------------------------------------
# No Azure account here, so no real `az`: the test puts on PATH a tiny `az` that prints
# what `az account get-access-token --resource R --output json` prints (Azure CLI >= 2.54:
# accessToken, expiresOn in local time, expires_on in epoch seconds...), with a token the
# fake issued. It checks the arguments it is given and nothing else.

AZ_SCRIPT = """#!{python}
import json, sys
expected = ["account", "get-access-token", "--resource", "https://management.azure.com/",
            "--output", "json"]
if sys.argv[1:] != expected:
    sys.exit("az: unexpected arguments %r" % sys.argv[1:])
{body}
"""


def fake_az(directory: Path, body: str) -> None:
    path = directory / "az"
    path.write_text(AZ_SCRIPT.format(python=sys.executable, body=body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


async def test_azure_cli_credential(
    fake: FakeAzure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake.issue_token()
    expires = int(time.time()) + 3600
    printed = {
        "accessToken": token,
        "expiresOn": time.strftime("%Y-%m-%d %H:%M:%S.000000", time.localtime(expires)),
        "expires_on": expires,
        "subscription": fake.subscription_id,
        "tenant": fake.tenant_id,
        "tokenType": "Bearer",
    }
    fake_az(tmp_path, f"print(json.dumps({printed!r}, indent=2))")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    credential = AzureCliCredential()
    client = arm(fake, credential)
    try:
        assert await client.list_groups() == []
    finally:
        await client.aclose()
    assert credential.expires_on == expires
    assert token not in repr(credential)


async def test_azure_cli_credential_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    async with httpx.AsyncClient() as http:
        with pytest.raises(BackendUnavailable, match="not on PATH"):
            await AzureCliCredential(command=["az-nowhere-to-be-found"]).token(http)
        fake_az(
            tmp_path,
            "sys.stderr.write(\"ERROR: Please run 'az login' to setup account.\\n\"); sys.exit(1)",
        )
        with pytest.raises(BackendUnavailable, match="az login"):
            await AzureCliCredential().token(http)
        # An Azure CLI older than 2.54 prints expiresOn only: refused, not guessed.
        fake_az(
            tmp_path,
            "print(json.dumps({'accessToken': 'tok-123', 'expiresOn': '2030-01-01 00:00:00.0'}))",
        )
        with pytest.raises(BackendUnavailable, match=r"2\.54") as caught:
            await AzureCliCredential().token(http)
        assert "tok-123" not in str(caught.value)
