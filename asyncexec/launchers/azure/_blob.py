"""Blob Storage over REST: :class:`BlobStore`, the driver's side of the staging area.

Plain HTTP with httpx, no Azure SDK. The driver authenticates with the account's
key (Shared Key); a container gets service SAS URLs signed here, locally (HMAC-SHA256
of the account key, nothing asked of the service): a read SAS for one blob
(``sr=b``) and a create-only SAS for the storage container (``sr=c``, ``sp=c``)
through which it writes each outcome once. Every request carries the pinned
``x-ms-version`` :data:`API_VERSION`, which Azurite accepts (it refuses versions
newer than it knows).

Errors: authentication refused (401, 403), the service unreachable, or 5xx still
after the retries -> :class:`~asyncexec.BackendUnavailable`; any other unexpected
4xx -> :class:`~asyncexec.LaunchError`. 500, 502, 503 (``ServerBusy``), 504 and
connection failures are retried with a capped exponential backoff (``Retry-After``
honoured when sent). The account key and SAS signatures never appear in a log line,
an error message or a repr (:func:`redact` for SAS URLs).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import logging
import random
import re
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from typing import Any, NoReturn

import anyio
import httpx

from ..._exceptions import BackendUnavailable, LaunchError

__all__ = ["API_VERSION", "BlobStore", "redact"]

log = logging.getLogger("asyncexec")

#: The ``x-ms-version`` of every request and the ``sv`` of every SAS. Azurite refuses
#: versions newer than its own; 2025-01-05 is known to Azurite 3.34 and later and to
#: Azure Storage. Service SAS for this version is signed as for 2020-12-06 and later.
API_VERSION = "2025-01-05"

#: The well-known Azurite account (public, documented by Microsoft: not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"

#: Service SAS permission letters, in the order Storage wants them.
_PERMISSION_ORDER = "racwdxyltmeopi"
_RETRIED_STATUS = frozenset({500, 502, 503, 504})
_SIG = re.compile(r"(?i)([?&]sig=)[^&#]*")


def redact(url: str) -> str:
    """``url`` with the signature of any SAS in it replaced by ``REDACTED`` (for logs)."""
    return _SIG.sub(r"\1REDACTED", url)


def _hmac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/-_.~")


def _iso(expiry: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))


class BlobStore:
    """One storage container of one account, reached with the account's key.

    Args:
        account: the storage account's name.
        key: the account key, base64 (as the portal and connection strings give it).
        container: the storage container every method works in.
        endpoint: the Blob service's URL: ``https://{account}.blob.core.windows.net`` by
            default; path-style for Azurite (``http://127.0.0.1:10000/devstoreaccount1``).
        client: an httpx client to send requests with (its owner closes it); by default
            the store makes its own, which :meth:`aclose` closes.
        max_attempts: tries of a request that meets a transient failure.
        concurrency: requests :meth:`get_many` and :meth:`delete` keep in flight.

    Raises:
        ValueError: ``key`` is not base64.
    """

    API_VERSION = API_VERSION

    def __init__(
        self,
        account: str,
        key: str,
        container: str,
        *,
        endpoint: str | None = None,
        client: httpx.AsyncClient | None = None,
        max_attempts: int = 6,
        concurrency: int = 16,
    ) -> None:
        try:
            self._key = base64.b64decode(key, validate=True)
        except ValueError:
            raise ValueError("the storage account key is not valid base64") from None
        self.account = account
        self.container = container
        self.endpoint = (endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")
        self._path = urllib.parse.urlsplit(self.endpoint).path
        self._https = self.endpoint.lower().startswith("https:")
        self._owned = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=60.0)
        self.max_attempts = max_attempts
        self.concurrency = concurrency

    @classmethod
    def from_connection_string(cls, text: str, container: str, **kwargs: Any) -> BlobStore:
        """A store from a storage connection string (``AccountName=...;AccountKey=...;``
        with ``BlobEndpoint=`` or ``DefaultEndpointsProtocol=`` and ``EndpointSuffix=``;
        ``UseDevelopmentStorage=true`` is Azurite on this machine).

        Raises:
            ValueError: the string names no account or key (the message never holds the
                key).
        """
        fields: dict[str, str] = {}
        for part in text.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            fields.setdefault("accountname", AZURITE_ACCOUNT)
            fields.setdefault("accountkey", AZURITE_KEY)
            fields.setdefault("blobendpoint", AZURITE_ENDPOINT)
        account, key = fields.get("accountname"), fields.get("accountkey")
        if not account or not key:
            raise ValueError(
                "the connection string needs AccountName and AccountKey"
                f" (it has {', '.join(sorted(fields)) or 'nothing'})"
            )
        endpoint = fields.get("blobendpoint")
        if endpoint is None:
            protocol = fields.get("defaultendpointsprotocol", "https")
            suffix = fields.get("endpointsuffix", "core.windows.net")
            endpoint = f"{protocol}://{account}.blob.{suffix}"
        return cls(account, key, container, endpoint=endpoint, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account={self.account!r}, container={self.container!r},"
            f" endpoint={self.endpoint!r})"
        )

    # -- the container -------------------------------------------------------------

    async def ensure_container(self) -> None:
        """Create the storage container unless it exists.

        Raises:
            BackendUnavailable: refused credentials, the service unreachable or failing.
            LaunchError: Storage refused the request otherwise.

        Cancellation: the request is abandoned; the container may exist or not.
        """
        response = await self._request("PUT", "", {"restype": "container"})
        if response.status_code != 201 and not self._is(response, 409, "ContainerAlreadyExists"):
            self._fail(response, "create the container")

    async def delete_container(self) -> None:
        """Delete the storage container and every blob in it (a missing one is fine).

        Storage removes it in the background: creating it again at once answers 409
        ``ContainerBeingDeleted``.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container`.
        """
        response = await self._request("DELETE", "", {"restype": "container"})
        if response.status_code not in (202, 404):
            self._fail(response, "delete the container")

    # -- blobs ---------------------------------------------------------------------

    async def put(self, name: str, data: bytes, *, create_only: bool = False) -> bool:
        """Write the block blob ``name`` (replacing it, unless ``create_only``).

        Returns:
            ``False`` when ``create_only`` and the blob already exists (left as it was),
            else ``True``.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container`.

        Cancellation: the request is abandoned; the blob may have been written. A
        ``create_only`` put retried after a lost answer may find its own first write
        and return ``False``.
        """
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
        if create_only:
            headers["If-None-Match"] = "*"
        response = await self._request("PUT", name, {}, headers=headers, content=data)
        if response.status_code == 201:
            return True
        if create_only and (
            self._is(response, 409, "BlobAlreadyExists") or response.status_code == 412
        ):
            return False
        self._fail(response, f"write {name!r}")

    async def get(self, name: str) -> bytes | None:
        """The content of blob ``name``, or ``None`` if it (or the container) is missing.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container`.
        """
        response = await self._request("GET", name, {})
        if response.status_code == 200:
            return response.content
        if response.status_code == 404:
            return None
        self._fail(response, f"read {name!r}")

    async def get_many(self, names: Sequence[str], *, limit: int = 16) -> dict[str, bytes]:
        """The content of each of ``names`` that exists, ``limit`` requests at a time.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container` (the first one).

        Cancellation: every request in flight is abandoned.
        """
        found: dict[str, bytes] = {}
        limiter = anyio.CapacityLimiter(max(1, limit))

        async def fetch(name: str) -> None:
            async with limiter:
                data = await self.get(name)
            if data is not None:
                found[name] = data

        async with anyio.create_task_group() as group:
            for name in dict.fromkeys(names):
                group.start_soon(fetch, name)
        return found

    async def list(self, prefix: str, *, page_size: int | None = None) -> builtins.list[str]:
        """The name of every blob that starts with ``prefix``, in name order, over as
        many List Blobs pages (``NextMarker``) as it takes; ``page_size`` caps a page
        (Storage's own cap, 5,000, by default). A missing container lists nothing.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container`.
        """
        names: builtins.list[str] = []
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "prefix": prefix}
            if marker:
                query["marker"] = marker
            if page_size is not None:
                query["maxresults"] = str(page_size)
            response = await self._request("GET", "", query)
            if self._is(response, 404, "ContainerNotFound"):
                return names
            if response.status_code != 200:
                self._fail(response, f"list {prefix!r}")
            try:
                root = ElementTree.fromstring(response.content)
            except ElementTree.ParseError as exc:
                raise LaunchError(f"Blob Storage sent an unreadable blob list: {exc}") from None
            names.extend(node.text or "" for node in root.iterfind("Blobs/Blob/Name"))
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return names

    async def delete(self, names: Sequence[str]) -> None:
        """Delete each of ``names`` (missing ones are fine), :attr:`concurrency` at a time.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container` (the first one).

        Cancellation: every request in flight is abandoned; some blobs may remain.
        """
        limiter = anyio.CapacityLimiter(max(1, self.concurrency))

        async def remove(name: str) -> None:
            async with limiter:
                response = await self._request("DELETE", name, {})
            if response.status_code not in (202, 404):
                self._fail(response, f"delete {name!r}")

        async with anyio.create_task_group() as group:
            for name in dict.fromkeys(names):
                group.start_soon(remove, name)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every blob whose name starts with ``prefix``.

        Raises:
            BackendUnavailable, LaunchError: as :meth:`ensure_container`.
        """
        await self.delete(await self.list(prefix))

    # -- SAS -----------------------------------------------------------------------

    def sas_url(self, name: str, permissions: str, expiry: float) -> str:
        """The URL of blob ``name`` with a service SAS for it alone (``sr=b``), signed
        here with the account key: ``permissions`` as Storage spells them (``"r"`` to
        read), valid until ``expiry`` (epoch seconds). Over an ``https`` endpoint it is
        refused over plain HTTP (``spr=https``).

        Raises:
            ValueError: a letter in ``permissions`` is not a SAS permission.
        """
        token = self._sas(permissions, expiry, "b", name)
        return f"{self.endpoint}/{_quote(self.container)}/{_quote(name)}?{token}"

    def container_sas_url(self, permissions: str, expiry: float) -> str:
        """The URL of the storage container with a service SAS for it (``sr=c``), signed
        here: with ``permissions="c"``, a holder can create blobs that do not exist yet
        (append ``/<name>`` to the path, before the ``?``), but neither read, list,
        overwrite nor delete one. Otherwise as :meth:`sas_url`.

        Raises:
            ValueError: a letter in ``permissions`` is not a SAS permission.
        """
        token = self._sas(permissions, expiry, "c", "")
        return f"{self.endpoint}/{_quote(self.container)}?{token}"

    def _sas(self, permissions: str, expiry: float, resource: str, name: str) -> str:
        unknown = set(permissions) - set(_PERMISSION_ORDER)
        if unknown or not permissions:
            raise ValueError(f"not SAS permissions: {permissions!r}")
        permissions = "".join(p for p in _PERMISSION_ORDER if p in permissions)
        canonical = f"/blob/{self.account}/{self.container}"
        if name:
            canonical += f"/{name}"
        protocol = "https" if self._https else ""
        # Service SAS, version 2020-12-06 and later: sp, st, se, resource, si, sip, spr,
        # sv, sr, snapshot, ses, rscc, rscd, rsce, rscl, rsct.
        fields = [permissions, "", _iso(expiry), canonical, "", "", protocol, API_VERSION]
        fields += [resource, "", "", "", "", "", "", ""]
        query = {"sv": API_VERSION, "sr": resource, "sp": permissions, "se": _iso(expiry)}
        if protocol:
            query["spr"] = protocol
        query["sig"] = _hmac(self._key, "\n".join(fields))
        return urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")

    # -- requests ------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        name: str,
        query: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """Send one request with Shared Key, retrying transient failures; the answer
        (any status), or :class:`BackendUnavailable` once the service never answered
        usefully within :attr:`max_attempts` tries."""
        path = f"{self._path}/{_quote(self.container)}"
        if name:
            path += f"/{_quote(name)}"
        url = urllib.parse.urlsplit(self.endpoint)._replace(path=path, query="").geturl()
        if query:
            url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
        what = f"{method} {self.container}/{name}" if name else f"{method} {self.container}"
        for attempt in range(1, self.max_attempts + 1):
            sent = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": API_VERSION}
            sent.update(headers or {})
            if content is not None:
                sent["Content-Length"] = str(len(content))
            sent["Authorization"] = self._authorization(method, path, query, sent)
            delay = min(10.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            try:
                response = await self._client.request(method, url, headers=sent, content=content)
            except httpx.TransportError as exc:
                log.debug("blob %s: %s (attempt %d)", what, type(exc).__name__, attempt)
                if attempt == self.max_attempts:
                    raise BackendUnavailable(
                        f"Blob Storage at {self.endpoint} cannot be reached ({what}):"
                        f" {type(exc).__name__}: {exc}"
                    ) from None
                await anyio.sleep(delay)
                continue
            log.debug(
                "blob %s -> %d %s (attempt %d)",
                what,
                response.status_code,
                response.headers.get("x-ms-error-code", ""),
                attempt,
            )
            if response.status_code not in _RETRIED_STATUS or attempt == self.max_attempts:
                return response
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.isdigit():
                delay = min(60.0, float(retry_after))
            await anyio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _authorization(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> str:
        """The Shared Key ``Authorization`` header of a request."""
        lower = {key.lower(): value for key, value in headers.items()}
        length = lower.get("content-length", "")
        standard = [
            method,
            lower.get("content-encoding", ""),
            lower.get("content-language", ""),
            "" if length == "0" else length,
            lower.get("content-md5", ""),
            lower.get("content-type", ""),
            "",  # Date: x-ms-date is sent instead
            lower.get("if-modified-since", ""),
            lower.get("if-match", ""),
            lower.get("if-none-match", ""),
            lower.get("if-unmodified-since", ""),
            lower.get("range", ""),
        ]
        ms = sorted((key, " ".join(value.split())) for key, value in lower.items())
        canonical_headers = "".join(f"{key}:{value}\n" for key, value in ms if key[:5] == "x-ms-")
        resource = f"/{self.account}{path}"
        for key in sorted(query, key=str.lower):
            resource += f"\n{key.lower()}:{query[key]}"
        text = "\n".join(standard) + "\n" + canonical_headers + resource
        return f"SharedKey {self.account}:{_hmac(self._key, text)}"

    @staticmethod
    def _is(response: httpx.Response, status: int, code: str) -> bool:
        return response.status_code == status and response.headers.get("x-ms-error-code") == code

    def _fail(self, response: httpx.Response, doing: str) -> NoReturn:
        """Raise the error for an unexpected answer: Storage's code and message, never a
        signature (its AuthenticationErrorDetail can quote one: left out)."""
        code = response.headers.get("x-ms-error-code", "")
        message = ""
        if response.content.startswith(b"<?xml") or response.content.startswith(b"<Error"):
            with contextlib.suppress(ElementTree.ParseError):
                message = ElementTree.fromstring(response.content).findtext("Message") or ""
        message = redact(message.splitlines()[0] if message else response.reason_phrase)
        text = (
            f"Blob Storage ({self.account}/{self.container}) refused to {doing}:"
            f" {response.status_code} {code} {message}".rstrip()
        )
        if response.status_code in (401, 403) or response.status_code >= 500:
            raise BackendUnavailable(text)
        raise LaunchError(text)

    # -- the client ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client, if the store made it.

        Cancellation: the connections are closed all the same.
        """
        if self._owned:
            await self._client.aclose()
