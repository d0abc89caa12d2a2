"""lakebase.connect / connect_async / ConnectionPool / AsyncConnectionPool against the emulator:
zero-argument configuration as a developer (PAT) and as a Databricks App (OAuth M2M), retries
through restarts and scale to zero, the 28P01 retry, clear errors, DNS fallback, read-only hosts,
and the canary: no token text in any log record, repr, str or error message."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg.rows import dict_row

import lakebase
import lakebase.psycopg
from lakebase import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectionFailed,
    CredentialsUnavailable,
    PermissionDenied,
    ResolutionError,
)
from lakebase.connector import get_connector
from lakebase.emulator import Emulator
from lakebase.psycopg import conninfo_for_display

from .conftest import owner_connect
from .lakebase_support import (
    Records,
    end_outage,
    fresh_cache,
    isolated_registries,
    issued,
    m2m_client,
    pat_client,
    wait_for,
)


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield from isolated_registries()


def current_user(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


# ---- zero-argument configuration ---------------------------------------------------------------
def test_a_developer_connects_with_no_arguments(emulator: Emulator, user_env: dict[str, str]) -> None:
    with lakebase.connect() as conn:
        assert current_user(conn) == emulator.owner.name
        assert conn.info.parameter_status("application_name") == "lakebase-python"


def test_a_databricks_app_connects_with_no_arguments(emulator: Emulator, app_env: dict[str, str]) -> None:
    with lakebase.connect() as conn:
        assert current_user(conn) == emulator.app.name
        assert conn.execute("SELECT count(*) FROM notes").fetchone() is not None
        assert conn.info.parameter_status("application_name") == app_env["PGAPPNAME"]


def test_host_and_user_are_looked_up_when_not_set(emulator: Emulator, user_env: dict[str, str],
                                                  clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("PGHOST")
    clean_env.delenv("PGUSER")
    with lakebase.connect() as conn:  # host from get_endpoint, user from /Me
        assert current_user(conn) == emulator.owner.name
        assert conn.info.host == "localhost"


def test_a_provisioned_instance(emulator: Emulator, user_env: dict[str, str],
                                clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("ENDPOINT_NAME")
    clean_env.delenv("PGHOST")
    clean_env.setenv("LAKEBASE_INSTANCE_NAME", "emulator-instance")
    with lakebase.connect() as conn:  # host from read_write_dns, token from w.database
        assert current_user(conn) == emulator.owner.name


def test_connect_async_with_no_arguments(emulator: Emulator, app_env: dict[str, str]) -> None:
    async def main() -> str:
        async with await lakebase.connect_async() as conn:
            cur = await conn.execute("SELECT current_user")
            row = await cur.fetchone()
            assert row is not None
            return str(row[0])

    assert asyncio.run(main()) == emulator.app.name


def test_an_explicit_workspace_client_and_overrides(emulator: Emulator, clean_env: pytest.MonkeyPatch,
                                                    app_role: str) -> None:
    w = m2m_client(emulator)
    with lakebase.connect(workspace_client=w, endpoint=emulator.endpoint_name, port=emulator.pg_port,
                          application_name="override", autocommit=True, row_factory=dict_row) as conn:
        assert conn.autocommit
        row = conn.execute("SELECT current_user AS u, current_setting('application_name') AS a").fetchone()
        assert row == {"u": emulator.app.name, "a": "override"}


def test_conninfo_and_driver_arguments_pass_through(emulator: Emulator, user_env: dict[str, str]) -> None:
    with lakebase.connect("application_name=from-conninfo", options="-c statement_timeout=1234") as conn:
        assert conn.info.parameter_status("application_name") == "from-conninfo"
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        params = conn.info.get_parameters()
        assert params["keepalives"] == "1" and params["sslmode"] == "verify-full"  # as user.env says
        assert params["sslrootcert"] == user_env["PGSSLROOTCERT"]


def test_a_password_or_plaintext_connection_is_refused(emulator: Emulator, user_env: dict[str, str],
                                                       clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="lakebase sets the password"):
        lakebase.connect(password="hunter2")
    with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
        lakebase.connect("sslmode=disable")
    clean_env.setenv("PGSSLMODE", "disable")
    with pytest.raises(ConfigurationError, match="PGSSLMODE='disable': Lakebase requires TLS"):
        lakebase.connect()


def test_open_connection_is_the_driver_adapters_entry_point(emulator: Emulator, user_env: dict[str, str]) -> None:
    """lakebase.psycopg.open_connection(connector, ...): what connect, the pools and the engines open
    through; it keeps the argument rules (no password, TLS, an sslmode of None too: psycopg would drop
    it and libpq fall back to prefer)."""
    connector = get_connector()
    with lakebase.psycopg.open_connection(connector, "application_name=adapter", autocommit=True) as conn:
        assert (current_user(conn), conn.autocommit) == (emulator.owner.name, True)
        assert conn.info.parameter_status("application_name") == "adapter"
    attempts = connector.stats()["connect"]["attempts"]
    for bad in ({"password": "hunter2"}, {"passfile": "/tmp/pgpass"}):
        with pytest.raises(ConfigurationError, match="lakebase sets the password") as info:
            lakebase.psycopg.open_connection(connector, **bad)
        assert info.value.value == "[REDACTED]"
    for mode in ("disable", "prefer", None):
        with pytest.raises(ConfigurationError, match=f"sslmode={mode!r} in the connection arguments: "
                                                     "Lakebase requires TLS"):
            lakebase.psycopg.open_connection(connector, sslmode=mode)

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
            await lakebase.psycopg.open_connection_async(connector, "sslmode=allow")
        assert connector.stats()["connect"]["attempts"] == attempts  # no refusal reached the server
        conn = await lakebase.psycopg.open_connection_async(connector, connection_class=psycopg.AsyncConnection)
        async with conn:
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() == (emulator.owner.name,)

    asyncio.run(main())


def test_a_conninfo_keyword_is_checked_like_the_conninfo_argument(emulator: Emulator,
                                                                  user_env: dict[str, str]) -> None:
    """``conninfo=`` as a keyword (``connect_args``, a pool's ``kwargs``, Django's OPTIONS) reached
    psycopg's connect unchecked: its password was not refused, its settings silently overridden."""
    connector = get_connector()
    attempts = connector.stats()["connect"].get("attempts", 0)
    for conninfo, refusal in (("password=hunter2", "lakebase sets the password"),
                              ("sslmode=disable", "Lakebase requires TLS")):
        with pytest.raises(ConfigurationError, match=refusal):
            lakebase.psycopg.open_connection(connector, conninfo=conninfo)
    assert connector.stats()["connect"].get("attempts", 0) == attempts  # no refusal reached the server
    with lakebase.psycopg.open_connection(connector, conninfo="application_name=conninfo-keyword") as conn:
        assert conn.info.parameter_status("application_name") == "conninfo-keyword"


