"""Run a unit of work in a transaction, and run it again when that is safe and useful.

::

    def transfer(conn):
        conn.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        conn.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 2")

    lakebase.run_transaction(pool, transfer, isolation_level="serializable")
    await lakebase.run_transaction_async(async_engine, async_transfer)

``fn(conn)`` runs between BEGIN and COMMIT. The whole unit is run again, on a new connection, when
it failed before COMMIT because

* the connection was lost: 08xxx, 57P01/57P02/57P03 (a restart or scale to zero ended the session),
  a closed or broken connection;
* the server asked for it: 40001 (serialization failure), 40P01 (deadlock).

Retries back off with jitter and stop after ``max_attempts`` attempts or once ``deadline`` seconds
have passed, raising :class:`TransactionFailed` with the last error chained. Anything else (SQL
errors, constraint violations, permission and authentication errors, the caller's own exceptions,
connect failures that already exhausted the connect deadline) is raised unchanged after one
attempt. A connection lost *during* COMMIT leaves the outcome unknown (the server may have
committed): that raises :class:`CommitOutcomeUnknown` and is never retried. A broken connection
is discarded (closed, invalidated or terminated), never returned to its pool.

``fn`` must not commit itself, and should not have effects outside the database that cannot be
repeated (it may run more than once). What ``fn`` receives depends on the target:

====================================================  ==============================================
target                                                ``fn`` receives
====================================================  ==============================================
``lakebase.ConnectionPool`` / psycopg_pool pool        a psycopg ``Connection``
a function returning a new psycopg connection          that connection (closed afterwards)
SQLAlchemy ``Engine`` / ``sessionmaker``               a SQLAlchemy ``Connection`` / ``Session``
*async:* ``AsyncConnectionPool``, ``AsyncEngine``,      a psycopg ``AsyncConnection``, SQLAlchemy
``async_sessionmaker``, an asyncpg pool, a coroutine    ``AsyncConnection`` / ``AsyncSession``, an
function returning a psycopg or asyncpg connection      asyncpg connection
====================================================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ._redact import redact
from ._telemetry import event
from .errors import LakebaseError
from .retry import Backoff, Deadline

log = logging.getLogger("lakebase.transactions")
T = TypeVar("T")

MAX_ATTEMPTS = 5
DEADLINE = 60.0

_SERVER_RETRY = {"40001": "serialization failure", "40P01": "deadlock detected"}
_SESSION_ENDED = {"57P01": "the session was terminated (restart or scale to zero)",
                  "57P02": "the server crashed", "57P03": "the server is starting up"}
_LOST_TEXT = ("server closed the connection", "connection is closed", "connection is lost",
              "connection was closed", "connection has been closed", "terminating connection",
              "consuming input failed", "could not receive data", "could not send data", "ssl syscall error",
              "ssl connection has been closed", "connection reset", "broken pipe", "eof detected")
_ISOLATION = {"serializable": "SERIALIZABLE", "repeatable read": "REPEATABLE READ",
              "read committed": "READ COMMITTED"}


class TransactionFailed(LakebaseError):
    """A unit of work kept failing with retryable errors until ``max_attempts`` or the deadline.

    ``cause`` (also ``__cause__``) is the last error, ``sqlstate`` its code, ``attempts`` how many
    times the unit ran.
    """

    def __init__(self, message: str, *, cause: BaseException, sqlstate: str | None, attempts: int) -> None:
        super().__init__(message)
        self.cause = cause
        self.sqlstate = sqlstate
        self.attempts = attempts


class CommitOutcomeUnknown(LakebaseError):
    """The connection was lost while COMMIT was in flight: the transaction may or may not have been
    committed, so it was not retried. Check for its effects (e.g. an idempotency key) before running
    it again. ``cause`` is the driver's error, ``attempts`` the attempt it happened on."""

    def __init__(self, message: str, *, cause: BaseException, attempts: int) -> None:
        super().__init__(message)
        self.cause = cause
        self.attempts = attempts


