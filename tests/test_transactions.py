"""lakebase.run_transaction / run_transaction_async against the emulator, on every kind of target:
a unit of work killed by a restart mid-transaction runs once more and commits once; a real
serialization failure (two SERIALIZABLE transactions) is retried; SQL errors are not; a connection
lost during COMMIT is resolved with pg_xact_status, both ways, produced for real: aborted (a
deferred trigger ends its own session at COMMIT: the unit runs again) and committed (a deferred
trigger waits on a lock while the client's socket is shut down, then the COMMIT completes: the unit
does not run again); lost connections are discarded, not handed out again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import lakebase
import lakebase.asyncpg
from lakebase import ConnectionFailed, LakebaseError
from lakebase.emulator import EmulatorProcess as Emulator
from lakebase.sqlalchemy import create_async_engine, create_engine
from lakebase.transactions import (
    CommitOutcomeUnknown,
    TransactionFailed,
    retry_reason,
    run_transaction,
    run_transaction_async,
    sqlstate,
)

from .conftest import owner_connect
from .lakebase_support import isolated_registries, wait_for

SYNC_TARGETS = ["pool", "factory", "engine", "sessionmaker"]
ASYNC_TARGETS = ["pool", "asyncpg-pool", "engine", "asyncpg-engine", "sessionmaker", "factory", "asyncpg-factory"]


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield from isolated_registries()


@pytest.fixture
def table(emulator: Emulator, app_env: dict[str, str]) -> Iterator[str]:
    """A table of the app's own: row id=1 (k=1, v=0); ``k`` is unique, checked at COMMIT; inserting a
    note 'die' makes COMMIT end its own session (a deferred trigger calls pg_terminate_backend); a
    note 'hold' makes COMMIT wait for the advisory lock ``lock_key(name)``."""
    name = "tx_" + uuid.uuid4().hex[:8]
    emulator.configure(restart_seconds=0.3)
    with lakebase.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, k int UNIQUE DEFERRABLE INITIALLY DEFERRED, "
                     "v int NOT NULL DEFAULT 0, note text)")
        conn.execute(f"INSERT INTO {name} (k, v) VALUES (1, 0)")
        conn.execute(f"""CREATE FUNCTION {name}_die() RETURNS trigger LANGUAGE plpgsql AS $$
                         BEGIN
                             IF NEW.note = 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                             IF NEW.note = 'hold' THEN PERFORM pg_advisory_xact_lock({lock_key(name)}); END IF;
                             RETURN NULL;
                         END $$""")
        conn.execute(f"CREATE CONSTRAINT TRIGGER {name}_die AFTER INSERT ON {name} DEFERRABLE INITIALLY DEFERRED "
                     f"FOR EACH ROW EXECUTE FUNCTION {name}_die()")
    yield name
    with lakebase.connect(autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")
        conn.execute(f"DROP FUNCTION {name}_die()")


def lock_key(table: str) -> int:
    return int(table[3:], 16) % 2**31


def socket_fd(conn: Any) -> int:
    """The file descriptor of the socket under a psycopg, asyncpg or SQLAlchemy (sync) connection."""
    if isinstance(conn, sqlalchemy.engine.Connection):
        conn = conn.connection.driver_connection
    if isinstance(conn, psycopg.Connection | psycopg.AsyncConnection):
        return int(conn.pgconn.socket)
    raw = getattr(conn, "_con", conn)  # an asyncpg pool's connection proxy
    return int(raw._transport.get_extra_info("socket").fileno())


@contextlib.contextmanager
def cut_during_commit(table: str, fds: list[int]) -> Iterator[None]:
    """Hold ``table``'s lock; once a COMMIT waits for it (a 'hold' row), shut down the client's socket
    ``fds[-1]`` (the connection dies during COMMIT), then let the COMMIT complete on the server."""
    with lakebase.connect(autocommit=True) as holder, lakebase.connect(autocommit=True) as watcher:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(table),))
        failure: list[BaseException] = []

        def cut() -> None:
            try:
                wait_for(lambda: watcher.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                                                 "AND NOT granted", (lock_key(table),)).fetchone(), timeout=30)
                with socket.socket(fileno=os.dup(fds[-1])) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except BaseException as exc:
                failure.append(exc)
            finally:
                holder.execute("SELECT pg_advisory_unlock(%s)", (lock_key(table),))

        thread = threading.Thread(target=cut)
        thread.start()
        try:
            yield
        finally:
            thread.join()
        assert not failure, failure


def count(table: str, where: str = "true") -> int:
    with lakebase.connect() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()
        assert row is not None
        return int(row[0])


def value(table: str) -> int:
    with lakebase.connect() as conn:
        row = conn.execute(f"SELECT v FROM {table} WHERE id = 1").fetchone()
        assert row is not None
        return int(row[0])


def interfere(table: str) -> None:
    """Another SERIALIZABLE transaction changes row 1 and commits."""
    with lakebase.connect() as other:
        other.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        other.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        other.commit()


# ---- targets -------------------------------------------------------------------------------------
@contextlib.contextmanager
def sync_target(kind: str, size: int = 2, **connect: Any) -> Iterator[Any]:
    """``connect``: psycopg connection arguments (e.g. ``options``)."""
    if kind == "pool":
        with lakebase.ConnectionPool(min_size=size, max_size=size, kwargs=connect, open=True) as pool:
            pool.wait()
            yield pool
    elif kind == "factory":
        yield lambda: lakebase.connect(**connect)
    else:
        engine = create_engine(pool_size=size, max_overflow=0, connect_args=connect)
        try:
            yield engine if kind == "engine" else sessionmaker(engine)
        finally:
            engine.dispose()


@contextlib.asynccontextmanager
async def async_target(kind: str, size: int = 2) -> AsyncIterator[Any]:
    if kind == "pool":
        async with lakebase.AsyncConnectionPool(min_size=size, max_size=size, open=False) as pool:
            await pool.open(wait=True)
            yield pool
    elif kind == "asyncpg-pool":
        async with lakebase.asyncpg.create_pool(min_size=size, max_size=size) as pool:
            yield pool
    elif kind == "factory":
        yield lakebase.connect_async
    elif kind == "asyncpg-factory":
        yield lakebase.asyncpg.connect
    else:
        engine = create_async_engine("postgresql+asyncpg://" if kind == "asyncpg-engine" else None, pool_size=size,
                                     max_overflow=0)
        try:
            yield async_sessionmaker(engine) if kind == "sessionmaker" else engine
        finally:
            await engine.dispose()


def sql(conn: Any, statement: str) -> Any:
    if isinstance(conn, psycopg.Connection):
        return conn.execute(statement)
    return conn.execute(text(statement))  # SQLAlchemy Connection or Session


def scalar(conn: Any, statement: str) -> Any:
    if isinstance(conn, psycopg.Connection):
        row = conn.execute(statement).fetchone()
        return row[0] if row else None
    return conn.execute(text(statement)).scalar()


async def asql(conn: Any, statement: str) -> Any:
    if isinstance(conn, asyncpg.Connection):  # also a pool's proxy
        return await conn.execute(statement)
    if isinstance(conn, psycopg.AsyncConnection):
        return await conn.execute(statement)
    return await conn.execute(text(statement))  # SQLAlchemy AsyncConnection or AsyncSession


async def ascalar(conn: Any, statement: str) -> Any:
    if isinstance(conn, asyncpg.Connection):
        return await conn.fetchval(statement)
    if isinstance(conn, psycopg.AsyncConnection):
        row = await (await conn.execute(statement)).fetchone()
        return row[0] if row else None
    return (await conn.execute(text(statement))).scalar()


# ---- restart mid-transaction ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", SYNC_TARGETS)
def test_a_unit_killed_by_a_restart_runs_once_more_and_commits_once(emulator: Emulator, table: str,
                                                                    kind: str) -> None:
    calls = 0

    def unit(conn: Any) -> str:
        nonlocal calls
        calls += 1
        sql(conn, f"INSERT INTO {table} (k, note) VALUES (100, 'restart')")
        if calls == 1:
            assert emulator.restart() >= 1  # ends this session (57P01) mid-transaction
            for _ in range(500):  # the next statement fails; a hang guard, not a timing assertion
                sql(conn, "SELECT 1")
                time.sleep(0.01)
            pytest.fail("the session survived the restart")
        return "done"

    with sync_target(kind) as target:
        assert run_transaction(target, unit) == "done"
        if kind == "pool":
            assert target.get_stats().get("returns_bad", 0) >= 1  # the lost connection was discarded
        for _ in range(4):  # and no dead connection is handed out afterwards
            assert run_transaction(target, lambda c: scalar(c, "SELECT 1")) == 1
    assert calls == 2 and count(table, "note = 'restart'") == 1


@pytest.mark.parametrize("kind", ASYNC_TARGETS)
async def test_an_async_unit_killed_by_a_restart_runs_once_more_and_commits_once(emulator: Emulator,
                                                                                 table: str, kind: str) -> None:
    calls = 0

    async def unit(conn: Any) -> str:
        nonlocal calls
        calls += 1
        await asql(conn, f"INSERT INTO {table} (k, note) VALUES (100, 'restart')")
        if calls == 1:
            assert await asyncio.to_thread(emulator.restart) >= 1
            for _ in range(500):  # a hang guard
                await asql(conn, "SELECT 1")
                await asyncio.sleep(0.01)
            pytest.fail("the session survived the restart")
        return "done"

    async with async_target(kind) as target:
        assert await run_transaction_async(target, unit) == "done"
        for _ in range(4):
            await run_transaction_async(target, lambda c: asql(c, "SELECT 1"))
    assert calls == 2 and await asyncio.to_thread(count, table, "note = 'restart'") == 1


def test_an_orm_session_losing_its_connection_at_flush_is_retried(emulator: Emulator, table: str) -> None:
    """Pending ORM writes are flushed before COMMIT: a connection lost then is not an unknown outcome."""

    class Base(DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)
        k: Mapped[int | None]
        v: Mapped[int] = mapped_column(default=0)
        note: Mapped[str | None]

    calls = 0

    def unit(session: Session) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            assert emulator.restart() >= 1
            with owner_connect(emulator, autocommit=True) as owner:  # until the session is really gone
                while owner.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                    time.sleep(0.01)
        session.add(Row(id=1000, note="flush"))  # sent at flush, after unit() returns

    with sync_target("sessionmaker") as factory:
        run_transaction(factory, unit)
    assert calls == 2 and count(table, "note = 'flush'") == 1


# ---- serialization failures ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pool", "engine", "sessionmaker"])
def test_a_serialization_failure_is_retried(table: str, kind: str) -> None:
    calls = 0

    def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        sql(conn, f"SELECT v FROM {table} WHERE id = 1")  # this transaction's snapshot
        if calls == 1:
            interfere(table)  # a concurrent SERIALIZABLE transaction commits a change to the row...
        sql(conn, f"UPDATE {table} SET v = v + 10 WHERE id = 1")  # ...so this fails with 40001 once

    with sync_target(kind) as target:
        run_transaction(target, unit, isolation_level="serializable")
    assert calls == 2 and value(table) == 11


@pytest.mark.parametrize("kind", ["pool", "asyncpg-pool", "engine", "asyncpg-factory"])
async def test_an_async_serialization_failure_is_retried(table: str, kind: str) -> None:
    calls = 0

    async def unit(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await asql(conn, f"SELECT v FROM {table} WHERE id = 1")
        if calls == 1:
            await asyncio.to_thread(interfere, table)
        await asql(conn, f"UPDATE {table} SET v = v + 10 WHERE id = 1")

    async with async_target(kind) as target:
        await run_transaction_async(target, unit, isolation_level="SERIALIZABLE")
    assert calls == 2 and await asyncio.to_thread(value, table) == 11


@pytest.mark.parametrize(("max_attempts", "deadline", "limit"), [(2, 60.0, "max_attempts=2"),
                                                                   (5, 0.001, "the 0.001s deadline")])
def test_retries_are_bounded(table: str, max_attempts: int, deadline: float, limit: str) -> None:
    calls = 0

    def unit(conn: psycopg.Connection[Any]) -> None:
        nonlocal calls
        calls += 1
        conn.execute(f"SELECT v FROM {table} WHERE id = 1")
        interfere(table)  # every time
        conn.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1")

    with pytest.raises(TransactionFailed) as info:
        run_transaction(lakebase.connect, unit, isolation_level="repeatable read", max_attempts=max_attempts,
                        deadline=deadline)
    exc = info.value
    assert exc.attempts == calls == (2 if max_attempts == 2 else 1) and exc.sqlstate == "40001"
    assert isinstance(exc.__cause__, psycopg.errors.SerializationFailure) and exc.cause is exc.__cause__
    assert limit in str(exc) and "serialization failure" in str(exc)
    assert value(table) == calls  # only the interfering updates committed


# ---- errors that are not retried -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pool", "engine"])
def test_sql_errors_are_not_retried(table: str, kind: str) -> None:
    calls = 0

    def missing_table(conn: Any) -> None:
        nonlocal calls
        calls += 1
        sql(conn, "SELECT * FROM no_such_table")

    def duplicate(conn: Any) -> None:
        nonlocal calls
        calls += 1
        sql(conn, f"INSERT INTO {table} (id) VALUES (1)")

    expected = {"pool": (psycopg.errors.UndefinedTable, psycopg.errors.UniqueViolation),
                "engine": (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError)}[kind]
    with sync_target(kind) as target:
        for unit, error in zip((missing_table, duplicate), expected, strict=True):
            calls = 0
            with pytest.raises(error):
                run_transaction(target, unit)
            assert calls == 1
        with pytest.raises(ZeroDivisionError):  # the caller's own errors pass through, after a rollback
            run_transaction(target, lambda conn: (sql(conn, f"UPDATE {table} SET v = 99"), 1 / 0))
    assert value(table) == 0


async def test_async_sql_errors_are_not_retried(table: str) -> None:
    calls = 0

    async def duplicate(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await conn.execute(f"INSERT INTO {table} (id) VALUES (1)")

    async with async_target("asyncpg-pool") as pool:
        with pytest.raises(asyncpg.UniqueViolationError):
            await run_transaction_async(pool, duplicate)
        with pytest.raises(asyncpg.UndefinedTableError):
            await run_transaction_async(pool, lambda conn: conn.execute("SELECT * FROM no_such_table"))
    assert calls == 1


def test_a_commit_the_server_refuses_is_not_ambiguous(table: str) -> None:
    calls = 0

    def unit(conn: psycopg.Connection[Any]) -> None:
        nonlocal calls
        calls += 1
        conn.execute(f"INSERT INTO {table} (k) VALUES (1)")  # k is unique, checked at COMMIT

    with pytest.raises(psycopg.errors.UniqueViolation):
        run_transaction(lakebase.connect, unit)
    assert calls == 1 and count(table) == 1


# ---- a connection lost during COMMIT -----------------------------------------------------------------
@pytest.mark.parametrize("kind", SYNC_TARGETS)
def test_a_commit_that_lost_its_connection_and_aborted_runs_again(table: str, kind: str) -> None:
    calls = 0

    def unit(conn: Any) -> int:
        nonlocal calls
        calls += 1  # the first time, the session ends during COMMIT (the server rolls back)
        sql(conn, f"INSERT INTO {table} (note) VALUES ('{'die' if calls == 1 else 'ok'}')")
        return calls

    with sync_target(kind) as target:
        assert run_transaction(target, unit) == 2
        for _ in range(4):  # the lost connection is not handed out again
            run_transaction(target, lambda c: sql(c, "SELECT 1"))
    assert calls == 2 and count(table, "note = 'die'") == 0 and count(table, "note = 'ok'") == 1


@pytest.mark.parametrize("kind", ["asyncpg-pool", "engine", "pool", "sessionmaker", "asyncpg-factory"])
async def test_an_async_commit_that_lost_its_connection_and_aborted_runs_again(table: str, kind: str) -> None:
    calls = 0

    async def unit(conn: Any) -> int:
        nonlocal calls
        calls += 1
        await asql(conn, f"INSERT INTO {table} (note) VALUES ('{'die' if calls == 1 else 'ok'}')")
        return calls

    async with async_target(kind) as target:
        assert await run_transaction_async(target, unit) == 2
        for _ in range(4):
            await run_transaction_async(target, lambda c: asql(c, "SELECT 1"))
    assert calls == 2 and await asyncio.to_thread(count, table, "note = 'ok'") == 1


@pytest.mark.parametrize("kind", ["pool", "engine", "factory"])
def test_a_commit_that_lost_its_connection_but_committed_is_not_run_again(table: str, kind: str) -> None:
    calls, fds = 0, []

    def unit(conn: Any) -> str:
        nonlocal calls
        calls += 1
        fds.append(socket_fd(conn))
        sql(conn, f"INSERT INTO {table} (note) VALUES ('hold')")  # COMMIT waits; the socket is shut meanwhile
        return "done"

    with sync_target(kind) as target:
        with cut_during_commit(table, fds):
            assert run_transaction(target, unit) == "done"
        for _ in range(4):
            run_transaction(target, lambda c: sql(c, "SELECT 1"))
    assert calls == 1 and count(table, "note = 'hold'") == 1


@pytest.mark.parametrize("kind", ["asyncpg-pool", "pool", "asyncpg-factory"])
async def test_an_async_commit_that_lost_its_connection_but_committed_is_not_run_again(table: str,
                                                                                       kind: str) -> None:
    calls, fds = 0, []

    async def unit(conn: Any) -> str:
        nonlocal calls
        calls += 1
        fds.append(socket_fd(conn))
        await asql(conn, f"INSERT INTO {table} (note) VALUES ('hold')")
        return "done"

    async with async_target(kind) as target:
        with cut_during_commit(table, fds):
            assert await run_transaction_async(target, unit) == "done"
        for _ in range(4):
            await run_transaction_async(target, lambda c: asql(c, "SELECT 1"))
    assert calls == 1 and await asyncio.to_thread(count, table, "note = 'hold'") == 1


def test_an_outcome_that_cannot_be_learned_is_unknown_with_the_xid(table: str) -> None:
    """The status query needs another connection; when the target cannot give one (for good), the
    outcome is unknown and the message names the transaction id to check."""
    opened: list[Any] = []

    def factory() -> Any:
        if opened:
            raise ConnectionFailed("the test's factory refuses a second connection")
        opened.append(lakebase.connect())
        return opened[-1]

    with pytest.raises(CommitOutcomeUnknown) as info:
        run_transaction(factory, lambda conn: conn.execute(f"INSERT INTO {table} (note) VALUES ('die')"))
    exc = info.value
    assert exc.attempts == 1 and exc.xid is not None and exc.xid.isdigit()
    assert f"transaction {exc.xid}" in str(exc) and f"pg_xact_status('{exc.xid}'::xid8)" in str(exc)
    assert "not retried" in str(exc) and "second connection" in str(exc)
    assert isinstance(exc.__cause__, psycopg.Error)


# ---- read-only units ---------------------------------------------------------------------------------
SETTINGS = "SELECT current_setting('transaction_read_only') || ' ' || current_setting('transaction_isolation')"


def end_session(emulator: Emulator, pid: int) -> None:
    """Terminate backend ``pid`` from the owner's connection, and wait until it is gone."""
    with owner_connect(emulator, autocommit=True) as owner:
        assert owner.execute("SELECT pg_terminate_backend(%s, 30000)", (pid,)).fetchone() == (True,)


