"""The listeners and the sessions: accept a client, log in upstream for it, then move bytes both ways.

Per client connection (plain text: loopback or a Unix socket): an SSLRequest or GSSENCRequest is
answered ``N``; the startup packet's user must be the proxy's identity (or missing); ``database``,
``application_name``, ``options`` and the other startup parameters go upstream unchanged. After the
upstream login (:mod:`.upstream`) the client gets the server's AuthenticationOk, ParameterStatus and
ReadyForQuery, and a BackendKeyData with the server's pid and a key made by the proxy: a cancel request
with that key is forwarded upstream with the server's key over a new TLS connection (an unknown key is
ignored, as Postgres does). From then on both transports get forwarding protocols (:class:`_Pipe`):
extended protocol, COPY, LISTEN/NOTIFY and pipelining pass untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from .. import _wire as wire
from .._pipe import Pipe
from .._telemetry import event
from ..connector import Connector
from ..diagnosis import Kind
from ..endpoints import Target
from ..errors import CredentialsUnavailable, LakebaseError
from ..retry import classify
from . import upstream

log = logging.getLogger("lakebase.proxy")

STARTUP_TIMEOUT = 30.0  # a client that sends no startup packet in this time is dropped


@dataclass
class EndpointStats:
    connections_total: int = 0
    connections_open: int = 0
    refused_max_connections: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0
    login_errors: dict[str, int] = field(default_factory=dict)
    token_errors: int = 0
    protocol_errors: int = 0
    cancels_forwarded: int = 0
    last_login_ok: float = 0.0  # monotonic time of the last successful upstream login
    last_login_failed: float = 0.0  # ... and of the last failed one (a client's or a readiness probe's)


@dataclass(eq=False)
class Session:
    listener: Listener
    up: upstream.Upstream
    client_key: bytes
    transports: list[asyncio.Transport] = field(default_factory=list)
    pipes: list[_Pipe] = field(default_factory=list)
    writers: tuple[asyncio.StreamWriter, ...] = ()  # kept: a collected StreamWriter closes its transport
    closed: bool = False


class _Pipe(Pipe):
    """A session's forwarding in one direction; counts the bytes."""

    def __init__(self, stats: EndpointStats, to_server: bool, on_lost: Callable[[], None]) -> None:
        super().__init__(on_lost)
        self.stats = stats
        self.to_server = to_server

    def data_received(self, data: bytes) -> None:
        if self.to_server:
            self.stats.bytes_to_server += len(data)
        else:
            self.stats.bytes_to_client += len(data)
        if self.peer is not None:
            self.peer.write(data)


class Listener:
    """One served endpoint: its connector (settings, credential cache, target), its sockets, its counts."""

    def __init__(self, proxy: Proxy, connector: Connector, port: int, explicit_port: bool) -> None:
        self.proxy = proxy
        self.connector = connector
        self.port = port
        self.explicit_port = explicit_port
        self.path: str | None = None  # the Unix socket's path
        self.stats = EndpointStats()
        self.server: asyncio.base_events.Server | None = None
        self.target: Target | None = None

    @property
    def name(self) -> str:
        return self.connector.settings.target_name

    def describe(self) -> str:
        where = self.path or f"{self.proxy.config.address}:{self.port}"
        return f"{self.name} on {where}"


