"""Access tokens for Azure Resource Manager, without the Azure SDK.

* :class:`ClientSecretCredential`: a service principal's secret, exchanged at the
  Microsoft identity platform's v2.0 token endpoint (client credentials grant:
  no refresh token, a new request each time).
* :class:`ManagedIdentityCredential`: the instance metadata service (IMDS) of
  the VM or container the driver runs on.
* :class:`AzureCliCredential`: ``az account get-access-token``, for a developer
  logged in with ``az login``.

Every credential caches its token and fetches a new one ahead of expiry (five
minutes before, or a tenth of the token's lifetime for a short one); one fetch
at a time, callers that arrive meanwhile wait for its token. ``token(client,
refresh=True)`` forces a fetch, after ARM answered 401.

Failures raise :class:`~asyncexec.BackendUnavailable` with a message that says
what to fix. No secret (client secret, token) ever appears in a message, a log
line or a repr.
"""

from __future__ import annotations

import abc
import json
import logging
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from ..._exceptions import BackendUnavailable

if TYPE_CHECKING:
    import httpx

__all__ = [
    "AzureCliCredential",
    "ClientSecretCredential",
    "Credential",
    "ManagedIdentityCredential",
]

log = logging.getLogger("asyncexec")

#: ARM's resource (IMDS, Azure CLI) and scope (identity platform v2.0).
ARM_RESOURCE = "https://management.azure.com/"
ARM_SCOPE = "https://management.azure.com/.default"
#: Refresh this long before expiry at most (a tenth of the lifetime for a shorter token).
REFRESH_AHEAD = 300.0
#: A token this close to expiry is not handed out any more, even when a refresh fails.
EXPIRY_SKEW = 30.0


