"""Talking to the workspace through the Databricks SDK, with bounded retries.

The SDK retries 429/503 and connection errors for ``retry_timeout_seconds`` (300 s by default) and
honours ``Retry-After`` however long it is, so one credential call can block for minutes during an
outage. :class:`BoundedApis` gives the library its own API objects over a copy of the client's
config (same host, same authentication, same OAuth token cache) whose retries end after
``api_timeout`` seconds: ``retry_timeout_seconds`` and ``http_timeout_seconds`` are set to it, and a
clock whose ``sleep`` never goes past the deadline of the call in progress keeps a long
``Retry-After`` from stretching it. The caller (the credential cache) then owns the retry policy:
stale-token fallback, jittered exponential backoff, ``Retry-After``.

The SDK's OAuth token request (``oauth-m2m``) has no timeout at all and runs holding its token
source's lock, so no setting bounds it: the credential cache runs every call in a worker thread and
abandons it when it overruns; :meth:`BoundedApis.reset_auth` then gives the next call its own SDK
authentication (a token source whose lock nobody holds).

Also here: building the default :class:`~databricks.sdk.WorkspaceClient` (the SDK's unified auth)
with clear errors, telling transient API errors from permanent ones, and fork safety (a child
process never reuses its parent's HTTP sessions, nor its OAuth token source: a parent thread may
have held that source's lock, mid-refresh, when the process forked, and the child would wait for it
forever).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from ._redact import redact
from .errors import ConfigurationError

log = logging.getLogger("lakebase.sdk")


class _DeadlineClock:
    """An SDK clock whose ``sleep`` stops at the deadline of the current thread's call, if any.

    Once a sleep has been cut short, ``time()`` reads as past any deadline, so that the SDK's retry
    loop ends there (with its usual ``TimeoutError`` from the last API error) instead of trying once
    more.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        previous = getattr(self._local, "deadline", None), getattr(self._local, "expired", False)
        self._local.deadline, self._local.expired = time.time() + seconds, False
        try:
            yield
        finally:
            self._local.deadline, self._local.expired = previous

    def time(self) -> float:
        now = time.time()
        return now + 1e9 if getattr(self._local, "expired", False) else now

    def sleep(self, seconds: float) -> None:
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and seconds >= deadline - time.time():
            seconds = max(0.0, deadline - time.time())
            self._local.expired = True
        if seconds > 0:
            time.sleep(seconds)


def _bounded_config(cfg: Any, timeout: float, clock: _DeadlineClock, own_auth: bool = False) -> Any | None:
    """A copy of ``cfg`` with short retries, or None if this SDK's Config cannot be copied so.

    The copy shares ``cfg``'s authentication (its OAuth token cache) unless ``own_auth``: then it
    builds its own (a new token source, the SDK's OIDC discovery included: a network call).
    """
    inner = getattr(cfg, "_inner", None)
    if not isinstance(inner, dict) or not hasattr(cfg, "copy") or not hasattr(cfg, "_clock"):
        return None
    bounded = cfg.copy()
    bounded._inner = dict(inner)  # Config.copy() shares the attribute dict: never change the caller's config
    bounded.retry_timeout_seconds = max(1, math.ceil(timeout))
    bounded.http_timeout_seconds = timeout
    bounded._clock = clock
    if own_auth and hasattr(bounded, "init_auth"):
        bounded.init_auth()
    return bounded


class BoundedApis:
    """The SDK APIs the library uses, on a bounded-retry copy of ``workspace_client``'s config.

    ``call(fn, *args)`` runs ``fn`` (e.g. ``apis.postgres.generate_database_credential``) with the
    deadline in force. In a forked child the API objects are rebuilt on their own authentication,
    so the child opens its own HTTP connections and never waits for a lock its parent held.
    """

    def __init__(self, workspace_client: Any, timeout: float) -> None:
        self.workspace_client = workspace_client
        self.timeout = timeout
        self._clock = _DeadlineClock()
        self._pid = 0
        self._created_pid = os.getpid()
        self._own_auth = False
        self._api_client: Any = None
        self._bounded = True

    def reset_auth(self) -> None:
        """A call was abandoned, perhaps inside the SDK's token refresh (holding its lock, on a
        connection that may never answer): build the next calls' client on its own authentication."""
        self._own_auth = True
        self._api_client = None

    def _client(self) -> Any:
        if self._api_client is None or self._pid != os.getpid():
            from databricks.sdk.core import ApiClient

            if os.getpid() != self._created_pid:
                self._own_auth = True  # a forked child: the parent's token source may be locked for good
            cfg = _bounded_config(self.workspace_client.config, self.timeout, self._clock, self._own_auth)
            if cfg is None:
                if self._bounded:
                    log.warning("this databricks-sdk's Config cannot be copied with short retries; workspace "
                                "API calls may retry for up to retry_timeout_seconds")
                self._bounded = False
                self._api_client = self.workspace_client.api_client
            else:
                self._api_client = ApiClient(cfg)
            self._pid = os.getpid()
        return self._api_client

    @property
    def postgres(self) -> Any:
        from databricks.sdk.service.postgres import PostgresAPI

        return PostgresAPI(self._client())

    @property
    def database(self) -> Any:
        from databricks.sdk.service.database import DatabaseAPI

        return DatabaseAPI(self._client())

    @property
    def current_user(self) -> Any:
        from databricks.sdk.service.iam import CurrentUserAPI

        return CurrentUserAPI(self._client())

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._clock.deadline(self.timeout):
            return fn(*args, **kwargs)


