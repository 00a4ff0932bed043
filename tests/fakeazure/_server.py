"""FakeAzure: a loopback ARM (Microsoft.ContainerInstance), identity platform and IMDS.

An aiohttp server in a thread of its own, with its own asyncio loop: a test drives it
over HTTP from any loop (asyncio, trio, uvloop) or none. Each container group runs as
real Docker containers (``network_mode=host``, so they reach Azurite and the fake on
127.0.0.1), labelled with the fake's id so :meth:`FakeAzure.stop` removes every one.

Every request body and every response body is checked against Microsoft's spec
(:mod:`._spec`); failures land in :attr:`FakeAzure.invalid` (a refused request with
``InvalidRequestContent``; a bad response is a bug of the fake). Quotas, ARM's token
buckets and :class:`Faults` shape the answers; :attr:`FakeAzure.time_scale` shrinks
every window and latency so tests can reach the limits in seconds.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import dataclasses
import datetime
import json
import math
import os
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiohttp import web

from ._quota import Bucket, Window
from ._spec import API_VERSION, Spec, load_spec

PROVIDER = "Microsoft.ContainerInstance"
GROUP_TYPE = f"{PROVIDER}/containerGroups"
MAX_BODY = 4 * 1024 * 1024
LOG_CAP_RUNNING = 4 * 1024 * 1024
LOG_CAP_TERMINATED = (16 * 1024, 1000)  # bytes, lines: whichever is smaller
SCOPE = "https://management.azure.com/.default"
RESOURCE = "https://management.azure.com/"
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL = "asyncexec.fakeazure"
_UTC = datetime.timezone.utc

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.ContainerInstance"
_LOC = _SUB + r"/providers/Microsoft\.ContainerInstance/locations/(?P<loc>[^/]+)"
ROUTES = [
    (re.compile(rf"^{_RG}/containerGroups/?$", re.I), "groups"),
    (re.compile(rf"^{_RG}/containerGroups/(?P<name>[^/]+)$", re.I), "group"),
    (
        re.compile(rf"^{_RG}/containerGroups/(?P<name>[^/]+)/containers/(?P<c>[^/]+)/logs$", re.I),
        "logs",
    ),
    (re.compile(rf"^{_LOC}/usages$", re.I), "usages"),
    (re.compile(rf"^{_LOC}/operations/(?P<op>[^/]+)$", re.I), "operation"),
    (re.compile(rf"^{_LOC}/operationResults/(?P<op>[^/]+)$", re.I), "operation_result"),
]
TOKEN_PATH = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token$")
IMDS_PATH = "/metadata/identity/oauth2/token"


def _now_iso(at: float | None = None) -> str:
    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, _UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _docker_time(text: str) -> str | None:
    """Docker's RFC 3339 nanosecond time as ARM writes it; None for Docker's zero time."""
    if not text or text.startswith("0001-"):
        return None
    head, _, fraction = text.rstrip("Z").partition(".")
    return f"{head}.{(fraction + '000000')[:6]}Z"


def _seconds_header(seconds: float) -> str:
    return str(max(0, math.ceil(seconds - 1e-9)))


@dataclasses.dataclass
class Request:
    """One request the fake answered (the query string left out)."""

    method: str
    path: str
    status: int
    kind: str  # read, write, delete, token, imds
    at: float  # time.monotonic()


@dataclasses.dataclass
class FakeContainer:
    """One container of a group: its spec, its Docker container, its ACI events."""

    name: str
    image: str
    docker_id: str | None = None
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    waiting_reason: str = "ContainerCreating"
    failure: str | None = None  # Docker refused to create or start it
    state: dict[str, Any] | None = None  # last `docker inspect` of a terminated container

    def event(self, name: str, message: str, kind: str = "Normal") -> None:
        """Record an ACI event, counting repeats as ACI does."""
        now = _now_iso()
        for event in self.events:
            if event["name"] == name and event["message"] == message:
                event["count"] += 1
                event["lastTimestamp"] = now
                return
        self.events.append(
            {
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "name": name,
                "message": message,
                "type": kind,
            }
        )


@dataclasses.dataclass
class FakeGroup:
    """A container group of the fake: the PUT body it was made from, and its live state."""

    name: str
    body: dict[str, Any]  # the request, read-only fields dropped; secrets kept
    cores: int
    containers: list[FakeContainer]
    provisioning_state: str = "Pending"
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    created: float = dataclasses.field(default_factory=time.time)
    deleting: bool = False
    task: asyncio.Task[None] | None = None
    gone: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; True (at once) if the group is being deleted meanwhile."""
        try:
            await asyncio.wait_for(self.gone.wait(), max(0.0, seconds))
        except asyncio.TimeoutError:
            return False
        return True


@dataclasses.dataclass
class _Operation:
    kind: str  # create, delete
    group: str
    started: float = dataclasses.field(default_factory=time.time)