class _Fetch:
    """A fetch of a new token under way; the callers that arrive meanwhile wait for it."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class Credential(abc.ABC):
    """A source of ARM access tokens, cached (see the module's docstring)."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._expires = 0.0  # epoch seconds
        self._refresh_at = 0.0  # epoch seconds
        self._fetch: _Fetch | None = None

    @abc.abstractmethod
    async def _request(self, client: httpx.AsyncClient) -> tuple[str, float]:
        """Fetch a new token: ``(access token, expiry in epoch seconds)``.

        Raises:
            BackendUnavailable: no token, with a message free of secrets.
        """

    @property
    def expires_on(self) -> float:
        """When the cached token expires (epoch seconds; 0: no token yet)."""
        return self._expires

    async def token(
        self, client: httpx.AsyncClient, *, refresh: bool = False, stale: str | None = None
    ) -> str:
        """The access token: the cached one while it is fresh, else a new one.

        Args:
            client: the HTTP client to fetch a new token with.
            refresh: fetch a new token even when the cached one looks fresh (ARM
                answered 401 to it).
            stale: with ``refresh``, the token that was refused: when the cached
                token is another one already (a concurrent caller refreshed), it
                is returned without a new fetch.

        Raises:
            BackendUnavailable: no token could be had (the reason in the message).

        Cancellation: a fetch under way for this caller alone is abandoned; callers
        waiting for it then fetch again themselves.
        """
        while True:
            now = time.time()
            cached = self._token
            if cached is not None:
                if refresh and stale is not None and cached != stale:
                    return cached
                if not refresh and now < self._refresh_at:
                    return cached
            fetch = self._fetch
            if fetch is not None:
                # Someone fetches: a still-valid token serves meanwhile, else wait for theirs.
                if cached is not None and not refresh and now < self._expires - EXPIRY_SKEW:
                    return cached
                await fetch.done.wait()
                if fetch.error is not None:
                    raise BackendUnavailable(str(fetch.error)) from fetch.error
                if self._token is not None and self._token != cached:
                    return self._token
                continue  # the fetcher was cancelled: try again
            return await self._refresh(client, forced=refresh)

    async def _refresh(self, client: httpx.AsyncClient, *, forced: bool) -> str:
        fetch = self._fetch = _Fetch()
        old, old_expires = self._token, self._expires
        try:
            token, expires = await self._request(client)
        except BackendUnavailable as exc:
            if not forced and old is not None and time.time() < old_expires - EXPIRY_SKEW:
                # A refresh ahead of expiry failed: the old token still serves for now.
                log.warning(
                    "azure: refreshing the access token failed (%s); the current one "
                    "is valid for %.0f s more",
                    exc,
                    old_expires - time.time(),
                )
                self._refresh_at = time.time() + min(30.0, (old_expires - time.time()) / 4)
                return old
            fetch.error = exc
            raise
        else:  # (before the waiters wake)
            lifetime = max(0.0, expires - time.time())
            self._token, self._expires = token, expires
            self._refresh_at = expires - min(REFRESH_AHEAD, lifetime / 10)
        finally:
            self._fetch = None
            fetch.done.set()
        log.debug("azure: %s got a token valid for %.0f s", type(self).__name__, lifetime)
        return token


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _expiry(body: Mapping[str, Any], now: float) -> float:
    """The expiry of a token response: ``expires_on`` (epoch seconds, a number or a string
    of digits), else ``expires_in`` (seconds from now)."""
    for name, base in (("expires_on", 0.0), ("expires_in", now)):
        value = body.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return base + float(value)
        if isinstance(value, str) and value.strip().isdigit():
            return base + float(value)
    raise ValueError("the token response has neither expires_on nor expires_in in seconds")


def _redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _backoff(attempt: int, base: float, cap: float = 30.0) -> float:
    """Capped exponential backoff with jitter: about base, 2 base, 4 base... (attempt 1, 2...)."""
    return min(cap, base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class ClientSecretCredential(Credential):
    """A service principal's client secret, exchanged at the identity platform's v2.0
    token endpoint: ``POST {authority}/{tenant_id}/oauth2/v2.0/token``.

    Args:
        tenant_id: the directory (tenant) of the principal.
        client_id: the application (client) id.
        client_secret: its secret; never shown (repr, logs, errors).
        authority: the identity platform (another cloud's, or a test server).
        scope: what the token is for (ARM's ``.default``).
        attempts: tries of the token request when the endpoint answers 429 or
            5xx or cannot be reached.
    """

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        *,
        authority: str = "https://login.microsoftonline.com",
        scope: str = ARM_SCOPE,
        attempts: int = 4,
        backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.__secret = client_secret
        self.authority = authority.rstrip("/")
        self.scope = scope
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"ClientSecretCredential(tenant_id={self.tenant_id!r}, client_id={self.client_id!r})"

    async def _request(self, client: httpx.AsyncClient) -> tuple[str, float]:
        import httpx

        url = f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.__secret,
            "scope": self.scope,
        }
        problem = ""
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await anyio.sleep(_backoff(attempt - 1, self.backoff))
            try:
                response = await client.post(url, data=form)
            except httpx.TransportError as exc:
                problem = f"cannot reach {url}: {type(exc).__name__}"
                continue
            body = _json_object(response)
            if response.status_code == 200:
                try:
                    return str(body["access_token"]), _expiry(body, time.time())
                except (KeyError, ValueError) as exc:
                    raise BackendUnavailable(f"{url} answered an unreadable token: {exc}") from None
            # AAD's error and its description (which names the error, never the secret).
            description = str(body.get("error_description", "")).split("\r\n")[0].split("\n")[0]
            problem = _redact(
                f"{url} refused the client credentials of {self.client_id} "
                f"(HTTP {response.status_code} {body.get('error', '')}: {description})",
                self.__secret,
            )
            if response.status_code != 429 and response.status_code < 500:
                break
        raise BackendUnavailable(f"azure: no access token: {problem}")


class ManagedIdentityCredential(Credential):
    """The managed identity of the machine, from the instance metadata service (IMDS):
    ``GET {endpoint}?api-version=2018-02-01&resource=...`` with ``Metadata: true``.

    Retries follow IMDS's guidance: 404 (the identity is not ready yet), 408, 429
    and 5xx with exponential backoff, up to ``attempts`` tries; 410 (IMDS is
    being updated) for up to 70 s; never 400, 401 or 403 (a wrong request or
    no identity: retrying would not help).

    Args:
        client_id: a user-assigned identity's client id (None: the system-assigned one).
        endpoint: the IMDS token endpoint.
        resource: what the token is for (ARM).
        attempts: tries on 404, 408, 429, 5xx and connection errors.
        backoff: the first retry's delay in seconds (doubled at each, with jitter).
        gone_for: how long 410 is retried, in seconds.
    """

    API_VERSION = "2018-02-01"

    def __init__(
        self,
        *,
        client_id: str | None = None,
        endpoint: str = "http://169.254.169.254/metadata/identity/oauth2/token",
        resource: str = ARM_RESOURCE,
        attempts: int = 5,
        backoff: float = 1.0,
        gone_for: float = 70.0,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.endpoint = endpoint
        self.resource = resource
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.gone_for = gone_for

    def __repr__(self) -> str:
        return f"ManagedIdentityCredential(client_id={self.client_id!r})"

    async def _request(self, client: httpx.AsyncClient) -> tuple[str, float]:
        import httpx

        params = {"api-version": self.API_VERSION, "resource": self.resource}
        if self.client_id:
            params["client_id"] = self.client_id
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:  # (IMDS answers at once on a VM: a slow connect means there is none.)
                response = await client.get(
                    self.endpoint,
                    params=params,
                    headers={"Metadata": "true"},
                    timeout=httpx.Timeout(10.0, connect=2.0),
                )
            except httpx.TransportError as exc:
                status, problem = 0, f"cannot reach {self.endpoint}: {type(exc).__name__}"
            else:
                status = response.status_code
                body = _json_object(response)
                if status == 200:
                    try:
                        return str(body["access_token"]), _expiry(body, time.time())
                    except (KeyError, ValueError) as exc:
                        raise BackendUnavailable(
                            f"azure: IMDS answered an unreadable token: {exc}"
                        ) from None
                detail = body.get("error_description") or body.get("error") or ""
                problem = f"IMDS at {self.endpoint} answered HTTP {status} {detail}".rstrip()
            if status == 410 and time.monotonic() - started < self.gone_for:
                delay = min(
                    _backoff(attempt, self.backoff, cap=10.0),
                    self.gone_for - (time.monotonic() - started),
                )
            elif (
                status in (404, 408, 429) or status >= 500 or (status == 0 and attempt < 2)
            ) and attempt < self.attempts:
                # (Unreachable: once more only, no minute of probing a machine without IMDS.)
                delay = _backoff(attempt, self.backoff)
            else:
                which = f"client id {self.client_id}" if self.client_id else "system-assigned"
                raise BackendUnavailable(f"azure: no managed identity token ({which}): {problem}")
            log.debug("azure: %s; retrying in %.1f s", problem, delay)
            await anyio.sleep(max(0.0, delay))


class AzureCliCredential(Credential):
    """The Azure CLI's login: ``az account get-access-token --resource ... --output json``.

    Reads ``accessToken`` and ``expires_on`` (epoch seconds, printed since Azure
    CLI 2.54), never ``expiresOn`` (a local time without a zone).

    Args:
        command: the CLI to run (``("az",)``; another path, or a wrapper).
        resource: what the token is for (ARM).
        timeout: seconds the command may take.
    """

    def __init__(
        self,
        *,
        command: Sequence[str] = ("az",),
        resource: str = ARM_RESOURCE,
        timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.command = tuple(command)
        self.resource = resource
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AzureCliCredential(command={self.command!r})"

    async def _request(self, client: httpx.AsyncClient) -> tuple[str, float]:
        argv = [
            *self.command,
            "account",
            "get-access-token",
            "--resource",
            self.resource,
            "--output",
            "json",
        ]
        if shutil.which(argv[0]) is None:
            raise BackendUnavailable(
                f"azure: the Azure CLI ({argv[0]!r}) is not on PATH: install it and run "
                "`az login`, or use another credential"
            )
        try:
            with anyio.fail_after(self.timeout):
                done = await anyio.run_process(argv, check=False)
        except TimeoutError:
            raise BackendUnavailable(
                f"azure: `{' '.join(argv[:3])}` took more than {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise BackendUnavailable(f"azure: cannot run {argv[0]!r}: {exc}") from None
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            detail = next((line for line in lines if "az login" in line), lines[0] if lines else "")
            raise BackendUnavailable(
                f"azure: `az account get-access-token` failed (exit {done.returncode}): "
                f"{detail.strip()} (logged in? run `az login`)"
            )
        try:
            body = json.loads(done.stdout)
            token = str(body["accessToken"])
            expires = body["expires_on"]
            expires = float(expires)
        except (ValueError, KeyError, TypeError) as exc:
            # (Never the output itself: it holds the token.)
            missing = exc.args[0] if isinstance(exc, KeyError) else "unreadable output"
            raise BackendUnavailable(
                f"azure: `az account get-access-token` printed no usable {missing!r} "
                "(expires_on needs Azure CLI 2.54 or newer)"
            ) from None
        return token, expires