def default_workspace_client(api_timeout: float) -> Any:
    """``WorkspaceClient()`` (the SDK's unified auth) with its own retries bounded; clear errors."""
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    try:
        # Bounded, so a workspace that is down cannot block the constructor (it probes the host).
        config = Config(retry_timeout_seconds=max(1, math.ceil(api_timeout)),
                        http_timeout_seconds=api_timeout)
        return WorkspaceClient(config=config)
    except ValueError as exc:
        raise ConfigurationError(
            "Databricks workspace authentication is not configured or not valid: " + redact(str(exc)),
            setting="DATABRICKS_HOST",
            fix="set DATABRICKS_HOST and either DATABRICKS_TOKEN (a PAT) or DATABRICKS_CLIENT_ID and "
            "DATABRICKS_CLIENT_SECRET (a service principal, as in Databricks Apps), or "
            "DATABRICKS_CONFIG_PROFILE (after `databricks auth login`), "
            "or pass workspace_client=WorkspaceClient(...)",
        ) from exc


def identity_key(workspace_client: Any) -> tuple[str, str]:
    """(workspace host, identity) for cache keys: who the tokens are minted for, never a secret."""
    cfg = workspace_client.config
    host = str(getattr(cfg, "host", "") or "")
    for attr in ("client_id", "azure_client_id", "username", "profile"):
        value = getattr(cfg, attr, None)
        if value:
            return host, f"{attr}:{value}"
    token = getattr(cfg, "token", None)
    if token:
        return host, "token:" + hashlib.sha256(str(token).encode()).hexdigest()[:16]
    return host, f"config:{id(cfg):x}"


# ---- errors ------------------------------------------------------------------------------------
def root_cause(exc: BaseException) -> BaseException:
    """The API error behind the SDK's ``TimeoutError``/``RuntimeError`` retry wrappers."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (TimeoutError, RuntimeError)) and exc.__cause__ is not None and (
            "Timed out after" in str(exc) or "Exceeded max retry attempts" in str(exc)
        ):
            exc = exc.__cause__
            continue
        break
    return exc


def http_status(exc: BaseException) -> int | None:
    from databricks.sdk.errors import platform as p

    by_class = [
        (p.TooManyRequests, 429), (p.TemporarilyUnavailable, 503), (p.DeadlineExceeded, 504),
        (p.InternalError, 500), (p.Unauthenticated, 401), (p.PermissionDenied, 403), (p.NotFound, 404),
        (p.BadRequest, 400), (p.ResourceConflict, 409),
    ]
    for cls, status in by_class:
        if isinstance(exc, cls):
            return status
    return None


def is_transient(exc: BaseException) -> bool:
    """May waiting help? Throttling, unavailability, server errors, network: yes. 400/401/403/404: no."""
    import requests
    from databricks.sdk.errors import DatabricksError

    exc = root_cause(exc)
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, DatabricksError):
        status = http_status(exc)
        return status is None or status in (429, 500, 503, 504)
    if isinstance(exc, ValueError):  # the SDK's authentication and configuration errors
        return False
    return True


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``), if it said."""
    value = getattr(root_cause(exc), "retry_after_secs", None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def describe_error(exc: BaseException) -> str:
    """``TemporarilyUnavailable (HTTP 503): the message``, redacted."""
    root = root_cause(exc)
    status = http_status(root)
    label = type(root).__name__ + (f" (HTTP {status})" if status else "")
    text = redact(str(root).strip()) or "no message"
    return f"{label}: {text}"


def error_hint(exc: BaseException) -> str:
    status = http_status(root_cause(exc))
    return {
        401: "check the workspace authentication (DATABRICKS_HOST with DATABRICKS_TOKEN, or "
             "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET)",
        403: "the identity may not use this Lakebase project: grant it CAN USE/CAN MANAGE on the project",
        404: "check the endpoint or instance name (ENDPOINT_NAME / LAKEBASE_INSTANCE_NAME) and the workspace "
             "(DATABRICKS_HOST)",
        400: "check the endpoint or instance name (ENDPOINT_NAME / LAKEBASE_INSTANCE_NAME)",
    }.get(status or 0, "")