def test_no_workspace_auth_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ENDPOINT_NAME", "projects/p/branches/b/endpoints/e")
    with pytest.raises(ConfigurationError) as info:
        lakebase.connect()
    assert "Databricks workspace authentication is not configured" in str(info.value)
    assert "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET" in str(info.value)


# ---- retries -------------------------------------------------------------------------------------
def test_a_refused_token_is_replaced_once(emulator: Emulator, user_env: dict[str, str]) -> None:
    lakebase.connect().close()  # warm the cache
    emulator.expire_tokens()  # the cached token now fails at login with 28P01
    before = issued(emulator)
    with lakebase.connect() as conn:
        assert current_user(conn) == emulator.owner.name
    assert issued(emulator) - before == 1
    stats = get_connector().stats()
    assert stats["connect"]["auth_retries"] == 1 and stats["credentials"]["invalidations"] == 1


def test_fifty_connections_refused_at_once_cause_one_new_token(emulator: Emulator,
                                                               user_env: dict[str, str]) -> None:
    lakebase.connect().close()
    emulator.expire_tokens()
    before = issued(emulator)
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            with lakebase.connect() as conn:
                conn.execute("SELECT 1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and issued(emulator) - before == 1


def test_fifty_concurrent_connects_on_a_cold_cache_make_one_api_call(emulator: Emulator,
                                                                     user_env: dict[str, str]) -> None:
    lakebase.Settings()  # fail early on a broken env
    get_connector().prepare()  # resolve the target first; the credential cache stays cold
    before = issued(emulator)
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def work() -> None:
        barrier.wait()
        try:
            lakebase.connect().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and issued(emulator) - before == 1


def test_fifty_concurrent_async_connects_on_a_cold_cache_make_one_api_call(emulator: Emulator,
                                                                           user_env: dict[str, str]) -> None:
    get_connector().prepare()
    before = issued(emulator)

    async def main() -> None:
        conns = await asyncio.gather(*(lakebase.connect_async() for _ in range(50)))
        for conn in conns:
            await conn.close()

    asyncio.run(main())
    assert issued(emulator) - before == 1


def test_a_second_refusal_is_not_retried(emulator: Emulator, clean_env: pytest.MonkeyPatch,
                                         app_role: str) -> None:
    # The owner's token used for the app's role: refused (28P01) even when freshly minted.
    before = issued(emulator)
    with pytest.raises(AuthenticationFailed) as info:
        lakebase.connect(workspace_client=pat_client(emulator), endpoint=emulator.endpoint_name,
                         host="localhost", port=emulator.pg_port, user=app_role)
    assert info.value.attempts == 2 and info.value.sqlstate == "28P01"
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert "refused again although freshly minted" in str(info.value)
    assert issued(emulator) - before == 2


def test_a_missing_role_is_not_retried(emulator: Emulator, clean_env: pytest.MonkeyPatch) -> None:
    sp = emulator.add_service_principal("no-role-" + uuid.uuid4().hex[:6])
    failures = emulator.stats()["login_failures_by_reason"].get("no_role", 0)
    with pytest.raises(AuthenticationFailed) as info:
        lakebase.connect(workspace_client=m2m_client(emulator, sp.name, sp.client_secret),
                         endpoint=emulator.endpoint_name, host="localhost", port=emulator.pg_port)
    text = str(info.value)
    assert f'role "{sp.name}" does not exist' in text and "databricks_create_role" in text
    assert info.value.attempts == 1
    assert emulator.stats()["login_failures_by_reason"]["no_role"] == failures + 1


def test_no_connect_privilege_is_permission_denied(emulator: Emulator, app_env: dict[str, str]) -> None:
    name = "locked_" + uuid.uuid4().hex[:8]
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC")
    try:
        with pytest.raises(PermissionDenied) as info:
            lakebase.connect(database=name)
        assert info.value.attempts == 1 and "GRANT CONNECT" in str(info.value)
    finally:
        with owner_connect(emulator, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")


def test_a_missing_database_is_not_retried(emulator: Emulator, user_env: dict[str, str]) -> None:
    with pytest.raises(ConnectionFailed, match='the database does not exist') as info:
        lakebase.connect(database="no_such_db")
    assert info.value.attempts == 1 and info.value.sqlstate == "3D000"


def test_a_certificate_that_does_not_verify_is_not_retried(emulator: Emulator, user_env: dict[str, str]) -> None:
    import certifi  # public CAs: they do not know the emulator's

    with pytest.raises(ConnectionFailed, match="TLS certificate did not verify") as info:
        lakebase.connect(sslmode="verify-full", sslrootcert=certifi.where(), connect_deadline=5)
    assert info.value.attempts == 1 and "sslrootcert" in str(info.value)
    with pytest.raises(ConnectionFailed, match="root certificate") as info:
        lakebase.connect(sslmode="verify-full", sslrootcert="/nonexistent/ca.pem", connect_deadline=5)
    assert info.value.attempts == 1 and "check the endpoint and database names" not in str(info.value)
    with lakebase.connect(sslmode="verify-full", sslrootcert=str(emulator.ca_file)) as conn:
        assert current_user(conn) == emulator.owner.name


def test_connects_ride_through_a_restart(emulator: Emulator, app_env: dict[str, str]) -> None:
    conn = lakebase.connect()
    emulator.restart()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")  # the session was terminated (57P01)
    conn.close()
    with lakebase.connect() as conn:  # waits out the restart
        assert current_user(conn) == emulator.app.name


def test_a_slow_wake_up_is_retried(emulator: Emulator, app_env: dict[str, str]) -> None:
    """Scale to zero, and a wake-up slower than one attempt's timeout: the next attempt gets in."""
    lakebase.connect().close()
    emulator.configure(wake_delay_seconds=3)
    wakeups = emulator.stats()["wakeups"]
    emulator.suspend()
    with lakebase.connect(connect_timeout=2) as conn:
        assert current_user(conn) == emulator.app.name
    assert emulator.stats()["wakeups"] == wakeups + 1
    assert get_connector(connect_timeout=2).stats()["connect"]["retries"] >= 1


def test_the_token_api_down_on_a_cold_cache(emulator: Emulator, user_env: dict[str, str]) -> None:
    emulator.credential_outage(120, status=503)
    with pytest.raises(CredentialsUnavailable) as info:
        lakebase.connect(connect_deadline=5, api_timeout=5)  # room for a loaded machine: the 503 comes at once
    assert "TemporarilyUnavailable (HTTP 503)" in str(info.value) and "no token is cached" in str(info.value)
    end_outage(emulator)
    # It recovers by itself: the next connect succeeds once the backoff allows an attempt.
    with lakebase.connect(connect_deadline=30, api_timeout=1) as conn:
        assert current_user(conn) == emulator.owner.name


# ---- read-only hosts and DNS ---------------------------------------------------------------------
def test_read_only_uses_the_read_only_host_through_the_dns_fallback(emulator: Emulator,
                                                                   app_env: dict[str, str],
                                                                   replica: str) -> None:
    with lakebase.connect(read_only=True) as conn:
        assert conn.info.host == f"{replica}.localhost"  # the name (for TLS SNI)...
        assert conn.info.hostaddr == "127.0.0.1"  # ...reached by RFC 6761 loopback, not the resolver
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    with lakebase.connect() as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)


def test_read_only_without_a_replica_is_a_clear_error(emulator: Emulator, app_env: dict[str, str]) -> None:
    with pytest.raises(ResolutionError, match="has no read-only host") as info:
        lakebase.connect(read_only=True)
    assert "add a read replica" in str(info.value)


def test_an_unknown_endpoint_is_a_clear_error(emulator: Emulator, user_env: dict[str, str],
                                              clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("PGHOST")
    with pytest.raises(ResolutionError) as info:
        lakebase.connect(endpoint="projects/emulator/branches/production/endpoints/nope")
    assert "NotFound (HTTP 404)" in str(info.value) and "set PGHOST" in str(info.value)


# ---- pools ---------------------------------------------------------------------------------------
def test_a_pool_shares_one_token_and_has_lakebase_defaults(emulator: Emulator,
                                                           app_env: dict[str, str]) -> None:
    before = issued(emulator)
    with lakebase.ConnectionPool(min_size=3, max_size=6, open=True) as pool:
        pool.wait()
        assert pool._check is lakebase.ConnectionPool.check_liveness  # no round trip (see below)
        assert pool.max_lifetime == 3600 and pool.max_idle == 600 and pool.name == "lakebase-primary"

        def work(_: int) -> str:
            with pool.connection() as conn:
                return current_user(conn)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(12) as ex:
            assert set(ex.map(work, range(60))) == {emulator.app.name}
        stats = pool.stats()
        assert stats["pool"]["pool_max"] == 6 and stats["credentials"]["mints"] == 1
        assert stats["last_connect_error"] is None
    assert issued(emulator) - before == 1


def test_a_pool_rides_through_restart_and_scale_to_zero(emulator: Emulator, app_env: dict[str, str]) -> None:
    with lakebase.ConnectionPool(min_size=2, max_size=4, open=True) as pool:
        pool.wait()
        for fault in (emulator.restart, emulator.suspend):
            fault()
            # The default check sees what the server sent: wait until the sessions' ends reached the
            # client (the fault API returns once Postgres was told to end them, not once they ended).
            wait_for(lambda: emulator.stats()["active_sessions"] == 0)
            for _ in range(6):  # terminated connections are checked out of the pool and replaced
                with pool.connection() as conn:
                    assert current_user(conn) == emulator.app.name


def test_a_pool_rotates_tokens_with_zero_errors(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(token_ttl_seconds=2)
    before = issued(emulator)
    errors: list[BaseException] = []
    # Short-lived connections force new logins across several token lifetimes.
    with lakebase.ConnectionPool(min_size=1, max_size=4, max_lifetime=0.5, open=True) as pool:
        stop = time.monotonic() + 5

        def work() -> None:
            while time.monotonic() < stop:
                try:
                    with pool.connection() as conn:
                        conn.execute("SELECT 1")
                except BaseException as exc:
                    errors.append(exc)
                time.sleep(0.02)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and issued(emulator) - before >= 3


def test_a_pool_that_cannot_connect_says_why(emulator: Emulator, clean_env: pytest.MonkeyPatch) -> None:
    sp = emulator.add_service_principal("no-role-" + uuid.uuid4().hex[:6])
    with lakebase.ConnectionPool(workspace_client=m2m_client(emulator, sp.name, sp.client_secret),
                                 endpoint=emulator.endpoint_name, host="localhost", port=emulator.pg_port,
                                 min_size=1, timeout=2, open=True) as pool:
        wait_for(lambda: pool._last_error.error is not None)
        with pytest.raises(lakebase.PoolTimeout) as info:
            with pool.connection():
                pass
    exc = info.value
    assert isinstance(exc, psycopg_pool.PoolTimeout) and isinstance(exc, lakebase.LakebaseError)
    assert f'role "{sp.name}" does not exist' in str(exc) and "couldn't get a connection" in str(exc)
    assert isinstance(exc.__cause__, AuthenticationFailed) and exc.cause is exc.__cause__


def test_a_pool_with_the_token_api_down_says_so(emulator: Emulator, user_env: dict[str, str]) -> None:
    emulator.credential_outage(120, status=503)
    with lakebase.ConnectionPool(credentials=fresh_cache(emulator, api_timeout=5), connect_deadline=5,
                                 min_size=1, timeout=2, open=True) as pool:
        wait_for(lambda: pool._last_error.error is not None)
        with pytest.raises(lakebase.PoolTimeout) as info:
            pool.getconn()
    assert isinstance(info.value.__cause__, CredentialsUnavailable)
    assert "TemporarilyUnavailable (HTTP 503)" in str(info.value)


def test_an_async_pool(emulator: Emulator, app_env: dict[str, str]) -> None:
    async def main() -> set[str]:
        async with lakebase.AsyncConnectionPool(min_size=2, max_size=5, open=False) as pool:
            await pool.open(wait=True)
            assert pool._check is lakebase.AsyncConnectionPool.check_liveness

            async def work() -> str:
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT current_user")
                    row = await cur.fetchone()
                    assert row is not None
                    return str(row[0])

            users = set(await asyncio.gather(*(work() for _ in range(40))))
            emulator.restart()
            wait_for(lambda: emulator.stats()["active_sessions"] == 0)  # the sessions' ends reached the client
            users |= set(await asyncio.gather(*(work() for _ in range(10))))
            assert pool.stats()["credentials"]["mints"] == 1
            return users

    assert asyncio.run(main()) == {emulator.app.name}


def test_an_async_pool_that_cannot_connect_says_why(emulator: Emulator, user_env: dict[str, str]) -> None:
    emulator.credential_outage(120, status=503)

    async def main() -> None:
        async with lakebase.AsyncConnectionPool(credentials=fresh_cache(emulator, api_timeout=1),
                                                connect_deadline=1, min_size=1, timeout=2,
                                                open=False) as pool:
            await pool.open()
            await asyncio.to_thread(wait_for, lambda: pool._last_error.error is not None)
            with pytest.raises(lakebase.PoolTimeout) as info:
                await pool.getconn()
            assert isinstance(info.value.__cause__, CredentialsUnavailable)

    asyncio.run(main())


# ---- the pools' default check: the server's goodbye, without a round trip ---------------------------
FAULTS = ("restart", "suspend", "idle timeout", "max lifetime")


def end_every_session(emulator: Emulator, fault: str) -> None:
    """End every session the way ``fault`` does, and wait until the emulator has seen them end (so
    that the server's goodbye is on the clients' sockets)."""
    emulator.configure(restart_seconds=0.3)
    before = emulator.stats()["sessions_terminated"]
    if fault == "restart":
        emulator.restart()
    elif fault == "suspend":
        emulator.suspend()
    elif fault == "idle timeout":
        emulator.configure(idle_timeout_seconds=0.3)
    else:
        emulator.configure(max_lifetime_seconds=0.3)
    wait_for(lambda: emulator.stats()["sessions_terminated"] > before and emulator.stats()["active_sessions"] == 0)
    emulator.configure(idle_timeout_seconds=86400, max_lifetime_seconds=259200)  # new sessions may live


def pooled_pids(pool: psycopg_pool.ConnectionPool[Any], n: int) -> set[int]:
    conns = [pool.getconn() for _ in range(n)]
    try:
        return {c.info.backend_pid for c in conns}
    finally:
        for c in conns:
            pool.putconn(c)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_default_check_replaces_sessions_the_server_ended(emulator: Emulator, app_env: dict[str, str],
                                                              fault: str) -> None:
    with lakebase.ConnectionPool(min_size=2, max_size=2, open=True) as pool:
        pool.wait()
        dead = pooled_pids(pool, 2)
        end_every_session(emulator, fault)
        for _ in range(4):  # zero errors: both dead connections are replaced before they are handed out
            with pool.connection() as conn:
                assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] not in dead  # type: ignore[index]
        assert pool.get_stats()["connections_lost"] == 2


@pytest.mark.parametrize("fault", FAULTS)
def test_without_a_check_the_pool_hands_out_sessions_the_server_ended(emulator: Emulator,
                                                                      app_env: dict[str, str], fault: str) -> None:
    """What the default check prevents (the test above would fail this way with check=None)."""
    with lakebase.ConnectionPool(min_size=1, max_size=1, check=None, open=True) as pool:
        pool.wait()
        end_every_session(emulator, fault)
        with pytest.raises(psycopg.OperationalError):
            with pool.connection() as conn:
                conn.execute("SELECT 1")


def test_the_default_check_costs_no_round_trip(emulator: Emulator, app_env: dict[str, str], tmp_path: Any) -> None:
    """libpq's own trace of every protocol message: a checkout with the default check sends nothing;
    with check_connection (the round trip, still available) it sends a query."""
    options: dict[str, Any]
    for options, expect_query in (({}, False), ({"check": lakebase.ConnectionPool.check_connection}, True)):
        with lakebase.ConnectionPool(min_size=1, max_size=1, open=True, **options) as pool:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
                pooled = conn
            trace = tmp_path / f"trace-{expect_query}"
            with open(trace, "w") as out:
                pooled.pgconn.trace(out.fileno())
                with pool.connection() as conn:
                    assert conn is pooled
                pooled.pgconn.untrace()
            assert ("\tQuery\t" in trace.read_text()) is expect_query, trace.read_text()


def test_a_pending_notification_does_not_cost_the_connection(emulator: Emulator, app_env: dict[str, str]) -> None:
    from lakebase._liveness import READABLE, psycopg_state

    with lakebase.ConnectionPool(min_size=1, max_size=1, kwargs={"autocommit": True}, open=True) as pool:
        with pool.connection() as conn:
            conn.execute("LISTEN lakebase_pool_check")
            pid, pooled = conn.info.backend_pid, conn
        with lakebase.connect(autocommit=True) as other:
            other.execute("NOTIFY lakebase_pool_check, 'hello'")
        wait_for(lambda: psycopg_state(pooled) == READABLE)  # the notification waits on the idle socket
        with pool.connection() as conn:
            assert conn.info.backend_pid == pid  # the same connection, not a replacement
            got = [(n.channel, n.payload) for n in conn.notifies(timeout=1, stop_after=1)]
        assert got == [("lakebase_pool_check", "hello")]  # and the application still gets its notification
        assert pool.get_stats().get("connections_lost", 0) == 0


@pytest.mark.parametrize("check", ["default", None])
def test_an_async_pool_replaces_sessions_the_server_ended(emulator: Emulator, app_env: dict[str, str],
                                                          check: str | None) -> None:
    options = {} if check == "default" else {"check": None}

    async def main() -> None:
        async with lakebase.AsyncConnectionPool(min_size=2, max_size=2, open=False, **options) as pool:
            await pool.open(wait=True)
            conns = [await pool.getconn() for _ in range(2)]
            dead = {c.info.backend_pid for c in conns}
            for c in conns:
                await pool.putconn(c)
            await asyncio.to_thread(end_every_session, emulator, "restart")
            for _ in range(4):
                async with pool.connection() as conn:
                    cur = await conn.execute("SELECT pg_backend_pid()")
                    assert (await cur.fetchone())[0] not in dead  # type: ignore[index]

    if check is None:
        with pytest.raises(psycopg.OperationalError):
            asyncio.run(main())
    else:
        asyncio.run(main())


# ---- observability and the canary ------------------------------------------------------------------
def test_stats_and_structured_events(emulator: Emulator, user_env: dict[str, str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lakebase")
    lakebase.connect().close()
    events = [r.lakebase["event"] for r in caplog.records if hasattr(r, "lakebase")]  # type: ignore[attr-defined]
    assert "credential.refreshed" in events
    stats = lakebase.stats()
    assert stats["credentials"][0]["mints"] == 1 and stats["connectors"][0]["connect"]["attempts"] == 1


@pytest.fixture
def everything_logged() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    sdk = logging.getLogger("databricks.sdk")
    levels = root.level, sdk.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    sdk.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        sdk.setLevel(levels[1])


def test_canary_no_token_text_anywhere(emulator: Emulator, app_env: dict[str, str],
                                       everything_logged: Records) -> None:
    tokens: list[str] = []
    texts: list[str] = []

    def collect() -> None:
        cred = get_connector().credentials.credential
        if cred is not None and cred.token not in tokens:
            tokens.append(cred.token)

    conn = lakebase.connect()
    collect()
    emulator.expire_tokens()  # the 28P01 path: refused token, invalidated, re-minted
    conn2 = lakebase.connect()
    collect()
    with lakebase.ConnectionPool(min_size=1, open=True) as pool:
        pool.wait()
        texts += [repr(pool), str(pool.stats())]
    try:
        lakebase.connect(database="no_such_db")
    except ConnectionFailed as exc:
        texts += [str(exc), repr(exc), str(exc.__cause__)]
    emulator.credential_outage(120, status=503)
    cache = fresh_cache(emulator, client=m2m_client(emulator), api_timeout=1)
    try:
        cache.token()
    except CredentialsUnavailable as exc:
        texts += [str(exc), repr(exc)]
    end_outage(emulator)
    connector = get_connector()
    texts += [repr(conn), str(conn.info.dsn), repr(connector), str(connector.stats()),
              repr(connector.credentials), repr(connector.credentials.credential), str(lakebase.stats()),
              conninfo_for_display(connector)]
    conn.close()
    conn2.close()

    assert len(tokens) == 2
    logged = everything_logged.text()
    assert "/api/2.0/postgres/credentials" in logged  # the SDK did log the credential responses...
    assert '"token": "[REDACTED]"' in logged  # ...and their tokens were masked
    assert "password=[REDACTED]" in conninfo_for_display(connector)
    for token in tokens:
        for text in [logged, *texts]:
            assert token[:16] not in text
    for record in everything_logged.records:
        for token in tokens:
            assert token[:16] not in str(record.msg) and token[:16] not in str(record.args)


def test_pool_events_are_logged_without_tokens(emulator: Emulator, user_env: dict[str, str],
                                               everything_logged: Records) -> None:
    emulator.configure(token_ttl_seconds=2)
    with lakebase.ConnectionPool(min_size=1, max_lifetime=0.5, open=True) as pool:
        pool.wait()
        cache = pool.connector.credentials
        tokens = {cache.token()}
        wait_for(lambda: cache.stats()["mints"] >= 3)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            cred = cache.credential
            if cred is not None:
                tokens.add(cred.token)
    logged = everything_logged.text()
    assert len(tokens) >= 2
    for token in tokens:
        assert token[:16] not in logged