class Proxy:
    """Serves each listener's endpoint; see the module doc. Runs on one event loop."""

    def __init__(self, config: Any, listeners: list[tuple[Connector, int, bool]]) -> None:
        self.config = config
        self.listeners = [Listener(self, c, port, explicit) for c, port, explicit in listeners]
        self.sessions: set[Session] = set()
        self._by_key: dict[tuple[int, bytes], Session] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self.handshaking = 0  # clients whose startup packet is still to come
        self.started = False
        self.draining = False
        self.stopped = asyncio.Event()
        self.started_at = time.monotonic()

    @property
    def connections_open(self) -> int:
        return sum(li.stats.connections_open for li in self.listeners)

    # ---- starting and stopping -------------------------------------------------------------------
    async def start(self) -> None:
        for listener in self.listeners:
            listener.target = await listener.connector.atarget()
            await self._listen(listener)
            event(log, logging.INFO, "proxy.listening", f"serving {listener.describe()} as "
                  f"{listener.target.user} (upstream {listener.target.host}:{listener.target.port}, "
                  f"sslmode={listener.target.sslmode})", endpoint=listener.name, address=self.config.address,
                  port=listener.port, socket=listener.path, user=listener.target.user,
                  database=listener.target.database)
        self.started = True

    async def _listen(self, listener: Listener) -> None:
        cfg = self.config
        if cfg.unix_socket:
            directory = os.path.abspath(cfg.unix_socket)
            listener.path = os.path.join(directory, f".s.PGSQL.{listener.port}")
            if os.path.exists(listener.path):
                if _socket_in_use(listener.path):
                    raise OSError(f"{listener.path} is in use by another server")
                os.unlink(listener.path)  # left over from a process that is gone
            # The socket is the identity: only its owner may connect, from the moment it exists (a umask
            # for the bind, not a chmod after it: other users could connect in between). Another thread's
            # file made meanwhile only gets stricter permissions.
            umask = os.umask(0o177)
            try:
                listener.server = await asyncio.start_unix_server(
                    lambda r, w: self._accept(listener, r, w), listener.path, backlog=512)
            finally:
                os.umask(umask)
            os.chmod(listener.path, 0o600)
            return
        from .config import port_free

        port = listener.port
        if not listener.explicit_port and port:
            first = port
            while not port_free(cfg.address, port):
                port += 1
                if port - first > 100:
                    raise OSError(f"no free port from {first} to {port} on {cfg.address}")
            if port != first:
                event(log, logging.WARNING, "proxy.port_taken",
                      f"port {first} is taken on {cfg.address}, so {listener.name} is served on port {port} "
                      f"instead; connect with port={port}, or pick one with --port / --endpoint NAME=PORT",
                      endpoint=listener.name, wanted=first, port=port)
        listener.server = await asyncio.start_server(
            lambda r, w: self._accept(listener, r, w), cfg.address, port, reuse_address=True, backlog=512)
        listener.port = int(listener.server.sockets[0].getsockname()[1])

    async def drain(self, delay: float) -> int:
        """Stop accepting; wait up to ``delay`` s for the open sessions to end; close what is left."""
        self.draining = True
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        open_now = self.connections_open
        event(log, logging.INFO, "proxy.draining",
              f"stopped accepting connections; waiting up to {delay:g}s for {open_now} open connection(s)",
              open=open_now, delay=delay)
        deadline = time.monotonic() + delay
        while self.connections_open and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.connections_open
        for session in list(self.sessions):
            for transport in session.transports:
                transport.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        for listener in self.listeners:
            if listener.path:
                with contextlib.suppress(OSError):
                    os.unlink(listener.path)
        event(log, logging.INFO, "proxy.stopped",
              f"stopped; {left} connection(s) were still open and closed" if left else "stopped; no open connection",
              closed=left)
        self.stopped.set()
        return left

    # ---- a client ----------------------------------------------------------------------------------
    async def _accept(self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        handed_off = False
        try:
            handed_off = await self._serve(listener, reader, writer)
        except wire.ProtocolError as exc:
            listener.stats.protocol_errors += 1
            event(log, logging.INFO, "proxy.protocol_error", f"{listener.name}: a client sent an invalid "
                  f"packet: {exc}", endpoint=listener.name)
            await _send(writer, wire.error_response("08P01", str(exc)))
        except TimeoutError:
            await _send(writer, wire.error_response("08006", "timeout expired during the startup phase"))
        except (ConnectionError, asyncio.IncompleteReadError, EOFError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # one client never takes the proxy down
            log.exception("unexpected error while serving a client of %s", listener.name)
            await _send(writer, wire.error_response("XX000", "internal error in lakebase proxy; see its log"))
        finally:
            self._handlers.discard(task)
            if not handed_off:
                writer.close()

    async def _read_startup(self, reader: asyncio.StreamReader, user: str) -> wire.StartupPacket:
        length = wire.startup_length(await reader.readexactly(4))
        return wire.parse_client_startup(await reader.readexactly(length - 4), user)

    async def _read_handshake(self, listener: Listener, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> wire.StartupPacket | None:
        """The client's startup packet (or cancel request), after any SSL/GSS requests; None when
        --max-connections clients are already in this phase (each may hold it STARTUP_TIMEOUT s, so
        silent clients could otherwise hold any number of sockets)."""
        target = listener.target
        assert target is not None
        limit = self.config.max_connections
        if limit and self.handshaking >= limit:
            listener.stats.refused_max_connections += 1
            event(log, logging.WARNING, "proxy.max_connections",
                  f"{listener.name}: refused a connection: {limit} clients have not sent their startup packet "
                  "yet (--max-connections)", endpoint=listener.name, limit=limit)
            await _send(writer, wire.error_response(
                "53300", f"too many connections to lakebase proxy: {limit} are still starting up "
                f"(--max-connections {limit})", hint="try again; clients that send nothing are dropped after "
                f"{STARTUP_TIMEOUT:g}s"))
            return None
        self.handshaking += 1
        try:
            packet = await asyncio.wait_for(self._read_startup(reader, target.user), STARTUP_TIMEOUT)
            for _ in range(2):  # at most an SSLRequest and a GSSENCRequest before the startup packet
                if packet.kind not in ("ssl", "gss"):
                    break
                writer.write(b"N")  # plain text: the client is local; the proxy encrypts upstream
                await writer.drain()
                packet = await asyncio.wait_for(self._read_startup(reader, target.user), STARTUP_TIMEOUT)
            return packet
        finally:
            self.handshaking -= 1

    async def _serve(self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        target = listener.target
        assert target is not None
        packet = await self._read_handshake(listener, reader, writer)
        if packet is None:
            return False
        if packet.kind == "cancel":
            await self._cancel(packet)
            return False
        if packet.kind != "startup":
            raise wire.ProtocolError(f"unexpected {packet.kind} request")
        params = dict(packet.params)
        if params["user"] != target.user:
            listener.stats.login_errors["wrong_user"] = listener.stats.login_errors.get("wrong_user", 0) + 1
            await _send(writer, wire.error_response(
                "28000", f'lakebase proxy logs in as "{target.user}" only, not as "{params["user"]}"',
                hint=f'connect with user "{target.user}" (or no user name at all), and no password'))
            return False
        limit = self.config.max_connections
        if limit and self.connections_open >= limit:
            listener.stats.refused_max_connections += 1
            event(log, logging.WARNING, "proxy.max_connections",
                  f"{listener.name}: refused a connection: {limit} are open (--max-connections)",
                  endpoint=listener.name, limit=limit)
            await _send(writer, wire.error_response(
                "53300", f"too many connections to lakebase proxy: {limit} are open (--max-connections {limit})",
                hint="close idle connections, or start the proxy with a higher --max-connections"))
            return False
        params.setdefault("database", target.database)
        params.setdefault("application_name", target.application_name)
        listener.stats.connections_open += 1  # counted from here: a login in progress holds a slot
        counted = True
        try:
            up = await self._login(listener, params, packet.version, writer)
            if up is None:
                return False
            handed_off = self._hand_off(listener, up, reader, writer)
            counted = not handed_off  # a session's own end uncounts it
            return handed_off
        finally:
            if counted:
                listener.stats.connections_open -= 1

    async def _login(self, listener: Listener, params: dict[str, str], version: int,
                     writer: asyncio.StreamWriter) -> upstream.Upstream | None:
        target = listener.target
        assert target is not None

        async def attempt(password: str, timeout: float) -> upstream.Upstream:
            return await upstream.login(target, params, version, password, timeout)

        try:
            up = await listener.connector.aconnect(attempt)
        except Exception as exc:
            await self._login_failed(listener, exc, writer)
            return None
        listener.stats.last_login_ok = time.monotonic()
        return up

    async def _login_failed(self, listener: Listener, exc: BaseException, writer: asyncio.StreamWriter) -> None:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, upstream.UpstreamError):
            cause = cause.__cause__ or getattr(cause, "cause", None)
        root = getattr(exc, "cause", None) or exc.__cause__ or exc  # the library's error wraps the last one
        verdict = classify(root)
        reason = verdict.sqlstate or verdict.reason
        if isinstance(exc, CredentialsUnavailable):
            listener.stats.token_errors += 1
            reason = "no token"
        listener.stats.login_errors[reason] = listener.stats.login_errors.get(reason, 0) + 1
        listener.stats.last_login_failed = time.monotonic()
        event(log, logging.WARNING, "proxy.login_failed", f"{listener.name}: a client's login failed: {exc}",
              endpoint=listener.name, reason=reason)
        if isinstance(cause, upstream.UpstreamError):
            await _send(writer, cause.message())  # as the server sent it
            return
        code = verdict.sqlstate or ("08001" if verdict.kind is Kind.TRANSIENT or isinstance(exc, LakebaseError)
                                    else "XX000")
        await _send(writer, wire.error_response(code, f"lakebase proxy: {exc}"))

    def _hand_off(self, listener: Listener, up: upstream.Upstream, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> bool:
        """Send the client the server's greeting with the proxy's key, then only move bytes."""
        client_key = secrets.token_bytes(len(up.key) or 4)
        greeting = up.greeting
        out = b"".join(greeting[:-1]) + wire.backend_key_data(up.pid, client_key) + greeting[-1]
        client_t = cast(asyncio.Transport, writer.transport)
        server_t = cast(asyncio.Transport, up.writer.transport)
        if client_t.is_closing() or reader.at_eof():  # the client left while the proxy logged in for it
            up.writer.write(wire.TERMINATE)
            up.writer.close()
            return False
        session = Session(listener, up, client_key)
        stats = listener.stats

        def lost() -> None:
            if session.closed:
                return
            session.closed = True
            self.sessions.discard(session)
            self._by_key.pop((up.pid, client_key), None)
            stats.connections_open -= 1

        to_server = _Pipe(stats, True, lost)
        to_client = _Pipe(stats, False, lost)
        to_server.peer, to_client.peer = server_t, client_t
        pending_client = bytes(reader._buffer)  # type: ignore[attr-defined]  # pipelined early bytes
        pending_server = bytes(up.reader._buffer)  # type: ignore[attr-defined]
        client_t.set_protocol(to_server)
        server_t.set_protocol(to_client)
        session.transports = [client_t, server_t]
        session.pipes = [to_server, to_client]
        session.writers = (writer, up.writer)
        self.sessions.add(session)
        self._by_key[(up.pid, client_key)] = session
        stats.connections_total += 1
        client_t.write(out + pending_server)
        if pending_client:
            server_t.write(pending_client)
        if client_t.is_closing() or server_t.is_closing():
            client_t.close()
            server_t.close()
            lost()
        return True

    async def _cancel(self, packet: wire.StartupPacket) -> None:
        session = self._by_key.get((packet.cancel_pid, packet.cancel_key))
        if session is None:
            return  # as Postgres: an unknown key is ignored
        listener = session.listener
        assert listener.target is not None
        try:
            await upstream.cancel(listener.target, session.up.pid, session.up.key)
        except Exception as exc:
            event(log, logging.WARNING, "proxy.cancel_failed",
                  f"{listener.name}: could not forward a cancel request: {exc}", endpoint=listener.name)
            return
        listener.stats.cancels_forwarded += 1

    # ---- health ------------------------------------------------------------------------------------
    async def readiness(self, timeout: float = 5.0, token_timeout: float = 1.0) -> tuple[bool, list[str]]:
        """Ready: every endpoint has a valid token and its latest upstream login (a client's or a probe's)
        succeeded; fewer open connections than --max-connections. A probe logs in only when there was no
        successful login yet or the latest one failed: probes every few seconds (a sidecar's) must not
        keep a scale-to-zero compute awake."""
        problems: list[str] = []
        limit = self.config.max_connections
        if not self.started or self.draining:
            problems.append("not serving" if not self.started else "shutting down")
        if limit and self.connections_open >= limit:
            problems.append(f"{self.connections_open} connections open (--max-connections {limit})")
        for listener in self.listeners:
            cred = listener.connector.credentials.credential if listener.connector.prepared else None
            if cred is None or cred.expires_in() <= 0:
                try:
                    await listener.connector.credentials.atoken(timeout=token_timeout)
                except Exception as exc:
                    problems.append(f"{listener.name}: no valid token: {exc}")
                    continue
            stats = listener.stats
            if (not stats.last_login_ok or stats.last_login_failed >= stats.last_login_ok) and not problems:
                try:
                    await asyncio.wait_for(self.probe(listener), timeout)
                except Exception as exc:
                    stats.last_login_failed = time.monotonic()
                    problems.append(f"{listener.name}: login failed: {exc}")
        return not problems, problems

    async def probe(self, listener: Listener) -> None:
        """Log in upstream and out again."""
        target = listener.target
        assert target is not None
        params = {"user": target.user, "database": target.database, "application_name": "lakebase-proxy-probe"}

        async def attempt(password: str, timeout: float) -> upstream.Upstream:
            return await upstream.login(target, params, wire.PROTOCOL_3_0, password, timeout)

        up = await listener.connector.aconnect(attempt)
        listener.stats.last_login_ok = time.monotonic()
        up.writer.write(wire.TERMINATE)
        up.writer.close()


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(Exception):
        writer.write(data)
        await asyncio.wait_for(writer.drain(), 2)
