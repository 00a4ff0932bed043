"""The Azure backend's Blob Storage client (``asyncexec.launchers.azure._blob``), against
a real Azurite (``scripts/azure-up.sh``; the ``azurite`` fixture only checks it answers).

Each test works in a storage container of its own, deleted at the end. The SAS tests
reach Azurite with ``urllib.request`` alone, as a container group's command does.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from asyncexec import BackendUnavailable, LaunchError
from asyncexec.launchers.azure._blob import API_VERSION, BlobStore, redact

from .services import Azurite

pytestmark = [pytest.mark.anyio, pytest.mark.azure]

HOUR = 3600.0


@contextlib.asynccontextmanager
async def storage(azurite: Azurite, **kwargs: Any) -> AsyncIterator[BlobStore]:
    """A store on a new storage container, deleted (with its blobs) afterwards."""
    store = BlobStore(
        azurite.account,
        azurite.key,
        f"test-{uuid.uuid4().hex}",
        endpoint=azurite.endpoint,
        **kwargs,
    )
    try:
        await store.ensure_container()
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.delete_container()
            await store.aclose()


def _urlopen_sync(
    url: str, data: bytes | None, method: str, headers: dict[str, str]
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, "", response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get("x-ms-error-code", ""), error.read()


async def urlopen(
    url: str, data: bytes | None = None, method: str = "GET", **headers: str
) -> tuple[int, str, bytes]:
    """What a container with only the standard library gets: (status, error code, body)."""
    return await anyio.to_thread.run_sync(_urlopen_sync, url, data, method, headers)


def blob_url(container_sas_url: str, name: str) -> str:
    """A blob's URL under a container SAS URL: the name goes before the query."""
    base, _, query = container_sas_url.partition("?")
    return f"{base}/{name}?{query}"


#: The headers a container sends to create an outcome through a create-only SAS.
CREATE = {
    "x-ms-blob-type": "BlockBlob",
    "x-ms-version": API_VERSION,
    "If-None-Match": "*",
    "Content-Type": "application/octet-stream",
}


async def test_put_get_delete(azurite: Azurite) -> None:
    async with storage(azurite) as store:
        assert await store.put("run/a.bin", b"\x00alpha") is True
        assert await store.put("run/a.bin", b"beta") is True  # replaces
        await store.put("run/b c+d%.bin", b"")  # a name that needs quoting, empty content
        await store.put("other/x", b"x")
        assert await store.get("run/a.bin") == b"beta"
        assert await store.get("run/b c+d%.bin") == b""
        assert await store.get("run/missing") is None
        assert await store.get_many(["run/a.bin", "run/missing", "other/x"], limit=2) == {
            "run/a.bin": b"beta",
            "other/x": b"x",
        }
        assert await store.list("run/") == ["run/a.bin", "run/b c+d%.bin"]
        assert await store.list("") == ["other/x", "run/a.bin", "run/b c+d%.bin"]
        await store.delete(["run/a.bin", "run/never-there"])
        assert await store.list("") == ["other/x", "run/b c+d%.bin"]
        await store.delete_prefix("run/")
        assert await store.list("") == ["other/x"]
        await store.delete_prefix("nothing/")


async def test_list_follows_next_marker(azurite: Azurite) -> None:
    pages: list[str] = []

    async def seen(request: httpx.Request) -> None:
        if request.url.params.get("comp") == "list":
            pages.append(request.url.params.get("marker", ""))

    async with (
        httpx.AsyncClient(event_hooks={"request": [seen]}) as client,
        storage(azurite, client=client, concurrency=4) as store,
    ):
        names = [f"out/{i:03d}.bin" for i in range(11)]
        async with anyio.create_task_group() as group:
            for name in names:
                group.start_soon(store.put, name, name.encode())
        await store.put("outside", b"")
        pages.clear()
        assert await store.list("out/", page_size=3) == names
        assert len(pages) == 4 and pages[0] == "" and all(pages[1:])
        pages.clear()
        assert await store.list("out/") == names
        assert len(pages) == 1
        await store.delete_prefix("out/")
        assert await store.list("") == ["outside"]


async def test_create_only_writes_once(azurite: Azurite) -> None:
    async with storage(azurite) as store:
        assert await store.put("out/1.bin", b"first", create_only=True) is True
        assert await store.put("out/1.bin", b"second", create_only=True) is False
        assert await store.get("out/1.bin") == b"first"


