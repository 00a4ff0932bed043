"""The loopback Azure of the tests (tests/fakeazure), against itself: plain HTTP.

It must be as strict as Azure where our client could go wrong (spec-checked bodies,
quotas, throttles, tokens) and run container groups for real, so the Azure backend's
tests mean something. Every test ends with nothing in ``fake.invalid`` that the fake
itself sent, and nothing of it in ``docker ps -a``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from .fakeazure import API_VERSION, SCOPE, FakeAzure, load_spec
from .services import check_docker_image

pytestmark = [pytest.mark.azure, pytest.mark.docker]

IMAGE = os.environ.get(
    "ASYNCEXEC_TEST_IMAGE", "asyncexec-test:py{}.{}".format(*sys.version_info[:2])
)
MISSING_IMAGE = "fakeazure.invalid/not-here:1"


@pytest.fixture(scope="session")
def image() -> str:
    """The test image, made by scripts/docker-up.sh before pytest: checked only."""
    return check_docker_image(IMAGE, built_here="ASYNCEXEC_TEST_IMAGE" not in os.environ)


@contextlib.contextmanager
def running(fake: FakeAzure) -> Iterator[FakeAzure]:
    """``fake``, started; then stopped, checking it sent only valid bodies and left nothing."""
    with fake:
        yield fake
        assert [line for line in fake.invalid if not line.startswith("request ")] == []
    assert fake.docker_leftovers() == []


@pytest.fixture
def fake() -> Iterator[FakeAzure]:
    with running(FakeAzure()) as started:
        yield started


def client(fake: FakeAzure, token: str | None = None) -> httpx.Client:
    """An ARM client of ``fake`` with a bearer token (issued directly unless given)."""
    return httpx.Client(
        base_url=fake.url,
        params={"api-version": API_VERSION},
        headers={"Authorization": f"Bearer {token or fake.issue_token()}"},
        timeout=30,
    )


def group_body(image: str, command: list[str] | None = None, cpu: float = 1.0) -> dict[str, Any]:
    props: dict[str, Any] = {
        "image": image,
        "resources": {"requests": {"cpu": cpu, "memoryInGB": 0.5}},
        "environmentVariables": [
            {"name": "PLAIN", "value": "visible"},
            {"name": "SECRET", "secureValue": "s3cr3t"},
        ],
    }
    if command is not None:
        props["command"] = command
    return {
        "location": "westeurope",
        "properties": {
            "osType": "Linux",
            "restartPolicy": "Never",
            "containers": [{"name": "main", "properties": props}],
        },
    }


def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def state(arm: httpx.Client, fake: FakeAzure, name: str) -> dict[str, Any]:
    response = arm.get(f"{fake.group_path}/{name}")
    assert response.status_code == 200, response.text
    container = response.json()["properties"]["containers"][0]["properties"]
    view: dict[str, Any] = container["instanceView"]
    return view


# -- the spec ------------------------------------------------------------------------------


def test_every_create_example_of_the_spec_is_accepted() -> None:
    spec = load_spec()
    checked = 0
    for name, example in spec.examples():
        operation = example["operationId"]
        schema = spec.body_schema(operation)
        if operation == "ContainerGroups_CreateOrUpdate":
            assert schema is not None
            assert (
                spec.errors(schema, example["parameters"]["containerGroup"], response=False) == []
            )
            checked += 1
        for status, answer in example["responses"].items():
            answer_schema = spec.response_schema(operation, int(status))
            if answer_schema is not None and "body" in answer:
                assert spec.errors(answer_schema, answer["body"], response=True) == [], name
    assert checked >= 1


def test_the_create_example_runs_with_secrets_left_out(fake: FakeAzure, image: str) -> None:
    example = dict(load_spec().examples())["ContainerGroupsCreateOrUpdate.json"]
    body = copy.deepcopy(example["parameters"]["containerGroup"])
    container = body["properties"]["containers"][0]["properties"]
    container["image"] = image  # nginx cannot be pulled here; volumes and the GPU are not emulated
    container["command"] = ["python3", "-c", "import time; time.sleep(60)"]
    with client(fake) as arm:
        created = arm.put(f"{fake.group_path}/demo1", json=body)
        assert created.status_code == 201, created.text
        properties = created.json()["properties"]
        assert properties["diagnostics"]["logAnalytics"] == {
            "logType": "ContainerInsights",
            "metadata": {"test-key": "test-metadata-value"},
            "workspaceId": "workspaceid",
        }
        assert "storageAccountKey" not in properties["volumes"][0]["azureFile"]
        assert properties["volumes"][2]["secret"] == {}
        until(lambda: state(arm, fake, "demo1")["currentState"]["state"] == "Running")
        assert arm.delete(f"{fake.group_path}/demo1").status_code == 200
    assert fake.docker_leftovers() == []


def test_a_body_of_the_wrong_type_is_refused(fake: FakeAzure) -> None:
    body = group_body(MISSING_IMAGE)
    body["properties"]["containers"][0]["properties"]["resources"]["requests"]["cpu"] = "one"
    with client(fake) as arm:
        response = arm.put(f"{fake.group_path}/bad", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidRequestContent"
    assert "cpu" in response.json()["error"]["message"]
    assert len(fake.invalid) == 1 and fake.invalid[0].startswith("request PUT bad")
    assert fake.groups == {}


@pytest.mark.parametrize(
    ("name", "change", "code"),
    [
        ("Upper", None, "ContainerGroupNameInvalid"),
        ("trailing-", None, "ContainerGroupNameInvalid"),
        ("x" * 64, None, "ContainerGroupNameInvalid"),
        ("big", {"cpu": 5, "memoryInGB": 1}, "ResourceRequestsNotAvailable"),
        ("fat", {"cpu": 1, "memoryInGB": 17}, "ResourceRequestsNotAvailable"),
    ],
)
def test_azures_limits_on_names_and_sizes(
    fake: FakeAzure, name: str, change: dict[str, float] | None, code: str
) -> None:
    body = group_body(MISSING_IMAGE)
    if change is not None:
        body["properties"]["containers"][0]["properties"]["resources"]["requests"] = change
    with client(fake) as arm:
        response = arm.put(f"{fake.group_path}/{name}", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (400, code)


def test_requests_over_4_mb_and_wrong_api_versions_are_refused(fake: FakeAzure) -> None:
    body = group_body(MISSING_IMAGE)
    body["tags"] = {"padding": "x" * (4 * 1024 * 1024)}
    with client(fake) as arm:
        assert arm.put(f"{fake.group_path}/huge", json=body).status_code == 413
        old = arm.get(f"{fake.group_path}/g", params={"api-version": "2023-05-01"})
        assert old.status_code == 400
        assert old.json()["error"]["code"] == "InvalidApiVersionParameter"


# -- running groups for real -----------------------------------------------------------


def test_a_group_runs_for_real_and_terminates_with_its_exit_code(
    fake: FakeAzure, image: str
) -> None:
    code = "import os, sys; print('hi', os.environ['PLAIN'], os.environ['SECRET']); sys.exit(3)"
    with client(fake) as arm:
        created = arm.put(f"{fake.group_path}/g1", json=group_body(image, ["python3", "-c", code]))
        assert created.status_code == 201
        assert created.headers["Azure-AsyncOperation"] and created.headers["Retry-After"]
        variables = created.json()["properties"]["containers"][0]["properties"]
        assert variables["environmentVariables"] == [
            {"name": "PLAIN", "value": "visible"},
            {"name": "SECRET"},  # ARM never echoes a secureValue
        ]
        view = until(
            lambda: (v := state(arm, fake, "g1"))["currentState"]["state"] == "Terminated" and v
        )
        assert view["currentState"]["exitCode"] == 3
        assert view["currentState"]["detailStatus"] == "Error"
        assert {"startTime", "finishTime"} <= set(view["currentState"])
        assert [e["name"] for e in view["events"]] == ["Pulling", "Pulled", "Created", "Started"]
        group = arm.get(f"{fake.group_path}/g1").json()["properties"]
        assert group["provisioningState"] == "Succeeded"
        assert group["instanceView"]["state"] == "Failed"
        operation = arm.get(created.headers["Azure-AsyncOperation"]).json()
        assert operation["status"] == "Succeeded"
        logs = arm.get(f"{fake.group_path}/g1/containers/main/logs")
        assert logs.json() == {"content": "hi visible s3cr3t\n"}
        assert len(fake.docker_leftovers()) == 1
        deleted = arm.delete(f"{fake.group_path}/g1")
        assert deleted.status_code == 200
        assert deleted.headers["x-ms-ratelimit-remaining-subscription-deletes"]
        assert fake.docker_leftovers() == []
        gone = arm.get(f"{fake.group_path}/g1")
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ResourceNotFound")
        assert arm.delete(f"{fake.group_path}/g1").status_code == 204


def test_logs_after_termination_keep_the_last_1000_lines(fake: FakeAzure, image: str) -> None:
    code = "for i in range(3000): print(i)"
    with client(fake) as arm:
        arm.put(f"{fake.group_path}/chatty", json=group_body(image, ["python3", "-c", code]))
        until(lambda: state(arm, fake, "chatty")["currentState"]["state"] == "Terminated")
        content = arm.get(f"{fake.group_path}/chatty/containers/main/logs").json()["content"]
        assert content.splitlines() == [str(i) for i in range(2000, 3000)]
        tail = arm.get(f"{fake.group_path}/chatty/containers/main/logs", params={"tail": 2})
        assert tail.json()["content"] == "2998\n2999\n"
        fake.faults.logs_truncated = 10
        truncated = arm.get(f"{fake.group_path}/chatty/containers/main/logs").json()["content"]
        assert truncated == "2998\n2999\n"


def test_an_image_that_cannot_be_pulled_keeps_the_container_waiting() -> None:
    with running(FakeAzure(time_scale=0.01, pull_failure_after=50)) as fake, client(fake) as arm:
        arm.put(f"{fake.group_path}/nopull", json=group_body(MISSING_IMAGE))
        view = until(lambda: (v := state(arm, fake, "nopull"))["events"][1:] and v)
        assert view["currentState"] == {"state": "Waiting", "detailStatus": "ImagePullBackOff"}
        failed = next(e for e in view["events"] if e["name"] == "Failed")
        assert failed["message"].startswith(f'Failed to pull image "{MISSING_IMAGE}"')
        assert failed["type"] == "Warning"
        group = arm.get(f"{fake.group_path}/nopull").json()["properties"]
        assert group["provisioningState"] == "Creating"
        until(
            lambda: (
                arm.get(f"{fake.group_path}/nopull").json()["properties"]["provisioningState"]
                == "Failed"
            )
        )
        assert state(arm, fake, "nopull")["events"][1]["count"] > 1


def test_injected_provisioning_failure_keeps_the_group(fake: FakeAzure) -> None:
    fake.faults.fail_provisioning = lambda name: name.startswith("doomed")
    fake.faults.async_header = "Location"
    with client(fake) as arm:
        created = arm.put(f"{fake.group_path}/doomed-1", json=group_body(MISSING_IMAGE))
        assert "Azure-AsyncOperation" not in created.headers
        poll = until(lambda: (r := arm.get(created.headers["Location"])).status_code != 202 and r)
        assert poll.json()["error"]["code"] == "ResourceDeploymentFailure"
        group = arm.get(f"{fake.group_path}/doomed-1").json()["properties"]
        assert group["provisioningState"] == "Failed"
        assert group["instanceView"]["events"][0]["type"] == "Warning"
        assert "doomed-1" in fake.groups


def test_stuck_waiting_and_delete_202_then_204(fake: FakeAzure, image: str) -> None:
    fake.faults.stuck_waiting = lambda name: True
    fake.faults.delete_accepted = True
    fake.delete_latency = 0.3
    with client(fake) as arm:
        arm.put(f"{fake.group_path}/stuck", json=group_body(image))
        until(
            lambda: state(arm, fake, "stuck")["currentState"]["detailStatus"] == "ImagePullBackOff"
        )
        accepted = arm.delete(f"{fake.group_path}/stuck")
        assert accepted.status_code == 202
        deleting = arm.get(f"{fake.group_path}/stuck").json()["properties"]["provisioningState"]
        assert deleting == "Deleting"
        done = until(
            lambda: (
                arm.get(accepted.headers["Azure-AsyncOperation"]).json()["status"] == "Succeeded"
            )
        )
        assert done
        assert arm.delete(f"{fake.group_path}/stuck").status_code == 204


def test_stop_removes_every_container(image: str) -> None:
    fake = FakeAzure().start()
    try:
        sleep = ["python3", "-c", "import time; time.sleep(120)"]
        with client(fake) as arm:
            for name in ("s1", "s2"):
                assert arm.put(
                    f"{fake.group_path}/{name}", json=group_body(image, sleep)
                ).is_success
            until(lambda: len(fake.docker_leftovers()) == 2)
    finally:
        fake.stop()
    assert fake.docker_leftovers() == []


# -- the list, usages, quotas, throttles ---------------------------------------------------


def test_the_list_pages_and_omits_the_instance_view() -> None:
    with running(FakeAzure(page_size=2, image_ok=lambda image: False)) as fake, client(fake) as arm:
        for name in ("a", "b", "c"):
            assert arm.put(f"{fake.group_path}/{name}", json=group_body(MISSING_IMAGE)).is_success
        first = arm.get(fake.group_path).json()
        assert [g["name"] for g in first["value"]] == ["a", "b"]
        # the nextLink as it is (a client's default params would replace its query)
        second = httpx.get(first["nextLink"], headers=arm.headers).json()
        assert [g["name"] for g in second["value"]] == ["c"] and "nextLink" not in second
        for listed in first["value"] + second["value"]:
            assert "instanceView" not in listed["properties"]
            assert "instanceView" not in listed["properties"]["containers"][0]["properties"]


def test_quotas_of_groups_cores_and_creates() -> None:
    settings: dict[str, Any] = {"max_groups": 3, "max_cores": 4, "creates": ((4, 100.0),)}
    with (
        running(FakeAzure(time_scale=0.01, image_ok=lambda image: False, **settings)) as fake,
        client(fake) as arm,
    ):
        assert arm.put(f"{fake.group_path}/q1", json=group_body(MISSING_IMAGE, cpu=2)).is_success
        assert arm.put(f"{fake.group_path}/q2", json=group_body(MISSING_IMAGE, cpu=1.5)).is_success
        cores = arm.put(f"{fake.group_path}/q3", json=group_body(MISSING_IMAGE, cpu=1))
        assert (cores.status_code, cores.json()["error"]["code"]) == (
            400,
            "ContainerGroupQuotaReached",
        )
        assert "'StandardCores'" in cores.json()["error"]["message"]
        usages = {
            u["name"]["value"]: (u["currentValue"], u["limit"])
            for u in arm.get(fake.usage_path).json()["value"]
        }
        assert usages == {"ContainerGroups": (2, 3), "StandardCores": (4, 4)}
        assert arm.delete(f"{fake.group_path}/q1").status_code == 200
        assert arm.put(f"{fake.group_path}/q3", json=group_body(MISSING_IMAGE)).is_success
        assert arm.put(f"{fake.group_path}/q4", json=group_body(MISSING_IMAGE)).is_success
        groups = arm.put(f"{fake.group_path}/q5", json=group_body(MISSING_IMAGE))
        assert "'ContainerGroups'" in groups.json()["error"]["message"]
        arm.delete(f"{fake.group_path}/q4")
        # Four creates in "100 s" (1 s at this scale): the fifth waits.
        began = time.monotonic()
        rate = arm.put(f"{fake.group_path}/q5", json=group_body(MISSING_IMAGE))
        assert rate.status_code == 429
        assert 0 < int(rate.headers["Retry-After"]) <= 1
        until(lambda: arm.put(f"{fake.group_path}/q5", json=group_body(MISSING_IMAGE)).is_success)
        assert time.monotonic() - began <= 1.5


def test_arm_token_buckets_answer_429_with_retry_after() -> None:
    with running(FakeAzure(reads=(3, 2.0))) as fake, client(fake) as arm:
        remaining = [
            int(arm.get(fake.usage_path).headers["x-ms-ratelimit-remaining-subscription-reads"])
            for _ in range(3)
        ]
        assert remaining == [2, 1, 0]
        throttled = arm.get(fake.usage_path)
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "1"
        assert throttled.json()["error"]["code"] == "SubscriptionRequestsThrottled"
        assert throttled.headers["x-ms-correlation-request-id"]
        assert throttled.headers["x-ms-request-id"]
        time.sleep(0.55)
        assert arm.get(fake.usage_path).status_code == 200
        # writes have a bucket of their own
        assert arm.put(f"{fake.group_path}/w", json=group_body("x", cpu=9)).status_code == 400


def test_injected_429_and_503(fake: FakeAzure) -> None:
    fake.faults.throttle_next = 2
    fake.faults.retry_after = 7
    with client(fake) as arm:
        statuses = [arm.get(fake.usage_path) for _ in range(3)]
        assert [r.status_code for r in statuses] == [429, 429, 200]
        assert statuses[0].headers["Retry-After"] == "7"
        fake.faults.unavailable_next = 1
        fake.faults.kinds = frozenset({"write"})
        assert arm.get(fake.usage_path).status_code == 200
        unavailable = arm.put(f"{fake.group_path}/u", json=group_body(MISSING_IMAGE))
        assert unavailable.status_code == 503 and "Retry-After" in unavailable.headers
    assert fake.counters["429"] == 2 and fake.counters["503"] == 1


# -- tokens --------------------------------------------------------------------------------


def test_the_token_endpoint_and_arm_authentication(fake: FakeAzure) -> None:
    url = f"{fake.authority}/{fake.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "scope": SCOPE,
    }
    wrong_secret = httpx.post(url, data={**form, "client_secret": "nope"})
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
    assert "nope" not in wrong_secret.text
    wrong_scope = httpx.post(url, data={**form, "scope": "https://management.azure.com/"})
    assert (wrong_scope.status_code, wrong_scope.json()["error"]) == (400, "invalid_scope")
    granted = httpx.post(url, data=form)
    assert granted.status_code == 200
    answer = granted.json()
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 3600
    with client(fake, answer["access_token"]) as arm:
        assert arm.get(fake.usage_path).status_code == 200
    anonymous = httpx.get(fake.url + fake.usage_path, params={"api-version": API_VERSION})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    with client(fake, "forged") as arm:
        forged = arm.get(fake.usage_path)
        assert forged.json()["error"]["code"] == "InvalidAuthenticationToken"
    fake.faults.token_lifetime = 0.3
    short = httpx.post(url, data=form).json()
    assert short["expires_in"] == 0
    time.sleep(0.35)
    with client(fake, short["access_token"]) as arm:
        expired = arm.get(fake.usage_path)
        assert expired.status_code == 401
        assert expired.json()["error"]["code"] == "ExpiredAuthenticationToken"


def test_imds(fake: FakeAzure) -> None:
    query = {"api-version": "2018-02-01", "resource": "https://management.azure.com/"}
    assert httpx.get(fake.imds, params=query).status_code == 400  # no Metadata: true
    fake.faults.imds_errors = [410, 429]
    statuses = [httpx.get(fake.imds, params=query, headers={"Metadata": "true"}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [410, 429, 200]
    answer = statuses[2].json()
    assert isinstance(answer["expires_on"], str) and answer["expires_on"].isdigit()
    assert int(answer["expires_on"]) - time.time() > 3500
    assert answer["resource"] == "https://management.azure.com/"
    assert answer["token_type"] == "Bearer"
    with client(fake, answer["access_token"]) as arm:
        assert arm.get(fake.usage_path).status_code == 200
    assert [r.kind for r in fake.requests] == ["imds"] * 4 + ["read"]


@pytest.mark.anyio
async def test_usable_from_any_event_loop(fake: FakeAzure) -> None:
    """The fake serves from a thread of its own: the test's loop (asyncio, trio) is free."""
    fake.faults.async_header = "Location"
    headers = {"Authorization": f"Bearer {fake.issue_token()}"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as arm:
        url = f"{fake.group_path}/anyloop?api-version={API_VERSION}"
        body = group_body(MISSING_IMAGE)
        created = await arm.put(url, json=body)
        assert created.status_code == 201
        assert (await arm.get(created.headers["Location"])).status_code == 202
        updated = await arm.put(url, json={**body, "tags": {"owner": "test"}})
        assert (updated.status_code, updated.json()["tags"]) == (200, {"owner": "test"})
        assert (await arm.delete(url)).status_code == 200
