"""SSHShell: the Shell seam on another machine, over a small pool of SSH connections.

Built on asyncssh (asyncio only). A remote command announces its process id
first, so that it can be killed with all it started.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._aio import require_asyncio
from .._arguments import remembers_arguments
from .._exceptions import BackendUnavailable
from ..abc import Completed, Shell, SpawnedProcess
from ._asyncssh import (
    ChannelReceiveStream,
    ChannelSendStream,
    connection_failure,
    import_asyncssh,
)

if TYPE_CHECKING:
    import asyncssh

__all__ = ["DEFAULT_CHANNELS_PER_CONNECTION", "SSHShell", "SSHShellStats"]

log = logging.getLogger("asyncexec")

_ASYNCSSH = "asyncssh is built on asyncio"

# A remote command announces its process id (which is also its process group's:
# sshd starts every session's command in a session of its own) so that it can be
# killed with all it started, whatever the server's support for signal requests.
_PID_MARK = b"asyncexec-pid "
_ANNOUNCE_PID = 'echo "asyncexec-pid $$"; exec "$@"'
#: Lines a login shell may print before our command starts (banners, module messages).
_MAX_NOISE_LINES = 200

# What sshd's default of 10 sessions per connection leaves room for: login nodes
# often count more than the channels we open (agent forwarding, a user's own sessions).
DEFAULT_CHANNELS_PER_CONNECTION = 6


@dataclasses.dataclass(frozen=True)
class SSHShellStats:
    """What :meth:`SSHShell.stats` says: the shell's connections, oldest first.

    Attributes:
        connections: connections held: open ones, and dropped ones whose
            channels are not all closed yet.
        channels: channels open on each connection (commands running,
            processes spawned and not closed).
        channel_limits: channels each connection may carry at once:
            ``channels_per_connection``, lowered where the server refused one
            (its ``MaxSessions``).
    """

    connections: int
    channels: tuple[int, ...]
    channel_limits: tuple[int, ...]


class _Connection:
    """One SSH connection and how many of its channels are in use."""

    def __init__(self, conn: asyncssh.SSHClientConnection, limit: int) -> None:
        self.conn = conn
        self.used = 0  # channels open
        self.limit = limit  # lowered when the server refuses a channel
        self.broken = False

    @property
    def usable(self) -> bool:
        return not self.broken and not self.conn.is_closed()


class _SSHProcess(SpawnedProcess):
    """A command started over SSH: its channel's streams, and its process group."""

    def __init__(
        self,
        shell: SSHShell,
        connection: _Connection,
        process: asyncssh.SSHClientProcess[bytes],
        pid: int | None,
    ) -> None:
        self._shell = shell
        self._connection = connection
        self._process = process
        self._pid = pid
        self.stdin = ChannelSendStream(process.stdin)
        self.stdout = ChannelReceiveStream(process.stdout)
        self.stderr = ChannelReceiveStream(process.stderr)
        self._released = False

    @property
    def pid(self) -> int | None:
        """The remote process id, as its command announced it (None if it did not)."""
        return self._pid

    async def wait(self) -> int:
        await self._process.wait_closed()
        code = self._process.returncode
        # No status at all: the connection went down (ssh(1) says 255 then).
        return 255 if code is None else code

    async def kill(self) -> None:
        if self._process.returncode is None and self.pid is not None:
            await self._shell._kill(self.pid)
        # Whether or not the kill got through (no free channel, a dead link), the
        # channel goes: the remote command loses its stdin and its session.
        self._process.close()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._process.returncode is None and not self._connection.broken:
                await self.kill()
            self._process.close()
            with anyio.move_on_after(10):
                await self._process.wait_closed()
            if not self._released:
                self._released = True
                self._shell._release(self._connection)


