"""``lakebase proxy``: a local PostgreSQL proxy that logs in to Lakebase with a fresh OAuth token, so
that any client (psql, DBeaver, psycopg2, node-postgres, JDBC, dbt) connects without a password.

Like Google's Cloud SQL Auth Proxy: clients connect in plain text on loopback (or a Unix socket); the
proxy opens the TLS connection to the endpoint with the token of the library's shared credential cache
(refreshed ahead of expiry), retries wake-ups and restarts within the connect deadline, and then
forwards bytes both ways. Modules: :mod:`.config` (options), :mod:`.upstream` (the login),
:mod:`.server` (listeners, sessions, cancel), :mod:`.health` (HTTP health and metrics), :mod:`.service`
(logging, signals, running it). The options are checked before the Databricks SDK is imported.
"""

from typing import Any

from .config import EndpointOption, ProxyConfig

__all__ = ["EndpointOption", "ProxyConfig", "build", "run", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("build", "run", "serve"):
        from . import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
