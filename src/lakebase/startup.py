"""Wait at start-up until the database takes logins: :func:`wait_until_ready`, ``lakebase wait``.

An app (or its start command) that runs migrations or opens a pool while the compute is still waking
from scale to zero, restarting, or while a new role is propagating, crash-loops. Instead::

    import lakebase.startup

    lakebase.startup.wait_until_ready(timeout=120)   # then run migrations, open pools, serve

or in a shell script / an app's start command::

    lakebase wait --timeout 120 && alembic upgrade head && gunicorn app:app

It logs in as the app would (a fresh token, the same settings), which wakes a suspended compute, runs
``SELECT 1``, and retries what waiting can cure (the compute waking or restarting, connection errors,
the token API or workspace API down, a new role not yet known) until ``timeout``. It fails at once,
with the cause and the fix, on what waiting cannot cure: a missing role or database, a refused token,
no privilege, a bad setting. :class:`NotReady` (a :class:`~lakebase.ConnectionFailed`) means the time
ran out on transient errors; anything else raised is permanent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from . import _sdk
from .errors import (
    ConnectionFailed,
    CredentialsUnavailable,
    LakebaseError,
    ResolutionError,
)
from .retry import Backoff, Deadline, Kind, classify

#: ``lakebase wait`` exit statuses.
EXIT_READY, EXIT_NOT_READY, EXIT_PERMANENT = 0, 1, 2


class NotReady(ConnectionFailed):
    """The database did not take a login within the timeout, on errors waiting may cure (transient)."""


@dataclass(frozen=True)
class Ready:
    """A login that worked: who, where, how long it took, and how many rounds of connect-with-retry
    (each with its own retries inside) it took."""

    target: str
    user: str
    database: str
    seconds: float
    attempts: int

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "user": self.user, "database": self.database,
                "seconds": round(self.seconds, 3), "attempts": self.attempts}


def is_transient(exc: BaseException) -> bool:
    """May waiting longer cure ``exc`` (raised by a connect or by ``SELECT 1`` right after)?"""
    if isinstance(exc, NotReady):
        return True
    if isinstance(exc, CredentialsUnavailable):
        return exc.transient
    if isinstance(exc, ResolutionError):
        # An API error: transient when the workspace was down or throttling; no cause: no host (yet).
        return exc.cause is None or _sdk.is_transient(exc.cause)
    if isinstance(exc, ConnectionFailed):
        # The retry loop gave up at its deadline (transient errors) or at once (permanent ones).
        return exc.cause is not None and classify(exc.cause).kind is Kind.TRANSIENT
    if isinstance(exc, LakebaseError):
        return False
    return classify(exc).kind is Kind.TRANSIENT


QUERY = "SELECT current_user, current_database()"


class _Rounds:
    """The waiting decisions, shared by :func:`wait_until_ready` and :func:`wait_until_ready_async`."""

    def __init__(self, timeout: float, connect_args: dict[str, Any]) -> None:
        self.timeout = timeout
        self.deadline, self.backoff = Deadline(timeout), Backoff(0.2, 2.0, 5.0)
        self.attempts, self.started = 0, time.monotonic()
        self.options = {"connect_timeout": min(10.0, max(2.0, timeout)), **connect_args}

    def connect_args(self) -> dict[str, Any]:
        """The next round's arguments of ``lakebase.connect(_async)``."""
        self.attempts += 1
        return {"connect_deadline": max(1.0, self.deadline.remaining()), "autocommit": True, **self.options}

    def ready(self, host: Any, row: Any) -> Ready:
        assert row is not None
        user, database = row
        return Ready(str(host), str(user), str(database), time.monotonic() - self.started, self.attempts)

    def failed(self, exc: Exception) -> float:
        """Seconds to wait before the next round; or raise what the caller should get."""
        if not is_transient(exc):
            raise exc
        delay = self.backoff.next_delay()
        if delay >= self.deadline.remaining():
            n = self.attempts
            raise NotReady(f"The database did not take a login within {self.timeout:g}s ({n} attempt"
                           f"{'s' if n != 1 else ''}); it may still be waking or restarting, or the workspace "
                           f"API is unavailable. Last error: {exc}. Fix: wait longer (--timeout), or run "
                           "`lakebase doctor` to see which step fails",
                           cause=exc, sqlstate=getattr(exc, "sqlstate", None), attempts=n) from exc
        return delay


def wait_until_ready(timeout: float = 60.0, **connect_args: Any) -> Ready:
    """Block until a login with ``SELECT 1`` works, or ``timeout`` seconds have passed.

    ``connect_args`` are those of :func:`lakebase.connect` (settings such as ``endpoint``, ``user``,
    ``database``; a ``workspace_client``). Returns a :class:`Ready`; raises :class:`NotReady` when time
    ran out on transient errors, and the library's other errors (:class:`~lakebase.AuthenticationFailed`,
    :class:`~lakebase.PermissionDenied`, :class:`~lakebase.ConfigurationError`, ...) at once.
    """
    import lakebase

    rounds = _Rounds(timeout, connect_args)
    while True:
        try:
            with lakebase.connect(**rounds.connect_args()) as conn:
                return rounds.ready(conn.info.host, conn.execute(QUERY).fetchone())
        except Exception as exc:
            delay = rounds.failed(exc)
        time.sleep(delay)


async def wait_until_ready_async(timeout: float = 60.0, **connect_args: Any) -> Ready:
    """The async twin of :func:`wait_until_ready` (nothing blocking runs on the event loop)."""
    import lakebase

    rounds = _Rounds(timeout, connect_args)
    while True:
        try:
            async with await lakebase.connect_async(**rounds.connect_args()) as conn:
                cur = await conn.execute(QUERY)
                return rounds.ready(conn.info.host, await cur.fetchone())
        except Exception as exc:
            delay = rounds.failed(exc)
        await asyncio.sleep(delay)


__all__ = ["EXIT_NOT_READY", "EXIT_PERMANENT", "EXIT_READY", "NotReady", "Ready", "is_transient",
           "wait_until_ready", "wait_until_ready_async"]
