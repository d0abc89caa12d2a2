"""What :func:`lakebase.run_transaction` and its async twin can run on, described once.

A *target* (a pool, an engine, a sessionmaker, a function opening a connection) hands out, for
each attempt, the connection or session ``fn`` receives (``TARGETS``, ``FUNCTION``,
``COROUTINE_FUNCTION``); a *connection kind* says how a transaction runs on what it handed out
(``CONNECTIONS``): BEGIN with the isolation level and READ ONLY, the first column of a query (the
transaction id before COMMIT, ``pg_xact_status`` after a lost one), and how a lost connection is
kept from its pool. After a lost COMMIT the status query runs like an attempt: on a new
connection from the same target's ``open``, through its kind's ``fetch``.

Both loops in :mod:`lakebase.transactions` read these tables; for an asynchronous kind every
operation returns an awaitable (``open`` and ``begin`` an async context manager), so the loops
differ only in awaiting. Adding a target type is one ``TargetKind`` (and one ``ConnectionKind`` when it
hands out a new kind of connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from ._redact import redact

log = logging.getLogger("lakebase.transactions")

@dataclass(frozen=True)
class TargetKind:
    """A kind of target, recognised as an instance of ``module.name`` (never imported here)."""

    module: str
    name: str
    is_async: bool
    what: str  # for the error naming what to pass instead
    open: Callable[[Any], Any]  # (async) context manager: the connection or session of one attempt, given back after


@dataclass(frozen=True)
class ConnectionKind:
    """A kind of connection (or session) ``fn`` receives: how a transaction runs on it."""

    module: str
    name: str
    is_async: bool
    begin: Callable[..., Any]  # (conn, isolation, read_only): (async) context manager yielding (commit, rollback)
    fetch: Callable[..., Any]  # (conn, query, *params): the first column of the first row (``%s`` placeholders)
    discard: Callable[[Any], Any] | None  # keep a lost connection from its pool; None: a session, see below

    @property
    def session(self) -> bool:
        """An ORM session: not itself a connection (nothing to check or discard: SQLAlchemy deals with
        its connection), and its pending writes are flushed before the transaction id is fetched."""
        return self.discard is None


def is_instance(obj: Any, module: str, name: str) -> bool:
    """isinstance(obj, module.name), without importing ``module`` (an optional dependency)."""
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


def short(exc: BaseException) -> str:
    """One line naming ``exc``, secrets redacted: for logs and error messages."""
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


# ---- psycopg -----------------------------------------------------------------------------------------
def _psycopg_changes(conn: Any, isolation: str | None, read_only: bool) -> dict[str, Any]:
    """The psycopg connection attributes to set so that its BEGIN carries ``isolation`` and READ ONLY
    (psycopg sends ``BEGIN ISOLATION LEVEL ... READ ONLY``: one statement), where they differ now."""
    import psycopg

    wanted: dict[str, Any] = {"read_only": True} if read_only else {}
    if isolation:
        wanted["isolation_level"] = psycopg.IsolationLevel[isolation.replace(" ", "_")]
    return {k: v for k, v in wanted.items() if getattr(conn, k) != v}


def _restore_failed(conn: Any, exc: Exception) -> None:
    if not (conn.closed or getattr(conn, "broken", False)):  # psycopg2's connection has no ``broken``
        log.warning("restoring a connection's transaction settings failed, closing it: %s", short(exc))


@contextlib.contextmanager
def _attributes_set(conn: Any, changes: dict[str, Any]) -> Iterator[None]:
    """Set ``changes`` on the connection for one transaction, then put back its own values; a connection
    whose values cannot be put back is closed (never handed out stuck in read-only or another isolation
    level). psycopg 3 and psycopg2 connections alike."""
    previous = {k: getattr(conn, k) for k in changes}
    for key, value in changes.items():
        setattr(conn, key, value)
    try:
        yield
    finally:
        try:
            for key, value in previous.items():
                setattr(conn, key, value)
        except Exception as exc:
            _restore_failed(conn, exc)
            conn.close()


def _psycopg_settings(conn: Any, isolation: str | None, read_only: bool) -> contextlib.AbstractContextManager[None]:
    """Set them for one transaction; then put back the connection's own (before a pool hands it out again)."""
    return _attributes_set(conn, _psycopg_changes(conn, isolation, read_only))


