"""lakebase.psycopg2.connect and create_engine(driver="psycopg2") against the emulator: zero-argument
configuration (developer and app), tokens that expire between connections, restarts and scale to zero
retried, a refused token replaced once and a second refusal not retried, passwords refused, the engine
through a restart, psycopg2's SQLSTATEs (``pgcode``) classified by the one rule table, and no token
text in errors or reprs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import text

import lakebase.psycopg2
from lakebase import AuthenticationFailed, ConfigurationError, ConnectionFailed
from lakebase.connector import get_connector
from lakebase.diagnosis import Kind
from lakebase.emulator import Emulator
from lakebase.retry import classify
from lakebase.sqlalchemy import create_async_engine, create_engine
from lakebase.transactions import retry_reason, run_transaction

from .lakebase_support import isolated_registries, issued, pat_client, wait_for


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield from isolated_registries()


def scalar(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return row[0]


@pytest.mark.parametrize("who", ["user_env", "app_env"])
def test_connects_with_no_arguments(emulator: Emulator, who: str, request: pytest.FixtureRequest) -> None:
    env = request.getfixturevalue(who)
    expected = emulator.owner.name if who == "user_env" else emulator.app.name
    conn = lakebase.psycopg2.connect()
    try:
        assert isinstance(conn, psycopg2.extensions.connection)
        assert scalar(conn, "SELECT current_user") == expected
        assert scalar(conn, "SHOW application_name") == env.get("PGAPPNAME", "lakebase-python")
        assert conn.get_dsn_parameters()["sslmode"] in ("require", "verify-full")
    finally:
        conn.close()


def test_driver_arguments_and_a_dsn_pass_through(emulator: Emulator, user_env: dict[str, str]) -> None:
    from psycopg2.extras import RealDictCursor

    conn = lakebase.psycopg2.connect("application_name=from-dsn", options="-c statement_timeout=1234",
                                     cursor_factory=RealDictCursor)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('application_name') AS a, current_setting('statement_timeout') AS t")
            assert cur.fetchone() == {"a": "from-dsn", "t": "1234ms"}
    finally:
        conn.close()


def test_a_password_or_plaintext_is_refused(emulator: Emulator, user_env: dict[str, str]) -> None:
    before = get_connector().stats()["connect"].get("attempts", 0)
    for args, kwargs in ((("",), {"password": "hunter2"}), (("password=hunter2",), {}),
                         (("",), {"passfile": "/tmp/pgpass"})):
        with pytest.raises(ConfigurationError, match="lakebase sets the password") as info:
            lakebase.psycopg2.connect(*args, **kwargs)
        assert "hunter2" not in str(info.value) and info.value.value == "[REDACTED]"
    with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
        lakebase.psycopg2.connect("sslmode=disable")
    with pytest.raises(ConfigurationError, match="lakebase sets the password"):
        create_engine(driver="psycopg2", connect_args={"password": "hunter2"})
    assert get_connector().stats()["connect"].get("attempts", 0) == before  # nothing reached the server


def test_a_dsn_keyword_is_checked_like_the_dsn_argument(emulator: Emulator, user_env: dict[str, str]) -> None:
    """``dsn=`` as a keyword (``connect_args``, Django's OPTIONS) reached psycopg2.connect unchecked: its
    password was not refused and the target's arguments silently overrode its settings."""
    before = get_connector().stats()["connect"].get("attempts", 0)
    for dsn, refusal in (("password=hunter2", "lakebase sets the password"),
                         ("sslmode=disable", "Lakebase requires TLS")):
        engine = create_engine(driver="psycopg2", connect_args={"dsn": dsn})
        try:
            with pytest.raises(ConfigurationError, match=refusal) as info:
                engine.connect()
            assert "hunter2" not in str(info.value)
        finally:
            engine.dispose()
        with pytest.raises(ConfigurationError, match=refusal):
            lakebase.psycopg2.open_connection(get_connector(), dsn=dsn)
    assert get_connector().stats()["connect"].get("attempts", 0) == before  # nothing reached the server
    conn = lakebase.psycopg2.open_connection(get_connector(), dsn="application_name=dsn-keyword")
    try:
        assert scalar(conn, "SELECT current_setting('application_name')") == "dsn-keyword"
    finally:
        conn.close()


def test_tokens_expiring_between_connections_are_invisible(emulator: Emulator, app_env: dict[str, str]) -> None:
    """Short-lived tokens: each new connection logs in with a valid one; an open connection outlives its token."""
    emulator.configure(token_ttl_seconds=2)
    first = lakebase.psycopg2.connect()
    cache = get_connector().credentials
    minted = cache.stats()["mints"]
    wait_for(lambda: cache.stats()["mints"] >= minted + 2, what="two token refreshes")  # the first has expired
    try:
        assert scalar(first, "SELECT 1") == 1  # checked at login only
        for _ in range(3):
            conn = lakebase.psycopg2.connect()
            assert scalar(conn, "SELECT current_user") == emulator.app.name
            conn.close()
    finally:
        first.close()
    assert get_connector().stats()["connect"].get("failures", 0) == 0


def test_a_refused_token_is_replaced_once(emulator: Emulator, user_env: dict[str, str]) -> None:
    lakebase.psycopg2.connect().close()  # warm the cache
    emulator.expire_tokens()  # the cached token now fails at login with 28P01
    before = issued(emulator)
    conn = lakebase.psycopg2.connect()
    assert scalar(conn, "SELECT current_user") == emulator.owner.name
    conn.close()
    assert issued(emulator) - before == 1
    stats = get_connector().stats()
    assert stats["connect"]["auth_retries"] == 1 and stats["credentials"]["invalidations"] == 1


def test_a_second_refusal_is_not_retried(emulator: Emulator, clean_env: pytest.MonkeyPatch,
                                         app_role: str) -> None:
    """The owner's token for the app's role: refused (28P01) even when fresh; one retry, then the cause."""
    before = issued(emulator)
    with pytest.raises(AuthenticationFailed) as info:
        lakebase.psycopg2.connect(workspace_client=pat_client(emulator), endpoint=emulator.endpoint_name,
                                  host="localhost", port=emulator.pg_port, user=app_role)
    assert info.value.attempts == 2 and info.value.sqlstate == "28P01"
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)
    assert "refused again although freshly minted" in str(info.value)
    assert issued(emulator) - before == 2


