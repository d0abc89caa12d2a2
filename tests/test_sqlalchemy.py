"""lakebase.sqlalchemy.create_engine / create_async_engine against the emulator: queries as a
Databricks App (OAuth M2M) and as the owner (PAT), Lakebase defaults, the async engine keeping every
SDK call off the event loop, restarts and scale to zero, token rotation, the 28P01 retry and clear
errors."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

import lakebase
from lakebase import AuthenticationFailed, ConfigurationError
from lakebase._liveness import READABLE, psycopg_state
from lakebase.emulator import Emulator
from lakebase.sqlalchemy import connector_of, create_async_engine, create_engine
from lakebase.transactions import run_transaction, run_transaction_async

from .lakebase_support import isolated_registries, issued, m2m_client, wait_for
from .test_asyncpg import record_api_calls
from .test_psycopg import FAULTS, end_every_session


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield from isolated_registries()


def whoami(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT current_user")).scalar_one())


async def awhoami(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str((await conn.execute(text("SELECT current_user"))).scalar_one())


# ---- sync engine ---------------------------------------------------------------------------------
def test_an_app_engine_with_no_arguments(emulator: Emulator, app_env: dict[str, str]) -> None:
    engine = create_engine()
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool._recycle == 2700  # Lakebase defaults: recycling, and the socket check...
        assert not engine.pool._pre_ping and len(engine.pool.dispatch.checkout) == 1  # ...not a ping
        assert "@localhost" in str(engine.url) and engine.url.password is None
        with engine.connect() as conn:
            row = conn.execute(text("SELECT current_user, current_setting('application_name'), "
                                    "count(*) FROM notes")).one()
            assert row[0] == emulator.app.name and row[1] == app_env["PGAPPNAME"] and row[2] >= 3
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
            assert params["sslmode"] == "verify-full" and params["sslrootcert"] == app_env["PGSSLROOTCERT"]
    finally:
        engine.dispose()


def test_an_owner_engine_and_overridable_defaults(emulator: Emulator, user_env: dict[str, str]) -> None:
    engine = create_engine(pool_pre_ping=False, pool_recycle=60, pool_size=2, echo=False,
                           connect_args={"options": "-c statement_timeout=1234"})
    try:
        assert not engine.pool._pre_ping and engine.pool._recycle == 60 and engine.pool.size() == 2
        assert len(engine.pool.dispatch.checkout) == 1  # the socket check stays
        assert whoami(engine) == emulator.owner.name
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "1234ms"
        assert connector_of(engine).stats()["credentials"]["mints"] == 1
    finally:
        engine.dispose()
    engine = create_engine(pool_pre_ping=True)  # a round trip on every checkout instead of the socket check
    try:
        assert engine.pool._pre_ping and len(engine.pool.dispatch.checkout) == 0
        assert whoami(engine) == emulator.owner.name
    finally:
        engine.dispose()


def test_a_url_and_an_explicit_workspace_client(emulator: Emulator, clean_env: pytest.MonkeyPatch,
                                                app_role: str) -> None:
    url = f"postgresql+psycopg://{app_role}@localhost:{emulator.pg_port}/databricks_postgres?application_name=from-url"
    engine = create_engine(url, workspace_client=m2m_client(emulator), endpoint=emulator.endpoint_name)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT current_user, current_setting('application_name')")).one()
            assert tuple(row) == (app_role, "from-url")
    finally:
        engine.dispose()


def test_unsafe_configuration_is_refused(emulator: Emulator, user_env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="the URL contains a password"):
        create_engine("postgresql+psycopg://me:secret@localhost/db")
    with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
        create_engine(connect_args={"sslmode": "disable"})
    with pytest.raises(ConfigurationError, match="lakebase sets the password"):
        create_async_engine(connect_args={"password": "x"})
    with pytest.raises(ConfigurationError, match="create_engine supports psycopg and psycopg2, not 'asyncpg'"):
        create_engine("postgresql+asyncpg://")
    with pytest.raises(ConfigurationError, match="creator= was given"):
        create_engine(creator=lambda: None)


def test_a_missing_role_is_a_clear_error_not_a_wrapped_one(emulator: Emulator,
                                                         clean_env: pytest.MonkeyPatch) -> None:
    sp = emulator.add_service_principal("no-role-" + uuid.uuid4().hex[:6])
    engine = create_engine(workspace_client=m2m_client(emulator, sp.name, sp.client_secret),
                           endpoint=emulator.endpoint_name, host="localhost", port=emulator.pg_port)
    with pytest.raises(AuthenticationFailed, match="databricks_create_role") as info:
        engine.connect()
    assert info.value.attempts == 1 and isinstance(info.value.__cause__, psycopg.OperationalError)


def test_a_refused_token_is_replaced_once(emulator: Emulator, user_env: dict[str, str]) -> None:
    engine = create_engine()
    try:
        assert whoami(engine) == emulator.owner.name
        engine.dispose()  # the next query needs a new login...
        emulator.expire_tokens()  # ...which the cached token would fail (28P01)
        before = issued(emulator)
        assert whoami(engine) == emulator.owner.name
        assert issued(emulator) - before == 1
        assert connector_of(engine).stats()["connect"]["auth_retries"] == 1
    finally:
        engine.dispose()


def test_an_engine_rides_through_restart_and_scale_to_zero(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(restart_seconds=0.3)
    engine = create_engine(pool_size=3)
    failed: list[BaseException] = []
    try:
        conns = [engine.connect() for _ in range(3)]  # three pooled connections...
        for conn in conns:
            conn.close()
        for fault in (emulator.restart, emulator.suspend):
            assert fault() >= 1  # ...ended by the fault
            for _ in range(6):
                try:  # pool_pre_ping replaces dead connections; new logins ride out the fault
                    assert run_transaction(engine, lambda c: c.execute(text("SELECT current_user")).scalar_one()) \
                        == emulator.app.name
                except Exception as exc:
                    failed.append(exc)
            assert whoami(engine) == emulator.app.name  # and without run_transaction too
    finally:
        engine.dispose()
    assert failed == []


def test_an_engine_rotates_tokens_with_zero_errors(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(token_ttl_seconds=2)
    engine = create_engine(pool_recycle=0.3, pool_size=2)
    errors: list[BaseException] = []
    used: set[str] = set()
    cache = connector_of(engine).credentials

    def work() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            errors.append(exc)

    try:
        for _ in range(3000):  # a hang guard; ends once logins have used three tokens
            threads = [threading.Thread(target=work) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if cache.credential is not None:
                used.add(cache.credential.fingerprint)
            if len(used) >= 3:
                break
            threading.Event().wait(0.02)
    finally:
        engine.dispose()
    assert errors == [] and len(used) >= 3


# ---- the engines' default check: the server's goodbye, without a round trip ----------------------
def without_checks(engine: Engine) -> Engine:
    for listener in list(engine.pool.dispatch.checkout):
        event.remove(engine, "checkout", listener)
    return engine


def pid_of(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("fault", FAULTS)
def test_the_default_check_replaces_sessions_the_server_ended(emulator: Emulator, app_env: dict[str, str],
                                                              fault: str) -> None:
    engine = create_engine(pool_size=2)
    try:
        conns = [engine.connect() for _ in range(2)]
        dead = {c.execute(text("SELECT pg_backend_pid()")).scalar_one() for c in conns}
        for c in conns:
            c.close()
        end_every_session(emulator, fault)
        for _ in range(4):  # zero errors, no retry: dead connections are replaced on checkout
            assert pid_of(engine) not in dead
    finally:
        engine.dispose()


@pytest.mark.parametrize("fault", FAULTS)
def test_without_a_check_the_engine_hands_out_sessions_the_server_ended(emulator: Emulator,
                                                                        app_env: dict[str, str],
                                                                        fault: str) -> None:
    """What the default check prevents (the test above fails this way without it)."""
    engine = without_checks(create_engine(pool_size=1))
    try:
        pid_of(engine)
        end_every_session(emulator, fault)
        with pytest.raises(DBAPIError) as info:
            pid_of(engine)
        assert info.value.connection_invalidated
    finally:
        engine.dispose()


def test_the_default_check_costs_no_round_trip(emulator: Emulator, app_env: dict[str, str], tmp_path: Any) -> None:
    """libpq's trace of every protocol message: the checkout itself sends nothing (pool_pre_ping=True,
    the control, sends a query)."""
    options: dict[str, Any]
    for options, pre_ping in (({}, False), ({"pool_pre_ping": True}, True)):
        engine = create_engine(pool_size=1, **options)
        try:
            with engine.connect() as conn:
                dbapi = conn.connection.dbapi_connection
                conn.execute(text("SELECT 1"))
            trace = tmp_path / f"trace-{pre_ping}"
            with open(trace, "w") as out:
                dbapi.pgconn.trace(out.fileno())  # type: ignore[union-attr]
                with engine.connect() as conn:
                    assert conn.connection.dbapi_connection is dbapi
                dbapi.pgconn.untrace()  # type: ignore[union-attr]
            queries = [line for line in trace.read_text().splitlines() if "\tQuery\t" in line]
            assert bool(queries) is pre_ping, queries
        finally:
            engine.dispose()


def test_a_pending_notification_does_not_cost_the_connection(emulator: Emulator, app_env: dict[str, str]) -> None:
    engine = create_engine(pool_size=1, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("LISTEN lakebase_engine_check"))
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            dbapi = conn.connection.dbapi_connection
        with lakebase.connect(autocommit=True) as other:
            other.execute("NOTIFY lakebase_engine_check, 'hello'")
        wait_for(lambda: psycopg_state(dbapi) == READABLE)  # the notification waits on the idle socket
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid  # not replaced
            driver = conn.connection.dbapi_connection
            got = [(n.channel, n.payload) for n in driver.notifies(timeout=1, stop_after=1)]  # type: ignore[union-attr]
        assert got == [("lakebase_engine_check", "hello")]
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", [None, "postgresql+asyncpg://"])
@pytest.mark.parametrize("check", [True, False])
async def test_an_async_engine_replaces_sessions_the_server_ended(emulator: Emulator, app_env: dict[str, str],
                                                                  url: str | None, check: bool) -> None:
    engine = create_async_engine(url, pool_size=2)
    if not check:
        without_checks(engine.sync_engine)

    async def pid() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    try:
        conns = [await engine.connect() for _ in range(2)]
        dead = {(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in conns}
        for c in conns:
            await c.close()
        await asyncio.to_thread(end_every_session, emulator, "restart")
        if not check:
            with pytest.raises(DBAPIError):
                await pid()
            return
        for _ in range(4):
            assert await pid() not in dead
    finally:
        await engine.dispose()


# ---- async engine --------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [None, "postgresql+asyncpg://"])
async def test_an_app_async_engine(emulator: Emulator, app_env: dict[str, str], url: str | None) -> None:
    engine = create_async_engine(url)
    try:
        assert engine.dialect.driver == ("asyncpg" if url else "psycopg")
        pool = engine.sync_engine.pool
        assert not pool._pre_ping and len(pool.dispatch.checkout) == 1 and pool._recycle == 2700
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT current_user, count(*) FROM notes"))).one()
            assert row[0] == emulator.app.name and row[1] >= 3
    finally:
        await engine.dispose()


@pytest.mark.parametrize("url", [None, "postgresql+asyncpg://"])
async def test_an_owner_async_engine_never_calls_the_sdk_on_the_loop(emulator: Emulator,
                                                                     user_env: dict[str, str],
                                                                     clean_env: pytest.MonkeyPatch,
                                                                     url: str | None) -> None:
    clean_env.delenv("PGHOST")  # the host from get_endpoint, the user from /Me, then the token
    clean_env.delenv("PGUSER")
    calls = record_api_calls(clean_env)
    loop_thread = threading.get_ident()
    engine = create_async_engine(url, pool_size=4)
    try:
        users = await asyncio.gather(*(awhoami(engine) for _ in range(8)))
        assert set(users) == {emulator.owner.name}
    finally:
        await engine.dispose()
    names = [name for name, _ in calls]
    assert names.count("generate_database_credential") == 1 and "get_endpoint" in names and "me" in names
    assert all(thread != loop_thread for _, thread in calls), calls


async def test_an_async_engine_rides_through_restart_and_scale_to_zero(emulator: Emulator,
                                                                       app_env: dict[str, str]) -> None:
    emulator.configure(restart_seconds=0.3)
    engine = create_async_engine(pool_size=3)
    failed: list[BaseException] = []

    async def unit(conn: Any) -> str:
        return str((await conn.execute(text("SELECT current_user"))).scalar_one())

    async def work() -> None:
        try:
            assert await run_transaction_async(engine, unit) == emulator.app.name
        except Exception as exc:
            failed.append(exc)

    try:
        await asyncio.gather(*(awhoami(engine) for _ in range(3)))
        for fault in (emulator.restart, emulator.suspend):
            assert await asyncio.to_thread(fault) >= 1
            await asyncio.gather(*(work() for _ in range(6)))
            assert await awhoami(engine) == emulator.app.name
    finally:
        await engine.dispose()
    assert failed == []


async def test_an_async_engine_rotates_tokens_with_zero_errors(emulator: Emulator,
                                                               app_env: dict[str, str]) -> None:
    emulator.configure(token_ttl_seconds=2)
    engine = create_async_engine(pool_recycle=0.3, pool_size=2)
    cache = connector_of(engine).credentials
    errors: list[BaseException] = []
    used: set[str] = set()

    async def work() -> None:
        try:
            await awhoami(engine)
        except Exception as exc:
            errors.append(exc)

    try:
        for _ in range(3000):  # a hang guard
            await asyncio.gather(*(work() for _ in range(3)))
            if cache.credential is not None:
                used.add(cache.credential.fingerprint)
            if len(used) >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()
    assert errors == [] and len(used) >= 3


def test_lakebase_stats_see_the_engine(emulator: Emulator, user_env: dict[str, str]) -> None:
    engine = create_engine()
    try:
        whoami(engine)
        assert lakebase.stats()["connectors"][0]["connect"]["attempts"] == 1
    finally:
        engine.dispose()
