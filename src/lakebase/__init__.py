"""Connect Python applications to Databricks Lakebase Postgres, and keep them connected.

::

    import lakebase

    with lakebase.connect() as conn:             # settings from the environment (PGHOST, ENDPOINT_NAME, ...)
        conn.execute("SELECT 1")

    pool = lakebase.ConnectionPool(max_size=10, open=True)   # a psycopg_pool pool with fresh tokens

The psycopg names (``connect``, ``connect_async``, ``ConnectionPool``, ``AsyncConnectionPool``,
``PoolTimeout``) need the ``psycopg`` extra. When it is installed they are imported with ``lakebase``
itself (at an app's start, not on an event loop: an import on first use inside a coroutine would hold the
loop while psycopg and the Databricks SDK load); without it, using one of them names the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .credentials import CredentialCache, Lazy, RefreshAhead
from .errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectionFailed,
    CredentialsUnavailable,
    LakebaseError,
    PermissionDenied,
    ResolutionError,
)
from .settings import Settings
from .transactions import CommitOutcomeUnknown, TransactionFailed, run_transaction, run_transaction_async

if TYPE_CHECKING:
    from .psycopg import AsyncConnectionPool, ConnectionPool, PoolTimeout, connect, connect_async
else:
    from ._extras import MissingExtra

    try:
        from .psycopg import AsyncConnectionPool, ConnectionPool, PoolTimeout, connect, connect_async
    except MissingExtra:  # no psycopg: the names stay unresolved, and __getattr__ says what to install
        pass

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it, CHANGELOG.md follows

_PSYCOPG_NAMES = ("connect", "connect_async", "ConnectionPool", "AsyncConnectionPool", "PoolTimeout")

__all__ = [
    "AsyncConnectionPool",
    "AuthenticationFailed",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConnectionFailed",
    "ConnectionPool",
    "CredentialCache",
    "CredentialsUnavailable",
    "LakebaseError",
    "Lazy",
    "PermissionDenied",
    "PoolTimeout",
    "RefreshAhead",
    "ResolutionError",
    "Settings",
    "TransactionFailed",
    "connect",
    "connect_async",
    "run_transaction",
    "run_transaction_async",
    "stats",
]


def stats() -> dict[str, Any]:
    """Counters of every shared connector and credential cache of this process."""
    from .connector import all_stats

    return all_stats()


def __getattr__(name: str) -> Any:
    if name in _PSYCOPG_NAMES:
        from . import psycopg as _psycopg

        value = getattr(_psycopg, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lakebase' has no attribute {name!r}")
