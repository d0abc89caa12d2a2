"""asyncpg: :func:`connect` and :func:`create_pool`, with a valid token on every new connection.

::

    import lakebase.asyncpg

    conn = await lakebase.asyncpg.connect()                 # settings from the environment
    async with lakebase.asyncpg.create_pool(max_size=10) as pool:
        rows = await pool.fetch("SELECT * FROM notes")

Every connection is opened inside the lakebase connect loop (:meth:`lakebase.connector.Connector.aconnect`):
the token comes from the shared, refresh-ahead credential cache (minted in a worker thread, never on
the event loop), transient errors (57P01, 57P03, 08xxx, refused, timeouts: restarts and scale-to-zero
wake-ups) are retried until the connect deadline, and a refused token (28P01) is replaced once.
asyncpg's exceptions carry ``.sqlstate``, which :func:`lakebase.retry.classify` reads like psycopg's;
the few asyncpg failures that are not worth a retry although they look like network errors (a TLS
certificate that does not verify, a server refusing TLS) are turned into a
:class:`~lakebase.ConnectionFailed` here.

TLS: the settings' ``sslmode`` becomes an :class:`ssl.SSLContext` (``require``: encrypted, not
verified, as libpq does; ``verify-ca`` / ``verify-full`` with ``sslrootcert``). ``ssl=`` may be given
as a context or a safe mode; anything that allows plaintext is refused, as is ``password=``.

The pool is an ``asyncpg.Pool`` (``connect=`` hook, asyncpg >= 0.30) with two Lakebase defaults:
``pre_ping`` (a connection ended by a restart or scale to zero is replaced on ``acquire`` instead of
failing the caller's first query; by default without a round trip, from the connection's socket, see
:mod:`lakebase._liveness`) and ``max_lifetime`` (connections are closed well before Lakebase's
3-day limit).

Known limit: asyncpg has no ``hostaddr``, so the DNS fallback of the psycopg integration (long
hostnames on macOS) does not apply; the host name must resolve.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import time
import weakref
from typing import Any

from ._extras import requires_extra

with requires_extra("asyncpg", __name__):
    import asyncpg

from ._adapter import PASSWORD_ARGUMENTS, require_tls, split_settings
from ._adapter import check_arguments as _check_driver_arguments
from ._liveness import CLOSED, QUIET, asyncpg_state
from ._telemetry import event
from ._tls import client_context
from .connector import Connector, get_connector
from .credentials import CredentialCache
from .endpoints import Target
from .errors import ConfigurationError, ConnectionFailed
from .settings import Settings

log = logging.getLogger("lakebase.asyncpg")

#: Close pooled connections after this many seconds (Lakebase ends them after 3 days).
MAX_LIFETIME = 3600.0
#: The least time a pre-ping gets, however little is left of the caller's acquire timeout.
PING_TIMEOUT_MIN = 0.05
#: ``pre_ping`` values: the socket check (True, the default), ``SELECT 1`` on every acquire, none.
PRE_PINGS = {True: "liveness", "liveness": "liveness", "query": "query", False: None, None: None}

# asyncpg.create_pool's own defaults (min_size, max_size, max_inactive_connection_lifetime, ...):
# asyncpg.Pool() has none, and they differ between asyncpg versions.
_POOL_DEFAULTS = {
    name: p.default for name, p in inspect.signature(asyncpg.create_pool).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "connect"
}


# ---- TLS -----------------------------------------------------------------------------------------
def ssl_context(sslmode: str, sslrootcert: str | None = None) -> ssl.SSLContext:
    """The :class:`ssl.SSLContext` for a libpq ``sslmode`` (cached; reads ``sslrootcert`` once).

    ``require`` encrypts without verifying the server, like libpq (and like libpq, verifies the
    chain as ``verify-ca`` does when a root certificate is given); ``verify-ca`` checks the chain,
    ``verify-full`` the chain and the host name.
    """
    return client_context(sslmode, sslrootcert)


def _ssl_mode(value: Any, where: str | None = None) -> str | None:
    """The mode of an ``ssl=`` argument (None: a context, or none given); refuses one that allows plaintext."""
    if value is None or isinstance(value, ssl.SSLContext):
        return None
    if value is True:
        return "verify-full"
    return require_tls(value, "ssl", where, fix="leave ssl out (sslmode from the settings), or use 'require', "
                       "'verify-full' or an ssl.SSLContext")


def _ssl_argument(value: Any, target: Target) -> ssl.SSLContext:
    """``ssl=`` as given by the caller (a context, True or a mode) or from the settings."""
    if isinstance(value, ssl.SSLContext):
        return value
    return ssl_context(_ssl_mode(value) or target.sslmode, target.sslrootcert)


# ---- connect -------------------------------------------------------------------------------------
def check_arguments(kwargs: dict[str, Any], where: str = "the connection arguments") -> None:
    """Refuse asyncpg connection arguments that lakebase must set itself (a password, a DSN) or that
    would allow plaintext (``ssl=``); :func:`open_connection` checks them, a pool or an engine before
    its first connection."""
    _check_driver_arguments(kwargs, where, names=(*PASSWORD_ARGUMENTS, "dsn"),
                            sets="the connection parameters and the password")
    _ssl_mode(kwargs.get("ssl"), where)


def _not_worth_retrying(exc: BaseException, target: Target) -> ConnectionFailed | None:
    """asyncpg failures that :func:`lakebase.retry.classify` would take for network trouble."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionFailed(
            f"Could not connect to {target.describe()}: the server's TLS certificate did not verify "
            f"({exc.verify_message or exc}). Hint: check sslrootcert, or use sslmode=require",
            cause=exc, sqlstate="08006", attempts=1)
    if "rejected ssl upgrade" in str(exc).lower():
        return ConnectionFailed(
            f"Could not connect to {target.describe()}: the server does not accept TLS. Hint: Lakebase "
            "always does; check the host and port", cause=exc, sqlstate="08P01", attempts=1)
    return None


