"""SQLAlchemy 2: :func:`create_engine` and :func:`create_async_engine` for Lakebase.

::

    from lakebase.sqlalchemy import create_engine, create_async_engine

    engine = create_engine()                       # settings from the environment (PGHOST, ENDPOINT_NAME, ...)
    aengine = create_async_engine(pool_size=10)

The engines use the psycopg (v3) dialect; the async engine can use asyncpg instead
(``create_async_engine("postgresql+asyncpg://")``). Every new DBAPI connection is opened by lakebase
(``creator=`` / ``async_creator=``), not from the URL: it carries a valid token from the shared
credential cache, rides out restarts and scale-to-zero wake-ups inside the connect deadline, replaces
a refused token once, and fails with an error that names the cause. The async engine never mints a
token or calls the Databricks SDK on the event loop (``async_creator`` awaits the connector, whose
blocking work runs in worker threads), unlike a ``do_connect`` hook, which runs on the loop.

What the popular ``do_connect`` recipe gets wrong, and the defaults here (:data:`ENGINE_DEFAULTS`,
each can be overridden):

* a token refreshed by a hand-written background task: here the credential cache refreshes ahead
  of expiry and a refused token is replaced on the spot;
* ``pool_recycle=3600`` alone: connections ended by a restart or scale-to-zero (57P01) are handed
  out dead. Here ``pool_pre_ping=True`` replaces them, and ``pool_recycle`` is 45 minutes;
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
    from sqlalchemy.engine import URL, Engine, make_url
    from sqlalchemy.ext.asyncio import AsyncEngine

from .connector import Connector, get_connector
from .credentials import CredentialCache
from .errors import ConfigurationError
from .psycopg import SETTINGS_FIELDS
from .psycopg import _aconnect as _psycopg_aconnect
from .psycopg import _connect as _psycopg_connect
from .settings import SAFE_SSLMODES, Settings

#: Engine defaults: check a connection before handing it out (restarts and scale to zero end
#: sessions with 57P01), recycle connections well before Lakebase's 3-day limit and 24 h idle timeout.
ENGINE_DEFAULTS: dict[str, Any] = {
    "pool_pre_ping": True,
    "pool_recycle": 2700,
}

_URL_SETTINGS = {"host": "host", "port": "port", "database": "database", "username": "user"}


def _configure(url: str | URL | None, kwargs: dict[str, Any], drivers: tuple[str, ...], what: str,
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(settings overrides, driver connect arguments, engine arguments, driver name)."""
    overrides = {k: v for k, v in kwargs.items() if k in SETTINGS_FIELDS}
    engine_kwargs = {k: v for k, v in kwargs.items() if k not in SETTINGS_FIELDS}
    for hook in ("creator", "async_creator"):
        if engine_kwargs.get(hook) is not None:
            raise ConfigurationError(f"{hook}= was given, but lakebase opens the engine's connections itself",
                                     setting=hook, fix=f"remove {hook}=; use connect_args= for driver options")
    connect_args = dict(engine_kwargs.pop("connect_args", None) or {})
    driver = drivers[0]
    if url is not None:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            raise ConfigurationError(f"{parsed.drivername!r} is not a PostgreSQL URL", setting="url",
                                     value=parsed.render_as_string(), fix="use postgresql+psycopg:// or leave "
                                     "the URL out")
        driver = parsed.get_driver_name() if "+" in parsed.drivername else drivers[0]
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
    mode = connect_args.get("sslmode")
    if mode is not None and str(mode).lower() not in SAFE_SSLMODES:
        raise ConfigurationError(f"sslmode={mode!r}: Lakebase requires TLS (the token is the password)",
                                 setting="sslmode", value=mode, fix="use sslmode=require (or verify-full), "
                                 "or leave it out")
    for secret in ("password", "passfile"):
        if connect_args.get(secret) is not None:
            raise ConfigurationError(f"{secret} was given in connect_args, but lakebase sets the password "
                                     "(a fresh OAuth token) itself", setting=secret, value="[REDACTED]",
                                     fix=f"remove {secret} from connect_args")
    return overrides, connect_args, {**ENGINE_DEFAULTS, **engine_kwargs}, driver


