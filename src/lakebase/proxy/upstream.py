"""Logging in to the Lakebase endpoint for one client: TLS, the token as the password, retries.

One login is one :func:`login` call inside the library's connect loop
(:meth:`lakebase.connector.Connector.aconnect`): the token comes from the shared credential cache,
waking or restarting computes (57P01, 57P03, 08xxx, refused, timeouts) are retried within the connect
deadline, and a refused token (28P01) is replaced once by a freshly minted one. The server's
ErrorResponse is kept as sent (:class:`UpstreamError`), so a client sees the very error the server
gave once the loop gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any

from .. import _wire as wire
from .._tls import client_context
from ..endpoints import Target, cached_hostaddr, hostaddr_for

MAX_LOGIN_MESSAGE = 1 << 20


class UpstreamError(Exception):
    """An ErrorResponse from the server while logging in; ``payload`` is relayed to the client as is."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.fields = wire.parse_error_fields(payload)
        self.sqlstate = self.fields.get("C")
        super().__init__(self.fields.get("M", "error from the server"))

    def message(self) -> bytes:
        return b"E" + (len(self.payload) + 4).to_bytes(4, "big") + self.payload


@dataclass(eq=False)
class Upstream:
    """A logged-in server connection: what the client must be sent, then bytes both ways."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: list[bytes] = field(default_factory=list)  # AuthenticationOk, ParameterStatus..., up to ReadyForQuery
    pid: int = 0
    key: bytes = b""


def host_matches(host: str, pattern: str) -> bool:
    """libpq's rule: case-insensitive; a leading ``*.`` matches exactly one label."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def check_host_name(ssl_object: ssl.SSLObject | None, host: str) -> None:
    """verify-full: the server's certificate must be for ``host`` (its DNS names, else its common name)."""
    cert: Any = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        raise ssl.SSLCertVerificationError("the server sent no certificate to check the host name against")
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if not any(host_matches(host, str(name)) for name in names):
        raise ssl.SSLCertVerificationError(
            f'server certificate for "{", ".join(map(str, names))}" does not match host name "{host}"')


async def _address(host: str, port: int) -> str:
    known, addr = cached_hostaddr(host)
    if not known:
        addr = await asyncio.to_thread(hostaddr_for, host, port)
    return addr or host


async def open_tls(target: Target, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the target (SNI and verification by its host name)."""
    # verify-full: the host name is checked after the handshake, as libpq does (check_host_name): OpenSSL's
    # own check refuses a wildcard over a single-label suffix such as *.localhost (the emulator's).
    context = client_context(target.sslmode, target.sslrootcert, check_hostname=False)

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(await _address(target.host, target.port), target.port)
        try:
            writer.write(wire.SSL_REQUEST_PACKET)
            await writer.drain()
            answer = await reader.readexactly(1)
            if answer != b"S":
                raise ConnectionRefusedError("the server does not accept TLS (answered the SSL request with "
                                             f"{answer!r}); check the host and port")
            await writer.start_tls(context, server_hostname=target.host)
            if target.sslmode == "verify-full":
                check_host_name(writer.get_extra_info("ssl_object"), target.host)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    return await asyncio.wait_for(connect(), timeout)


async def login(target: Target, params: dict[str, str], version: int, password: str,
                timeout: float) -> Upstream:
    """Log in once: startup ``params`` (user, database, options ...) and the token as cleartext password."""
    reader, writer = await open_tls(target, timeout)
    try:
        return await asyncio.wait_for(_authenticate(reader, writer, params, version, password), timeout)
    except BaseException:
        writer.close()
        raise


async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, params: dict[str, str],
                        version: int, password: str) -> Upstream:
    writer.write(wire.startup_message(version, params))
    await writer.drain()
    up = Upstream(reader, writer)
    while True:
        header = await reader.readexactly(5)
        mtype, length = wire.parse_message_header(header, limit=MAX_LOGIN_MESSAGE)
        payload = await reader.readexactly(length)
        if mtype == b"E":
            raise UpstreamError(payload)
        if mtype == b"R":
            code = wire.parse_authentication(payload)
            if code == wire.AUTH_CLEARTEXT_PASSWORD:
                writer.write(wire.password_message(password))
                await writer.drain()
                continue
            if code != wire.AUTH_OK:
                raise UpstreamError(wire.error_response(
                    "28000", f"the server asked for authentication method {code}; lakebase proxy sends the "
                    "OAuth token as a password over TLS only")[5:])
        elif mtype == b"K":
            up.pid, up.key = wire.parse_backend_key_data(payload)
            continue  # the client gets a key of the proxy's (see server.py)
        up.greeting.append(header + payload)
        if mtype == b"Z":
            return up


async def cancel(target: Target, pid: int, key: bytes, timeout: float = 10.0) -> None:
    """Forward a cancel request over a new TLS connection, as libpq sends it."""
    _, writer = await open_tls(target, timeout)
    try:
        writer.write(wire.cancel_request(pid, key))
        await asyncio.wait_for(writer.drain(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)