class SSHShell(Shell):
    """Run commands on a host over SSH (asyncssh; asyncio only).

    Connections are pooled: each carries at most ``channels_per_connection``
    channels at once (OpenSSH's ``MaxSessions`` is 10 by default, and login
    nodes count other sessions too), and up to ``max_connections`` are opened
    as work needs them. A refused channel is retried on another connection, a
    connection that dropped is replaced on next use. Commands are killed with
    their whole process group when cancelled. :meth:`stats` shows the pool.

    Host keys are verified (``~/.ssh/known_hosts``, or ``known_hosts`` in
    ``connect_options``); ``verify_host_key=False`` is the only way to skip it.

    Args:
        host: the host name or address.
        port: the SSH port.
        username: the remote user (default: asyncssh's, your local one).
        connect_options: passed as they are to ``asyncssh.connect`` (client
            keys, passphrase, known_hosts, jump hosts...). Never logged or shown.
        verify_host_key: check the server's host key (the default). False
            accepts any key: only for throwaway hosts on a trusted network.
        env: environment variables set for every command.
        cwd: working directory of every command.
        max_connections: connections at most.
        channels_per_connection: channels open at once on one connection.
        connect_timeout: seconds to establish a connection and log in.
        shares_files: the host sees this machine's files at the same paths (a
            shared file system holding your project and its modules, importable
            there by name): launchers then send your own modules' functions by
            name rather than by value (see :attr:`Shell.shares_files`).
    """

    @remembers_arguments  # (for asyncexec.config.to_dict)
    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        username: str | None = None,
        connect_options: Mapping[str, Any] | None = None,
        verify_host_key: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        max_connections: int = 4,
        channels_per_connection: int = DEFAULT_CHANNELS_PER_CONNECTION,
        connect_timeout: float = 30.0,
        shares_files: bool = False,
    ) -> None:
        options = dict(connect_options or {})
        if verify_host_key:
            if "known_hosts" in options and options["known_hosts"] is None:
                raise ValueError(
                    "connect_options={'known_hosts': None} would skip host key checks: "
                    "pass verify_host_key=False to do that on purpose"
                )
        else:
            options["known_hosts"] = None
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if channels_per_connection < 1:
            raise ValueError(
                f"channels_per_connection must be >= 1, got {channels_per_connection!r}"
            )
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout!r}")
        for name in env or {}:
            if not name or "=" in name or not name.replace("_", "a").isalnum():
                raise ValueError(f"not an environment variable name: {name!r}")
        self._host = host
        self.port = port
        self.username = username
        self._options = options
        self._env = dict(env or {})
        self._cwd = cwd
        self._max_connections = max_connections
        self._channels = channels_per_connection
        self._connect_timeout = connect_timeout
        self._shares_files = bool(shares_files)
        self._connections: list[_Connection] = []
        self._connecting = False
        self._freed: anyio.Event | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SSHShell({self._target()!r})"

    @property
    def host(self) -> str:
        """The host name or address commands run on, as given."""
        return self._host

    @property
    def shares_files(self) -> bool:
        """Whether the host sees this machine's files at the same paths (as given)."""
        return self._shares_files

    @property
    def channel_capacity(self) -> int:
        """Channels this shell may have open at once, over all its connections."""
        return self._max_connections * self._channels

    def stats(self) -> SSHShellStats:
        """Its connections now, and the channels open on each (a snapshot)."""
        held = [c for c in self._connections if c.usable or c.used]
        return SSHShellStats(
            connections=len(held),
            channels=tuple(c.used for c in held),
            channel_limits=tuple(c.limit for c in held),
        )

    @property
    def place(self) -> Hashable:
        """The host, port and user it logs in as: shells with equal ones reach the
        same account on the same machine."""
        return ("ssh", self.host, self.port, self.username)

    def _target(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.host}:{self.port}"

    # -- the seam ---------------------------------------------------------------------

    async def run(self, argv: Sequence[str], *, input: bytes | None = None) -> Completed:
        """Run ``argv`` remotely to completion and collect its output.

        Raises:
            BackendUnavailable: the host cannot be reached, or the connection
                dropped while the command ran (it may or may not have run).

        Cancellation: once the command has announced its process id, its
        process group is killed (shielded, over a channel of its own) and the
        channel closed before the cancellation propagates. Cancelled before
        that, the channel is closed only: the command loses its input and
        output, and is not killed by id.
        """
        connection, process, pid = await self._start(argv)
        try:
            try:
                if input:
                    process.stdin.write(input)
                process.stdin.write_eof()
                stdout, stderr = await process.communicate()
            except Exception as exc:
                if connection_failure(exc):
                    connection.broken = True
                    raise self._unavailable(
                        f"the connection dropped running {argv[0]}", exc
                    ) from exc
                raise
            if process.returncode is None:
                connection.broken = True
                raise self._unavailable(f"the connection dropped running {argv[0]}", None)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if process.returncode is None and pid is not None and not connection.broken:
                    await self._kill(pid)
                process.close()
            raise
        finally:
            self._release(connection)
        return Completed(
            argv=list(argv),
            returncode=process.returncode,
            stdout=stdout or b"",
            stderr=stderr or b"",
        )

    async def spawn(self, argv: Sequence[str]) -> SpawnedProcess:
        """Start ``argv`` remotely with piped streams; it holds a channel until closed.

        Cancellation: nothing is handed back; a channel opened for the command
        is closed and given back (the command loses its input and output, and
        is not killed by id: its id was not known yet).
        """
        connection, process, pid = await self._start(argv)
        return _SSHProcess(self, connection, process, pid)

    async def aclose(self) -> None:
        """Close every connection. Idempotent; the shell reconnects if used again.

        Cancellation: shielded: every connection is closed (the wait for each
        bounded at 5 s) before the cancellation propagates.
        """
        connections, self._connections = self._connections, []
        with anyio.CancelScope(shield=True):
            for connection in connections:
                connection.broken = True
                connection.conn.close()
            for connection in connections:
                with anyio.move_on_after(5):
                    await connection.conn.wait_closed()
        self._wake()

    # -- commands -----------------------------------------------------------------

    def _command(self, argv: Sequence[str]) -> str:
        if not argv:
            raise ValueError("empty command")
        words = ["exec"]
        if self._env:
            words += ["env", *(f"{name}={value}" for name, value in self._env.items())]
        words += ["sh", "-c", _ANNOUNCE_PID, "asyncexec", *argv]
        command = shlex.join(words)
        if self._cwd is not None:
            command = f"cd {shlex.quote(self._cwd)} && {command}"
        return command

    async def _start(
        self, argv: Sequence[str]
    ) -> tuple[_Connection, asyncssh.SSHClientProcess[bytes], int | None]:
        """Open a channel running ``argv``: its connection, process and process id."""
        command = self._command(argv)
        connection, process = await self._open_channel(command)
        pid = None
        try:
            # Skip what the login shell may print first; our command announces itself.
            for _ in range(_MAX_NOISE_LINES):
                line = await process.stdout.readline()
                if not line or line.startswith(_PID_MARK):
                    text = line[len(_PID_MARK) :].strip()
                    pid = int(text) if text.isdigit() else None
                    break
        except BaseException as exc:
            process.close()
            if isinstance(exc, Exception) and connection_failure(exc):
                connection.broken = True
            self._release(connection)
            if isinstance(exc, Exception) and connection_failure(exc):
                raise self._unavailable(f"the connection dropped starting {argv[0]}", exc) from exc
            raise
        return connection, process, pid

    async def _open_channel(
        self, command: str
    ) -> tuple[_Connection, asyncssh.SSHClientProcess[bytes]]:
        asyncssh = import_asyncssh()
        refused = lost = 0
        while True:
            connection = await self._acquire()
            try:
                process = await connection.conn.create_process(command, encoding=None)
            except asyncssh.ChannelOpenError as exc:
                # The server caps sessions per connection (MaxSessions): fewer on this one.
                connection.limit = max(1, connection.used - 1)
                self._release(connection)
                refused += 1
                if refused > 20:
                    raise self._unavailable("the server refuses new channels", exc) from exc
                log.debug(
                    "%s refused a channel (%s); at most %d on that connection",
                    self,
                    exc.reason,
                    connection.limit,
                )
                await anyio.sleep(min(0.02 * refused, 0.5))
                continue
            except BaseException as exc:
                failed = isinstance(exc, Exception) and connection_failure(exc)
                if failed:
                    connection.broken = True
                self._release(connection)
                if not failed:
                    raise
                lost += 1
                if lost > 2:
                    raise self._unavailable("the connection keeps dropping", exc) from exc
                log.info("%s: connection lost (%s), reconnecting", self, exc)
                continue
            return connection, process

    async def _kill(self, pid: int) -> None:
        """Kill a remote command's process group (best effort, on a channel of its own)."""
        script = f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true"
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._connect_timeout):
            try:
                connection, process = await self._open_channel(script)
            except Exception as exc:
                log.warning("%s: could not kill remote process %d: %s", self, pid, exc)
                return
            try:
                process.stdin.write_eof()
                await process.wait_closed()
            except Exception as exc:
                log.warning("%s: could not kill remote process %d: %s", self, pid, exc)
            finally:
                process.close()
                self._release(connection)

    # -- the pool ---------------------------------------------------------------------

    async def _acquire(self) -> _Connection:
        """A connection with a free channel, connecting when every one is full."""
        require_asyncio("SSHShell", _ASYNCSSH)
        while True:
            self._connections = [c for c in self._connections if c.usable or c.used]
            free = [c for c in self._connections if c.usable and c.used < c.limit]
            if free:
                connection = min(free, key=lambda c: c.used)
                connection.used += 1
                return connection
            live = sum(1 for c in self._connections if c.usable)
            if not self._connecting and live < self._max_connections:
                self._connecting = True
                try:
                    connection = await self._connect()
                finally:
                    self._connecting = False
                    self._wake()
                connection.used += 1
                self._connections.append(connection)
                return connection
            if self._freed is None or self._freed.is_set():
                self._freed = anyio.Event()
            await self._freed.wait()

    def _release(self, connection: _Connection) -> None:
        connection.used -= 1
        if connection.broken and connection.used <= 0:
            connection.conn.close()
        self._wake()

    def _wake(self) -> None:
        if self._freed is not None:
            self._freed.set()

    async def _connect(self) -> _Connection:
        asyncssh = import_asyncssh()
        options = dict(self._options)
        options.setdefault("login_timeout", self._connect_timeout)
        # A link that died silently (NAT, suspend) is noticed within about a minute.
        options.setdefault("keepalive_interval", 15)
        options.setdefault("keepalive_count_max", 3)
        options.setdefault("connect_timeout", self._connect_timeout)
        if self.username is not None:
            options.setdefault("username", self.username)
        try:
            conn = await asyncssh.connect(self.host, port=self.port, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            known = options.get("known_hosts", "~/.ssh/known_hosts")
            raise BackendUnavailable(
                f"refusing {self._target()}: its host key is unknown or has changed "
                f"({exc.reason}). If you trust this host, add its key to the known_hosts "
                f"file checked ({known!s}), e.g. `ssh-keyscan -p {self.port} {self.host} "
                f">> ~/.ssh/known_hosts` after checking the fingerprint, or pass "
                "connect_options={'known_hosts': PATH}"
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise BackendUnavailable(
                f"SSH authentication to {self._target()} was refused ({exc.reason}): "
                "check the username and the client keys"
            ) from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise BackendUnavailable(
                f"cannot use the client key for {self._target()}: {exc} "
                "(not a private key, or a wrong passphrase)"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise self._unavailable("cannot connect", exc) from exc
        log.debug("%s: connected", self)
        return _Connection(conn, self._channels)

    def _unavailable(self, what: str, exc: BaseException | None) -> BackendUnavailable:
        detail = f": {exc}" if exc is not None and str(exc) else ""
        return BackendUnavailable(f"SSH to {self._target()}: {what}{detail}")
