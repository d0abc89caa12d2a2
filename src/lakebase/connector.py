"""The driver-neutral core: settings + workspace client + credential cache + resolved target.

A driver integration (psycopg here; SQLAlchemy and asyncpg build on the same pieces) needs::

    connector = get_connector(settings, workspace_client, **overrides)
    target = connector.target()            # or: await connector.atarget()   (host, port, user, ...)
    conn = connector.connect(attempt)      # or: await connector.aconnect(attempt)

where ``attempt(password, timeout)`` opens one connection with the driver. ``connect`` runs it
inside the retry loop of :mod:`lakebase.retry` with the token from ``connector.credentials``.

Connectors and credential caches are shared process-wide: one connector per (settings, workspace
client), one credential cache per workspace identity (host + who) and product, so every connection,
pool and engine of a process uses one token. A connector built without a workspace client uses a
default ``WorkspaceClient()`` (the SDK's unified auth: PAT, OAuth M2M, profiles), one per distinct
``DATABRICKS_*`` environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

# The Databricks SDK is imported here, when a driver integration (lakebase.psycopg, .asyncpg,
# .sqlalchemy) is imported at an app's start, rather than on first use: imported by the first async
# connect, even in a worker thread, it holds the GIL (unmarshalling and building hundreds of classes)
# and stalls the event loop for 100+ ms (benchmarks/first_connect_lag.py). Not when this module is
# first imported by code already running on an event loop (``lakebase.connect_async`` resolved
# lazily): there the import would block the loop for all of its time, so it stays in a worker thread.
try:
    asyncio.get_running_loop()
except RuntimeError:
    import databricks.sdk
    import databricks.sdk.service.database
    import databricks.sdk.service.iam
    import databricks.sdk.service.postgres  # noqa: F401

from . import _redact, _sdk
from ._telemetry import Counters
from .credentials import CredentialCache, EndpointTokenSource, InstanceTokenSource
from .endpoints import Target, find_endpoint, resolve_target
from .retry import aconnect_with_retry, connect_with_retry
from .settings import Settings

T = TypeVar("T")


class Connector:
    """Everything needed to open connections to one Lakebase target (see the module doc)."""

    def __init__(self, settings: Settings, workspace_client: Any = None,
                 credentials: CredentialCache | None = None) -> None:
        _redact.install()
        self.settings = settings
        self._workspace_client = workspace_client
        self._credentials = credentials
        self._apis: _sdk.BoundedApis | None = None
        self._target: Target | None = None
        self._lock = threading.Lock()
        self.counters = Counters("connect", target=settings.target_name)

    def __repr__(self) -> str:
        return f"<Connector {self._target.describe() if self._target else self.settings.target_name}>"

    # ---- pieces, built on first use (blocking: call from a thread in async code) ------------------
    @property
    def workspace_client(self) -> Any:
        if self._workspace_client is None:
            self._workspace_client = default_workspace_client(self.settings.api_timeout)
        return self._workspace_client

    @property
    def apis(self) -> _sdk.BoundedApis:
        """The workspace APIs (bounded retries); those of an explicitly given credential cache if no
        workspace client was given."""
        if self._apis is None:
            source_apis = getattr(getattr(self._credentials, "source", None), "apis", None)
            if self._workspace_client is None and isinstance(source_apis, _sdk.BoundedApis):
                self._apis = source_apis
            else:
                self._apis = _sdk.BoundedApis(self.workspace_client, self.settings.api_timeout)
        return self._apis

    def _find_endpoint(self) -> None:
        """With only a host configured: ``settings`` become those naming the endpoint that has it."""
        if self.settings.find_endpoint:
            with self._lock:
                if self.settings.find_endpoint:
                    self.settings = find_endpoint(self.settings, lambda: self.apis)

    @property
    def credentials(self) -> CredentialCache:
        if self._credentials is None:
            self._find_endpoint()
            with self._lock:
                if self._credentials is None:
                    self._credentials = shared_credentials(self.settings, self.workspace_client)
        return self._credentials

    def target(self) -> Target:
        """The resolved target; looked up once (SDK calls when PGHOST or PGUSER are not set, or to find
        the endpoint of a PGHOST)."""
        if self._target is None:
            self._find_endpoint()
            with self._lock:
                if self._target is None:
                    self._target = resolve_target(self.settings, lambda: self.apis)
        return self._target

    def prepare(self) -> Target:
        """Build the workspace client, the credential cache and the target (blocking)."""
        self.credentials  # noqa: B018 - built for its side effect
        return self.target()

    @property
    def prepared(self) -> bool:
        return self._target is not None and self._credentials is not None

    async def atarget(self) -> Target:
        """:meth:`prepare` for async code: the blocking part runs in a worker thread."""
        if self._target is not None and self._credentials is not None:
            return self._target
        return await asyncio.to_thread(self.prepare)

    def describe(self) -> str:
        return self._target.describe() if self._target else self.settings.target_name

    # ---- connecting ----------------------------------------------------------------------------
    def connect(self, attempt: Callable[[str, float], T]) -> T:
        """Run ``attempt(password, timeout)`` in the retry loop (see :mod:`lakebase.retry`)."""
        self.prepare()
        return connect_with_retry(attempt, self.credentials, describe=self.describe(),
                                  deadline=self.settings.connect_deadline,
                                  connect_timeout=self.settings.connect_timeout, counters=self.counters)

    async def aconnect(self, attempt: Callable[[str, float], Awaitable[T]]) -> T:
        await self.atarget()
        return await aconnect_with_retry(attempt, self.credentials, describe=self.describe(),
                                         deadline=self.settings.connect_deadline,
                                         connect_timeout=self.settings.connect_timeout,
                                         counters=self.counters)

    def stats(self) -> dict[str, Any]:
        """Connect counters (attempts, retries, auth_retries, failures) and the credential cache's."""
        stats: dict[str, Any] = {"connect": self.counters.snapshot(), "target": self.describe()}
        if self._credentials is not None:
            stats["credentials"] = self._credentials.stats()
        return stats

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self.counters.after_fork()


