"""The Azure Resource Manager client of the ACI backend: container groups over REST.

One :class:`ArmClient` per executor speaks to ``Microsoft.ContainerInstance``
(api-version :data:`API_VERSION`) in one subscription, resource group and
region. Every request:

* waits for a token of its kind (GET: read, PUT: write, DELETE: delete) in the
  client-side buckets (:class:`~._limits.ArmLimits`, shared by every client of
  the place), and a group create or delete for room in the quota windows;
* carries a bearer token from the credential; a 401 refreshes the token and
  retries once;
* is retried on 429, 500, 502, 503, 504 and connection errors, after the
  ``Retry-After`` the answer gives (seconds or an HTTP date), else after a
  capped exponential backoff with jitter, up to ``max_attempts`` tries;
* is logged at debug: method, path (of the query string only the api-version),
  status, ARM's ``x-ms-ratelimit-remaining-*`` headers, the correlation id.

Errors: ARM's error body (``{"error": {"code", "message"}}``) becomes an
:class:`ArmError` (a ``LaunchError``) carrying ARM's ``code``, quota errors
included; refused credentials, and ARM unreachable or throttling after every
try, an :class:`ArmUnavailable` (also a ``BackendUnavailable``).

Deadlines (``follow``, ``wait_deleted``, ``create_group``'s) are
``time.monotonic()`` values.
"""

from __future__ import annotations

import collections
import email.utils
import logging
import random
import re
import time
from collections.abc import Collection, Iterator
from typing import Any

import anyio
import httpx

from ..._exceptions import BackendUnavailable, LaunchError
from ._auth import Credential
from ._limits import ArmLimits

__all__ = ["API_VERSION", "ArmClient", "ArmError", "ArmUnavailable"]

log = logging.getLogger("asyncexec")

API_VERSION = "2025-09-01"
PROVIDER = "Microsoft.ContainerInstance"
#: Statuses worth another try (after Retry-After or a backoff).
RETRIED = frozenset({429, 500, 502, 503, 504})
#: A container group's name: 1-63 of [a-z0-9] and inner '-'.
GROUP_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: The async operation's statuses that end it.
TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}
_KIND = {
    "GET": "read",
    "HEAD": "read",
    "PUT": "write",
    "PATCH": "write",
    "POST": "write",
    "DELETE": "delete",
}
_RATE_HEADERS = (
    "x-ms-ratelimit-remaining-subscription-reads",
    "x-ms-ratelimit-remaining-subscription-writes",
    "x-ms-ratelimit-remaining-subscription-deletes",
)


class ArmError(LaunchError):
    """ARM refused a request.

    Attributes:
        status: the HTTP status (0 when none came).
        code: ARM's ``error.code`` (``"InvalidRequestContent"``,
            ``"ContainerGroupQuotaReached"``...), or ``"HTTP <status>"`` without one.
        message: ARM's ``error.message``.
    """

    def __init__(self, status: int, code: str, message: str, *, what: str = "") -> None:
        text = f"{what}: {code}: {message}" if what else f"{code}: {message}"
        super().__init__(text)
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.status, self.code, self.message, str(self)))


def _rebuild(cls: type[ArmError], status: int, code: str, message: str, text: str) -> ArmError:
    error = cls(status, code, message)
    error.args = (text,)
    return error


class ArmUnavailable(ArmError, BackendUnavailable):
    """ARM cannot be used: the credentials were refused, or it stayed unreachable (or kept
    throttling) through every try."""


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """The delay an answer asks for, in seconds: ``Retry-After`` (seconds or an HTTP date),
    or ``retry-after-ms`` / ``x-ms-retry-after-ms``; None without one."""
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = response.headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Capped exponential backoff with jitter: about base, 2 base, 4 base... up to cap."""
    return min(cap, base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """ARM's (code, message) of an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and (error.get("code") or error.get("message")):
            return str(error.get("code") or f"HTTP {response.status_code}"), str(
                error.get("message") or ""
            )
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    return f"HTTP {response.status_code}", text or response.reason_phrase