async def open_connection(connector: Connector, /, **kwargs: Any) -> asyncpg.Connection:
    """Open one asyncpg connection through ``connector`` (fresh token, retries): the adapter's entry point.

    ``kwargs`` are :func:`asyncpg.connect`'s arguments, checked by :func:`check_arguments`; the target's
    host, port, user and database are the connector's. :func:`connect`, :func:`create_pool` and
    :mod:`lakebase.sqlalchemy` open theirs here.
    """
    check_arguments(kwargs)
    target = await connector.atarget()
    options = dict(kwargs)
    tls = _ssl_argument(options.pop("ssl", None), target)
    requested = options.pop("timeout", None)
    server_settings = {"application_name": target.application_name, **(options.pop("server_settings", None) or {})}
    params = {"host": target.host, "port": target.port, "user": target.user, "database": target.database}

    async def attempt(password: str, timeout: float) -> asyncpg.Connection:
        if requested is not None and 0 < float(requested) < timeout:
            timeout = float(requested)
        try:
            return await asyncpg.connect(**params, password=password, ssl=tls, timeout=timeout,
                                         server_settings=server_settings, **options)
        except Exception as exc:
            fatal = _not_worth_retrying(exc, target)
            if fatal is not None:
                raise fatal from exc
            raise

    return await connector.aconnect(attempt)


