"""psycopg 3: :func:`connect`, :func:`connect_async`, :class:`ConnectionPool`, :class:`AsyncConnectionPool`.

Every connection gets a valid token as its password and is opened inside the retry loop of
:mod:`lakebase.retry` (transient errors back off until the connect deadline; a refused token is
replaced once). Settings come from the arguments named like :class:`~lakebase.Settings` fields,
then the environment; everything else is passed to psycopg (``autocommit``, ``row_factory``,
``options``, ...) or, for the pools, to psycopg_pool (``min_size``, ``max_size``, ``timeout``, ...).

The pools are psycopg_pool pools whose new connections always carry a valid token, with
Lakebase-aware defaults (:data:`POOL_DEFAULTS`). Their default ``check`` is :func:`check_liveness`: a
connection the server ended (restart, scale to zero, idle or lifetime limit) is replaced before it is
handed out, without the round trip of psycopg_pool's ``check_connection`` (still available:
``check=ConnectionPool.check_connection``, for networks that drop connections silently).
When a pool cannot connect, ``getconn()`` and ``wait()`` raise :class:`PoolTimeout` (a
``psycopg_pool.PoolTimeout`` and a :class:`~lakebase.LakebaseError`) naming the cause (token API
down, role missing, permission denied...) with the last connect error chained, instead of a bare timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._extras import requires_extra

with requires_extra("psycopg", __name__):
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool.base import BasePool

from ._adapter import connection_string, libpq_connect_params, libpq_connect_timeout, libpq_params, split_settings
from ._liveness import CLOSED, QUIET, psycopg_state
from ._redact import redact, safe_conninfo
from .connector import Connector, get_connector
from .credentials import CredentialCache
from .endpoints import Target, cached_hostaddr, hostaddr_for
from .errors import LakebaseError
from .settings import Settings

#: Pool defaults (with ``check=``:func:`check_liveness`): recycle connections well before Lakebase's
#: 3-day maximum life and its 24 h idle timeout.
POOL_DEFAULTS: dict[str, Any] = {
    "max_lifetime": 3600.0,
    "max_idle": 600.0,
}


def _params(target: Target, hostaddr: str | None, conninfo: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Ours, then the caller's conninfo, then the caller's keyword arguments; the password stays ours."""
    conninfo, kwargs = connection_string(conninfo, kwargs, "conninfo")
    return libpq_connect_params(target, hostaddr, {**(conninfo_to_dict(conninfo) if conninfo else {}), **kwargs})


def conninfo_for_display(connector: Connector) -> str:
    """The conninfo a connection of ``connector`` uses, with the password masked (for logs and UIs)."""
    return safe_conninfo({**libpq_params(connector.target()), "password": "x"})


# ---- connect -----------------------------------------------------------------------------------
def open_connection(connector: Connector, conninfo: str = "", /, *,
                    connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
                    **kwargs: Any) -> psycopg.Connection[Any]:
    """Open one psycopg connection through ``connector`` (fresh token, retries): the adapter's entry point.

    ``conninfo`` and ``kwargs`` are psycopg's connection arguments (over the target's; no password, no
    plaintext ``sslmode``). :func:`connect`, the pools and :mod:`lakebase.sqlalchemy` open theirs here.
    """
    target = connector.prepare()
    params = _params(target, hostaddr_for(target.host, target.port), conninfo, kwargs)
    requested = params.pop("connect_timeout", None)

    def attempt(password: str, timeout: float) -> psycopg.Connection[Any]:
        return connection_class.connect(**params, password=password,
                                        connect_timeout=libpq_connect_timeout(timeout, requested))

    return connector.connect(attempt)