@contextlib.asynccontextmanager
async def _apsycopg_settings(conn: Any, isolation: str | None, read_only: bool) -> AsyncIterator[None]:
    changes = _psycopg_changes(conn, isolation, read_only)
    previous = {k: getattr(conn, k) for k in changes}
    for key, value in changes.items():
        await getattr(conn, f"set_{key}")(value)
    try:
        yield
    finally:
        try:
            for key, value in previous.items():
                await getattr(conn, f"set_{key}")(value)
        except Exception as exc:
            _restore_failed(conn, exc)
            await conn.close()


@contextlib.contextmanager
def _psycopg_begin(conn: Any, isolation: str | None, read_only: bool) -> Iterator[tuple[Callable[[], Any], ...]]:
    with _psycopg_settings(conn, isolation, read_only):
        tx = conn.transaction()
        tx.__enter__()
        yield (lambda: tx.__exit__(None, None, None)), (lambda: tx.__exit__(*sys.exc_info()))


@contextlib.asynccontextmanager
async def _apsycopg_begin(conn: Any, isolation: str | None,
                          read_only: bool) -> AsyncIterator[tuple[Callable[[], Awaitable[Any]], ...]]:
    async with _apsycopg_settings(conn, isolation, read_only):
        tx = conn.transaction()
        await tx.__aenter__()
        yield (lambda: tx.__aexit__(None, None, None)), (lambda: tx.__aexit__(*sys.exc_info()))


def _psycopg_fetch(conn: Any, query: str, *params: Any) -> Any:
    cur = conn.execute(query, params)
    row = cur.fetchone() if cur.description else None
    return row[0] if row else None


async def _apsycopg_fetch(conn: Any, query: str, *params: Any) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone() if cur.description else None
    return row[0] if row else None


# ---- psycopg2 ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _psycopg2_begin(conn: Any, isolation: str | None, read_only: bool) -> Iterator[tuple[Callable[[], Any], ...]]:
    """psycopg2 begins a transaction with the first statement, with the session's characteristics: set
    them for this one (a psycopg2 connection comes from a function and is closed after the unit)."""
    conn.autocommit = False
    if isolation or read_only:
        conn.set_session(isolation_level=isolation.upper() if isolation else None, readonly=read_only or None)
    yield conn.commit, conn.rollback


@contextlib.contextmanager
def _psycopg2_settings(conn: Any, isolation: str | None, read_only: bool) -> Iterator[None]:
    """As :func:`_psycopg_settings`, on a psycopg2 connection outside a transaction (Django's, between
    requests): psycopg2 sends them with the next BEGIN (in autocommit also as the session's
    ``default_transaction_*``), and both are put back afterwards."""
    import psycopg2.extensions

    wanted: dict[str, Any] = {"readonly": True} if read_only else {}
    if isolation:
        wanted["isolation_level"] = getattr(psycopg2.extensions,
                                            f"ISOLATION_LEVEL_{isolation.upper().replace(' ', '_')}")
    with _attributes_set(conn, {k: v for k, v in wanted.items() if getattr(conn, k) != v}):
        yield


def _psycopg2_fetch(conn: Any, query: str, *params: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


# ---- asyncpg -----------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _asyncpg_begin(conn: Any, isolation: str | None,
                         read_only: bool) -> AsyncIterator[tuple[Callable[[], Awaitable[Any]], ...]]:
    """BEGIN ISOLATION LEVEL ... READ ONLY: nothing to restore."""
    tx = conn.transaction(isolation=isolation.lower().replace(" ", "_") if isolation else None, readonly=read_only)
    await tx.start()
    yield tx.commit, tx.rollback


async def _asyncpg_fetch(conn: Any, query: str, *params: Any) -> Any:
    return await conn.fetchval(query % tuple(f"${i + 1}" for i in range(len(params))), *params)


async def _asyncpg_terminate(conn: Any) -> None:
    conn.terminate()


# ---- SQLAlchemy --------------------------------------------------------------------------------------
def _sa_options(conn: Any, isolation: str | None, read_only: bool) -> tuple[dict[str, Any], bool]:
    """(SQLAlchemy execution options for the transaction's characteristics, is the driver psycopg).
    With psycopg they are set on the driver's connection instead: SQLAlchemy resets ``postgresql_readonly``
    to False, which psycopg sends as ``BEGIN READ WRITE`` (refused by a read replica) rather than as it was."""
    options: dict[str, Any] = {"postgresql_readonly": True} if read_only else {}
    if isolation:
        options["isolation_level"] = isolation
    bind = conn.get_bind() if hasattr(conn, "get_bind") else conn  # (Async)Session or (Async)Connection
    return options, bool(options) and bind.dialect.driver == "psycopg"


