"""The TLS auth proxy in front of Postgres, as Lakebase's (Neon's) proxy behaves.

Per client connection: TLS is required (``SSLRequest`` then the handshake; a plain startup is refused
with the message Lakebase gives); the endpoint is chosen by TLS SNI or ``options=endpoint=<id>``; the
password must be a valid, unexpired database credential of the identity whose name is the role, and
the role must be registered for OAuth (``databricks_create_role``). A suspended endpoint is woken, a
restart is waited out. Then the proxy logs in to the backend over its Unix socket (the primary, or
for a read-only endpoint its hot standby, ``replica.py``) and, from the
first ReadyForQuery on, forwards bytes both ways untouched (extended protocol, COPY, LISTEN/NOTIFY,
pipelining all just work). The client sees the backend's real pid with a proxy-made secret key, so
cancel requests are checked here and forwarded with the backend's key.

A password that is no valid token may be the role's native Postgres password, when the project's
native login is on (``_native_login``, ``native_login.py``).

Sessions are ended with ``pg_terminate_backend`` (the client sees Postgres's own FATAL 57P01) for the
restart and suspend faults, the idle timeout and the maximum connection lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .. import _wire as wire
from .._pipe import Pipe
from .native_login import password_matches
from .runtime import TERMINATE_WAIT_MS, Runtime
from .state import ACTIVE, IDLE, INIT, Endpoint
from .tokens import DATABASE_AUDIENCE, InvalidToken

if TYPE_CHECKING:
    from .postgres import PostgresServer

log = logging.getLogger("lakebase.emulator.proxy")

INSECURE_MESSAGE = "connection is insecure (try using `sslmode=require`)"
DECODE_FAILED = (
    'Failed to decode token for role "{role}" and native postgres login was either not attempted '
    "due to configuration or failed."
)
LOGIN_TIMEOUT = 30.0
REAPER_INTERVAL = 0.1
CHUNK = 256 * 1024


class LoginRefused(Exception):
    def __init__(self, code: str, message: str, reason: str, detail: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.detail, self.hint = code, message, reason, detail, hint


@dataclass(eq=False)
class Session:
    endpoint: Endpoint
    role: str
    database: str
    server: PostgresServer  # the backend's server: the primary, or the replica
    backend_pid: int = 0
    backend_key: bytes = b""
    client_key: bytes = b""
    started: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    terminating: str | None = None
    fault_generation: int = 0
    transports: list[asyncio.Transport] = field(default_factory=list)
    pipes: list[_Pipe] = field(default_factory=list)
    # The stream writers of the login phase close their transport when garbage-collected: keep them.
    writers: tuple[asyncio.StreamWriter, ...] = ()


class _Pipe(Pipe):
    """A session's forwarding in one direction; notes its last activity (the idle limit)."""

    def __init__(self, session: Session, on_lost: Any) -> None:
        super().__init__(on_lost)
        self.session = session
        self.transport: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        self.session.last_activity = time.monotonic()
        if self.peer is not None:
            self.peer.write(data)


SNI_ATTRIBUTE = "_lakebase_server_name"


def _socket_path(server: PostgresServer) -> str:
    return str(server.socket_dir / f".s.PGSQL.{server.port}")


def _sni_hostname(ssl_object: Any) -> str | None:
    """The server name this connection's own ClientHello sent (kept on its SSLObject by ``_on_sni``)."""
    return getattr(ssl_object, SNI_ATTRIBUTE, None)


def _told(session: Session) -> bool:
    """The session's backend is gone and its client has been sent all of it (the FATAL) and the close.

    A TLS client that does not read (an idle connection in a pool) never answers the close_notify, so
    its transport stays open until asyncio's TLS shutdown timeout; what was queued for it is out once
    the transport is closing with nothing left to write."""
    if all(p.lost for p in session.pipes):
        return True
    client, _ = session.transports
    to_client = session.pipes[1]  # the backend transport's protocol
    return to_client.lost and client.is_closing() and client.get_write_buffer_size() == 0