def _secure_values(body: Any) -> Iterator[str]:
    """Every ``secureValue`` of a request body (to keep them out of error messages)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "secureValue" and isinstance(value, str) and value:
                yield value
            else:
                yield from _secure_values(value)
    elif isinstance(body, list):
        for item in body:
            yield from _secure_values(item)


def _shown(url: httpx.URL) -> str:
    """The path of a URL with no query but its api-version (a nextLink's skip token, a
    SAS... stay out of the logs)."""
    version = url.params.get("api-version")
    return f"{url.path}?api-version={version}" if version else url.path


class ArmClient:
    """Container groups of one resource group and region, over ARM's REST API.

    Args:
        credential: where the bearer tokens come from.
        subscription_id, resource_group, location: where the groups live.
        endpoint: ARM (another cloud's, or the tests' loopback server).
        client: the HTTP client to use (closed by its owner); None: one of its own.
        limits: the client-side limits; None: those shared by every client of
            ``(endpoint, subscription_id, location)`` in the process, ARM's defaults.
        max_attempts: tries of one request on 429, 5xx and connection errors.
        backoff, max_backoff: the first retry's delay without Retry-After, and the cap
            of the delays (doubling, with jitter).
        poll_interval, max_poll_interval: the first and largest delay between polls of
            an async operation or a deletion, when ARM gives no Retry-After.

    Attributes:
        calls: requests sent, by kind (``"read"``, ``"write"``, ``"delete"``), and
            ``"429"`` (throttled answers), ``"retry"`` (tries after a 429, 5xx or
            connection error), ``"401"`` (refused tokens).
    """

    def __init__(
        self,
        credential: Credential,
        subscription_id: str,
        resource_group: str,
        location: str,
        *,
        endpoint: str = "https://management.azure.com",
        client: httpx.AsyncClient | None = None,
        limits: ArmLimits | None = None,
        max_attempts: int = 8,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
    ) -> None:
        self.credential = credential
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.location = location
        self.endpoint = endpoint.rstrip("/")
        self._own_client = client is None
        self.client = (
            client
            if client is not None
            else httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        )
        self.limits = (
            limits
            if limits is not None
            else ArmLimits.shared((self.endpoint, subscription_id, location))
        )
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.calls: collections.Counter[str] = collections.Counter()
        self._groups = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/{PROVIDER}/containerGroups"
        )

    def __repr__(self) -> str:
        return (
            f"ArmClient({self.endpoint!r}, subscription_id={self.subscription_id!r}, "
            f"resource_group={self.resource_group!r}, location={self.location!r}, "
            f"credential={self.credential!r})"
        )

    # -- one request --------------------------------------------------------------

    def url(self, path: str) -> httpx.URL:
        """The URL of an ARM path (or of an absolute URL: a nextLink, an operation's),
        with the api-version unless it has one."""
        url = httpx.URL(path if "://" in path else self.endpoint + path)
        if "api-version" not in url.params:
            url = url.copy_merge_params({"api-version": API_VERSION})
        return url

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        ok: Collection[int] = (200, 201, 202, 204),
        secrets: Collection[str] = (),
    ) -> httpx.Response:
        """Send one ARM request, with the limits, the token and the retries of the module's
        docstring; return the answer when its status is in ``ok``.

        Args:
            method: the HTTP method (its kind of bucket: GET read, PUT write, DELETE delete).
            path: an ARM path, or an absolute URL (nextLink, Location...).
            json: the body.
            params: query parameters beside the api-version.
            ok: the statuses returned; any other is an error.
            secrets: strings to keep out of error messages.

        Raises:
            ArmError: ARM refused (its code and message).
            ArmUnavailable: credentials refused; ARM unreachable or throttling through
                every try.

        Cancellation: the request in flight is abandoned (a PUT or DELETE may still
        have reached ARM).
        """
        kind = _KIND.get(method.upper(), "write")
        url = self.url(path)
        if params:
            url = url.copy_merge_params(params)
        shown = _shown(url)
        attempt = 0
        refreshed = False
        refused: str | None = None
        while True:
            attempt += 1
            await self.limits.take(kind)
            token = await self.credential.token(
                self.client, refresh=refused is not None, stale=refused
            )
            refused = None
            self.calls[kind] += 1
            try:
                response = await self.client.request(
                    method, url, json=json, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.endpoint}: {type(exc).__name__}: {exc}"
                log.debug("azure: %s %s: %s", method, shown, problem)
                if attempt >= self.max_attempts:
                    raise ArmUnavailable(
                        0, "Unreachable", problem, what=f"{method} {shown}"
                    ) from exc
                self.calls["retry"] += 1
                await anyio.sleep(_backoff(attempt, self.backoff, self.max_backoff))
                continue
            status = response.status_code
            self._log(method, shown, response)
            if status in ok:
                return response
            if status == 401 and not refreshed:
                # The token expired or was revoked early: a new one, one more try.
                self.calls["401"] += 1
                refreshed, refused = True, token
                attempt -= 1
                continue
            if status == 429:
                self.calls["429"] += 1
            if status in RETRIED and attempt < self.max_attempts:
                self.calls["retry"] += 1
                delay = retry_after(response)
                if delay is None:
                    delay = _backoff(attempt, self.backoff, self.max_backoff)
                log.debug("azure: %s %s: HTTP %d, retrying in %.2f s", method, shown, status, delay)
                await anyio.sleep(delay)
                continue
            raise self._error(method, shown, response, secrets)

    def _error(
        self, method: str, shown: str, response: httpx.Response, secrets: Collection[str]
    ) -> ArmError:
        status = response.status_code
        code, message = _error_of(response)
        for secret in secrets:
            message = message.replace(secret, "***")
        what = f"{method} {shown}"
        if status == 401 or (
            status == 403
            and code.startswith(
                (
                    "AuthorizationFailed",
                    "InvalidAuthenticationToken",
                    "LinkedAuthorizationFailed",
                    "AuthenticationFailed",
                )
            )
        ):
            return ArmUnavailable(status, code, message, what=what)
        if status in RETRIED:
            return ArmUnavailable(
                status,
                code,
                f"{message} (still HTTP {status} after {self.max_attempts} tries)",
                what=what,
            )
        return ArmError(status, code, message, what=what)

    def _log(self, method: str, shown: str, response: httpx.Response) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return
        headers = response.headers
        remaining = " ".join(
            f"{name.rsplit('-', 1)[1]}={headers[name]}" for name in _RATE_HEADERS if name in headers
        )
        log.debug(
            "azure: %s %s -> %d%s correlation=%s",
            method,
            shown,
            response.status_code,
            f" remaining {remaining}" if remaining else "",
            headers.get("x-ms-correlation-request-id", "-"),
        )

    # -- container groups ---------------------------------------------------------

    def group_path(self, name: str) -> str:
        """The ARM path of the container group ``name``."""
        if not GROUP_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a container group name (1-63 of a-z, 0-9 and inner '-')"
            )
        return f"{self._groups}/{name}"

    async def create_group(
        self, name: str, body: dict[str, Any], *, deadline: float | None = None
    ) -> dict[str, Any]:
        """Create (or update) the container group ``name``: ``PUT`` once there is room in the
        creates windows.

        Args:
            name: the group's name.
            body: the ContainerGroup resource (location, properties...).
            deadline: None: return ARM's answer to the PUT (provisioning under way);
                a ``time.monotonic()`` value: follow the operation to its end first.

        Returns:
            ARM's body of the group (201 or 200), or the final one with ``deadline``.

        Raises:
            ArmError: refused (``InvalidRequestContent``, a quota's code...), or the
                operation ended Failed or Canceled; ArmUnavailable; TimeoutError at the
                deadline.

        Cancellation: the PUT may have reached ARM: the group may exist.
        """
        path = self.group_path(name)
        await self.limits.create()
        response = await self.request(
            "PUT", path, json=body, ok=(200, 201), secrets=tuple(_secure_values(body))
        )
        if deadline is not None:
            return await self.follow(response, deadline)
        return _json_body(response)

    async def get_group(self, name: str) -> dict[str, Any] | None:
        """The container group ``name`` with its instanceView, None when there is none.

        Raises:
            ArmError, ArmUnavailable: as :meth:`request`.
        """
        response = await self.request("GET", self.group_path(name), ok=(200, 404))
        if response.status_code == 404:
            return None
        return _json_body(response)

    async def delete_group(self, name: str) -> bool:
        """Delete the container group ``name`` (once there is room in the removals windows).

        Returns:
            True when ARM took the delete (200, 202: it may still be under way, see
            :meth:`wait_deleted`); False when the group was already gone (204, 404).

        Raises:
            ArmError, ArmUnavailable: as :meth:`request`.
        """
        path = self.group_path(name)
        await self.limits.remove()
        response = await self.request("DELETE", path, ok=(200, 202, 204, 404))
        return response.status_code in (200, 202)

    async def wait_deleted(self, name: str, deadline: float) -> None:
        """Return once a GET of the group ``name`` answers 404.

        Polls after ARM's Retry-After, else a delay growing from ``poll_interval``.

        Raises:
            TimeoutError: the group still exists at ``deadline`` (``time.monotonic()``).
            ArmError, ArmUnavailable: as :meth:`request`.
        """
        path = self.group_path(name)
        interval = self.poll_interval
        while True:
            response = await self.request("GET", path, ok=(200, 404))
            if response.status_code == 404:
                return
            delay = retry_after(response)
            if delay is None:
                delay, interval = interval, min(self.max_poll_interval, interval * 1.5)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = _json_body(response).get("properties", {}).get("provisioningState")
                raise TimeoutError(
                    f"azure: container group {name} still exists (provisioningState "
                    f"{state}) at the deadline"
                )
            await anyio.sleep(min(delay, remaining))

    async def follow(self, response: httpx.Response, deadline: float) -> dict[str, Any]:
        """Follow the asynchronous operation ``response`` started to its end.

        ``Azure-AsyncOperation`` first (a status resource: InProgress, then Succeeded,
        Failed or Canceled; the resource then comes from ``Location``, else from the
        request's own URL after a PUT or PATCH), else ``Location`` (202: still going;
        200 or 204: done). Without either header the operation is done already.
        Headers are read case-insensitively; each poll waits ARM's Retry-After, else
        a delay growing from ``poll_interval``.

        Returns:
            The final resource's body ({} when there is none: a finished delete).

        Raises:
            ArmError: the operation ended Failed or Canceled (its error's code and
                message), or a poll was refused.
            TimeoutError: not finished at ``deadline`` (``time.monotonic()``).

        Cancellation: only the following stops; the operation goes on in ARM.
        """
        request = response.request
        operation = response.headers.get("azure-asyncoperation")
        location = response.headers.get("location")
        if not operation and not location:
            return _json_body(response)
        interval = self.poll_interval
        delay = retry_after(response)
        what = f"{request.method} {_shown(request.url)}"
        while True:
            if delay is None:
                delay, interval = interval, min(self.max_poll_interval, interval * 1.5)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"azure: {what} was not finished at the deadline")
            await anyio.sleep(min(delay, remaining))
            if operation:
                poll = await self.request("GET", operation, ok=(200, 201, 202))
                body = _json_body(poll)
                status = str(body.get("status", "")).lower()
                if status in TERMINAL:
                    if status != "succeeded":
                        error = body.get("error") or {}
                        raise ArmError(
                            poll.status_code,
                            str(error.get("code") or body.get("status")),
                            str(error.get("message") or "the operation did not succeed"),
                            what=what,
                        )
                    break
            else:
                assert location is not None
                poll = await self.request("GET", location, ok=(200, 201, 202, 204))
                if poll.status_code != 202:
                    return _json_body(poll)
            delay = retry_after(poll)
        # The operation succeeded: the resource it made or changed.
        if location:
            final = await self.request("GET", location, ok=(200, 204))
            return _json_body(final)
        if request.method in ("PUT", "PATCH"):
            final = await self.request("GET", str(request.url), ok=(200,))
            return _json_body(final)
        return {}

    async def list_groups(self) -> list[dict[str, Any]]:
        """Every container group of the resource group (every page; no instanceView).

        Raises:
            ArmError, ArmUnavailable: as :meth:`request`.
        """
        return await self._pages(self._groups)

    async def usages(self) -> dict[str, tuple[int, int]]:
        """The region's usages and limits: ``name.value`` -> ``(currentValue, limit)``
        (``"ContainerGroups"``, ``"StandardCores"``...).

        Raises:
            ArmError, ArmUnavailable: as :meth:`request`.
        """
        path = (
            f"/subscriptions/{self.subscription_id}/providers/{PROVIDER}"
            f"/locations/{self.location}/usages"
        )
        result: dict[str, tuple[int, int]] = {}
        for usage in await self._pages(path):
            name = usage.get("name", {})
            key = name.get("value") if isinstance(name, dict) else None
            if key:
                result[str(key)] = (int(usage.get("currentValue", 0)), int(usage.get("limit", 0)))
        return result

    async def logs(self, name: str, container: str, tail: int | None = None) -> str:
        """A container's log (ACI keeps 4 MB while it runs, 16 KB or 1,000 lines after).

        Raises:
            ArmError, ArmUnavailable: as :meth:`request` (404: no such group or container).
        """
        params = {"tail": str(tail)} if tail is not None else None
        response = await self.request(
            "GET", f"{self.group_path(name)}/containers/{container}/logs", params=params, ok=(200,)
        )
        return str(_json_body(response).get("content") or "")

    async def _pages(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_link: str | None = path
        while next_link:
            body = _json_body(await self.request("GET", next_link, ok=(200,)))
            items.extend(item for item in body.get("value") or () if isinstance(item, dict))
            next_link = body.get("nextLink") or None
        return items

    async def aclose(self) -> None:
        """Close the HTTP client when it is the client's own."""
        if self._own_client:
            await self.client.aclose()


def _json_body(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