def test_a_missing_database_is_not_retried(emulator: Emulator, user_env: dict[str, str]) -> None:
    with pytest.raises(ConnectionFailed, match="the database does not exist") as info:
        lakebase.psycopg2.connect(database="no_such_db")
    assert info.value.attempts == 1 and info.value.sqlstate == "3D000"


def test_a_restart_is_waited_out(emulator: Emulator, app_env: dict[str, str]) -> None:
    """(A connection open across the restart: see the engine's test, whose pooled connection is.)"""
    lakebase.psycopg2.connect().close()
    emulator.configure(restart_seconds=0.5)
    restarts = emulator.stats()["restarts"]
    emulator.restart()
    conn = lakebase.psycopg2.connect()  # waits out the restart
    assert emulator.stats()["restarts"] == restarts + 1
    assert scalar(conn, "SELECT current_user") == emulator.app.name
    conn.close()


def test_a_slow_wake_up_is_retried(emulator: Emulator, app_env: dict[str, str]) -> None:
    """Scale to zero, and a wake-up slower than one attempt's timeout: the next attempt gets in."""
    lakebase.psycopg2.connect().close()
    emulator.configure(wake_delay_seconds=3)
    wakeups = emulator.stats()["wakeups"]
    emulator.suspend()
    conn = lakebase.psycopg2.connect(connect_timeout=2)
    assert scalar(conn, "SELECT current_user") == emulator.app.name
    conn.close()
    assert emulator.stats()["wakeups"] == wakeups + 1
    assert get_connector(connect_timeout=2).stats()["connect"]["retries"] >= 1