def _display_url(driver: str, settings: Settings) -> URL:
    """The URL shown by ``engine.url`` (never used to connect; no password)."""
    return URL.create(f"postgresql+{driver}", username=settings.user, host=settings.host, port=settings.port,
                      database=settings.database)


def create_engine(url: str | URL | None = None, *, settings: Settings | None = None,
                  workspace_client: Any = None, credentials: CredentialCache | None = None,
                  **kwargs: Any) -> Engine:
    """A SQLAlchemy :class:`~sqlalchemy.engine.Engine` on psycopg 3 whose connections come from lakebase.

    ``create_engine()`` alone works in a Databricks App and on a laptop with ``ENDPOINT_NAME``
    (and optionally ``PGHOST``/``PGUSER``) set. ``settings``, ``workspace_client`` and
    ``credentials`` as for :func:`lakebase.connect`; ``connect_args`` go to
    ``psycopg.connect`` (``options``, ``application_name``, ``autocommit``...); other arguments to
    :func:`sqlalchemy.create_engine` over :data:`ENGINE_DEFAULTS`. Connecting raises
    :class:`~lakebase.ConnectionFailed` (and subclasses), :class:`~lakebase.CredentialsUnavailable`...
    as :func:`lakebase.connect` does. ``engine.connector`` (not part of SQLAlchemy) is the lakebase
    connector, for ``stats()``.
    """
    overrides, connect_args, engine_kwargs, driver = _configure(url, kwargs, ("psycopg",), "create_engine")
    connector = get_connector(settings, workspace_client, credentials, **overrides)

    def creator() -> psycopg.Connection[Any]:
        return _psycopg_connect(connector, psycopg.Connection, "", connect_args)

    engine = sqlalchemy.create_engine(_display_url(driver, connector.settings), creator=creator, **engine_kwargs)
    engine.connector = connector  # type: ignore[attr-defined]
    return engine


def create_async_engine(url: str | URL | None = None, *, settings: Settings | None = None,
                        workspace_client: Any = None, credentials: CredentialCache | None = None,
                        **kwargs: Any) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine`: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.

    The driver is psycopg 3 (``postgresql+psycopg://``, the default) or asyncpg
    (``postgresql+asyncpg://``, through :mod:`lakebase.asyncpg`). Connections are opened by an
    ``async_creator``: the token is minted, and the target looked up, in worker threads, never on
    the event loop.
    """
    overrides, connect_args, engine_kwargs, driver = _configure(url, kwargs, ("psycopg", "asyncpg"),
                                                                "create_async_engine")
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    if driver == "asyncpg":
        from .asyncpg import _aconnect as _asyncpg_aconnect
        from .asyncpg import _check_arguments

        _check_arguments(connect_args)

        async def async_creator() -> Any:
            return await _asyncpg_aconnect(connector, connect_args)
    else:
        async def async_creator() -> Any:
            return await _psycopg_aconnect(connector, psycopg.AsyncConnection, "", connect_args)

    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    engine = sa_create_async_engine(_display_url(driver, connector.settings), async_creator=async_creator,
                                    **engine_kwargs)
    engine.sync_engine.connector = connector  # type: ignore[attr-defined]
    return engine


def connector_of(engine: Engine | AsyncEngine) -> Connector:
    """The lakebase connector behind an engine made here (its ``stats()``, ``describe()``)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    connector = getattr(sync_engine, "connector", None)
    if not isinstance(connector, Connector):
        raise TypeError(f"{engine!r} was not made by lakebase.sqlalchemy")
    return connector


__all__ = ["ENGINE_DEFAULTS", "connector_of", "create_async_engine", "create_engine"]
