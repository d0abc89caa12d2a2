"""SQLAlchemy 2: :func:`create_engine` and :func:`create_async_engine` for Lakebase.

::

    from lakebase.sqlalchemy import create_engine, create_async_engine

    engine = create_engine()                       # settings from the environment (PGHOST, ENDPOINT_NAME, ...)
    aengine = create_async_engine(pool_size=10)

The engines use the psycopg (v3) dialect; the engine can use psycopg2 instead
(``create_engine(driver="psycopg2")`` or ``"postgresql+psycopg2://"``, the ``psycopg2`` extra), the
async engine asyncpg (``create_async_engine(driver="asyncpg")`` or ``"postgresql+asyncpg://"``).
Every new DBAPI connection is opened by lakebase (``creator=`` / ``async_creator=``), not from the URL:
it carries a valid token from the shared credential cache, rides out restarts and scale-to-zero
wake-ups inside the connect deadline, replaces a refused token once, and fails with an error that names the
cause. The async engine never mints a token or calls the Databricks SDK on the event loop
(``async_creator`` awaits the connector, whose blocking work runs in worker threads), unlike a
``do_connect`` hook, which runs on the loop.

What the popular ``do_connect`` recipe gets wrong, and the defaults here (:data:`ENGINE_DEFAULTS`,
each can be overridden):

* a token refreshed by a hand-written background task: here the credential cache refreshes ahead
  of expiry and a refused token is replaced on the spot;
* ``pool_recycle=3600`` alone: connections ended by a restart or scale-to-zero (57P01) are handed
  out dead. Here a ``checkout`` check replaces them without a round trip (the server's goodbye is
  on the socket: see :mod:`lakebase._liveness`; when something arrived on an idle connection, the
  dialect's ping decides), and ``pool_recycle`` is 45 minutes. ``pool_pre_ping=True`` instead pings
  on every checkout (a round trip), for networks that drop connections silently;
* ``sslmode`` left to the caller: here it comes from the settings (``require`` by default) and a
  mode that allows plaintext is refused; so is a password in the URL or ``connect_args``.

The URL is optional. When given, its host, port, database and user are used as settings (below
explicit keyword arguments, above the environment) and its query goes to the driver like
``connect_args``. Keyword arguments named like :class:`~lakebase.Settings` fields configure the
target; everything else is SQLAlchemy's.
"""

from __future__ import annotations

from typing import Any

from ._extras import requires_extra

with requires_extra("sqlalchemy", __name__):
    import psycopg
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.engine import URL, Engine, make_url
    from sqlalchemy.exc import DisconnectionError
    from sqlalchemy.ext.asyncio import AsyncEngine

from ._adapter import check_arguments, split_settings
from ._liveness import QUIET, READABLE, asyncpg_state, psycopg2_state, psycopg_state
from .connector import Connector, get_connector
from .credentials import CredentialCache
from .errors import ConfigurationError
from .psycopg import open_connection, open_connection_async
from .settings import Settings

#: Engine defaults: recycle connections well before Lakebase's 3-day limit and 24 h idle timeout.
#: Connections are also checked before they are handed out (restarts and scale to zero end sessions
#: with 57P01): by :func:`install_liveness_check` unless ``pool_pre_ping=True`` is given.
ENGINE_DEFAULTS: dict[str, Any] = {
    "pool_recycle": 2700,
}


def install_liveness_check(engine: Engine, driver: str = "psycopg") -> None:
    """Check each connection ``engine``'s pool hands out, without a round trip (a ``checkout`` event).

    A connection whose session the server ended (restart, scale to zero, idle or lifetime limit) is
    invalidated and replaced by a new one (``DisconnectionError``); when something arrived on the idle
    connection, the dialect's ping (one round trip) decides, so a pending ``NOTIFY`` does not cost the
    connection. ``driver`` is ``psycopg``, ``psycopg2`` or ``asyncpg``. The engines made here have it
    unless ``pool_pre_ping=True`` was given.
    """
    dialect = engine.dialect
    state_of = {"asyncpg": asyncpg_state, "psycopg2": psycopg2_state}.get(driver, psycopg_state)

    def check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        state = state_of(getattr(dbapi_connection, "driver_connection", dbapi_connection))
        if state == QUIET:
            return
        if state == READABLE:
            try:
                if dialect.do_ping(dbapi_connection):
                    return
            except Exception as exc:
                raise DisconnectionError(f"the server ended this session ({type(exc).__name__}); "
                                         "replacing the connection") from exc
        raise DisconnectionError("the connection is closed (the server ended the session); replacing it")

    event.listen(engine, "checkout", check)

_URL_SETTINGS = {"host": "host", "port": "port", "database": "database", "username": "user"}