def raised(conn: Any, sqlstate: str) -> psycopg2.Error:
    """The error psycopg2 raises for a server error with this SQLSTATE (with its ``pgcode``)."""
    with pytest.raises(psycopg2.Error) as info:
        scalar(conn, f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$")
    conn.rollback()
    return info.value


def test_psycopg2_sqlstates_are_read_from_pgcode(emulator: Emulator, app_env: dict[str, str]) -> None:
    """psycopg2 names the SQLSTATE ``pgcode`` (psycopg 3 and asyncpg: ``sqlstate``); the message says nothing."""
    conn = lakebase.psycopg2.connect()
    try:
        refused, serialization, terminated = (raised(conn, s) for s in ("28P01", "40001", "57P01"))
    finally:
        conn.close()
    assert refused.pgcode == "28P01" and classify(refused).kind is Kind.AUTH
    assert retry_reason(serialization) == ("serialization failure", False)
    assert classify(terminated).kind is Kind.TRANSIENT and classify(terminated).sqlstate == "57P01"
    with pytest.raises(psycopg2.InterfaceError) as closed:
        conn.cursor()  # psycopg2's words for a closed connection
    assert retry_reason(closed.value) == ("the connection was lost", True)


def test_an_engine_on_psycopg2_rides_through_a_restart(emulator: Emulator, app_env: dict[str, str]) -> None:
    engine = create_engine(driver="psycopg2", pool_size=1)
    try:
        assert engine.dialect.driver == "psycopg2" and engine.url.drivername == "postgresql+psycopg2"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == emulator.app.name
        emulator.configure(restart_seconds=0.5)
        emulator.restart()  # the pooled connection's session ends
        with engine.connect() as conn:  # replaced on checkout; the new one waits out the restart
            assert conn.execute(text("SELECT count(*) FROM notes")).scalar() is not None
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == emulator.app.name
    finally:
        engine.dispose()
    with pytest.raises(ConfigurationError, match="supports psycopg and psycopg2, not 'asyncpg'"):
        create_engine(driver="asyncpg")
    aengine = create_async_engine(driver="asyncpg")  # the async engine's driver= (no connection made)
    assert aengine.dialect.driver == "asyncpg"
    aengine.sync_engine.dispose()
    with pytest.raises(ConfigurationError, match="the URL says 'psycopg' but driver='psycopg2'"):
        create_engine("postgresql+psycopg://", driver="psycopg2")


def test_a_serialization_failure_on_a_psycopg2_engine_is_retried(emulator: Emulator,
                                                                 app_env: dict[str, str]) -> None:
    """run_transaction reads psycopg2's pgcode: 40001 runs the unit again."""
    engine = create_engine("postgresql+psycopg2://")
    table = "pg2_" + emulator.app.name.replace("-", "_")[:20]
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, v int)"))
            conn.execute(text(f"DELETE FROM {table}"))
            conn.execute(text(f"INSERT INTO {table} VALUES (1, 0)"))
        calls = 0

        def unit(conn: Any) -> None:
            nonlocal calls
            calls += 1
            conn.execute(text(f"SELECT v FROM {table} WHERE id = 1"))  # this transaction's snapshot
            if calls == 1:
                with engine.begin() as other:  # a concurrent transaction commits a change to the row...
                    other.execute(text(f"UPDATE {table} SET v = v + 1 WHERE id = 1"))
            conn.execute(text(f"UPDATE {table} SET v = v + 10 WHERE id = 1"))  # ...so this fails with 40001

        run_transaction(engine, unit, isolation_level="serializable")
        assert calls == 2
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT v FROM {table} WHERE id = 1")).scalar() == 11
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_run_transaction_on_psycopg2_connections(emulator: Emulator, app_env: dict[str, str]) -> None:
    """run_transaction(lakebase.psycopg2.connect, fn): a session ended mid-unit (57P01, psycopg2's
    AdminShutdown) and a serialization failure (40001) run the unit again on a new connection; a read-only
    unit cannot write (25006, not retried)."""
    table = "pg2tx_" + emulator.app.name.replace("-", "_")[:20]
    calls = 0

    def unit(conn: Any) -> int:
        nonlocal calls
        calls += 1
        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} WHERE id = 1")  # this transaction's snapshot
            if calls == 1:
                cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # the session ends
            if calls == 2:
                with lakebase.psycopg2.connect() as other, other.cursor() as c:  # a concurrent write...
                    c.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")
                other.close()
            cur.execute(f"UPDATE {table} SET v = v + 10 WHERE id = 1")  # ...so this fails with 40001 once
            cur.execute(f"SELECT v FROM {table} WHERE id = 1")
            return int(cur.fetchone()[0])

    setup = lakebase.psycopg2.connect()
    setup.autocommit = True
    with setup.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        cur.execute(f"INSERT INTO {table} VALUES (1, 0)")
    try:
        assert run_transaction(lakebase.psycopg2.connect, unit, isolation_level="serializable") == 11
        assert calls == 3 and scalar(setup, f"SELECT v FROM {table}") == 11

        def write(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.execute(f"UPDATE {table} SET v = 0")

        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            run_transaction(lakebase.psycopg2.connect, write, read_only=True)
        assert run_transaction(lakebase.psycopg2.connect, lambda conn: scalar(conn, "SHOW transaction_read_only"),
                               read_only=True) == "on"
    finally:
        with setup.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        setup.close()


def test_no_token_text_in_errors_or_reprs(emulator: Emulator, app_env: dict[str, str]) -> None:
    conn = lakebase.psycopg2.connect()
    token = get_connector().credentials.token()
    texts = [repr(conn), str(conn), conn.dsn, str(conn.get_dsn_parameters())]
    conn.close()
    emulator.expire_tokens()
    conn = lakebase.psycopg2.connect()  # the refused token is replaced
    texts += [repr(conn), conn.dsn]
    conn.close()
    for bad in ({"database": "no_such_db"}, {"user": "no_such_role"}):
        with pytest.raises(ConnectionFailed) as info:
            lakebase.psycopg2.connect(**bad)
        texts += [str(info.value), repr(info.value), str(info.value.__cause__), repr(info.value.__cause__)]
    engine = create_engine(driver="psycopg2")
    texts += [repr(engine), str(engine.url)]
    engine.dispose()
    for token_ in (token, get_connector().credentials.token()):
        for t in texts:
            assert token_[:16] not in t