@contextlib.contextmanager
def _sa_begin(conn: Any, isolation: str | None, read_only: bool, *,
              session: bool) -> Iterator[tuple[Callable[[], Any], ...]]:
    options, on_psycopg = _sa_options(conn, isolation, read_only)
    if options and not on_psycopg and not session:
        conn.execution_options(**options)  # reset by SQLAlchemy when the connection goes back to its pool
    tx = conn.begin()
    driver = None
    if options and session:  # the session's connection, procured now (BEGIN is sent with the first statement)
        connection = conn.connection() if on_psycopg else conn.connection(execution_options=options)
        driver = connection.connection.driver_connection
    elif on_psycopg:
        driver = conn.connection.driver_connection
    with _psycopg_settings(driver, isolation, read_only) if on_psycopg else contextlib.nullcontext():
        yield tx.commit, tx.rollback


@contextlib.asynccontextmanager
async def _asa_begin(conn: Any, isolation: str | None, read_only: bool, *,
                     session: bool) -> AsyncIterator[tuple[Callable[[], Awaitable[Any]], ...]]:
    options, on_psycopg = _sa_options(conn, isolation, read_only)
    if options and not on_psycopg and not session:
        await conn.execution_options(**options)
    tx = conn.begin()
    await tx.start()
    driver = None
    if options and session:
        connection = await (conn.connection() if on_psycopg else conn.connection(execution_options=options))
        driver = (await connection.get_raw_connection()).driver_connection
    elif on_psycopg:
        driver = (await conn.get_raw_connection()).driver_connection
    async with _apsycopg_settings(driver, isolation, read_only) if on_psycopg else contextlib.nullcontext():
        yield tx.commit, tx.rollback