async def open_connection_async(connector: Connector, conninfo: str = "", /, *,
                                connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
                                **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """The async twin of :func:`open_connection`: nothing blocking runs on the event loop."""
    target = await connector.atarget()
    known, hostaddr = cached_hostaddr(target.host)
    if not known:
        hostaddr = await asyncio.to_thread(hostaddr_for, target.host, target.port)
    params = _params(target, hostaddr, conninfo, kwargs)
    requested = params.pop("connect_timeout", None)

    async def attempt(password: str, timeout: float) -> psycopg.AsyncConnection[Any]:
        return await connection_class.connect(**params, password=password,
                                              connect_timeout=libpq_connect_timeout(timeout, requested))

    return await connector.aconnect(attempt)


def connect(conninfo: str = "", *, settings: Settings | None = None, workspace_client: Any = None,
            credentials: CredentialCache | None = None,
            connection_class: type[psycopg.Connection[Any]] = psycopg.Connection,
            **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a psycopg connection to Lakebase, configured from ``kwargs`` and the environment.

    ``lakebase.connect()`` alone works in a Databricks App and on a laptop with ``PGHOST``/``PGUSER``
    (optional) and ``ENDPOINT_NAME`` set. Keyword arguments named like :class:`~lakebase.Settings`
    fields override the environment; the others go to ``psycopg.Connection.connect``.
    ``workspace_client`` defaults to ``WorkspaceClient()``; ``credentials`` to the process-wide
    cache of that identity.

    Raises :class:`~lakebase.ConfigurationError`, :class:`~lakebase.CredentialsUnavailable` or
    :class:`~lakebase.ConnectionFailed` (and its subclasses), with the driver's error as the cause.
    """
    overrides, conn_kwargs = split_settings(kwargs)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    return open_connection(connector, conninfo, connection_class=connection_class, **conn_kwargs)


async def connect_async(conninfo: str = "", *, settings: Settings | None = None, workspace_client: Any = None,
                        credentials: CredentialCache | None = None,
                        connection_class: type[psycopg.AsyncConnection[Any]] = psycopg.AsyncConnection,
                        **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """The async twin of :func:`connect`: nothing blocking runs on the event loop."""
    overrides, conn_kwargs = split_settings(kwargs)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    return await open_connection_async(connector, conninfo, connection_class=connection_class, **conn_kwargs)


# ---- pools -------------------------------------------------------------------------------------
class PoolTimeout(LakebaseError, psycopg_pool.PoolTimeout):
    """No connection within the pool's timeout, and why: the pool's last connect error (also
    ``cause`` and ``__cause__``)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class _LastError:
    """The pool's most recent connect failure (cleared by a success), for explaining timeouts."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.when = 0.0
        self._lock = threading.Lock()

    def record(self, error: BaseException | None) -> None:
        with self._lock:
            self.error, self.when = error, time.monotonic()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Record the outcome of the connect inside: its error, or None on success."""
        try:
            yield
        except Exception as exc:
            self.record(exc)
            raise
        self.record(None)

    def explain(self, exc: psycopg_pool.PoolTimeout, pool_name: str) -> psycopg_pool.PoolTimeout:
        error = self.error
        if error is None or isinstance(exc, PoolTimeout):
            return exc
        ago = time.monotonic() - self.when
        message = (f"{exc} (pool {pool_name!r}): the pool cannot open connections; the last attempt "
                   f"{ago:.1f}s ago failed: {redact(str(error))}")
        timeout = PoolTimeout(message, error)
        timeout.__cause__ = error
        return timeout


def _needs_round_trip(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """False when nothing arrived on ``conn``'s socket; raises when it is closed; True when a round
    trip must decide (see :func:`check_liveness`)."""
    state = psycopg_state(conn)
    if state == CLOSED:
        raise psycopg.OperationalError("the connection is closed (the server ended the session); "
                                       "the pool replaces it")
    return state != QUIET


def check_liveness(conn: psycopg.Connection[Any]) -> None:
    """The pools' default ``check``: raise if the server ended ``conn``'s session, without a round trip.

    A session ended by the server (restart, scale to zero, idle timeout, maximum lifetime) leaves its
    goodbye (FATAL 57P01, then the end of the stream) on the socket: a connection whose socket has
    nothing to read is handed out as is; one that is closed fails; one on which something arrived
    while idle gets psycopg_pool's round-trip ``check_connection``, which reads what arrived (a
    ``NOTIFY`` is queued for ``conn.notifies()`` and the connection stays). A peer that went silent is
    found by TCP keepalives (on by default), not by this check; for networks that drop connections
    without a word, use ``check=ConnectionPool.check_connection`` (a round trip on every checkout).
    """
    if _needs_round_trip(conn):
        psycopg_pool.ConnectionPool.check_connection(conn)


async def check_liveness_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """The asyncio twin of :func:`check_liveness` (the async pools' default ``check``)."""
    if _needs_round_trip(conn):
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)


class _LakebasePool(BasePool):
    """What :class:`ConnectionPool` and :class:`AsyncConnectionPool` share (all but the awaiting methods):
    the arguments, the connector, the connection class, the explained timeouts and ``stats()``."""

    #: The twin's connection class and default ``check``.
    _connection_base: type[Any]
    _default_check: Any

    def __init__(self, conninfo: Any = "", *, settings: Settings | None = None, workspace_client: Any = None,
                 credentials: CredentialCache | None = None, connection_class: type[Any] | None = None,
                 **options: Any) -> None:
        overrides, pool_options = split_settings(options)
        self.connector = get_connector(settings, workspace_client, credentials, **overrides)
        self._last_error = _LastError()
        merged = {**POOL_DEFAULTS, "check": self._default_check, **pool_options}
        if not merged.get("name"):
            merged["name"] = "lakebase-" + self.connector.settings.target_name.rsplit("/", 1)[-1]
        pool_class = _connection_class(connection_class or self._connection_base, self.connector,
                                       self._last_error)
        # the twin's psycopg_pool class is next in the MRO
        super().__init__(conninfo, connection_class=pool_class, **merged)  # type: ignore[call-arg]

    @contextmanager
    def _explaining_timeouts(self) -> Iterator[None]:
        """A ``psycopg_pool.PoolTimeout`` inside becomes a :class:`PoolTimeout` naming the last connect error."""
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            explained = self._last_error.explain(exc, self.name)
            if explained is exc:
                raise
            raise explained from explained.__cause__

    def stats(self) -> dict[str, Any]:
        error = self._last_error.error
        return {"pool": self.get_stats(), **self.connector.stats(),
                "last_connect_error": redact(str(error)) if error else None}


class ConnectionPool(_LakebasePool, psycopg_pool.ConnectionPool):
    """A psycopg_pool ``ConnectionPool`` whose new connections always carry a valid token.

    Arguments named like :class:`~lakebase.Settings` fields configure the target (over the
    environment); ``settings``, ``workspace_client`` and ``credentials`` as for :func:`connect`;
    every other argument is psycopg_pool's (``conninfo``, ``kwargs``, ``min_size``, ``max_size``,
    ``open``, ``timeout``, ...). Defaults: ``connection_class=psycopg.Connection``,
    ``check=ConnectionPool.check_liveness`` (no round trip; see
    :func:`check_liveness`; ``check=ConnectionPool.check_connection`` for a round trip on every
    checkout, ``check=None`` for no check), ``max_lifetime=3600``, ``max_idle=600``, a ``name`` after
    the endpoint. ``stats()`` adds the lakebase counters to ``get_stats()``.
    """

    _connection_base = psycopg.Connection
    _default_check = check_liveness = staticmethod(check_liveness)

    def getconn(self, timeout: float | None = None) -> Any:
        with self._explaining_timeouts():
            return super().getconn(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        with self._explaining_timeouts():
            super().wait(timeout)


class AsyncConnectionPool(_LakebasePool, psycopg_pool.AsyncConnectionPool):
    """The asyncio twin of :class:`ConnectionPool` (a psycopg_pool ``AsyncConnectionPool``); its defaults
    are ``connection_class=psycopg.AsyncConnection`` and ``check=AsyncConnectionPool.check_liveness``
    (:func:`check_liveness_async`)."""

    _connection_base = psycopg.AsyncConnection
    _default_check = check_liveness = staticmethod(check_liveness_async)

    async def getconn(self, timeout: float | None = None) -> Any:
        with self._explaining_timeouts():
            return await super().getconn(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        with self._explaining_timeouts():
            await super().wait(timeout)


def _connection_class(base: type[Any], connector: Connector, last_error: _LastError) -> type[Any]:
    """A subclass of ``base`` whose ``connect`` opens through ``connector`` and notes failures for the pool.

    The pools open connections through ``connection_class.connect(conninfo, **kwargs)``.
    """
    connect: Any
    if issubclass(base, psycopg.AsyncConnection):
        async def connect(cls: type[Any], conninfo: str = "", **kwargs: Any) -> Any:
            with last_error.watching():
                return await open_connection_async(connector, conninfo, connection_class=base, **kwargs)
    else:
        def connect(cls: type[Any], conninfo: str = "", **kwargs: Any) -> Any:
            with last_error.watching():
                return open_connection(connector, conninfo, connection_class=base, **kwargs)

    name = f"Lakebase{base.__name__}"
    return type(name, (base,), {"connect": classmethod(connect), "__qualname__": name, "__module__": __name__})