async def connect(*, settings: Settings | None = None, workspace_client: Any = None,
                  credentials: CredentialCache | None = None, **kwargs: Any) -> asyncpg.Connection:
    """Open an asyncpg connection to Lakebase, configured from ``kwargs`` and the environment.

    Keyword arguments named like :class:`~lakebase.Settings` fields (``endpoint``, ``host``,
    ``port``, ``database``, ``user``, ``sslmode``, ``connect_timeout``, ...) override the
    environment; the others go to :func:`asyncpg.connect` (``command_timeout``,
    ``statement_cache_size``, ``server_settings``, ``connection_class``, ...). Nothing blocking runs on
    the event loop. Raises :class:`~lakebase.ConfigurationError`,
    :class:`~lakebase.CredentialsUnavailable` or :class:`~lakebase.ConnectionFailed`.
    """
    overrides, conn_kwargs = split_settings(kwargs)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    return await open_connection(connector, **conn_kwargs)


# ---- the pool ------------------------------------------------------------------------------------
class Pool(asyncpg.Pool):
    """An ``asyncpg.Pool`` whose new connections carry a valid token (see :func:`create_pool`).

    ``connector`` is the lakebase connector; ``stats()`` its counters plus the connections this pool
    replaced (``discarded``: found dead by the pre-ping, ``recycled``: past ``max_lifetime``).
    ``pre_ping`` is ``"liveness"`` (the default), ``"query"`` or None (see :func:`create_pool`).
    """

    def __init__(self, *args: Any, connector: Connector, pre_ping: bool | str | None = True,
                 max_lifetime: float | None = MAX_LIFETIME, **kwargs: Any) -> None:
        if pre_ping not in PRE_PINGS:
            raise ConfigurationError(f"pre_ping={pre_ping!r} is not a pre-ping", setting="pre_ping",
                                     value=pre_ping, fix="use True (the socket check), 'query' (SELECT 1 "
                                     "on every acquire) or False")
        super().__init__(*args, **kwargs)
        self.connector = connector
        self.pre_ping = PRE_PINGS[pre_ping]
        self.max_lifetime = max_lifetime
        self.discarded = 0
        self.recycled = 0
        # connection -> (monotonic time, serial number) of its login
        self._born: weakref.WeakKeyDictionary[Any, tuple[float, int]] = weakref.WeakKeyDictionary()
        self._logins = 0

    def _note_new(self, conn: asyncpg.Connection) -> asyncpg.Connection:
        self._logins += 1
        self._born[conn] = (time.monotonic(), self._logins)
        return conn

    async def _acquire(self, timeout: float | None) -> Any:
        # asyncpg.Pool.acquire(), fetch(), execute()... all come through here.
        if not self.pre_ping and not self.max_lifetime:
            return await super()._acquire(timeout)
        expires = None if timeout is None else time.monotonic() + timeout
        for _ in range(self.get_max_size() + 1):  # after a restart every pooled connection may be dead
            left = None if expires is None else max(0.001, expires - time.monotonic())
            logins = self._logins
            proxy = await super()._acquire(left)
            conn = getattr(proxy, "_con", None)
            born, serial = self._born.get(conn, (None, 0)) if conn is not None else (None, 0)
            if self.max_lifetime and born is not None and time.monotonic() - born > self.max_lifetime:
                self.recycled += 1
                await self._drop(proxy, "maximum lifetime reached", graceful=True)
                continue
            if not self.pre_ping or serial > logins:  # logged in while we waited: no need to ping
                return proxy
            state = asyncpg_state(conn) if self.pre_ping == "liveness" and conn is not None else None
            if state == QUIET:  # nothing arrived on the idle connection: no round trip
                return proxy
            if state == CLOSED:
                self.discarded += 1
                event(log, logging.INFO, "pool.discarded",
                      f"a pooled connection to {self.connector.describe()} was closed by the server; "
                      "replacing it", target=self.connector.describe(), error="closed")
                await self._drop(proxy, "closed", graceful=False)
                continue
            # something arrived while it was idle (the server's goodbye, or a NOTIFY): a round trip decides
            ping_timeout = self.connector.settings.connect_timeout
            if expires is not None:  # the caller's acquire timeout covers the ping too
                ping_timeout = min(ping_timeout, max(PING_TIMEOUT_MIN, expires - time.monotonic()))
            try:
                await proxy.execute("SELECT 1", timeout=ping_timeout)
            except BaseException as exc:  # whatever the reason, this connection cannot serve
                if not isinstance(exc, Exception):  # cancelled mid-ping: never leak the checked-out holder
                    proxy.terminate()
                    raise
                self.discarded += 1
                event(log, logging.INFO, "pool.discarded",
                      f"a pooled connection to {self.connector.describe()} failed its check "
                      f"({type(exc).__name__}); replacing it", target=self.connector.describe(),
                      error=type(exc).__name__)
                await self._drop(proxy, type(exc).__name__, graceful=False)
                if expires is not None and time.monotonic() >= expires:
                    raise TimeoutError(f"no working connection within the acquire timeout ({timeout}s)") from exc
                continue
            return proxy
        return await super()._acquire(None if expires is None else max(0.001, expires - time.monotonic()))

    async def _drop(self, proxy: Any, why: str, graceful: bool) -> None:
        """Close a checked-out connection; its holder goes back to the pool and reconnects on demand."""
        try:
            if graceful:
                await proxy.close(timeout=self.connector.settings.connect_timeout)
            else:
                proxy.terminate()
        except Exception:  # closing a broken connection may fail; it is gone either way
            log.debug("closing a pooled connection (%s) failed", why, exc_info=True)
            try:
                proxy.terminate()
            except Exception:
                pass
        await self.release(proxy)  # a no-op when closing already released it

    def stats(self) -> dict[str, Any]:
        return {"pool": {"size": self.get_size(), "idle": self.get_idle_size(), "max": self.get_max_size(),
                         "discarded": self.discarded, "recycled": self.recycled},
                **self.connector.stats()}