def _sa_statement(query: str, params: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    from sqlalchemy import text

    return (text(query % tuple(f":p{i}" for i in range(len(params)))),
            {f"p{i}": p for i, p in enumerate(params)})


def _sa_fetch(conn: Any, query: str, *params: Any) -> Any:
    result = conn.execute(*_sa_statement(query, params))
    return result.scalar() if result.returns_rows else None


async def _asa_fetch(conn: Any, query: str, *params: Any) -> Any:
    result = await conn.execute(*_sa_statement(query, params))
    return result.scalar() if result.returns_rows else None


# ---- Django ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _django_open(wrapper: Any) -> Iterator[Any]:
    """A Django connection (``connections[alias]``) is its own target: it reconnects after being closed."""
    yield wrapper


@contextlib.contextmanager
def _django_begin(wrapper: Any, isolation: str | None, read_only: bool) -> Iterator[tuple[Callable[[], Any], ...]]:
    """``transaction.atomic()``; isolation and READ ONLY go with its BEGIN through psycopg (as for a
    psycopg connection) or psycopg2, whichever Django uses, and are put back afterwards."""
    from django.db import transaction

    settings: Any = contextlib.nullcontext()
    if isolation or read_only:
        wrapper.close_if_health_check_failed()  # now, not in atomic(): the settings go on the connection used
        wrapper.ensure_connection()
        on_psycopg2 = is_instance(wrapper.connection, "psycopg2.extensions", "connection")
        settings = (_psycopg2_settings if on_psycopg2 else _psycopg_settings)(wrapper.connection, isolation,
                                                                             read_only)
    with settings:
        atomic = transaction.atomic(using=wrapper.alias)
        atomic.__enter__()
        yield (lambda: atomic.__exit__(None, None, None)), (lambda: atomic.__exit__(*sys.exc_info()))


def _django_fetch(wrapper: Any, query: str, *params: Any) -> Any:
    with wrapper.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


# ---- functions that open a connection ----------------------------------------------------------------
@contextlib.contextmanager
def _open_function(factory: Callable[[], Any]) -> Iterator[Any]:
    conn = factory()
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@contextlib.asynccontextmanager
async def _open_coroutine_function(factory: Callable[[], Any]) -> AsyncIterator[Any]:
    opened = factory()
    if not inspect.isawaitable(opened):  # a synchronous factory: do not leak what it opened
        with contextlib.suppress(Exception):
            opened.close()
        raise TypeError(f"run_transaction_async needs a coroutine function that opens a connection "
                        f"(e.g. lakebase.connect_async), got {getattr(factory, '__name__', factory)!r}; "
                        "for a synchronous one use lakebase.run_transaction")
    conn = await opened
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


# ---- the tables ----------------------------------------------------------------------------------------
CONNECTIONS = (  # module, class, async, begin, fetch, discard (None: a session)
    ConnectionKind("psycopg", "Connection", False, _psycopg_begin, _psycopg_fetch, lambda conn: conn.close()),
    ConnectionKind("psycopg2.extensions", "connection", False, _psycopg2_begin, _psycopg2_fetch,
                   lambda conn: conn.close()),
    ConnectionKind("sqlalchemy.engine", "Connection", False, partial(_sa_begin, session=False), _sa_fetch,
                   lambda conn: conn.invalidate()),
    ConnectionKind("sqlalchemy.orm", "Session", False, partial(_sa_begin, session=True), _sa_fetch, None),
    ConnectionKind("psycopg", "AsyncConnection", True, _apsycopg_begin, _apsycopg_fetch,
                   lambda conn: conn.close()),
    ConnectionKind("asyncpg", "Connection", True, _asyncpg_begin, _asyncpg_fetch,  # also a pool's proxy
                   _asyncpg_terminate),
    ConnectionKind("sqlalchemy.ext.asyncio", "AsyncConnection", True, partial(_asa_begin, session=False),
                   _asa_fetch, lambda conn: conn.invalidate()),
    ConnectionKind("sqlalchemy.ext.asyncio", "AsyncSession", True, partial(_asa_begin, session=True),
                   _asa_fetch, None),
    ConnectionKind("django.db.backends.base.base", "BaseDatabaseWrapper", False, _django_begin, _django_fetch,
                   lambda wrapper: wrapper.close()),  # with the native pool: back to it, which drops a broken one
)

TARGETS = (  # module, class, async, what, open
    TargetKind("psycopg_pool", "ConnectionPool", False, "a psycopg_pool ConnectionPool",
               lambda pool: pool.connection()),
    TargetKind("sqlalchemy.engine", "Engine", False, "a SQLAlchemy Engine", lambda engine: engine.connect()),
    TargetKind("sqlalchemy.orm", "sessionmaker", False, "a SQLAlchemy sessionmaker", lambda maker: maker()),
    TargetKind("psycopg_pool", "AsyncConnectionPool", True, "a psycopg_pool AsyncConnectionPool",
               lambda pool: pool.connection()),
    TargetKind("asyncpg.pool", "Pool", True, "an asyncpg pool", lambda pool: pool.acquire()),
    TargetKind("sqlalchemy.ext.asyncio", "AsyncEngine", True, "a SQLAlchemy AsyncEngine",
               lambda engine: engine.connect()),
    TargetKind("sqlalchemy.ext.asyncio", "async_sessionmaker", True, "a SQLAlchemy async_sessionmaker",
               lambda maker: maker()),
    TargetKind("django.db.backends.base.base", "BaseDatabaseWrapper", False,
               "a Django connection (django.db.connections[alias])", _django_open),
)
FUNCTION = TargetKind("", "function", False, "a function returning a connection", _open_function)
COROUTINE_FUNCTION = TargetKind("", "coroutine function", True, "a coroutine function returning a connection",
                                _open_coroutine_function)


def target_kind(target: Any, *, is_async: bool) -> TargetKind:
    """What kind of target this is, or a TypeError saying what to pass instead."""
    runner = "run_transaction_async" if is_async else "run_transaction"
    for kind in TARGETS:
        if is_instance(target, kind.module, kind.name):
            if kind.is_async != is_async:
                raise TypeError(f"{kind.name} is {'a' if kind.is_async else ''}synchronous: use lakebase."
                                f"run_transaction{'_async' if kind.is_async else ''}")
            return kind
    if any(is_instance(target, kind.module, kind.name) for kind in CONNECTIONS if not kind.session):
        raise TypeError(f"{runner} needs a pool, an engine or a function that opens a connection, not a "
                        "connection: a lost connection cannot be used for the next attempt")
    if callable(target) and (is_async or not asyncio.iscoroutinefunction(target)):
        return COROUTINE_FUNCTION if is_async else FUNCTION
    accepted = [kind.what for kind in (*TARGETS, COROUTINE_FUNCTION if is_async else FUNCTION)
                if kind.is_async == is_async]
    raise TypeError(f"{runner} cannot run transactions on {type(target).__name__}: pass "
                    f"{', '.join(accepted[:-1])} or {accepted[-1]}")


def connection_kind(conn: Any, *, is_async: bool) -> ConnectionKind:
    """How a transaction runs on ``conn`` (what a target handed out)."""
    for kind in CONNECTIONS:
        if kind.is_async == is_async and is_instance(conn, kind.module, kind.name):
            return kind
    names = ", ".join(f"{kind.module}.{kind.name}" for kind in CONNECTIONS if kind.is_async == is_async)
    raise TypeError(f"run_transaction{'_async' if is_async else ''} cannot run a transaction on a "
                    f"{type(conn).__name__}: the function must return one of {names}")