def _configure(url: str | URL | None, kwargs: dict[str, Any], drivers: tuple[str, ...], what: str,
               driver_given: str | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(settings overrides, driver connect arguments, engine arguments, driver name)."""
    if driver_given is not None and driver_given not in drivers:
        raise ConfigurationError(f"{what} supports {' and '.join(drivers)}, not {driver_given!r}",
                                 setting="driver", value=driver_given,
                                 fix=f"use driver={drivers[0]!r} (the default) or leave it out")
    overrides, engine_kwargs = split_settings(kwargs)
    for hook in ("creator", "async_creator"):
        if engine_kwargs.get(hook) is not None:
            raise ConfigurationError(f"{hook}= was given, but lakebase opens the engine's connections itself",
                                     setting=hook, fix=f"remove {hook}=; use connect_args= for driver options")
    connect_args = dict(engine_kwargs.pop("connect_args", None) or {})
    driver = driver_given or drivers[0]
    if url is not None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ConfigurationError(f"{parsed.drivername!r} is not a PostgreSQL URL", setting="url",
                                     value=parsed.render_as_string(), fix="use postgresql+psycopg:// or leave "
                                     "the URL out")
        if "+" in parsed.drivername:
            if driver_given is not None and parsed.get_driver_name() != driver_given:
                raise ConfigurationError(
                    f"the URL says {parsed.get_driver_name()!r} but driver={driver_given!r} was given",
                    setting="driver", value=driver_given, fix="give the driver once, in the URL or as driver=")
            driver = parsed.get_driver_name()
        if driver not in drivers:
            raise ConfigurationError(
                f"{what} supports {' and '.join(drivers)}, not {driver!r}", setting="url",
                value=parsed.drivername, fix=f"use postgresql+{drivers[0]}:// or leave the URL out")
        if parsed.password is not None:
            raise ConfigurationError("the URL contains a password, but lakebase sets the password "
                                     "(a fresh OAuth token) itself", setting="url", value="[REDACTED]",
                                     fix="remove the password from the URL")
        for attr, name in _URL_SETTINGS.items():
            value = getattr(parsed, attr)
            if value is not None and name not in overrides:
                overrides[name] = value
        for key, value in parsed.query.items():
            connect_args.setdefault(key, value[-1] if isinstance(value, tuple) else value)
    if driver == "asyncpg":
        from .asyncpg import check_arguments as check_asyncpg_arguments

        check_asyncpg_arguments(connect_args, "connect_args")
    else:
        check_arguments(connect_args, "connect_args")
    return overrides, connect_args, {**ENGINE_DEFAULTS, **engine_kwargs}, driver


def _display_url(driver: str, settings: Settings) -> URL:
    """The URL shown by ``engine.url`` (never used to connect; no password)."""
    return URL.create(f"postgresql+{driver}", username=settings.user, host=settings.host, port=settings.port,
                      database=settings.database)


def create_engine(url: str | URL | None = None, *, settings: Settings | None = None,
                  workspace_client: Any = None, credentials: CredentialCache | None = None,
                  driver: str | None = None, **kwargs: Any) -> Engine:
    """A SQLAlchemy :class:`~sqlalchemy.engine.Engine` on psycopg 3 whose connections come from lakebase.

    ``driver="psycopg2"`` (or a ``postgresql+psycopg2://`` URL) uses psycopg2 instead, through
    :mod:`lakebase.psycopg2` (the ``psycopg2`` extra), with the same tokens, retries and errors.

    ``create_engine()`` alone works in a Databricks App and on a laptop with ``ENDPOINT_NAME``
    (and optionally ``PGHOST``/``PGUSER``) set. ``settings``, ``workspace_client`` and
    ``credentials`` as for :func:`lakebase.connect`; ``connect_args`` go to
    ``psycopg.connect`` (``options``, ``application_name``, ``autocommit``...); other arguments to
    :func:`sqlalchemy.create_engine` over :data:`ENGINE_DEFAULTS`. Connecting raises
    :class:`~lakebase.ConnectionFailed` (and subclasses), :class:`~lakebase.CredentialsUnavailable`...
    as :func:`lakebase.connect` does. ``engine.connector`` (not part of SQLAlchemy) is the lakebase
    connector, for ``stats()``.
    """
    overrides, connect_args, engine_kwargs, driver = _configure(url, kwargs, ("psycopg", "psycopg2"),
                                                                "create_engine", driver)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    creator: Any
    if driver == "psycopg2":
        from .psycopg2 import open_connection as open_psycopg2_connection

        def creator() -> Any:
            return open_psycopg2_connection(connector, **connect_args)
    else:
        def creator() -> psycopg.Connection[Any]:
            return open_connection(connector, **connect_args)

    engine = sqlalchemy.create_engine(_display_url(driver, connector.settings), creator=creator, **engine_kwargs)
    if not engine_kwargs.get("pool_pre_ping"):
        install_liveness_check(engine, driver)
    engine.connector = connector  # type: ignore[attr-defined]
    return engine


def create_async_engine(url: str | URL | None = None, *, settings: Settings | None = None,
                        workspace_client: Any = None, credentials: CredentialCache | None = None,
                        driver: str | None = None, **kwargs: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine`: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.

    The driver is psycopg 3 (``postgresql+psycopg://``, the default) or asyncpg
    (``driver="asyncpg"`` or ``postgresql+asyncpg://``, through :mod:`lakebase.asyncpg`). Connections are opened by an
    ``async_creator``: the token is minted, and the target looked up, in worker threads, never on
    the event loop.
    """
    overrides, connect_args, engine_kwargs, driver = _configure(url, kwargs, ("psycopg", "asyncpg"),
                                                                "create_async_engine", driver)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    if driver == "asyncpg":
        from .asyncpg import open_connection as open_asyncpg_connection

        async def async_creator() -> Any:
            return await open_asyncpg_connection(connector, **connect_args)
    else:
        async def async_creator() -> Any:
            return await open_connection_async(connector, **connect_args)

    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    engine = sa_create_async_engine(_display_url(driver, connector.settings), async_creator=async_creator,
                                    **engine_kwargs)
    if not engine_kwargs.get("pool_pre_ping"):
        install_liveness_check(engine.sync_engine, driver)
    engine.sync_engine.connector = connector  # type: ignore[attr-defined]
    return engine


def connector_of(engine: Engine | AsyncEngine) -> Connector:
    """The lakebase connector behind an engine made here (its ``stats()``, ``describe()``)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    connector = getattr(sync_engine, "connector", None)
    if not isinstance(connector, Connector):
        raise TypeError(f"{engine!r} was not made by lakebase.sqlalchemy")
    return connector


__all__ = ["ENGINE_DEFAULTS", "connector_of", "create_async_engine", "create_engine", "install_liveness_check"]