class Faults:
    """Knobs a test sets (from any thread) to make the fake misbehave as Azure does.

    Attributes:
        async_header: ``"Azure-AsyncOperation"`` (default) or ``"Location"``: the header a
            201 create (and a 202 delete) points to the operation with.
        fail_provisioning: groups whose name it selects end ``Failed`` (with events),
            their containers never started; the group stays until deleted, as in ARM.
        stuck_waiting: groups whose name it selects keep their containers ``Waiting``
            (the image never pulls), provisioning ``Creating``.
        logs_truncated: after termination, logs keep only this many last bytes.
        throttle_next: the next N ARM requests (of ``kinds``) are answered 429.
        unavailable_next: the next N ARM requests (of ``kinds``) are answered 503.
        retry_after: the ``Retry-After`` (seconds) of those 429 and 503.
        kinds: the request kinds ``throttle_next``/``unavailable_next`` apply to.
        delete_accepted: DELETE answers 202 (the group goes away a little later, then
            DELETE answers 204) instead of 200.
        token_lifetime: seconds a newly issued token lasts (None: the fake's setting).
        quota_exceeded: every create is refused with ``ContainerGroupQuotaReached``.
        imds_errors: statuses IMDS answers next, one per request, before a token.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.async_header = "Azure-AsyncOperation"
        self.fail_provisioning: Callable[[str], bool] | None = None
        self.stuck_waiting: Callable[[str], bool] | None = None
        self.logs_truncated: int | None = None
        self.throttle_next = 0
        self.unavailable_next = 0
        self.retry_after = 1.0
        self.kinds: frozenset[str] = frozenset({"read", "write", "delete"})
        self.delete_accepted = False
        self.token_lifetime: float | None = None
        self.quota_exceeded = False
        self.imds_errors: list[int] = []

    def take(self, name: str) -> bool:
        """Use up one of the counter ``name`` (``throttle_next``, ...): True if there was one."""
        with self._lock:
            left: int = getattr(self, name)
            if left <= 0:
                return False
            setattr(self, name, left - 1)
            return True

    def next_imds_error(self) -> int | None:
        """The next status IMDS is to answer instead of a token, if any."""
        with self._lock:
            return self.imds_errors.pop(0) if self.imds_errors else None


class ArmError(Exception):
    """An ARM error answer: status, code, message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class FakeAzure:
    """ARM + identity platform + IMDS on 127.0.0.1; container groups as real containers.

    Use ``with FakeAzure(...) as fake:`` (or :meth:`start` / :meth:`stop`); point a
    client at :attr:`url` (ARM), :attr:`authority` and :attr:`imds`.

    Args:
        image_ok: whether an image "pulls"; default: Docker has it locally (there is no
            internet here). A group whose image does not pull stays ``Creating`` with
            its container ``Waiting`` and ``Failed to pull image`` events.
        time_scale: multiplies every window, latency and bucket period (0.01: ACI's
            "5 minutes" last 3 s).
        provisioning_latency: seconds from create to containers started (scaled).
        pull_failure_after: seconds (scaled) after which a group whose image does not
            pull turns ``Failed``; None: it stays ``Creating``.
        delete_latency: seconds (scaled) a 202 delete takes.
        token_lifetime: seconds a token lasts (not scaled: it is what ``expires_in`` says).
        max_groups, max_cores: the subscription's quotas in the region.
        creates, deletes: (limit, seconds) sliding windows (seconds scaled).
        reads, writes, removals: ARM's token buckets per principal: (capacity, per second).
        max_cpu, max_memory_gb: per group.
        page_size: groups per page of the list.
        spec: the parsed spec (default: :func:`._spec.load_spec`).
        shares: Azure Files shares, share name -> a directory here: a group's
            ``azureFile`` volume of one is that directory, bind-mounted (the tasks and
            the test see the same files, as a share mounted on both sides would);
            other volumes are accepted and not emulated.

    Attributes:
        url: the ARM endpoint, ``http://127.0.0.1:<port>``; :attr:`group_path` and
            :attr:`usage_path` are the paths of the resource group's groups and the usages.
        authority: the identity platform: ``POST {authority}/{tenant_id}/oauth2/v2.0/token``
            (client credentials with :attr:`client_id` / :attr:`client_secret`, scope
            ``https://management.azure.com/.default``).
        imds: the managed identity token URL (``Metadata: true``).
        groups: the live table, name -> :class:`FakeGroup` (copy it before iterating).
        peak_groups: the most groups there were at once.
        requests: every request answered, as :class:`Request`.
        invalid: every body that failed the spec: ``"request ..."`` (refused 400) or
            ``"response ..."`` (a bug of the fake), or ``"fake failed ..."`` (a crash).
        counters: by request kind (``read``, ``write``, ``delete``, ``token``, ``imds``),
            by status (``"429"``, ...), and ``create``, ``update``, ``delete_group``.
        faults: the :class:`Faults` to inject.
    """

    def __init__(
        self,
        *,
        image_ok: Callable[[str], bool] | None = None,
        time_scale: float = 1.0,
        provisioning_latency: float = 0.0,
        pull_failure_after: float | None = None,
        delete_latency: float = 1.0,
        token_lifetime: float = 3600.0,
        max_groups: int = 100,
        max_cores: int = 100,
        creates: tuple[tuple[int, float], ...] = ((100, 300.0), (300, 3600.0)),
        deletes: tuple[tuple[int, float], ...] = ((100, 300.0), (300, 3600.0)),
        reads: tuple[int, float] = (250, 25.0),
        writes: tuple[int, float] = (200, 10.0),
        removals: tuple[int, float] = (200, 10.0),
        max_cpu: float = 4.0,
        max_memory_gb: float = 16.0,
        page_size: int = 100,
        tenant_id: str = "72f988bf-0000-0000-0000-00000000fa4e",
        client_id: str = "0c9a9a3e-0000-0000-0000-00000000c11e",
        client_secret: str | None = None,
        managed_identity_client_id: str = "5b1d3c1a-0000-0000-0000-0000000000d1",
        subscription_id: str = "00000000-0000-0000-0000-0000000a5c1e",
        resource_group: str = "asyncexec-tests",
        location: str = "westeurope",
        spec: Spec | None = None,
        shares: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec if spec is not None else load_spec()
        self.shares = dict(shares or {})
        self.id = uuid.uuid4().hex[:12]
        self.image_ok = image_ok
        self.time_scale = time_scale
        self.provisioning_latency = provisioning_latency
        self.pull_failure_after = pull_failure_after
        self.delete_latency = delete_latency
        self.token_lifetime = token_lifetime
        self.max_groups = max_groups
        self.max_cores = max_cores
        self.max_cpu = max_cpu
        self.max_memory_gb = max_memory_gb
        self.page_size = page_size
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret or base64.urlsafe_b64encode(os.urandom(24)).decode()
        self.managed_identity_client_id = managed_identity_client_id
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.location = location
        self.faults = Faults()
        self.groups: dict[str, FakeGroup] = {}
        self.requests: list[Request] = []
        self.invalid: list[str] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self.peak_groups = 0  # the most groups alive at once
        self._creates = [Window(limit, seconds * time_scale) for limit, seconds in creates]
        self._deletes = [Window(limit, seconds * time_scale) for limit, seconds in deletes]
        self._bucket_settings = {"read": reads, "write": writes, "delete": removals}
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (principal, expires at)
        self._operations: dict[str, _Operation] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._docker: aiodocker.Docker | None = None
        self.url = ""
        self.authority = ""
        self.imds = ""

    # -- lifecycle (test thread) ---------------------------------------------------------

    def start(self) -> FakeAzure:
        """Serve on a free port of 127.0.0.1, in a thread of its own; returns self."""
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        port = ready.result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        self.authority = self.url
        self.imds = self.url + IMDS_PATH
        return self

    def stop(self) -> None:
        """Remove every container this fake ran, then stop serving."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop = None
            self._thread = None
            for name in self.docker_leftovers():  # whatever the engine still lists
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)

    def __enter__(self) -> FakeAzure:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def docker_leftovers(self) -> list[str]:
        """Names of this fake's containers that ``docker ps -a`` still lists."""
        return self._docker_ps("-a")

    def docker_running(self) -> list[str]:
        """Names of this fake's containers running now (``docker ps``)."""
        return self._docker_ps()

    def _docker_ps(self, *options: str) -> list[str]:
        options += ("--filter", f"label={LABEL}={self.id}")
        listed = subprocess.run(
            ["docker", "ps", *options, "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return listed.stdout.split()

    def issue_token(self, principal: str | None = None, lifetime: float | None = None) -> str:
        """A bearer token ARM accepts, without the token endpoint (for tests of other parts)."""
        token = secrets.token_urlsafe(32)
        lasting = lifetime if lifetime is not None else self.faults.token_lifetime
        self._tokens[token] = (
            principal or self.client_id,
            time.time() + (lasting if lasting is not None else self.token_lifetime),
        )
        return token

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token the fake issued so far."""
        return list(self._tokens)

    def expire_tokens(self) -> None:
        """Make every token issued so far expired (ARM then answers 401)."""
        for token, (principal, _) in list(self._tokens.items()):
            self._tokens[token] = (principal, time.time() - 1)

    @property
    def group_path(self) -> str:
        """``/subscriptions/../resourceGroups/../providers/Microsoft.ContainerInstance/containerGroups``."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/containerGroups"
        )

    @property
    def usage_path(self) -> str:
        """The path of Location_ListUsage for the fake's location."""
        return (
            f"/subscriptions/{self.subscription_id}/providers/{PROVIDER}"
            f"/locations/{self.location}/usages"
        )

    # -- the server's thread -------------------------------------------------------------

    def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            port = loop.run_until_complete(self._start_server())
        except BaseException as exc:
            ready.set_exception(exc)
            loop.close()
            return
        ready.set_result(port)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start_server(self) -> int:
        app = web.Application(client_max_size=2 * MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._docker = aiodocker.Docker()
        address = self._runner.addresses[0]
        return int(address[1])

    async def _shutdown(self) -> None:
        groups = list(self.groups.values())
        for group in groups:
            group.gone.set()
        await asyncio.gather(
            *(group.task for group in groups if group.task is not None), return_exceptions=True
        )
        await asyncio.gather(
            *(self._remove_containers(group) for group in groups), return_exceptions=True
        )
        self.groups.clear()
        if self._docker is not None:
            await self._docker.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the request pipeline ------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == IMDS_PATH:
            kind = "imds"
        elif TOKEN_PATH.match(path):
            kind = "token"
        else:
            kind = {"GET": "read", "HEAD": "read", "DELETE": "delete"}.get(request.method, "write")
        correlation = request.headers.get("x-ms-correlation-request-id") or str(uuid.uuid4())
        try:
            if kind == "imds":
                response = await self._imds(request)
            elif kind == "token":
                response = await self._token(request)
            else:
                response = await self._arm(request, kind)
        except ArmError as error:
            response = self._error(error)
        except Exception as exc:  # a bug of the fake: the test sees it in `invalid`
            self.invalid.append(f"fake failed on {request.method} {path}: {exc!r}")
            response = self._error(ArmError(500, "InternalServerError", repr(exc)))
        response.headers["x-ms-request-id"] = str(uuid.uuid4())
        response.headers["x-ms-correlation-request-id"] = correlation
        self.requests.append(Request(request.method, path, response.status, kind, time.monotonic()))
        self.counters[kind] += 1
        self.counters[str(response.status)] += 1
        return response

    def _error(self, error: ArmError) -> web.Response:
        body = {"error": {"code": error.code, "message": error.message}}
        self._check_response("ContainerGroups_Get", error.status, body)
        return web.json_response(body, status=error.status, headers=error.headers)

    def _json(self, operation: str, status: int, body: Any, **headers: str) -> web.Response:
        self._check_response(operation, status, body)
        return web.json_response(body, status=status, headers=headers)

    def _check_response(self, operation: str, status: int, body: Any) -> None:
        schema = self.spec.response_schema(operation, status)
        if schema is None:
            return
        for problem in self.spec.errors(schema, body, response=True):
            self.invalid.append(f"response {operation} {status}: {problem}")

    async def _arm(self, request: web.Request, kind: str) -> web.Response:
        principal = self._authenticate(request)
        if kind in self.faults.kinds and self.faults.take("unavailable_next"):
            raise ArmError(
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable (injected).",
                {"Retry-After": _seconds_header(self.faults.retry_after)},
            )
        if kind in self.faults.kinds and self.faults.take("throttle_next"):
            raise self._throttled(kind, principal, self.faults.retry_after)
        bucket = self._bucket(kind, principal)
        wait = bucket.take()
        if wait > 0:
            raise self._throttled(kind, principal, wait)
        version = request.query.get("api-version")
        if version is None:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version != API_VERSION:
            raise ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are "
                f"'{API_VERSION}'.",
            )
        for pattern, route in ROUTES:  # noqa: B007 (route is used after the loop)
            match = pattern.match(request.path)
            if match:
                break
        else:
            raise ArmError(404, "NotFound", f"No route for {request.method} {request.path}.")
        params = match.groupdict()
        if params["sub"] != self.subscription_id:
            raise ArmError(
                404,
                "SubscriptionNotFound",
                f"The subscription '{params['sub']}' could not be found.",
            )
        if "rg" in params and params["rg"].lower() != self.resource_group.lower():
            raise ArmError(
                404,
                "ResourceGroupNotFound",
                f"Resource group '{params['rg']}' could not be found.",
            )
        handler: Callable[[web.Request, dict[str, str]], Awaitable[web.Response]] | None
        handler = {
            ("groups", "GET"): self._list,
            ("group", "GET"): self._get,
            ("group", "PUT"): self._put,
            ("group", "DELETE"): self._delete,
            ("logs", "GET"): self._logs,
            ("usages", "GET"): self._usages,
            ("operation", "GET"): self._operation,
            ("operation_result", "GET"): self._operation_result,
        }.get((route, request.method))
        if handler is None:
            raise ArmError(
                405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}."
            )
        response = await handler(request, params)
        response.headers[f"x-ms-ratelimit-remaining-subscription-{kind}s"] = str(bucket.remaining)
        return response

    def _authenticate(self, request: web.Request) -> str:
        challenge = (
            f'Bearer authorization_uri="{self.authority}/{self.tenant_id}", error="invalid_token"'
            ", error_description="
        )
        header = request.headers.get("Authorization", "")
        if not header:
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {
                    "WWW-Authenticate": challenge
                    + "\"The authentication failed because of missing 'Authorization' header.\""
                },
            )
        scheme, _, token = header.partition(" ")
        found = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise ArmError(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
                {"WWW-Authenticate": challenge + '"The access token is invalid."'},
            )
        principal, expires = found
        if expires <= time.time():
            raise ArmError(
                401,
                "ExpiredAuthenticationToken",
                f"The access token expiry UTC time '{_now_iso(expires)}' is earlier than current "
                f"UTC time '{_now_iso()}'.",
                {"WWW-Authenticate": challenge + '"The access token has expired."'},
            )
        return principal

    def _bucket(self, kind: str, principal: str) -> Bucket:
        key = (kind, principal)
        if key not in self._buckets:
            capacity, rate = self._bucket_settings[kind]
            self._buckets[key] = Bucket(capacity, rate / self.time_scale)
        return self._buckets[key]

    def _throttled(self, kind: str, principal: str, wait: float) -> ArmError:
        after = _seconds_header(wait)
        return ArmError(
            429,
            "SubscriptionRequestsThrottled",
            f"Number of '{kind}' requests for subscription '{self.subscription_id}' actor "
            f"'{principal}' exceeded. Please try again after '{after}' seconds after the last "
            "request. Please see https://aka.ms/ARMThrottling for default limits.",
            {"Retry-After": after},
        )

    # -- identity ------------------------------------------------------------------------

    def _aad_error(self, status: int, error: str, code: int, description: str) -> web.Response:
        return web.json_response(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description}",
                "error_codes": [code],
                "timestamp": datetime.datetime.now(_UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
                "trace_id": str(uuid.uuid4()),
                "correlation_id": str(uuid.uuid4()),
            },
            status=status,
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant = TOKEN_PATH.match(request.path)
        assert tenant is not None
        if request.method != "POST":
            return self._aad_error(
                405, "invalid_request", 900561, "The endpoint only accepts POST requests."
            )
        form = await request.post()
        if tenant["tenant"] != self.tenant_id:
            return self._aad_error(
                400, "invalid_request", 90002, f"Tenant '{tenant['tenant']}' not found."
            )
        if form.get("grant_type") != "client_credentials":
            return self._aad_error(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        if form.get("client_id") != self.client_id:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')!s}' was not found in the "
                f"directory '{self.tenant_id}'.",
            )
        if form.get("client_secret") != self.client_secret:
            return self._aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID.",
            )
        if form.get("scope") != SCOPE:
            return self._aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')!s} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        lifetime = self._lifetime()
        token = self.issue_token(self.client_id, lifetime)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": int(lifetime),
                "ext_expires_in": int(lifetime),
                "access_token": token,
            }
        )

    def _lifetime(self) -> float:
        lifetime = self.faults.token_lifetime
        return lifetime if lifetime is not None else self.token_lifetime

    async def _imds(self, request: web.Request) -> web.Response:
        def refuse(status: int, error: str, description: str) -> web.Response:
            return web.json_response(
                {"error": error, "error_description": description}, status=status
            )

        if request.method != "GET":
            return refuse(405, "invalid_request", "Only GET is supported")
        if request.headers.get("Metadata", "").lower() != "true":
            return refuse(400, "invalid_request", "Required metadata header not specified")
        if "api-version" not in request.query:
            return refuse(
                400, "invalid_request", "Required query variable 'api-version' is missing"
            )
        status = self.faults.next_imds_error()
        if status is not None:
            return refuse(status, "temporarily_unavailable", f"injected {status}")
        resource = request.query.get("resource", "")
        if resource.rstrip("/") != RESOURCE.rstrip("/"):
            return refuse(
                400,
                "invalid_resource",
                f"AADSTS500011: The resource principal named {resource} was not found in the "
                f"tenant named {self.tenant_id}.",
            )
        client = request.query.get("client_id")
        if client is not None and client != self.managed_identity_client_id:
            return refuse(400, "invalid_request", "Identity not found")
        lifetime = self._lifetime()
        now = int(time.time())
        token = self.issue_token(self.managed_identity_client_id, lifetime)
        return web.json_response(
            {
                "access_token": token,
                "client_id": self.managed_identity_client_id,
                "expires_in": str(int(lifetime)),
                "expires_on": str(now + int(lifetime)),
                "ext_expires_in": str(int(lifetime)),
                "not_before": str(now),
                "resource": resource,
                "token_type": "Bearer",
            }
        )

    # -- container groups ----------------------------------------------------------------

    def _group_id(self, name: str) -> str:
        return f"{self.group_path}/{name}"

    def _missing(self, name: str) -> ArmError:
        return ArmError(
            404,
            "ResourceNotFound",
            f"The Resource '{GROUP_TYPE}/{name}' under resource group '{self.resource_group}' "
            "was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
        )

    def _operation_url(self, op: str, style: str) -> str:
        segment = "operations" if style.lower() == "azure-asyncoperation" else "operationResults"
        return (
            f"{self.url}/subscriptions/{self.subscription_id}/providers/{PROVIDER}/locations/"
            f"{self.location}/{segment}/{op}?api-version={API_VERSION}"
        )

    def _poll_headers(self, op: str) -> dict[str, str]:
        style = self.faults.async_header
        name = "Azure-AsyncOperation" if style.lower() == "azure-asyncoperation" else "Location"
        return {
            name: self._operation_url(op, name),
            "Retry-After": _seconds_header(self.time_scale),
        }

    async def _put(self, request: web.Request, params: dict[str, str]) -> web.Response:
        name = params["name"]
        raw = await request.read()
        if len(raw) > MAX_BODY:
            raise ArmError(
                413,
                "RequestContentTooLarge",
                f"The request content size {len(raw)} exceeds the maximum of {MAX_BODY} bytes.",
            )
        try:
            body = json.loads(raw)
        except ValueError as exc:
            self.invalid.append(f"request PUT {name}: not JSON: {exc}")
            raise ArmError(
                400, "InvalidRequestContent", f"The request content is not JSON: {exc}"
            ) from None
        schema = self.spec.body_schema("ContainerGroups_CreateOrUpdate")
        assert schema is not None
        problems = self.spec.errors(schema, body, response=False)
        if problems:
            self.invalid.append(f"request PUT {name}: " + "; ".join(problems))
            raise ArmError(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized: "
                + "; ".join(problems),
            )
        if not NAME.match(name):
            raise ArmError(
                400,
                "ContainerGroupNameInvalid",
                f"The container group name '{name}' is invalid. A container group name must "
                "contain no more than 63 characters and must match the regex "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?' (e.g. 'my-name').",
            )
        # ARM ignores read-only properties in a request.
        body = self.spec.prune(body, schema, lambda sub: bool(sub.get("readOnly")))
        properties = body["properties"]
        containers = self._check_containers(name, properties)
        cpu = sum(c["properties"]["resources"]["requests"]["cpu"] for c in containers)
        existing = self.groups.get(name)
        if existing is not None:
            if existing.deleting:
                raise ArmError(
                    409,
                    "ContainerGroupTransitioning",
                    f"The container group '{name}' is being deleted.",
                )
            if containers != existing.body["properties"]["containers"]:
                raise ArmError(
                    409,
                    "UnsupportedUpdate",
                    f"The fake updates container group '{name}' in place only when its "
                    "containers are unchanged (tags and the like); delete it and create it again.",
                )
            existing.body = body
            self.counters["update"] += 1
            return self._json("ContainerGroups_CreateOrUpdate", 200, await self._view(existing))
        self._check_quotas(name, cpu)
        group = FakeGroup(
            name,
            body,
            cores=math.ceil(cpu),
            containers=[FakeContainer(c["name"], c["properties"]["image"]) for c in containers],
        )
        self.groups[name] = group
        self.peak_groups = max(self.peak_groups, len(self.groups))
        for window in self._creates:
            window.record()
        self.counters["create"] += 1
        op = uuid.uuid4().hex
        self._operations[op] = _Operation("create", name)
        group.task = asyncio.get_running_loop().create_task(self._provision(group))
        return self._json(
            "ContainerGroups_CreateOrUpdate", 201, await self._view(group), **self._poll_headers(op)
        )

    def _check_containers(self, name: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
        containers: list[dict[str, Any]] = properties["containers"]
        if not containers:
            raise ArmError(
                400,
                "NoContainersInContainerGroup",
                f"The container group '{name}' must have at least one container.",
            )
        if properties.setdefault("osType", "Linux") != "Linux":
            raise ArmError(400, "UnsupportedOsType", "The fake runs Linux container groups only.")
        policy = properties.get("restartPolicy", "Always")
        if policy not in ("Always", "OnFailure", "Never"):
            raise ArmError(400, "InvalidRestartPolicy", f"Unknown restart policy '{policy}'.")
        cpu = memory = 0.0
        for container in containers:
            if not NAME.match(container["name"]):
                raise ArmError(
                    400,
                    "InvalidContainerName",
                    f"The container name '{container['name']}' in container group '{name}' is "
                    "invalid.",
                )
            props = container["properties"]
            if "image" not in props or "resources" not in props:
                raise ArmError(
                    400,
                    "InvalidContainerDefinition",
                    f"The container '{container['name']}' must have an image and resources.",
                )
            cpu += props["resources"]["requests"]["cpu"]
            memory += props["resources"]["requests"]["memoryInGB"]
        if cpu > self.max_cpu or memory > self.max_memory_gb:
            raise ArmError(
                400,
                "ResourceRequestsNotAvailable",
                f"The requested resource with '{cpu:g}' CPU and '{memory:g}' GB memory is not "
                f"available in the location '{self.location}' at this moment. Please retry with "
                f"a different resource request or in another location. The maximum per "
                f"container group is '{self.max_cpu:g}' CPU and '{self.max_memory_gb:g}' GB.",
            )
        return containers

    def _check_quotas(self, name: str, cpu: float) -> None:
        cores = sum(group.cores for group in self.groups.values())
        requested = math.ceil(cpu)
        for quota, limit, usage, asked in (
            ("ContainerGroups", self.max_groups, len(self.groups), 1),
            ("StandardCores", self.max_cores, cores, requested),
        ):
            if self.faults.quota_exceeded or usage + asked > limit:
                raise ArmError(
                    400,
                    "ContainerGroupQuotaReached",
                    f"Resource type '{GROUP_TYPE}' container group quota '{quota}' exceeded in "
                    f"region '{self.location}'. Limit: '{limit}', Usage: '{usage}' Requested: "
                    f"'{asked}'.",
                )
        wait = max(window.wait() for window in self._creates)
        if wait > 0:
            raise ArmError(
                429,
                "ContainerGroupCreationRateLimitExceeded",
                f"The container group creation rate of subscription '{self.subscription_id}' in "
                f"region '{self.location}' is exceeded; retry after {_seconds_header(wait)} s.",
                {"Retry-After": _seconds_header(wait)},
            )

    async def _get(self, request: web.Request, params: dict[str, str]) -> web.Response:
        group = self.groups.get(params["name"])
        if group is None:
            raise self._missing(params["name"])
        return self._json("ContainerGroups_Get", 200, await self._view(group))

    async def _list(self, request: web.Request, params: dict[str, str]) -> web.Response:
        names = sorted(self.groups)
        start = int(request.query.get("$skipToken", "0") or 0)
        page = names[start : start + self.page_size]
        value = [await self._view(self.groups[name], listed=True) for name in page]
        body: dict[str, Any] = {"value": value}
        if start + self.page_size < len(names):
            body["nextLink"] = (
                f"{self.url}{self.group_path}?api-version={API_VERSION}"
                f"&$skipToken={start + self.page_size}"
            )
        return self._json("ContainerGroups_ListByResourceGroup", 200, body)

    async def _delete(self, request: web.Request, params: dict[str, str]) -> web.Response:
        group = self.groups.get(params["name"])
        if group is None:
            return web.Response(status=204)
        if group.deleting:
            op = uuid.uuid4().hex
            self._operations[op] = _Operation("delete", group.name)
            return web.Response(status=202, headers=self._poll_headers(op))
        wait = max(window.wait() for window in self._deletes)
        if wait > 0:
            raise ArmError(
                429,
                "ContainerGroupDeletionRateLimitExceeded",
                f"The container group deletion rate of subscription '{self.subscription_id}' in "
                f"region '{self.location}' is exceeded; retry after {_seconds_header(wait)} s.",
                {"Retry-After": _seconds_header(wait)},
            )
        for window in self._deletes:
            window.record()
        self.counters["delete_group"] += 1
        group.deleting = True
        group.gone.set()
        if self.faults.delete_accepted:
            op = uuid.uuid4().hex
            self._operations[op] = _Operation("delete", group.name)
            asyncio.get_running_loop().create_task(self._delete_later(group))
            return web.Response(status=202, headers=self._poll_headers(op))
        view = await self._view(group)
        if group.task is not None:  # it stops at its next pause; Docker calls run to the end
            await asyncio.gather(group.task, return_exceptions=True)
        await self._remove_containers(group)
        self.groups.pop(group.name, None)
        return self._json("ContainerGroups_Delete", 200, view)

    async def _delete_later(self, group: FakeGroup) -> None:
        await asyncio.sleep(self.delete_latency * self.time_scale)
        if group.task is not None:
            await asyncio.gather(group.task, return_exceptions=True)
        await self._remove_containers(group)
        self.groups.pop(group.name, None)

    async def _logs(self, request: web.Request, params: dict[str, str]) -> web.Response:
        group = self.groups.get(params["name"])
        if group is None:
            raise self._missing(params["name"])
        container = next((c for c in group.containers if c.name == params["c"]), None)
        if container is None:
            raise ArmError(
                404,
                "ContainerNotFound",
                f"The container '{params['c']}' is not found in container group '{group.name}'.",
            )
        content = ""
        if container.docker_id is not None and self._docker is not None:
            handle = self._docker.containers.container(container.docker_id)
            timestamps = request.query.get("timestamps", "false").lower() == "true"
            try:
                lines: list[str] = await handle.log(stdout=True, stderr=True, timestamps=timestamps)
            except DockerError:
                lines = []
            terminated = (await self._container_state(container))[0] == "Terminated"
            content = "".join(lines)
            if terminated:
                limit, max_lines = LOG_CAP_TERMINATED
                if self.faults.logs_truncated is not None:
                    limit = self.faults.logs_truncated
                content = "".join(content.splitlines(keepends=True)[-max_lines:])
                content = content.encode()[-limit:].decode(errors="ignore") if limit else ""
            else:
                content = content.encode()[-LOG_CAP_RUNNING:].decode(errors="ignore")
            tail = request.query.get("tail")
            if tail is not None:
                content = "".join(content.splitlines(keepends=True)[-int(tail) :])
        return self._json("Containers_ListLogs", 200, {"content": content})

    async def _usages(self, request: web.Request, params: dict[str, str]) -> web.Response:
        if params["loc"].replace(" ", "").lower() != self.location.replace(" ", "").lower():
            value: list[dict[str, Any]] = []
        else:
            cores = sum(group.cores for group in self.groups.values())
            value = [
                {
                    "id": f"{request.path}/{name}",
                    "unit": "Count",
                    "currentValue": current,
                    "limit": limit,
                    "name": {"value": name, "localizedValue": localized},
                }
                for name, localized, current, limit in (
                    ("ContainerGroups", "Container Groups", len(self.groups), self.max_groups),
                    ("StandardCores", "Standard Cores", cores, self.max_cores),
                )
            ]
        return self._json("Location_ListUsage", 200, {"value": value})

    def _operation_status(self, op: str) -> tuple[str, dict[str, Any] | None]:
        operation = self._operations.get(op)
        if operation is None:
            raise ArmError(404, "OperationNotFound", f"The operation '{op}' was not found.")
        group = self.groups.get(operation.group)
        if operation.kind == "delete":
            return ("Succeeded" if group is None else "InProgress"), None
        if group is None:
            return "Canceled", {
                "code": "Canceled",
                "message": f"The container group '{operation.group}' was deleted.",
            }
        if group.provisioning_state == "Succeeded":
            return "Succeeded", None
        if group.provisioning_state == "Failed":
            return "Failed", {
                "code": "ResourceDeploymentFailure",
                "message": "The resource operation completed with terminal provisioning state "
                "'Failed'.",
            }
        return "InProgress", None

    async def _operation(self, request: web.Request, params: dict[str, str]) -> web.Response:
        status, error = self._operation_status(params["op"])
        operation = self._operations[params["op"]]
        body: dict[str, Any] = {
            "id": request.path,
            "name": params["op"],
            "status": status,
            "startTime": _now_iso(operation.started),
        }
        if status != "InProgress":
            body["endTime"] = _now_iso()
        if error is not None:
            body["error"] = error
        headers = (
            {"Retry-After": _seconds_header(self.time_scale)} if status == "InProgress" else {}
        )
        return web.json_response(body, headers=headers)

    async def _operation_result(self, request: web.Request, params: dict[str, str]) -> web.Response:
        status, error = self._operation_status(params["op"])
        operation = self._operations[params["op"]]
        if status == "InProgress":
            return web.Response(status=202, headers=self._poll_headers(params["op"]))
        if error is not None:
            raise ArmError(409 if status == "Canceled" else 400, error["code"], error["message"])
        if operation.kind == "delete":
            return web.Response(status=204)
        group = self.groups[operation.group]
        return self._json("ContainerGroups_Get", 200, await self._view(group))

    # -- what a group looks like ---------------------------------------------------------

    async def _view(self, group: FakeGroup, *, listed: bool = False) -> dict[str, Any]:
        """The group as ARM answers it: secrets dropped, state and instance views filled."""
        schema = self.spec.definition("ContainerGroup")
        body: dict[str, Any] = self.spec.prune(
            group.body, schema, lambda sub: bool(sub.get("x-ms-secret"))
        )
        for volume in body["properties"].get("volumes", []):
            if "secret" in volume:
                volume["secret"] = {}
        body.update(id=self._group_id(group.name), name=group.name, type=GROUP_TYPE)
        body.setdefault("location", self.location)
        properties = body["properties"]
        properties["provisioningState"] = "Deleting" if group.deleting else group.provisioning_state
        if listed:
            return body
        states = []
        for spec, container in zip(properties["containers"], group.containers, strict=True):
            state, view = await self._container_state(container)
            states.append((state, view.get("currentState", {}).get("exitCode")))
            spec["properties"]["instanceView"] = view
        if any(state == "Running" for state, _ in states):
            overall = "Running"
        elif states and all(state == "Terminated" for state, _ in states):
            overall = "Succeeded" if all(code == 0 for _, code in states) else "Failed"
        else:
            overall = "Pending"
        properties["instanceView"] = {"events": list(group.events), "state": overall}
        return body

    async def _container_state(self, container: FakeContainer) -> tuple[str, dict[str, Any]]:
        """(Waiting | Running | Terminated, the container's instanceView) from Docker."""
        view: dict[str, Any] = {"restartCount": 0, "events": [dict(e) for e in container.events]}
        if container.failure is not None:
            view["currentState"] = {
                "state": "Terminated",
                "exitCode": 127,
                "detailStatus": container.failure,
                "finishTime": _now_iso(),
            }
            return "Terminated", view
        if container.docker_id is None or self._docker is None:
            view["currentState"] = {"state": "Waiting", "detailStatus": container.waiting_reason}
            return "Waiting", view
        info = container.state
        if info is None:
            try:
                info = await self._docker.containers.container(container.docker_id).show()
            except DockerError:
                view["currentState"] = {"state": "Waiting", "detailStatus": "ContainerLost"}
                return "Waiting", view
        state = info["State"]
        view["restartCount"] = int(info.get("RestartCount", 0))
        if state["Status"] in ("running", "paused", "restarting"):
            view["currentState"] = {
                "state": "Running",
                "startTime": _docker_time(state["StartedAt"]),
                "detailStatus": "",
            }
            return "Running", view
        if state["Status"] in ("exited", "dead"):
            container.state = info  # a terminated container no longer changes (policy Never)
            code = int(state["ExitCode"])
            detail = "Completed" if code == 0 else "Error"
            if state.get("OOMKilled"):
                detail = "OOMKilled"
            current = {
                "state": "Terminated",
                "exitCode": code,
                "startTime": _docker_time(state["StartedAt"]),
                "finishTime": _docker_time(state["FinishedAt"]),
                "detailStatus": detail,
            }
            view["currentState"] = {k: v for k, v in current.items() if v is not None}
            return "Terminated", view
        view["currentState"] = {"state": "Waiting", "detailStatus": container.waiting_reason}
        return "Waiting", view

    # -- provisioning: real containers ---------------------------------------------------

    async def _provision(self, group: FakeGroup) -> None:
        latency = self.provisioning_latency * self.time_scale
        if await group.pause(latency * 0.2):
            return
        group.provisioning_state = "Creating"
        for container in group.containers:
            container.event("Pulling", f'pulling image "{container.image}"')
        if await group.pause(latency * 0.8):
            return
        if self.faults.fail_provisioning is not None and self.faults.fail_provisioning(group.name):
            group.provisioning_state = "Failed"
            self._group_event(
                group,
                "Failed",
                f"Container group '{group.name}' failed to provision (injected failure).",
                "Warning",
            )
            return
        stuck = self.faults.stuck_waiting is not None and self.faults.stuck_waiting(group.name)
        unpullable = [c for c in group.containers if stuck or not await self._image_ok(c.image)]
        if unpullable:
            await self._fail_pulls(group, unpullable)
            return
        for container in group.containers:
            container.event("Pulled", f'Successfully pulled image "{container.image}"')
        specs = group.body["properties"]["containers"]
        for spec, container in zip(specs, group.containers, strict=True):
            if group.deleting:
                return
            await self._run_container(group, spec, container)
        group.provisioning_state = "Succeeded"

    async def _image_ok(self, image: str) -> bool:
        if self.image_ok is not None:
            return self.image_ok(image)
        assert self._docker is not None
        try:
            await self._docker.images.inspect(image)
        except DockerError:
            return False
        return True

    async def _fail_pulls(self, group: FakeGroup, containers: list[FakeContainer]) -> None:
        began = time.monotonic()
        backoff = max(0.05, 2.0 * self.time_scale)
        while True:
            for container in containers:
                container.waiting_reason = "ImagePullBackOff"
                container.event(
                    "Failed",
                    f'Failed to pull image "{container.image}": rpc error: code = Unknown desc = '
                    f"failed to resolve reference: pull access denied or no network",
                    "Warning",
                )
                container.event("BackOff", f'Back-off pulling image "{container.image}"')
            if (
                self.pull_failure_after is not None
                and time.monotonic() - began >= self.pull_failure_after * self.time_scale
            ):
                group.provisioning_state = "Failed"
                self._group_event(
                    group,
                    "Failed",
                    f"Failed to pull image(s) of container group '{group.name}': "
                    + ", ".join(c.image for c in containers),
                    "Warning",
                )
                return
            if await group.pause(backoff):
                return

    def _group_event(self, group: FakeGroup, name: str, message: str, kind: str) -> None:
        now = _now_iso()
        group.events.append(
            {
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "name": name,
                "message": message,
                "type": kind,
            }
        )

    async def _run_container(
        self, group: FakeGroup, spec: dict[str, Any], container: FakeContainer
    ) -> None:
        assert self._docker is not None
        props = spec["properties"]
        resources = props["resources"]
        limits = resources.get("limits") or resources["requests"]
        cpu = min(limits.get("cpu", resources["requests"]["cpu"]), float(os.cpu_count() or 1))
        memory = limits.get("memoryInGB", resources["requests"]["memoryInGB"])
        policy = group.body["properties"].get("restartPolicy", "Always")
        env = [
            f"{var['name']}={var.get('value', var.get('secureValue', ''))}"
            for var in props.get("environmentVariables", [])
        ]
        config: dict[str, Any] = {
            "Image": container.image,
            "Env": env,
            "Labels": {
                LABEL: self.id,
                f"{LABEL}.group": group.name,
                f"{LABEL}.container": container.name,
            },
            "HostConfig": {
                "NetworkMode": "host",
                "NanoCpus": int(cpu * 1e9),
                "Memory": int(memory * 1024**3),
                "RestartPolicy": {
                    "Never": {"Name": "no"},
                    "OnFailure": {"Name": "on-failure"},
                    "Always": {"Name": "always"},
                }[policy],
            },
        }
        if props.get("command"):
            config["Entrypoint"] = props["command"]  # ACI's command replaces the entrypoint
        volumes = {v["name"]: v for v in group.body["properties"].get("volumes") or []}
        binds = []
        for mount in props.get("volumeMounts") or []:
            share = (volumes.get(mount["name"]) or {}).get("azureFile") or {}
            directory = self.shares.get(share.get("shareName", ""))
            if directory is None:
                continue  # a share the fake was not given: not emulated (mounts nothing)
            mode = "ro" if mount.get("readOnly") else "rw"
            binds.append(f"{directory}:{mount['mountPath']}:{mode}")
        if binds:
            config["HostConfig"]["Binds"] = binds
        docker_name = f"fakeaci-{self.id}-{group.name}-{container.name}"
        try:
            created = await self._docker.containers.create(config, name=docker_name)
            container.docker_id = created.id
            container.event("Created", "Created container")
            await created.start()
        except DockerError as exc:
            container.failure = f"Error: {exc.message}"
            container.event("Failed", container.failure, "Warning")
            return
        container.event("Started", "Started container")

    async def _remove_containers(self, group: FakeGroup) -> None:
        """``docker rm -f`` every container of ``group`` (found by label, not by id: one
        created while a delete came in is found too)."""
        if self._docker is None:
            return
        labels = [f"{LABEL}={self.id}", f"{LABEL}.group={group.name}"]
        found = await self._docker.containers.list(all=True, filters=json.dumps({"label": labels}))
        for handle in found:
            try:
                await handle.delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
