"""Is an idle pooled connection still alive? Answered from its socket, without a round trip.

A session the server ends (a restart, scale to zero, the idle timeout, the maximum lifetime,
``pg_terminate_backend``) ends with a FATAL ``ErrorResponse`` (57P01...) and the server closing the
connection: both arrive on the client's socket, which becomes readable. So the pools' default check
is one ``poll()`` with a zero timeout on the socket of the connection being handed out:

* nothing to read, no error: the connection is used as is (no round trip);
* the connection is already known to be closed: it fails the check;
* something arrived while it sat idle: usually the server's goodbye, sometimes a ``NOTIFY`` or a
  ``ParameterStatus``. The driver's round-trip check then decides; it reads what arrived, so a
  notification is kept for the application (psycopg queues it for ``conn.notifies()``) and the
  connection stays, while a FATAL or an end of stream fails the check.

What this check cannot see is a peer that went silent (a dropped NAT entry, a host that vanished):
nothing arrives. TCP keepalives (on by default in the psycopg integration) turn that silence into a
socket error within about a minute, which this check sees; the round-trip check remains available
for networks that drop connections silently (``check=ConnectionPool.check_connection``,
``create_engine(pool_pre_ping=True)``, ``create_pool(pre_ping="query")``).

A session ended while a connection is being handed out (the goodbye still on the wire) is not seen
by either check in time; the first query fails, as it would a moment later with any check.
"""

from __future__ import annotations

import select
from typing import Any

#: Nothing arrived and no error: alive as far as the client can tell.
QUIET = "quiet"
#: Something arrived on the idle connection (or the socket reports an error or a hang-up).
READABLE = "readable"
#: The driver already knows the connection is closed.
CLOSED = "closed"

_HAS_POLL = hasattr(select, "poll")


def socket_state(fd: int) -> str:
    """:data:`QUIET`, :data:`READABLE` (data, end of stream, error or hang-up) or :data:`CLOSED`."""
    if fd < 0:
        return CLOSED
    if _HAS_POLL:  # not select(): it cannot take descriptors >= FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
        if not events:
            return QUIET
        return CLOSED if events[0][1] & select.POLLNVAL else READABLE
    try:  # Windows
        readable, _, errored = select.select([fd], [], [fd], 0)
    except (OSError, ValueError):
        return CLOSED
    return READABLE if readable or errored else QUIET


def psycopg_state(conn: Any) -> str:
    """The state of a psycopg (3) connection, sync or async, from its libpq socket."""
    if conn.closed:  # closed by the application, or libpq saw the end of the connection
        return CLOSED
    try:
        fd = conn.pgconn.socket
    except Exception:  # psycopg raises when libpq has no socket
        return CLOSED
    return socket_state(fd)


def psycopg2_state(conn: Any) -> str:
    """The state of a psycopg2 connection, from its libpq socket."""
    if conn.closed:  # nonzero: closed by the application, or libpq saw the end of the connection
        return CLOSED
    try:
        fd = conn.fileno()
    except Exception:
        return CLOSED
    return socket_state(fd)


def asyncpg_state(conn: Any) -> str:
    """The state of an asyncpg connection from its transport's socket.

    asyncpg reads its socket on the event loop: a connection whose end the loop has processed is
    ``is_closed()``, or its transport ``is_closing()`` (TLS: the server's close_notify was read and
    the shutdown is under way, a few loop iterations before asyncpg hears of it); one whose goodbye
    is still unread has a readable socket.
    """
    if conn.is_closed():
        return CLOSED
    transport = getattr(conn, "_transport", None)
    if transport is not None and transport.is_closing():
        return CLOSED
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:  # not a socket transport we can look at: let the round trip decide
        return READABLE
    try:
        fd = sock.fileno()
    except Exception:
        return CLOSED
    return socket_state(fd)