# ---- classifying an error raised inside a transaction --------------------------------------------
def _driver_error(exc: BaseException) -> BaseException:
    """The DBAPI error inside a SQLAlchemy wrapper (``.orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, BaseException) else exc


def sqlstate(exc: BaseException) -> str | None:
    state = getattr(_driver_error(exc), "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def retry_reason(exc: BaseException, connection_broken: bool = False) -> tuple[str, bool] | None:
    """(why, connection lost) when a transaction that failed with ``exc`` before COMMIT is worth
    running again, else None. ``connection_broken``: the driver reports its connection closed."""
    if isinstance(exc, LakebaseError):  # connecting already retried until its deadline
        return None
    state = sqlstate(exc)
    if state in _SERVER_RETRY:
        return _SERVER_RETRY[state], False
    if state in _SESSION_ENDED:
        return _SESSION_ENDED[state], True
    if state is not None and state.startswith("08"):
        return "the connection was lost", True
    if getattr(exc, "connection_invalidated", False) or (connection_broken and _from_driver(exc)):
        return "the connection was lost", True
    if state is not None:  # any other server error: the server is there and said no
        return None
    driver_exc = _driver_error(exc)
    names = {cls.__name__ for cls in type(driver_exc).__mro__}
    if names & {"ConnectionDoesNotExistError", "ConnectionFailureError"}:
        return "the connection was lost", True
    if "InternalClientError" in names:  # asyncpg's protocol is out of step (e.g. after a FATAL): unusable
        return "the connection is unusable", True
    if isinstance(driver_exc, ConnectionError):
        return "the connection was lost", True
    text = str(driver_exc).lower()
    if names & {"OperationalError", "InterfaceError", "InternalClientError"} and any(t in text for t in _LOST_TEXT):
        return "the connection was lost", True
    return None


def _from_driver(exc: BaseException) -> bool:
    """Raised by a database driver (or SQLAlchemy, or the network), not by the caller's code?"""
    if isinstance(exc, OSError):
        return True
    return any(cls.__module__.split(".")[0] in ("psycopg", "asyncpg", "sqlalchemy") for cls in type(exc).__mro__)


def _broken(conn: Any) -> bool:
    """Does the driver say this connection is closed? (psycopg, asyncpg, SQLAlchemy connections)"""
    try:
        if getattr(conn, "invalidated", False):  # SQLAlchemy (Async)Connection
            return True
        is_closed = getattr(conn, "is_closed", None)  # asyncpg
        if callable(is_closed):
            return bool(is_closed())
        return bool(getattr(conn, "closed", False) or getattr(conn, "broken", False))  # psycopg
    except Exception:
        return False


class _Attempt:
    """Where one run of the unit of work got to."""

    def __init__(self) -> None:
        self.committing = False  # fn returned: COMMIT is (about to be) in flight
        self.committed = False  # COMMIT succeeded
        self.lost = False  # the connection is gone

    def note_failure(self, exc: Exception, conn: Any) -> bool:
        """Record whether the connection was lost; True if ``conn`` must be discarded."""
        verdict = retry_reason(exc, _broken(conn))
        self.lost = verdict is not None and verdict[1]
        return conn is not None and self.lost