def resolved(records: list[Any]) -> list[str]:
    """The statuses of the commit outcomes looked up (``transaction.commit_resolved`` events)."""
    return [r.lakebase["status"] for r in records if getattr(r, "lakebase", {}).get("event") ==
            "transaction.commit_resolved"]


@pytest.mark.parametrize("kind", SYNC_TARGETS)
def test_a_read_only_unit_cannot_write_and_leaves_the_connection_as_it_was(table: str, kind: str) -> None:
    calls = 0

    def write(conn: Any) -> None:
        nonlocal calls
        calls += 1
        sql(conn, f"UPDATE {table} SET v = 5 WHERE id = 1")

    with sync_target(kind, size=1) as target:  # one connection: the units below all get it
        with pytest.raises(Exception) as info:
            run_transaction(target, write, read_only=True)
        assert sqlstate(info.value) == "25006" and calls == 1  # read-only transaction: not retried
        assert run_transaction(target, lambda c: scalar(c, SETTINGS), read_only=True,
                               isolation_level="serializable") == "on serializable"
        assert run_transaction(target, lambda c: scalar(c, SETTINGS)) == "off read committed"
        run_transaction(target, write)  # the next unit can write
    assert calls == 2 and value(table) == 5


@pytest.mark.parametrize("kind", ASYNC_TARGETS)
async def test_an_async_read_only_unit_cannot_write_and_leaves_the_connection_as_it_was(table: str,
                                                                                        kind: str) -> None:
    calls = 0

    async def write(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await asql(conn, f"UPDATE {table} SET v = 5 WHERE id = 1")

    async with async_target(kind, size=1) as target:
        with pytest.raises(Exception) as info:
            await run_transaction_async(target, write, read_only=True)
        assert sqlstate(info.value) == "25006" and calls == 1
        assert await run_transaction_async(target, lambda c: ascalar(c, SETTINGS), read_only=True,
                                           isolation_level="serializable") == "on serializable"
        assert await run_transaction_async(target, lambda c: ascalar(c, SETTINGS)) == "off read committed"
        await run_transaction_async(target, write)
    assert calls == 2 and await asyncio.to_thread(value, table) == 5


@pytest.mark.parametrize("kind", ["pool", "engine", "sessionmaker"])
def test_connections_whose_sessions_are_read_only_stay_read_only(table: str, kind: str) -> None:
    """Like a read replica's sessions (default_transaction_read_only): after a read_only unit, BEGIN
    is as it was, not BEGIN READ WRITE (what SQLAlchemy's own postgresql_readonly reset makes psycopg send)."""
    with sync_target(kind, size=1, options="-c default_transaction_read_only=on") as target:
        assert run_transaction(target, lambda c: scalar(c, SETTINGS), read_only=True) == "on read committed"
        with pytest.raises(Exception) as info:
            run_transaction(target, lambda c: sql(c, f"UPDATE {table} SET v = 5 WHERE id = 1"))
        assert sqlstate(info.value) == "25006"
    assert value(table) == 0


@pytest.mark.parametrize("kind", SYNC_TARGETS)
def test_a_read_only_unit_whose_connection_is_lost_at_commit_runs_again(
        emulator: Emulator, table: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def unit(conn: Any) -> int:
        nonlocal calls
        calls += 1
        v = scalar(conn, f"SELECT v FROM {table} WHERE id = 1")
        if calls == 1:  # the session ends; the next thing this connection sends is COMMIT
            end_session(emulator, scalar(conn, "SELECT pg_backend_pid()"))
        return int(v) + calls

    caplog.set_level("INFO", "lakebase.transactions")
    with sync_target(kind) as target:
        assert run_transaction(target, unit, read_only=True) == 2
        for _ in range(4):  # the lost connection is not handed out again
            run_transaction(target, lambda c: sql(c, "SELECT 1"))
    assert calls == 2 and resolved(caplog.records) == ["wrote nothing"]


@pytest.mark.parametrize("kind", ASYNC_TARGETS)
async def test_an_async_read_only_unit_whose_connection_is_lost_at_commit_runs_again(
        emulator: Emulator, table: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def unit(conn: Any) -> int:
        nonlocal calls
        calls += 1
        v = await ascalar(conn, f"SELECT v FROM {table} WHERE id = 1")
        if calls == 1:
            await asyncio.to_thread(end_session, emulator, await ascalar(conn, "SELECT pg_backend_pid()"))
        return int(v) + calls

    caplog.set_level("INFO", "lakebase.transactions")
    async with async_target(kind) as target:
        assert await run_transaction_async(target, unit, read_only=True) == 2
        for _ in range(4):
            await run_transaction_async(target, lambda c: asql(c, "SELECT 1"))
    assert calls == 2 and resolved(caplog.records) == ["wrote nothing"]


# ---- targets and classification -----------------------------------------------------------------------
async def test_wrong_targets_are_clear_type_errors(emulator: Emulator, app_env: dict[str, str]) -> None:
    engine = create_async_engine()
    try:
        with pytest.raises(TypeError, match=r"use lakebase\.run_transaction_async"):
            run_transaction(engine, lambda c: None)
    finally:
        await engine.dispose()
    sync_engine = create_engine()
    try:
        with pytest.raises(TypeError, match=r"use lakebase\.run_transaction$"):
            await run_transaction_async(sync_engine, lambda c: None)  # type: ignore[arg-type,return-value]
    finally:
        sync_engine.dispose()
    with lakebase.connect() as conn, pytest.raises(TypeError, match="not a connection"):
        run_transaction(conn, lambda c: None)
    with pytest.raises(ValueError, match="isolation_level='chaos'"):
        run_transaction(lakebase.connect, lambda c: None, isolation_level="chaos")


def _sa_error(orig: BaseException, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.OperationalError("SELECT 1", None, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(("exc", "expected"), [
    (psycopg.errors.SerializationFailure("could not serialize access"), ("serialization failure", False)),
    (psycopg.errors.DeadlockDetected("deadlock detected"), ("deadlock detected", False)),
    (psycopg.errors.AdminShutdown("terminating connection"), (None, True)),
    (psycopg.errors.CannotConnectNow("the database system is starting up"), (None, True)),
    (psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"), (None, True)),
    (asyncpg.SerializationError("could not serialize access"), ("serialization failure", False)),
    (asyncpg.DeadlockDetectedError("deadlock detected"), ("deadlock detected", False)),
    (asyncpg.AdminShutdownError("terminating connection"), (None, True)),
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), (None, True)),
    (asyncpg.InterfaceError("cannot call Connection.execute(): connection is closed"), (None, True)),
    (asyncpg.InterfaceError("cannot call Connection.execute(): connection has been released back to the pool"),
     (None, True)),
    (ConnectionResetError(104, "Connection reset by peer"), (None, True)),
    (_sa_error(psycopg.errors.SerializationFailure("x")), ("serialization failure", False)),
    (_sa_error(psycopg.OperationalError("whatever"), invalidated=True), (None, True)),
    (psycopg.errors.UndefinedTable("no_such_table"), None),
    (psycopg.errors.UniqueViolation("duplicate key"), None),
    (psycopg.errors.InsufficientPrivilege("permission denied"), None),
    (psycopg.errors.InvalidPassword("password authentication failed"), None),
    (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), None),
    (_sa_error(psycopg.errors.UniqueViolation("duplicate key")), None),
    (ConnectionFailed("could not connect; gave up"), None),
    (psycopg_pool.PoolTimeout("couldn't get a connection"), None),
    (ValueError("the caller's bug"), None),
])
def test_what_is_worth_a_retry(exc: BaseException, expected: tuple[str | None, bool] | None) -> None:
    verdict = retry_reason(exc)
    if expected is None:
        assert verdict is None
    else:
        reason, lost = expected
        assert verdict is not None and verdict[1] is lost
        if reason:
            assert verdict[0] == reason


def test_a_broken_connection_makes_driver_errors_retryable_but_not_the_callers() -> None:
    assert retry_reason(psycopg.OperationalError("some unknown text"), connection_broken=True) is not None
    assert retry_reason(ValueError("the caller's bug"), connection_broken=True) is None


def test_the_errors_are_lakebase_errors() -> None:
    assert issubclass(CommitOutcomeUnknown, LakebaseError) and issubclass(TransactionFailed, LakebaseError)
    assert lakebase.run_transaction is run_transaction and lakebase.CommitOutcomeUnknown is CommitOutcomeUnknown
    assert lakebase.run_transaction_async is run_transaction_async


async def test_async_twin_with_a_synchronous_factory_closes_what_it_opened(emulator: Emulator,
                                                                          app_env: dict[str, str]) -> None:
    opened: list[Any] = []

    def sync_factory() -> Any:
        conn = lakebase.connect()
        opened.append(conn)
        return conn

    with pytest.raises(TypeError, match="needs a coroutine function"):
        await run_transaction_async(sync_factory, lambda conn: None)
    assert len(opened) == 1 and opened[0].closed
