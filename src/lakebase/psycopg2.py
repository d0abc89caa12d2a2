"""psycopg2: :func:`connect`, with a fresh token and the lakebase connect retries on every connection.

::

    import lakebase.psycopg2

    conn = lakebase.psycopg2.connect()      # settings from the environment (PGHOST, ENDPOINT_NAME, ...)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM notes")

For scripts and code bases that already use psycopg2. Each connection is opened through the shared
connector (:meth:`lakebase.connector.Connector.connect`), as :func:`lakebase.connect` opens psycopg 3's:
the password is a valid token from the process-wide credential cache, restarts and scale-to-zero
wake-ups (57P01, 57P03, 08xxx, refused, timeouts) are retried until the connect deadline, a refused
token (28P01) is replaced once, and failures raise the same errors
(:class:`~lakebase.ConnectionFailed` and subclasses, :class:`~lakebase.CredentialsUnavailable`,
:class:`~lakebase.ConfigurationError`) with psycopg2's error as the cause. psycopg2's errors carry
their SQLSTATE as ``pgcode``; :mod:`lakebase.diagnosis` reads it (and the message) like psycopg 3's.

There is no psycopg2 pool here: a long-running app should use psycopg 3's
:class:`lakebase.ConnectionPool` (or :func:`lakebase.sqlalchemy.create_engine`, which also takes
``driver="psycopg2"``), or keep its psycopg2 code and point it at ``lakebase proxy`` (a local endpoint
that logs in with fresh tokens). A psycopg2 connection kept open outlives its token harmlessly (the
token is checked at login only), but not a restart or scale to zero, which end its session.
"""

from __future__ import annotations

from typing import Any

from ._extras import requires_extra

with requires_extra("psycopg2", __name__):
    import psycopg2
    import psycopg2.extensions

from ._adapter import connection_string, libpq_connect_params, libpq_connect_timeout, split_settings
from .connector import Connector, get_connector
from .credentials import CredentialCache
from .endpoints import hostaddr_for
from .settings import Settings


def open_connection(connector: Connector, dsn: str = "", /, **kwargs: Any) -> psycopg2.extensions.connection:
    """Open one psycopg2 connection through ``connector`` (fresh token, retries): the adapter's entry point.

    ``dsn`` and ``kwargs`` are psycopg2's connection arguments (libpq parameters over the target's,
    ``connection_factory``, ``cursor_factory``; no password, no plaintext ``sslmode``).
    :func:`connect` and ``lakebase.sqlalchemy.create_engine(driver="psycopg2")`` open theirs here.
    """
    factories = {k: kwargs.pop(k) for k in ("connection_factory", "cursor_factory") if k in kwargs}
    dsn, kwargs = connection_string(dsn, kwargs, "dsn")
    target = connector.prepare()
    given = {**(psycopg2.extensions.parse_dsn(dsn) if dsn else {}), **kwargs}
    params = libpq_connect_params(target, hostaddr_for(target.host, target.port), given)
    requested = params.pop("connect_timeout", None)

    def attempt(password: str, timeout: float) -> psycopg2.extensions.connection:
        return psycopg2.connect(**factories, **params, password=password,
                                connect_timeout=libpq_connect_timeout(timeout, requested))

    return connector.connect(attempt)


def connect(dsn: str = "", *, settings: Settings | None = None, workspace_client: Any = None,
            credentials: CredentialCache | None = None, **kwargs: Any) -> psycopg2.extensions.connection:
    """Open a psycopg2 connection to Lakebase, configured from ``kwargs`` and the environment.

    As :func:`lakebase.connect`: keyword arguments named like :class:`~lakebase.Settings` fields
    (``endpoint``, ``host``, ``database``, ``user``, ``connect_deadline``...) override the environment;
    the others, and ``dsn``, go to :func:`psycopg2.connect` (``options``, ``cursor_factory``...). A
    ``password`` (or one in ``dsn``) is refused: lakebase sets it to a fresh OAuth token.

    Raises :class:`~lakebase.ConfigurationError`, :class:`~lakebase.CredentialsUnavailable` or
    :class:`~lakebase.ConnectionFailed` (and its subclasses), with psycopg2's error as the cause.
    """
    overrides, conn_kwargs = split_settings(kwargs)
    connector = get_connector(settings, workspace_client, credentials, **overrides)
    return open_connection(connector, dsn, **conn_kwargs)


__all__ = ["connect", "open_connection"]