async def test_missing_container(azurite: Azurite) -> None:
    store = BlobStore(
        azurite.account, azurite.key, f"absent-{uuid.uuid4().hex}", endpoint=azurite.endpoint
    )
    try:
        assert await store.get("x") is None
        assert await store.list("") == []
        await store.delete(["x"])
        with pytest.raises(LaunchError, match="404 ContainerNotFound") as caught:
            await store.put("x", b"x")
        assert not isinstance(caught.value, BackendUnavailable)
        await store.delete_container()
    finally:
        await store.aclose()


async def test_read_sas_reads_one_blob_only(azurite: Azurite) -> None:
    async with storage(azurite) as store:
        await store.put("in/0.bin", b"zero")
        await store.put("in/1.bin", b"one")
        url = store.sas_url("in/0.bin", "r", time.time() + HOUR)
        assert "sr=b" in url and "sp=r" in url and f"sv={API_VERSION}" in url
        assert await urlopen(url) == (200, "", b"zero")
        other = url.replace("in/0.bin", "in/1.bin")
        assert (await urlopen(other))[:2] == (403, "AuthorizationFailure")
        put = await urlopen(url, b"x", "PUT", **{"x-ms-blob-type": "BlockBlob"})
        assert put[:2] == (403, "AuthorizationPermissionMismatch")
        assert await store.get("in/0.bin") == b"zero"
        # A read SAS for a blob that does not exist (yet): 404, not 403.
        later = store.sas_url("in/2.bin", "r", time.time() + HOUR)
        assert (await urlopen(later))[:2] == (404, "BlobNotFound")


async def test_expired_sas_is_refused(azurite: Azurite) -> None:
    async with storage(azurite) as store:
        await store.put("in/0.bin", b"zero")
        expired = store.sas_url("in/0.bin", "r", time.time() - 5)
        assert (await urlopen(expired))[:2] == (403, "AuthorizationFailure")
        create = blob_url(store.container_sas_url("c", time.time() - 5), "out/1.bin")
        assert (await urlopen(create, b"x", "PUT", **CREATE))[:2] == (403, "AuthorizationFailure")
        assert await store.list("out/") == []


async def test_create_only_container_sas(azurite: Azurite) -> None:
    """``sp=c`` on the container: a new blob can be written once, by name; nothing can
    be overwritten, read, listed or deleted through it. Azurite refuses a second write
    with 403 AuthorizationPermissionMismatch (not the 409 a Shared Key put gets)."""
    async with storage(azurite) as store:
        sas = store.container_sas_url("c", time.time() + HOUR)
        assert "sr=c" in sas and "sp=c" in sas
        first = await urlopen(blob_url(sas, "out/7.bin"), b"outcome", "PUT", **CREATE)
        assert first[0] == 201
        again = await urlopen(blob_url(sas, "out/7.bin"), b"other", "PUT", **CREATE)
        assert again[:2] == (403, "AuthorizationPermissionMismatch")
        plain = {key: value for key, value in CREATE.items() if key != "If-None-Match"}
        overwrite = await urlopen(blob_url(sas, "out/7.bin"), b"other", "PUT", **plain)
        assert overwrite[:2] == (403, "AuthorizationPermissionMismatch")
        assert await store.get("out/7.bin") == b"outcome"
        read = await urlopen(blob_url(sas, "out/7.bin"))
        assert read[:2] == (403, "AuthorizationPermissionMismatch")
        listed = await urlopen(sas + "&restype=container&comp=list")
        assert listed[:2] == (403, "AuthorizationPermissionMismatch")
        deleted = await urlopen(blob_url(sas, "out/7.bin"), method="DELETE")
        assert deleted[:2] == (403, "AuthorizationPermissionMismatch")
        assert await store.list("") == ["out/7.bin"]


async def test_wrong_key_is_backend_unavailable(azurite: Azurite) -> None:
    wrong = base64.b64encode(b"not the account key, 64 bytes long....." * 2).decode()
    store = BlobStore(azurite.account, wrong, "asyncexec", endpoint=azurite.endpoint)
    try:
        with pytest.raises(
            BackendUnavailable, match="refused to create the container: 403 Auth"
        ) as caught:
            await store.ensure_container()
        with pytest.raises(BackendUnavailable):
            await store.get("x")
    finally:
        await store.aclose()
    text = f"{caught.value!s} {caught.value!r}"
    assert wrong not in text and azurite.key not in text
    assert "sig=" not in text