class Proxy:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.sessions: set[Session] = set()
        self._by_key: dict[tuple[int, bytes], Session] = {}
        self._server: asyncio.base_events.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._wake_locks: dict[str, asyncio.Lock] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        ctx = rt.ssl_context
        ctx.sni_callback = self._on_sni

    @staticmethod
    def _on_sni(ssl_object: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        # On the connection's own SSLObject, not in a table: a handshake that fails after its
        # ClientHello leaves nothing behind for a later connection to pick up.
        if server_name:
            setattr(ssl_object, SNI_ATTRIBUTE, server_name)
        return None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True, backlog=512)
        self._reaper = asyncio.create_task(self._reap_forever())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            for transport in session.transports:
                transport.abort()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    # ---- accepting ---------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        handed_off = False
        try:
            handed_off = await asyncio.wait_for(self._handshake(reader, writer), LOGIN_TIMEOUT)
        except wire.ProtocolError as exc:
            self.rt.stats.login_failed("protocol")
            await self._refuse(writer, "08P01", str(exc))
        except LoginRefused as exc:
            self.rt.stats.login_failed(exc.reason)
            await self._refuse(writer, exc.code, exc.message, exc.detail, exc.hint)
        except TimeoutError:
            self.rt.stats.login_failed("timeout")
            await self._refuse(writer, "08006", "timeout expired during the startup phase")
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, EOFError, OSError):
            self.rt.stats.login_failed("disconnected")
        except asyncio.CancelledError:
            pass
        except Exception:  # never let one client take the proxy down
            log.exception("unexpected error while serving a client")
            self.rt.stats.login_failed("internal")
            await self._refuse(writer, "XX000", "internal error in the lakebase emulator's proxy")
        finally:
            self._handlers.discard(task)
            if not handed_off:
                writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str,
                      detail: str | None = None, hint: str | None = None) -> None:
        with contextlib.suppress(Exception):
            writer.write(wire.error_response(code, message, detail=detail, hint=hint))
            await asyncio.wait_for(writer.drain(), 2)

    async def _read_startup(self, reader: asyncio.StreamReader) -> wire.StartupPacket:
        length = wire.startup_length(await reader.readexactly(4))
        return wire.parse_startup(await reader.readexactly(length - 4))

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Returns True once the connection has been handed to the forwarding pipes."""
        packet = await self._read_startup(reader)
        if packet.kind == "gss":
            writer.write(b"N")
            await writer.drain()
            packet = await self._read_startup(reader)
        if packet.kind == "cancel":
            await self._cancel(packet)
            return False
        if packet.kind == "startup":
            raise LoginRefused("08P01", INSECURE_MESSAGE, "insecure")
        if packet.kind != "ssl":  # pragma: no cover - parse_startup returns only the kinds above
            raise wire.ProtocolError("unexpected packet")
        writer.write(b"S")
        await writer.drain()
        await writer.start_tls(self.rt.ssl_context, ssl_handshake_timeout=10)
        sni = _sni_hostname(writer.get_extra_info("ssl_object"))
        packet = await self._read_startup(reader)
        if packet.kind == "cancel":
            await self._cancel(packet)
            return False
        if packet.kind != "startup":
            raise wire.ProtocolError(f"unexpected {packet.kind} request after the TLS handshake")
        return await self._login(reader, writer, packet, sni)

    # ---- login -------------------------------------------------------------------------------
    def _choose_endpoint(self, sni: str | None, options_endpoint: str | None) -> Endpoint:
        ws = self.rt.workspace
        if options_endpoint:
            ep = ws.find_endpoint(options_endpoint)
            if ep is None:
                raise LoginRefused("08004", f'endpoint "{options_endpoint}" does not exist', "unknown_endpoint",
                                   hint="Use the endpoint id or name from `databricks postgres list-endpoints`.")
            return ep
        if sni:
            ep = ws.find_endpoint(sni)
            if ep is not None:
                return ep
            if sni.endswith(".localhost"):
                raise LoginRefused("08004", f'endpoint "{sni.split(".")[0]}" does not exist', "unknown_endpoint")
        return ws.primary

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     packet: wire.StartupPacket, sni: str | None) -> bool:
        params = dict(packet.params)
        if params.get("replication", "false").lower() not in ("false", "0", "off", "no"):
            raise LoginRefused("0A000", "replication connections are not supported by Lakebase", "replication")
        role = params["user"]
        database = params.get("database") or role
        options_endpoint, options = wire.take_endpoint_option(params.pop("options", ""))
        endpoint = self._choose_endpoint(sni, options_endpoint)

        writer.write(wire.auth_cleartext_password())
        await writer.drain()
        mtype, length = wire.parse_message_header(await reader.readexactly(5))
        if mtype != b"p":
            raise wire.ProtocolError(f"expected password response, got message type {mtype!r}")
        token = wire.parse_password(await reader.readexactly(length))
        await self._authenticate(role, token, endpoint)

        if self.rt.config.latency_ms:
            await asyncio.sleep(self.rt.config.latency_ms / 1000)
        await self._wait_until_serving(endpoint)
        server = await self._server_for(endpoint)

        backend_params = {k: v for k, v in params.items() if k != "options"}
        backend_params["database"] = database
        if endpoint.read_only:  # what SHOW says there; the standby refuses writes whatever a session sets
            options = (options + " " if options else "") + "-c default_transaction_read_only=on"
        if options:
            backend_params["options"] = options
        return await self._connect_backend(reader, writer, packet.version, backend_params, endpoint, role, server)

    async def _server_for(self, endpoint: Endpoint) -> PostgresServer:
        try:
            return await self.rt.backend(endpoint)
        except Exception as exc:
            log.error("no server for endpoint %s: %s", endpoint.name, exc)
            if not endpoint.read_only:  # a branch's cluster
                raise LoginRefused("57P03", f"the compute of branch '{endpoint.parent}' could not start",
                                   "backend_unavailable",
                                   hint="The emulator's log and branches/<branch_id>/postgres.log in its "
                                        "data directory say why.") from None
            raise LoginRefused("57P03", "the read replica of this read-only endpoint could not start",
                               "backend_unavailable",
                               hint="The emulator's log and postgres-replica.log in its data directory say why."
                               ) from None

    async def _authenticate(self, role: str, password: str, endpoint: Endpoint | None = None) -> None:
        """A valid database credential of the role's identity; failing that, when the project's native
        login is on, the role's native Postgres password (``_native_login``). Refused either way with
        Lakebase's one 28P01 text; the detail says only whether native login was off (it names the fix),
        not why it failed (which roles exist or have passwords is nothing to tell an unauthenticated
        client): that goes to the emulator's log."""
        try:
            await self._authenticate_token(role, password, endpoint)
        except LoginRefused as refused:
            if refused.code != "28P01":
                raise
            if not self.rt.native.enabled:
                refused.detail = (f"{refused.detail} Native postgres login was not attempted: it is off for this "
                                  "project (the owner turns it on with w.postgres.update_project, "
                                  "spec.enable_pg_native_login=True).")
                raise
            why_not = await self._native_login(role, password, endpoint)
            if why_not is not None:
                log.info("native postgres login of role %r refused: %s", role, why_not)
                refused.reason = "native_login_failed"
                refused.detail = (f"{refused.detail} Native postgres login failed: a wrong password, or a role "
                                  "that may not log in or has no SCRAM-SHA-256 password or an expired one.")
                raise
            self.rt.stats.native_logins += 1

    async def _native_login(self, role: str, password: str, endpoint: Endpoint | None) -> str | None:
        """None when ``password`` is the role's native password and the role may use it now; else why not
        (never the password)."""
        found = await self.rt.role_password(role, endpoint)  # on the endpoint's branch
        if found is None:
            return "no such role"
        if not found.can_login:
            return "the role may not log in (NOLOGIN)"
        if found.verifier is None or not found.verifier.startswith("SCRAM-SHA-256$"):
            return "the role has no SCRAM-SHA-256 password"
        if found.expired:
            return f"its password expired at {found.valid_until} (VALID UNTIL)"
        if not await asyncio.to_thread(password_matches, role, password, found.verifier):
            return "wrong password"
        return None

    async def _authenticate_token(self, role: str, token: str, endpoint: Endpoint | None) -> None:
        try:
            claims = self.rt.tokens.verify(token, DATABASE_AUDIENCE)
        except InvalidToken as exc:
            raise LoginRefused("28P01", DECODE_FAILED.format(role=role), "invalid_token",
                               detail=f"lakebase emulator: {exc.reason}.") from None
        info = await self.rt.role_info(role, endpoint=endpoint)  # on the endpoint's branch
        if info is None:
            raise LoginRefused("28000", f'role "{role}" does not exist', "no_role",
                               hint="Create it as the project owner: "
                                    f"SELECT databricks_create_role('{role}', '<user|service_principal>');")
        if claims.subject != role:
            raise LoginRefused("28P01", DECODE_FAILED.format(role=role), "identity_mismatch",
                               detail=f'lakebase emulator: the token belongs to identity "{claims.subject}", '
                                      f'not to role "{role}".')
        if not info.can_login or not info.identity_type:
            raise LoginRefused("28P01", DECODE_FAILED.format(role=role), "not_oauth_role",
                               detail=f'lakebase emulator: role "{role}" is not a Databricks OAuth role.',
                               hint="Create OAuth roles with databricks_create_role().")

    async def _wait_until_serving(self, endpoint: Endpoint) -> None:
        """Wait out a restart; wake a suspended endpoint (one wake for many waiting logins)."""
        while (left := self.rt.restarting) > 0:
            await asyncio.sleep(left)
        if endpoint.state == ACTIVE:
            return
        lock = self._wake_locks.setdefault(endpoint.name, asyncio.Lock())
        async with lock:
            if endpoint.state != ACTIVE:
                endpoint.state = INIT
                await asyncio.sleep(self.rt.config.wake_delay_seconds)
                endpoint.state = ACTIVE
                endpoint.last_active_time = time.time()
                self.rt.stats.wakeups += 1

    async def _connect_backend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: int,
                               params: dict[str, str], endpoint: Endpoint, role: str,
                               server: PostgresServer) -> bool:
        try:
            b_reader, b_writer = await asyncio.open_unix_connection(_socket_path(server))
        except OSError:
            raise LoginRefused("57P03", "the database system is starting up", "backend_unavailable") from None
        session = Session(endpoint=endpoint, role=role, database=params["database"], server=server,
                          fault_generation=self.rt.fault_generation)
        try:
            b_writer.write(wire.startup_message(version, params))
            await b_writer.drain()
            while True:
                header = await b_reader.readexactly(5)
                mtype, length = wire.parse_message_header(header, limit=1 << 20)
                payload = await b_reader.readexactly(length)
                if mtype == b"K":
                    session.backend_pid, session.backend_key = wire.parse_backend_key_data(payload)
                    session.client_key = secrets.token_bytes(len(session.backend_key))
                    writer.write(wire.backend_key_data(session.backend_pid, session.client_key))
                    continue
                if mtype == b"R" and payload[:4] != b"\0\0\0\0":
                    raise LoginRefused("28000", "backend requested an unsupported authentication method",
                                       "backend_auth")
                writer.write(header + payload)
                if mtype == b"E":
                    fields = wire.parse_error_fields(payload)
                    self.rt.stats.login_failed("backend:" + fields.get("C", "?"))
                    await writer.drain()
                    b_writer.close()
                    return False
                if mtype == b"Z":
                    break
            await writer.drain()
        except BaseException:
            b_writer.close()
            raise
        self._hand_off(session, reader, writer, b_reader, b_writer)
        return True

    def _hand_off(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
        """From here on the proxy only moves bytes: switch both transports to forwarding protocols."""
        client_t = cast(asyncio.Transport, writer.transport)
        backend_t = cast(asyncio.Transport, b_writer.transport)
        closed = False

        def lost() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            self.sessions.discard(session)
            self._by_key.pop((session.backend_pid, session.client_key), None)
            self.rt.stats.active_sessions = len(self.sessions)
            session.endpoint.last_active_time = time.time()

        to_backend = _Pipe(session, lost)
        to_client = _Pipe(session, lost)
        to_backend.peer, to_client.peer = backend_t, client_t
        pending_client = bytes(reader._buffer)  # type: ignore[attr-defined]  # pipelined early bytes
        pending_backend = bytes(b_reader._buffer)  # type: ignore[attr-defined]
        client_t.set_protocol(to_backend)
        backend_t.set_protocol(to_client)
        session.transports = [client_t, backend_t]
        session.pipes = [to_backend, to_client]
        session.writers = (writer, b_writer)
        self.sessions.add(session)
        self._by_key[(session.backend_pid, session.client_key)] = session
        self.rt.stats.logins_succeeded += 1
        self.rt.stats.active_sessions = len(self.sessions)
        if pending_client:
            backend_t.write(pending_client)
        if pending_backend:
            client_t.write(pending_backend)
        if client_t.is_closing() or backend_t.is_closing():
            client_t.close()
            backend_t.close()
            lost()
        elif session.fault_generation != self.rt.fault_generation:  # a restart/suspend raced this login
            task = asyncio.get_running_loop().create_task(self._terminate([session], "fault during login"))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    # ---- cancel ------------------------------------------------------------------------------
    async def _cancel(self, packet: wire.StartupPacket) -> None:
        session = self._by_key.get((packet.cancel_pid, packet.cancel_key))
        if session is None:
            return  # as Postgres: an unknown key is silently ignored
        _, b_writer = await asyncio.open_unix_connection(_socket_path(session.server))
        b_writer.write(wire.cancel_request(session.backend_pid, session.backend_key))
        with contextlib.suppress(Exception):
            await b_writer.drain()
        b_writer.close()

    # ---- ending sessions -----------------------------------------------------------------------
    async def terminate_sessions(self, endpoint: Endpoint | None, reason: str) -> int:
        victims = [s for s in self.sessions if endpoint is None or s.endpoint is endpoint]
        return await self._terminate(victims, reason)

    async def _terminate(self, victims: list[Session], reason: str) -> int:
        by_server: dict[PostgresServer, list[Session]] = {}
        for s in victims:
            if s.terminating is None:
                s.terminating = reason
                by_server.setdefault(s.server, []).append(s)
        ended: list[Session] = []
        try:
            for server, group in by_server.items():
                await self.rt.terminate_backends(server, [s.backend_pid for s in group])
                ended += group
        except BaseException:
            for group in by_server.values():  # let a later attempt (the reaper, the next fault) try again
                for s in group:
                    if s.terminating == reason and s not in ended:
                        s.terminating = None
            raise
        finally:
            if ended:
                self.rt.stats.sessions_terminated += len(ended)
                log.info("ended %d session(s): %s", len(ended), reason)
        # The backends are gone; wait until the proxy has passed their FATAL and the close on to the clients
        # (both transports of each session closed).
        deadline = time.monotonic() + TERMINATE_WAIT_MS / 1000
        while any(not _told(s) for s in ended) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return len(ended)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAPER_INTERVAL)
            try:
                await self._reap_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session reaper failed; retrying")

    async def _reap_once(self) -> None:
        cfg = self.rt.config
        now = time.monotonic()
        idle = [s for s in self.sessions if now - s.last_activity >= cfg.idle_timeout_seconds]
        old = [s for s in self.sessions if now - s.started >= cfg.max_lifetime_seconds and s not in idle]
        if idle:
            await self._terminate(idle, "idle timeout")
        if old:
            await self._terminate(old, "maximum connection lifetime")
        busy = {s.endpoint.name for s in self.sessions}
        wall = time.time()
        for ep in self.rt.workspace.endpoints.values():
            after = ep.suspend_after(cfg.suspend_after_idle_seconds)
            if ep.name in busy:
                ep.last_active_time = wall
            elif after is not None and ep.state == ACTIVE and wall - ep.last_active_time >= after:
                ep.state = IDLE
                log.info("endpoint %s suspended after %.1f s without connections", ep.name, after)