# ---- process-wide registries ---------------------------------------------------------------------
_lock = threading.Lock()
# Least recently used last; bounded, so an app that builds a WorkspaceClient per request cannot grow
# it without end (an evicted connector keeps working for whoever holds it; it is just not shared).
MAX_SHARED_CONNECTORS = 256
_connectors: OrderedDict[tuple[Any, ...], Connector] = OrderedDict()
_caches: dict[tuple[Any, ...], CredentialCache] = {}
_default_clients: dict[tuple[Any, ...], Any] = {}


def _auth_environment() -> tuple[str, ...]:
    """A digest of the environment the SDK's unified auth reads (no secret is kept in clear)."""
    items = sorted((k, v) for k, v in os.environ.items()
                   if k.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")))
    return (hashlib.sha256(repr(items).encode()).hexdigest(),)


def default_workspace_client(api_timeout: float) -> Any:
    """The process's default ``WorkspaceClient()``, one per distinct auth environment."""
    key = (*_auth_environment(), api_timeout)
    with _lock:
        client = _default_clients.get(key)
    if client is None:
        client = _sdk.default_workspace_client(api_timeout)
        with _lock:
            client = _default_clients.setdefault(key, client)
    return client


def shared_credentials(settings: Settings, workspace_client: Any) -> CredentialCache:
    """The credential cache of this workspace identity (created on first use)."""
    host, identity = _sdk.identity_key(workspace_client)
    # Autoscaling tokens are workspace-scoped: one per identity serves every endpoint. Provisioned
    # tokens are requested per instance, so they are kept per instance.
    scope = "" if settings.product == "autoscaling" else settings.target_name
    key = (host, identity, settings.product, scope, settings.token_refresh)
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            apis = _sdk.BoundedApis(workspace_client, settings.api_timeout)
            source = (EndpointTokenSource(apis, settings.target_name) if settings.product == "autoscaling"
                      else InstanceTokenSource(apis, settings.target_name))
            label = identity.split(":", 1)[1]
            if identity.startswith("token:"):
                label = "PAT user"
            cache = CredentialCache(source, settings.token_refresh, identity=f"{label} at {host}")
            _caches[key] = cache
        elif isinstance(cache.source, EndpointTokenSource):
            cache.source.add(settings.target_name)  # mint with an endpoint this caller knows to exist
        return cache


def get_connector(settings: Settings | None = None, workspace_client: Any = None,
                  credentials: CredentialCache | None = None, **overrides: Any) -> Connector:
    """The shared connector for these settings (``Settings(**overrides)`` when none are given)."""
    if settings is None:
        settings = Settings(**overrides)
    elif overrides:
        settings = settings.replace(**overrides)
    client_key = id(workspace_client) if workspace_client is not None else _auth_environment()
    key = (settings, client_key, id(credentials) if credentials is not None else None)
    with _lock:
        connector = _connectors.get(key)
        if connector is not None and (workspace_client is None or connector._workspace_client is workspace_client) \
                and (credentials is None or connector._credentials is credentials):
            _connectors.move_to_end(key)
            return connector
        connector = Connector(settings, workspace_client, credentials)
        _connectors[key] = connector
        _connectors.move_to_end(key)
        while len(_connectors) > MAX_SHARED_CONNECTORS:
            _connectors.popitem(last=False)
        return connector


def all_stats() -> dict[str, Any]:
    """Counters of every shared connector and credential cache of the process."""
    with _lock:
        connectors, caches = list(_connectors.values()), list(_caches.values())
    return {
        "connectors": [c.stats() for c in connectors],
        "credentials": [c.stats() for c in caches],
    }


def reset() -> None:
    """Forget every shared connector, credential cache and default client (tests; after config changes)."""
    with _lock:
        caches = list(_caches.values())
        _connectors.clear()
        _caches.clear()
        _default_clients.clear()
    for cache in caches:
        cache.close()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for connector in list(_connectors.values()):
        connector._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