def create_pool(*, settings: Settings | None = None, workspace_client: Any = None,
                credentials: CredentialCache | None = None, pre_ping: bool | str | None = True,
                max_lifetime: float | None = MAX_LIFETIME, **kwargs: Any) -> Pool:
    """An asyncpg pool of Lakebase connections: ``pool = await create_pool(...)`` or ``async with``.

    Arguments named like :class:`~lakebase.Settings` fields configure the target; asyncpg's pool
    arguments (``min_size``, ``max_size``, ``max_inactive_connection_lifetime``, ``setup``, ``init``,
    ``reset``, ``connection_class``, ...) keep asyncpg's defaults; the rest go to each connect like
    :func:`connect`'s. ``pre_ping`` checks a connection on acquire and replaces it if the server ended
    it (within ``acquire(timeout=...)``, which covers the check): ``True`` (the default) looks at its
    socket, no round trip (``SELECT 1`` only when something arrived while it was idle); ``"query"``
    runs ``SELECT 1`` on every acquire, for networks that drop connections silently; ``False``: no check.
    ``max_lifetime`` (seconds, default 3600, None for no limit)
    closes older connections on acquire.
    """
    if kwargs.get("connect") is not None:
        raise ConfigurationError("connect= was given, but lakebase opens the pool's connections itself",
                                 setting="connect", fix="remove connect=; use init= or setup= to prepare "
                                 "connections")
    kwargs.pop("connect", None)
    overrides, rest = split_settings(kwargs)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    pool_options = {name: rest.pop(name, default) for name, default in _POOL_DEFAULTS.items()}
    check_arguments(rest)
    pool: Pool

    async def connect_hook(*_dsn: Any, loop: Any = None, **conn_kwargs: Any) -> asyncpg.Connection:
        return pool._note_new(await open_connection(connector, **conn_kwargs))

    pool = Pool(None, connect=connect_hook, connector=connector, pre_ping=pre_ping, max_lifetime=max_lifetime,
                **pool_options, **rest)
    return pool


__all__ = ["MAX_LIFETIME", "Pool", "check_arguments", "connect", "create_pool", "open_connection", "ssl_context"]
