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
attempt. A broken connection is discarded (closed, invalidated or terminated), never returned to
its pool.

A connection lost *during* COMMIT leaves the outcome unknown to the client; Postgres knows it. Right
before COMMIT, in the same transaction, the unit's transaction id is fetched
(``pg_current_xact_id_if_assigned()``: NULL when the unit wrote nothing; one extra round trip,
measured in ``benchmarks/soak.py``). After a lost COMMIT, ``pg_xact_status(xid)`` is asked on
another connection from the same target (itself retried within the deadline):

* no xid (the unit only read): nothing to commit, the unit runs again;
* ``committed``: the unit succeeded, its result is returned (it does not run twice);
* ``aborted``: the unit runs again;
* ``in progress``: asked again, backing off, until the deadline.

With ``read_only=True`` the unit runs in a READ ONLY transaction (``BEGIN ... READ ONLY``, one
statement; a write fails with 25006 and is not retried). It has no transaction id to ask for and
nothing of it can outlive a lost session (temporary tables die with it), so there is no extra round
trip, and a COMMIT that lost its connection simply runs the unit again. (A unit that switches
itself back with ``SET TRANSACTION READ WRITE`` defeats this: don't.)

One effect has no transaction id before COMMIT: a notification. A unit whose only effect is
``NOTIFY`` / ``pg_notify()`` (allowed in READ ONLY transactions too) looks like one that wrote
nothing, so if its COMMIT loses the connection it runs again and listeners may get the notification
twice. Give such a unit a write (e.g. an outbox row, whose id listeners can deduplicate on), or make
its listeners idempotent.

Only when the outcome cannot be learned (still in progress or the status query failing at the
deadline, or the status query failing with an error that is not a lost connection) is
:class:`CommitOutcomeUnknown` raised, naming the transaction id to check.

``fn`` must not commit itself, and should not have effects outside the database that cannot be
repeated (it may run more than once). What ``fn`` receives depends on the target:

====================================================  ==============================================
target                                                ``fn`` receives
====================================================  ==============================================
``lakebase.ConnectionPool`` / psycopg_pool pool        a psycopg ``Connection``
a function opening a psycopg or psycopg2 connection    that connection (closed afterwards)
a Django connection (``connections[alias]``)          that connection, in ``transaction.atomic()``
SQLAlchemy ``Engine`` / ``sessionmaker``               a SQLAlchemy ``Connection`` / ``Session``
*async:* ``AsyncConnectionPool``, ``AsyncEngine``,      a psycopg ``AsyncConnection``, SQLAlchemy
``async_sessionmaker``, an asyncpg pool, a coroutine    ``AsyncConnection`` / ``AsyncSession``, an
function returning a psycopg or asyncpg connection      asyncpg connection
====================================================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ._targets import ConnectionKind, connection_kind, target_kind
from ._targets import short as _short
from ._telemetry import event
from .diagnosis import LOST_CONNECTION_ERRORS, SQLSTATES, connection_lost, sqlstate_of
from .errors import LakebaseError
from .retry import Backoff, Deadline

log = logging.getLogger("lakebase.transactions")
T = TypeVar("T")

MAX_ATTEMPTS = 5
DEADLINE = 60.0

_XID_SQL = "SELECT pg_current_xact_id_if_assigned()::text"  # NULL when the transaction wrote nothing
_STATUS_SQL = "SELECT pg_xact_status(CAST(%s AS text)::xid8)"  # committed, aborted or in progress
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
    """The connection was lost while COMMIT was in flight and the outcome could not be looked up
    (``pg_xact_status``) before the deadline: the transaction may or may not have been committed,
    so it was not retried. Check for its effects (e.g. an idempotency key) before running it again.
    ``cause`` is the driver's error, ``attempts`` the attempt it happened on, ``xid`` the
    transaction's id when it was known."""

    def __init__(self, message: str, *, cause: BaseException, attempts: int, xid: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause
        self.attempts = attempts
        self.xid = xid


# ---- classifying an error raised inside a transaction --------------------------------------------
def _driver_error(exc: BaseException) -> BaseException:
    """The DBAPI error inside a SQLAlchemy wrapper (``.orig``) or a Django one (its cause), else ``exc``."""
    orig = getattr(exc, "orig", None)
    if orig is None and type(exc).__module__ == "django.db.utils":
        orig = exc.__cause__
    return orig if isinstance(orig, BaseException) else exc


def sqlstate(exc: BaseException) -> str | None:
    return sqlstate_of(_driver_error(exc))


def retry_reason(exc: BaseException, connection_broken: bool = False) -> tuple[str, bool] | None:
    """(why, connection lost) when a transaction that failed with ``exc`` before COMMIT is worth
    running again, else None. ``connection_broken``: the driver reports its connection closed."""
    if isinstance(exc, LakebaseError):  # connecting already retried until its deadline
        return None
    state = sqlstate(exc)
    known = SQLSTATES.get(state or "")
    if known is not None and known.transaction is not None:
        return known.transaction, known.lost
    if state is not None and state.startswith("08"):
        return "the connection was lost", True
    if getattr(exc, "connection_invalidated", False) or (connection_broken and _from_driver(exc)):
        return "the connection was lost", True
    if state is not None:  # any other server error: the server is there and said no
        return None
    driver_exc = _driver_error(exc)
    names = {cls.__name__ for cls in type(driver_exc).__mro__}
    if names & LOST_CONNECTION_ERRORS:
        return "the connection was lost", True
    if "InternalClientError" in names:  # asyncpg's protocol is out of step (e.g. after a FATAL): unusable
        return "the connection is unusable", True
    if isinstance(driver_exc, ConnectionError):
        return "the connection was lost", True
    text = str(driver_exc).lower()
    if names & {"OperationalError", "InterfaceError", "InternalClientError"} and connection_lost(text):
        return "the connection was lost", True
    return None


_DRIVER_PACKAGES = ("psycopg", "psycopg2", "asyncpg", "sqlalchemy")


def _from_driver(exc: BaseException) -> bool:
    """Raised by a database driver (or SQLAlchemy, or the network), not by the caller's code?"""
    if isinstance(exc, OSError):
        return True
    return any(cls.__module__.split(".")[0] in _DRIVER_PACKAGES for cls in type(exc).__mro__)


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
        self.xid: str | None = None  # pg_current_xact_id_if_assigned() just before COMMIT (None: wrote nothing)
        self.xid_known = False  # that query answered: the COMMIT's outcome can be looked up

    def note_failure(self, exc: Exception, conn: Any) -> bool:
        """Record whether the connection was lost; True if ``conn`` must be discarded."""
        self.lost = _is_lost(exc, conn)
        return conn is not None and self.lost


def _is_lost(exc: Exception, conn: Any) -> bool:
    """Did ``exc`` (raised using ``conn``) lose the connection?"""
    verdict = retry_reason(exc, _broken(conn))
    return verdict is not None and verdict[1]


class _Loop:
    """One call of :func:`run_transaction` or :func:`run_transaction_async`: what it runs on, and the
    retry decisions."""

    def __init__(self, target: Any, isolation_level: str | None, read_only: bool, max_attempts: int,
                 deadline: float, *, is_async: bool) -> None:
        self.target = target
        self.kind = target_kind(target, is_async=is_async)
        self.isolation = _isolation(isolation_level)
        self.read_only = read_only
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.deadline = Deadline(deadline)
        self.backoff = Backoff(initial=0.05, factor=2.0, maximum=2.0)
        self.status_backoff = Backoff(initial=0.05, factor=2.0, maximum=1.0)
        self.attempts = 0

    def start(self) -> _Attempt:
        self.attempts += 1
        return _Attempt()

    def commit_lost(self, exc: Exception, attempt: _Attempt) -> bool:
        """Was the connection lost while COMMIT was in flight (so its outcome must be looked up)?"""
        verdict = retry_reason(exc, attempt.lost)
        return attempt.committing and verdict is not None and verdict[1]

    def outcome(self, attempt: _Attempt, lost: Exception, status: str | None = None,
                error: Exception | None = None) -> bool | float:
        """After the connection was lost during COMMIT, with the last ``pg_xact_status`` answer
        (``status``) or the error asking for it: True (committed: return the result), False (not
        committed: run the unit again), or seconds to wait before asking (again). Raises
        :class:`CommitOutcomeUnknown` when the outcome cannot be learned within the deadline."""
        if not attempt.xid_known:
            return self._unknown(attempt, lost, "its transaction id never arrived")
        if attempt.xid is None:  # the unit wrote nothing (or was read-only): there was nothing to commit
            event(log, logging.INFO, "transaction.commit_resolved", "the connection was lost during COMMIT of a "
                  "transaction that wrote nothing; running the unit again", attempt=self.attempts, xid=None,
                  status="wrote nothing")
            return False
        if status in ("committed", "aborted"):
            event(log, logging.WARNING, "transaction.commit_resolved",
                  f"the connection was lost during COMMIT; transaction {attempt.xid} {status}"
                  f"{'' if status == 'committed' else ', running the unit again'}",
                  attempt=self.attempts, xid=attempt.xid, status=status)
            return status == "committed"
        if error is not None and retry_reason(error) is None:
            return self._unknown(attempt, lost, f"asking for its status failed: {_short(error)}")
        if status is None and error is None:  # not asked yet
            return 0.0
        delay = self.status_backoff.next_delay()
        if delay >= self.deadline.remaining():
            why = ("it was still in progress" if error is None else
                   f"asking for its status kept failing: {_short(error)}")
            return self._unknown(attempt, lost, f"{why} at the {self.deadline.seconds:g}s deadline")
        return delay

    def _unknown(self, attempt: _Attempt, exc: Exception, why: str) -> bool:
        xid = f"transaction {attempt.xid}" if attempt.xid else "the transaction"
        message = (f"The connection was lost during COMMIT and whether {xid} committed cannot be learned "
                   f"({why}), so it was not retried (attempt {self.attempts}). Last error: {_short(exc)}. "
                   "Hint: check whether its effects are present before running it again"
                   + (f" (SELECT pg_xact_status('{attempt.xid}'::xid8))" if attempt.xid else "")
                   + ", or make the unit of work idempotent")
        event(log, logging.ERROR, "transaction.commit_unknown", message, attempt=self.attempts,
              sqlstate=sqlstate(exc), xid=attempt.xid)
        raise CommitOutcomeUnknown(message, cause=exc, attempts=self.attempts, xid=attempt.xid) from exc

    def failed(self, exc: Exception, attempt: _Attempt) -> float:
        """Seconds to wait before the next attempt; or raise what the caller should get."""
        verdict = retry_reason(exc, attempt.lost)
        if verdict is None:  # also a COMMIT the server refused (e.g. a deferred constraint): rolled back
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

    def succeeded(self, attempt: _Attempt, error: Exception | None = None) -> None:
        """The unit committed; ``error``: what was raised after all (giving the connection back, or a
        COMMIT that lost its connection but committed)."""
        if attempt.committed and error is not None:  # only giving the connection back failed
            log.warning("returning a connection after COMMIT failed: %s", _short(error))
        elif self.attempts > 1:
            event(log, logging.INFO, "transaction.recovered",
                  f"a transaction committed after {self.attempts} attempts", attempts=self.attempts)


def _isolation(level: str | None) -> str | None:
    if level is None:
        return None
    key = " ".join(str(level).replace("_", " ").lower().split())
    if key not in _ISOLATION:
        raise ValueError(f"isolation_level={level!r}: expected one of {', '.join(_ISOLATION)}")
    return _ISOLATION[key]


@contextlib.contextmanager
def _connection(loop: _Loop, attempt: _Attempt) -> Iterator[tuple[Any, ConnectionKind]]:
    """A connection (or session) from the target and its kind; a lost one is discarded (closed,
    invalidated or terminated), never given back to its pool."""
    with loop.kind.open(loop.target) as conn:
        kind = connection_kind(conn, is_async=False)
        try:
            yield conn, kind
        except Exception as exc:
            if attempt.note_failure(exc, None if kind.session else conn):
                _discard(kind, conn)
            raise


def _discard(kind: ConnectionKind, conn: Any) -> None:
    try:
        if kind.discard is not None:
            kind.discard(conn)
    except Exception:
        log.debug("discarding a lost connection failed", exc_info=True)


@contextlib.contextmanager
def _transaction(loop: _Loop, kind: ConnectionKind, conn: Any, attempt: _Attempt) -> Iterator[None]:
    """BEGIN; the unit; its transaction id (``attempt.xid``; not asked when read-only) then COMMIT."""
    with kind.begin(conn, loop.isolation, loop.read_only) as (commit, rollback):
        try:
            yield
            if kind.session:
                conn.flush()  # pending ORM writes fail here, not during COMMIT
            attempt.xid = None if loop.read_only else kind.fetch(conn, _XID_SQL)
        except BaseException:
            with contextlib.suppress(Exception):
                rollback()
            raise
        attempt.xid_known = attempt.committing = True
        commit()
        attempt.committed = True


def _outcome(loop: _Loop, attempt: _Attempt, lost: Exception) -> bool:
    """Did the transaction whose COMMIT lost its connection commit? Asks on another connection."""
    status: str | None = None
    error: Exception | None = None
    while not isinstance(decision := loop.outcome(attempt, lost, status, error), bool):
        time.sleep(decision)
        status = error = None
        try:
            with _connection(loop, _Attempt()) as (conn, kind):
                status = kind.fetch(conn, _STATUS_SQL, attempt.xid)
        except Exception as exc:
            error = exc
    return decision


def run_transaction(target: Any, fn: Callable[[Any], T], *, isolation_level: str | None = None,
                    read_only: bool = False, max_attempts: int = MAX_ATTEMPTS, deadline: float = DEADLINE) -> T:
    """Run ``fn(conn)`` in a transaction on a connection from ``target``; retry it as a whole when
    that is safe (see the module doc). Returns what ``fn`` returned.

    ``target``: a ``lakebase.ConnectionPool`` (any psycopg_pool ``ConnectionPool``), a SQLAlchemy
    ``Engine`` or ``sessionmaker``, or a function returning a new psycopg connection (e.g.
    ``lakebase.connect``). ``isolation_level``: ``"serializable"``, ``"repeatable read"`` or
    ``"read committed"`` (default: the connection's). ``read_only``: a READ ONLY transaction, for
    units that only read (no extra round trip, a lost COMMIT is retried). Both are sent with BEGIN,
    and the connection gets its own settings back afterwards. At most ``max_attempts`` runs; no new
    attempt starts after ``deadline`` seconds.

    Raises what ``fn`` raised when it is not worth a retry, :class:`TransactionFailed` when retries
    ran out, :class:`CommitOutcomeUnknown` when the connection was lost during COMMIT and the
    outcome could not be looked up.
    """
    loop = _Loop(target, isolation_level, read_only, max_attempts, deadline, is_async=False)
    while True:
        attempt = loop.start()
        try:
            with _connection(loop, attempt) as (conn, kind), _transaction(loop, kind, conn, attempt):
                result = fn(conn)
        except Exception as exc:
            if not (attempt.committed or (loop.commit_lost(exc, attempt) and _outcome(loop, attempt, exc))):
                time.sleep(loop.failed(exc, attempt))
                continue
            loop.succeeded(attempt, exc)
        else:
            loop.succeeded(attempt)
        return result


# ---- async: the same, awaiting -----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _aconnection(loop: _Loop, attempt: _Attempt) -> AsyncIterator[tuple[Any, ConnectionKind]]:
    async with loop.kind.open(loop.target) as conn:
        kind = connection_kind(conn, is_async=True)
        try:
            yield conn, kind
        except Exception as exc:
            if attempt.note_failure(exc, None if kind.session else conn):
                await _adiscard(kind, conn)
            raise


async def _adiscard(kind: ConnectionKind, conn: Any) -> None:
    try:
        if kind.discard is not None:
            await kind.discard(conn)
    except Exception:
        log.debug("discarding a lost connection failed", exc_info=True)


@contextlib.asynccontextmanager
async def _atransaction(loop: _Loop, kind: ConnectionKind, conn: Any, attempt: _Attempt) -> AsyncIterator[None]:
    async with kind.begin(conn, loop.isolation, loop.read_only) as (commit, rollback):
        try:
            yield
            if kind.session:
                await conn.flush()
            attempt.xid = None if loop.read_only else await kind.fetch(conn, _XID_SQL)
        except BaseException:
            with contextlib.suppress(Exception):
                await rollback()
            raise
        attempt.xid_known = attempt.committing = True
        await commit()
        attempt.committed = True


async def _aoutcome(loop: _Loop, attempt: _Attempt, lost: Exception) -> bool:
    status: str | None = None
    error: Exception | None = None
    while not isinstance(decision := loop.outcome(attempt, lost, status, error), bool):
        await asyncio.sleep(decision)
        status = error = None
        try:
            async with _aconnection(loop, _Attempt()) as (conn, kind):
                status = await kind.fetch(conn, _STATUS_SQL, attempt.xid)
        except Exception as exc:
            error = exc
    return decision


async def run_transaction_async(target: Any, fn: Callable[[Any], Awaitable[T]], *,
                                isolation_level: str | None = None, read_only: bool = False,
                                max_attempts: int = MAX_ATTEMPTS, deadline: float = DEADLINE) -> T:
    """The asyncio twin of :func:`run_transaction`: ``await fn(conn)`` in a transaction.

    ``target``: a ``lakebase.AsyncConnectionPool`` (any psycopg_pool ``AsyncConnectionPool``), a
    SQLAlchemy ``AsyncEngine`` or ``async_sessionmaker``, an asyncpg pool (e.g.
    ``lakebase.asyncpg.create_pool()``), or a coroutine function returning a new psycopg
    ``AsyncConnection`` or asyncpg connection (e.g. ``lakebase.connect_async``).
    """
    loop = _Loop(target, isolation_level, read_only, max_attempts, deadline, is_async=True)
    while True:
        attempt = loop.start()
        try:
            async with _aconnection(loop, attempt) as (conn, kind), _atransaction(loop, kind, conn, attempt):
                result = await fn(conn)
        except Exception as exc:
            if not (attempt.committed or (loop.commit_lost(exc, attempt) and await _aoutcome(loop, attempt, exc))):
                await asyncio.sleep(loop.failed(exc, attempt))
                continue
            loop.succeeded(attempt, exc)
        else:
            loop.succeeded(attempt)
        return result


__all__ = ["CommitOutcomeUnknown", "TransactionFailed", "retry_reason", "run_transaction",
           "run_transaction_async"]