class _Loop:
    """The retry decisions, shared by :func:`run_transaction` and :func:`run_transaction_async`."""

    def __init__(self, max_attempts: int, deadline: float) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.deadline = Deadline(deadline)
        self.backoff = Backoff(initial=0.05, factor=2.0, maximum=2.0)
        self.attempts = 0

    def start(self) -> _Attempt:
        self.attempts += 1
        return _Attempt()

    def failed(self, exc: Exception, attempt: _Attempt) -> float:
        """Seconds to wait before the next attempt; or raise what the caller should get."""
        verdict = retry_reason(exc, attempt.lost)
        if attempt.committing and (verdict is None or verdict[1]):
            if verdict is None:
                raise exc  # the server refused the COMMIT (e.g. a deferred constraint): rolled back
            message = (f"The connection was lost during COMMIT ({verdict[0]}): the transaction may or may not "
                       f"have been committed, so it was not retried (attempt {self.attempts}). Last error: "
                       f"{_short(exc)}. Hint: check whether its effects are present before running it "
                       "again, or make the unit of work idempotent")
            event(log, logging.ERROR, "transaction.commit_unknown", message, attempt=self.attempts,
                  sqlstate=sqlstate(exc))
            raise CommitOutcomeUnknown(message, cause=exc, attempts=self.attempts) from exc
        if verdict is None:
            raise exc
        delay = self.backoff.next_delay()
        left = self.deadline.remaining()
        if self.attempts >= self.max_attempts or delay >= left:
            limit = (f"max_attempts={self.max_attempts}" if self.attempts >= self.max_attempts
                     else f"the {self.deadline.seconds:g}s deadline")
            state = sqlstate(exc)
            message = (f"The transaction failed {self.attempts} time(s) ({verdict[0]}"
                       f"{f', SQLSTATE {state}' if state else ''}); gave up at {limit}. "
                       f"Last error: {_short(exc)}")
            if not verdict[1]:
                message += ". Hint: the transactions contend for the same rows; retry later or reduce contention"
            event(log, logging.ERROR, "transaction.failed", message, attempts=self.attempts, sqlstate=state)
            raise TransactionFailed(message, cause=exc, sqlstate=state, attempts=self.attempts) from exc
        event(log, logging.INFO if self.attempts == 1 else logging.WARNING, "transaction.retry",
              f"a transaction failed before COMMIT ({verdict[0]}): {_short(exc)}; running it again in "
              f"{delay:.2f}s (attempt {self.attempts + 1} of {self.max_attempts})",
              attempt=self.attempts, reason=verdict[0], delay=round(delay, 3), sqlstate=sqlstate(exc))
        return delay

    def succeeded(self) -> None:
        if self.attempts > 1:
            event(log, logging.INFO, "transaction.recovered",
                  f"a transaction committed after {self.attempts} attempts", attempts=self.attempts)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _isolation(level: str | None) -> str | None:
    if level is None:
        return None
    key = " ".join(str(level).replace("_", " ").lower().split())
    if key not in _ISOLATION:
        raise ValueError(f"isolation_level={level!r}: expected one of {', '.join(_ISOLATION)}")
    return _ISOLATION[key]