async def test_connection_string(azurite: Azurite) -> None:
    container = f"test-{uuid.uuid4().hex}"
    store = BlobStore.from_connection_string(azurite.connection_string, container)
    assert store.endpoint == azurite.endpoint and store.account == azurite.account
    try:
        await store.ensure_container()
        await store.ensure_container()  # 409 ContainerAlreadyExists: fine
        await store.put("a", b"1")
        assert await store.get("a") == b"1"
    finally:
        await store.delete_container()
        await store.aclose()
    development = BlobStore.from_connection_string("UseDevelopmentStorage=true", container)
    assert (development.account, development.endpoint) == ("devstoreaccount1", azurite.endpoint)
    await development.aclose()


async def test_secrets_stay_out_of_repr(azurite: Azurite) -> None:
    store = BlobStore(azurite.account, azurite.key, "c", endpoint=azurite.endpoint)
    try:
        for text in (repr(store), str(store)):
            assert azurite.key not in text and "Eby8" not in text
            assert "devstoreaccount1" in text
        url = store.sas_url("a b", "r", time.time() + HOUR)
        signature = url.partition("sig=")[2]
        assert signature and signature not in redact(url)
        assert redact(url).endswith("sig=REDACTED")
        with pytest.raises(ValueError, match="connection string needs") as caught:
            BlobStore.from_connection_string(f"AccountKey={azurite.key}", "c")
        assert azurite.key not in str(caught.value)
        with pytest.raises(ValueError, match="not SAS permissions"):
            store.sas_url("a", "rq", time.time() + HOUR)
    finally:
        await store.aclose()
    with pytest.raises(ValueError, match="not valid base64") as caught:
        BlobStore(azurite.account, "secret!not-base64", "c")
    assert "secret" not in str(caught.value)


async def test_unreachable_is_backend_unavailable() -> None:
    with socket_port() as port:
        store = BlobStore(
            "devstoreaccount1",
            base64.b64encode(b"k" * 64).decode(),
            "c",
            endpoint=f"http://127.0.0.1:{port}/devstoreaccount1",
            max_attempts=2,
        )
        try:
            with pytest.raises(BackendUnavailable, match="cannot be reached"):
                await store.get("x")
        finally:
            await store.aclose()


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A local port nothing listens on (bound, not listening, while in use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


async def test_transient_failures_are_retried() -> None:
    """503 ServerBusy and 500 are retried (a real socket, canned answers), then the
    answer counts; a service that stays busy is BackendUnavailable."""
    busy = (503, "ServerBusy")
    async with canned_server([busy, (500, "InternalError"), (201, "")]) as (endpoint, seen):
        store = BlobStore(
            "devstoreaccount1",
            base64.b64encode(b"k" * 64).decode(),
            "c",
            endpoint=endpoint,
            max_attempts=3,
        )
        try:
            assert await store.put("out/1.bin", b"x", create_only=True) is True
        finally:
            await store.aclose()
    assert seen == ["PUT /devstoreaccount1/c/out/1.bin"] * 3
    async with canned_server([busy] * 3) as (endpoint, seen):
        store = BlobStore(
            "devstoreaccount1",
            base64.b64encode(b"k" * 64).decode(),
            "c",
            endpoint=endpoint,
            max_attempts=3,
        )
        try:
            with pytest.raises(BackendUnavailable, match="503 ServerBusy"):
                await store.get("x")
        finally:
            await store.aclose()
    assert len(seen) == 3


@contextlib.asynccontextmanager
async def canned_server(
    answers: list[tuple[int, str]],
) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server on a local port that gives ``answers`` (status, x-ms-error-code) in
    turn, one per connection; yields its endpoint and the request lines it saw."""
    seen: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            head, _, body = received.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            length = next(
                (
                    int(line.split(":")[1])
                    for line in lines
                    if line.lower().startswith("content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += await stream.receive()
            seen.append(lines[0].rsplit(" ", 1)[0])
            status, code = answers.pop(0)
            extra = f"x-ms-error-code: {code}\r\n" if code else ""
            headers = f"{extra}Content-Length: 0\r\nConnection: close\r\n"
            await stream.send(f"HTTP/1.1 {status} X\r\n{headers}\r\n".encode())

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}/devstoreaccount1", seen
        group.cancel_scope.cancel()