def _is(obj: Any, module: str, name: str) -> bool:
    """isinstance(obj, module.name), without importing ``module`` (an optional dependency)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def _discard(conn: Any) -> None:
    """Make sure a lost connection is not handed out again by its pool."""
    try:
        if hasattr(conn, "invalidate"):  # SQLAlchemy
            conn.invalidate()
        elif hasattr(conn, "terminate"):  # asyncpg
            conn.terminate()
        else:  # psycopg: the pool drops closed connections
            conn.close()
    except Exception:
        log.debug("discarding a lost connection failed", exc_info=True)


async def _adiscard(conn: Any) -> None:
    try:
        if hasattr(conn, "invalidate"):  # SQLAlchemy AsyncConnection
            await conn.invalidate()
        elif hasattr(conn, "terminate"):  # asyncpg
            conn.terminate()
        else:  # psycopg AsyncConnection
            await conn.close()
    except Exception:
        log.debug("discarding a lost connection failed", exc_info=True)


# ---- sync ------------------------------------------------------------------------------------------
def _sync_kind(target: Any) -> str:
    """What kind of target this is, or a TypeError saying what to pass instead."""
    for module, name in (("sqlalchemy.ext.asyncio", "AsyncEngine"), ("sqlalchemy.ext.asyncio", "async_sessionmaker"),
                         ("psycopg_pool", "AsyncConnectionPool"), ("asyncpg.pool", "Pool")):
        if _is(target, module, name):
            raise TypeError(f"{name} is asynchronous: use lakebase.run_transaction_async")
    if _is(target, "sqlalchemy.orm", "sessionmaker"):
        return "sessionmaker"
    if _is(target, "sqlalchemy.engine", "Engine"):
        return "engine"
    if _is(target, "psycopg_pool", "ConnectionPool"):
        return "pool"
    if _is(target, "psycopg", "Connection") or _is(target, "sqlalchemy.engine", "Connection"):
        raise TypeError("run_transaction needs a pool, an engine or a function that opens a connection, not a "
                        "connection: a lost connection cannot be used for the next attempt")
    if callable(target) and not asyncio.iscoroutinefunction(target):
        return "factory"
    raise TypeError(f"run_transaction cannot run transactions on {type(target).__name__}: pass a psycopg_pool "
                    "ConnectionPool, a SQLAlchemy Engine or sessionmaker, or a function returning a connection")


@contextlib.contextmanager
def _sync_connection(target: Any, kind: str) -> Iterator[tuple[Any, Any]]:
    """(what ``fn`` gets, the connection to check and discard) for one attempt."""
    if kind == "sessionmaker":
        with target() as session:
            yield session, None
    elif kind == "engine":
        with target.connect() as conn:
            yield conn, conn
    elif kind == "pool":
        with target.connection() as conn:
            yield conn, conn
    else:
        conn = target()
        try:
            yield conn, conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()


@contextlib.contextmanager
def _sync_transaction(conn: Any, isolation: str | None) -> Iterator[None]:
    if _is(conn, "psycopg", "Connection"):
        with conn.transaction():
            if isolation:
                conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            yield
    else:  # SQLAlchemy Connection or Session
        with conn.begin():
            if isolation:
                from sqlalchemy import text

                conn.execute(text(f"SET TRANSACTION ISOLATION LEVEL {isolation}"))
            yield


def run_transaction(target: Any, fn: Callable[[Any], T], *, isolation_level: str | None = None,
                    max_attempts: int = MAX_ATTEMPTS, deadline: float = DEADLINE) -> T:
    """Run ``fn(conn)`` in a transaction on a connection from ``target``; retry it as a whole when
    that is safe (see the module doc). Returns what ``fn`` returned.

    ``target``: a ``lakebase.ConnectionPool`` (any psycopg_pool ``ConnectionPool``), a SQLAlchemy
    ``Engine`` or ``sessionmaker``, or a function returning a new psycopg connection (e.g.
    ``lakebase.connect``). ``isolation_level``: ``"serializable"``, ``"repeatable read"`` or
    ``"read committed"`` (default: the connection's). At most ``max_attempts`` runs; no new
    attempt starts after ``deadline`` seconds.

    Raises what ``fn`` raised when it is not worth a retry, :class:`TransactionFailed` when retries
    ran out, :class:`CommitOutcomeUnknown` when the connection was lost during COMMIT.
    """
    kind = _sync_kind(target)
    isolation = _isolation(isolation_level)
    loop = _Loop(max_attempts, deadline)
    while True:
        attempt = loop.start()
        try:
            with _sync_connection(target, kind) as (conn, raw):
                try:
                    with _sync_transaction(conn, isolation):
                        result = fn(conn)
                        if _is(conn, "sqlalchemy.orm", "Session"):
                            conn.flush()  # pending ORM writes fail here, not during COMMIT
                        attempt.committing = True
                except Exception as exc:
                    if attempt.note_failure(exc, raw):
                        _discard(raw)
                    raise
                attempt.committed = True
        except Exception as exc:
            if attempt.committed:  # only giving the connection back failed
                log.warning("returning a connection after COMMIT failed: %s", _short(exc))
                return result
            delay = loop.failed(exc, attempt)
        else:
            loop.succeeded()
            return result
        time.sleep(delay)


# ---- async -----------------------------------------------------------------------------------------
def _async_kind(target: Any) -> str:
    for module, name in (("sqlalchemy.engine", "Engine"), ("sqlalchemy.orm", "sessionmaker"),
                         ("psycopg_pool", "ConnectionPool")):
        if _is(target, module, name):
            raise TypeError(f"{name} is synchronous: use lakebase.run_transaction")
    if _is(target, "sqlalchemy.ext.asyncio", "async_sessionmaker"):
        return "sessionmaker"
    if _is(target, "sqlalchemy.ext.asyncio", "AsyncEngine"):
        return "engine"
    if _is(target, "asyncpg.pool", "Pool"):
        return "asyncpg-pool"
    if _is(target, "psycopg_pool", "AsyncConnectionPool"):
        return "pool"
    for module, name in (("psycopg", "AsyncConnection"), ("asyncpg", "Connection"),
                         ("sqlalchemy.ext.asyncio", "AsyncConnection")):
        if _is(target, module, name):
            raise TypeError("run_transaction_async needs a pool, an engine or a function that opens a "
                            "connection, not a connection: a lost connection cannot be used for the next attempt")
    if callable(target):
        return "factory"
    raise TypeError(f"run_transaction_async cannot run transactions on {type(target).__name__}: pass a "
                    "psycopg_pool AsyncConnectionPool, an asyncpg pool, a SQLAlchemy AsyncEngine or "
                    "async_sessionmaker, or a coroutine function returning a connection")


@contextlib.asynccontextmanager
async def _async_connection(target: Any, kind: str) -> AsyncIterator[tuple[Any, Any]]:
    if kind == "sessionmaker":
        async with target() as session:
            yield session, None
    elif kind == "engine":
        async with target.connect() as conn:
            yield conn, conn
    elif kind == "asyncpg-pool":
        async with target.acquire() as conn:
            yield conn, conn
    elif kind == "pool":
        async with target.connection() as conn:
            yield conn, conn
    else:
        opened = target()
        if not inspect.isawaitable(opened):  # a synchronous factory: do not leak what it opened
            with contextlib.suppress(Exception):
                opened.close()
            raise TypeError(f"run_transaction_async needs a coroutine function that opens a connection "
                            f"(e.g. lakebase.connect_async), got {getattr(target, '__name__', target)!r}; "
                            "for a synchronous one use lakebase.run_transaction")
        conn = await opened
        try:
            yield conn, conn
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


@contextlib.asynccontextmanager
async def _async_transaction(conn: Any, isolation: str | None) -> AsyncIterator[None]:
    if _is(conn, "asyncpg", "Connection"):  # also a pool's connection proxy
        async with conn.transaction(isolation=isolation.lower().replace(" ", "_") if isolation else None):
            yield
    elif _is(conn, "psycopg", "AsyncConnection"):
        async with conn.transaction():
            if isolation:
                await conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            yield
    else:  # SQLAlchemy AsyncConnection or AsyncSession
        async with conn.begin():
            if isolation:
                from sqlalchemy import text

                await conn.execute(text(f"SET TRANSACTION ISOLATION LEVEL {isolation}"))
            yield


async def run_transaction_async(target: Any, fn: Callable[[Any], Awaitable[T]], *,
                                isolation_level: str | None = None, max_attempts: int = MAX_ATTEMPTS,
                                deadline: float = DEADLINE) -> T:
    """The asyncio twin of :func:`run_transaction`: ``await fn(conn)`` in a transaction.

    ``target``: a ``lakebase.AsyncConnectionPool`` (any psycopg_pool ``AsyncConnectionPool``), a
    SQLAlchemy ``AsyncEngine`` or ``async_sessionmaker``, an asyncpg pool (e.g.
    ``lakebase.asyncpg.create_pool()``), or a coroutine function returning a new psycopg
    ``AsyncConnection`` or asyncpg connection (e.g. ``lakebase.connect_async``).
    """
    kind = _async_kind(target)
    isolation = _isolation(isolation_level)
    loop = _Loop(max_attempts, deadline)
    while True:
        attempt = loop.start()
        try:
            async with _async_connection(target, kind) as (conn, raw):
                try:
                    async with _async_transaction(conn, isolation):
                        result = await fn(conn)
                        if _is(conn, "sqlalchemy.ext.asyncio", "AsyncSession"):
                            await conn.flush()  # pending ORM writes fail here, not during COMMIT
                        attempt.committing = True
                except Exception as exc:
                    if attempt.note_failure(exc, raw):
                        await _adiscard(raw)
                    raise
                attempt.committed = True
        except Exception as exc:
            if attempt.committed:  # only giving the connection back failed
                log.warning("returning a connection after COMMIT failed: %s", _short(exc))
                return result
            delay = loop.failed(exc, attempt)
        else:
            loop.succeeded()
            return result
        await asyncio.sleep(delay)


__all__ = ["CommitOutcomeUnknown", "TransactionFailed", "retry_reason", "run_transaction",
           "run_transaction_async"]
