"""lakebase.asyncpg.connect / create_pool against the emulator: zero-argument configuration as a
Databricks App (OAuth M2M) and as the owner (PAT), TLS from sslmode, no SDK call on the event loop,
the 28P01 retry, restarts and scale to zero for connections and pools, token rotation, and how
asyncpg's own exceptions classify in lakebase.retry."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

import lakebase
import lakebase.asyncpg
from lakebase import AuthenticationFailed, ConfigurationError, ConnectionFailed, _sdk
from lakebase._liveness import READABLE, asyncpg_state
from lakebase.connector import get_connector
from lakebase.emulator import Emulator
from lakebase.retry import Kind, classify

from .conftest import owner_connect
from .lakebase_support import isolated_registries, issued, m2m_client, pat_client, wait_for
from .test_psycopg import FAULTS, end_every_session


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    yield from isolated_registries()


def record_api_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every workspace API call lakebase makes (they all go through BoundedApis.call), with the
    thread it ran on."""
    calls: list[tuple[str, int]] = []
    original = _sdk.BoundedApis.call

    def call(self: _sdk.BoundedApis, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((getattr(fn, "__name__", repr(fn)), threading.get_ident()))
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(_sdk.BoundedApis, "call", call)
    return calls


async def whoami(conn: Any) -> str:
    return str(await conn.fetchval("SELECT current_user"))


# ---- connect -------------------------------------------------------------------------------------
async def test_an_app_connects_with_no_arguments(emulator: Emulator, app_env: dict[str, str]) -> None:
    conn = await lakebase.asyncpg.connect()
    try:
        assert await whoami(conn) == emulator.app.name
        assert await conn.fetchval("SELECT current_setting('application_name')") == app_env["PGAPPNAME"]
        assert await conn.fetchval("SELECT count(*) FROM notes") >= 3
        assert conn._transport.get_extra_info("ssl_object") is not None  # sslmode=require: TLS
    finally:
        await conn.close()


async def test_the_owner_connects_and_nothing_blocks_the_loop(emulator: Emulator, user_env: dict[str, str],
                                                             clean_env: pytest.MonkeyPatch) -> None:
    clean_env.delenv("PGHOST")  # looked up with get_endpoint...
    clean_env.delenv("PGUSER")  # ...and /Me: three API calls in all, with the mint
    calls = record_api_calls(clean_env)
    loop_thread = threading.get_ident()
    conn = await lakebase.asyncpg.connect()
    try:
        assert await whoami(conn) == emulator.owner.name
    finally:
        await conn.close()
    names = [name for name, _ in calls]
    assert "generate_database_credential" in names and "get_endpoint" in names and "me" in names
    assert all(thread != loop_thread for _, thread in calls), calls


async def test_explicit_client_and_overrides(emulator: Emulator, clean_env: pytest.MonkeyPatch,
                                             app_role: str) -> None:
    conn = await lakebase.asyncpg.connect(workspace_client=m2m_client(emulator), endpoint=emulator.endpoint_name,
                                          host="localhost", port=emulator.pg_port, application_name="override",
                                          server_settings={"search_path": "public"}, command_timeout=5)
    try:
        assert await whoami(conn) == app_role
        assert await conn.fetchval("SELECT current_setting('application_name')") == "override"
    finally:
        await conn.close()


async def test_verify_full_with_the_emulator_ca(emulator: Emulator, user_env: dict[str, str]) -> None:
    conn = await lakebase.asyncpg.connect(sslmode="verify-full", sslrootcert=str(emulator.ca_file))
    try:
        assert await whoami(conn) == emulator.owner.name
    finally:
        await conn.close()


async def test_a_certificate_that_does_not_verify_is_not_retried(emulator: Emulator, user_env: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSSLROOTCERT")  # user.env names the emulator's CA
    with pytest.raises(ConnectionFailed, match="TLS certificate did not verify") as info:
        await lakebase.asyncpg.connect(sslmode="verify-full")  # the system CAs do not know the emulator's
    assert get_connector(sslmode="verify-full").stats()["connect"]["attempts"] == 1
    assert "sslrootcert" in str(info.value)


async def test_a_password_or_plaintext_is_refused(emulator: Emulator, user_env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="lakebase sets the connection parameters and the password"):
        await lakebase.asyncpg.connect(password="hunter2")
    for bad in (False, "disable", "prefer"):
        with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
            await lakebase.asyncpg.connect(ssl=bad)
    with pytest.raises(ConfigurationError, match="connect= was given"):
        lakebase.asyncpg.create_pool(connect=asyncpg.connect)


async def test_open_connection_is_the_driver_adapters_entry_point(emulator: Emulator,
                                                                  user_env: dict[str, str]) -> None:
    """lakebase.asyncpg.open_connection(connector, ...): what connect, create_pool and the asyncpg engine
    open through; check_arguments refuses what lakebase sets itself (a DSN, a password) or plaintext."""
    connector = get_connector()
    conn = await lakebase.asyncpg.open_connection(connector, server_settings={"application_name": "adapter"})
    try:
        assert await whoami(conn) == emulator.owner.name
        assert await conn.fetchval("SELECT current_setting('application_name')") == "adapter"
    finally:
        await conn.close()
    attempts = connector.stats()["connect"]["attempts"]
    with pytest.raises(ConfigurationError, match="a DSN was given in the connection arguments, but lakebase "
                                                 "sets the connection parameters and the password") as info:
        await lakebase.asyncpg.open_connection(connector, dsn="postgresql://me@elsewhere/db")
    assert (info.value.setting, info.value.value) == ("dsn", "[REDACTED]")
    for bad in ({"ssl": False}, {"ssl": "allow"}, {"sslmode": "disable"}):
        with pytest.raises(ConfigurationError, match="Lakebase requires TLS"):
            await lakebase.asyncpg.open_connection(connector, **bad)
        with pytest.raises(ConfigurationError, match="in connect_args: Lakebase requires TLS"):
            lakebase.asyncpg.check_arguments(bad, "connect_args")
    assert connector.stats()["connect"]["attempts"] == attempts  # no refusal reached the server


async def test_a_refused_token_is_replaced_once(emulator: Emulator, user_env: dict[str, str]) -> None:
    await (await lakebase.asyncpg.connect()).close()
    emulator.expire_tokens()  # the cached token now fails at login with 28P01 (InvalidPasswordError)
    before = issued(emulator)
    conn = await lakebase.asyncpg.connect()
    try:
        assert await whoami(conn) == emulator.owner.name
    finally:
        await conn.close()
    assert issued(emulator) - before == 1
    assert get_connector().stats()["connect"]["auth_retries"] == 1


async def test_a_second_refusal_and_a_missing_role_are_not_retried(emulator: Emulator,
                                                                   clean_env: pytest.MonkeyPatch,
                                                                   app_role: str) -> None:
    with pytest.raises(AuthenticationFailed, match="refused again although freshly minted") as info:
        await lakebase.asyncpg.connect(workspace_client=pat_client(emulator), endpoint=emulator.endpoint_name,
                                       host="localhost", port=emulator.pg_port, user=app_role)
    assert info.value.attempts == 2 and isinstance(info.value.__cause__, asyncpg.InvalidPasswordError)
    sp = emulator.add_service_principal("no-role-" + uuid.uuid4().hex[:6])
    with pytest.raises(AuthenticationFailed, match="databricks_create_role") as info:
        await lakebase.asyncpg.connect(workspace_client=m2m_client(emulator, sp.name, sp.client_secret),
                                       endpoint=emulator.endpoint_name, host="localhost", port=emulator.pg_port)
    assert info.value.attempts == 1


async def test_connects_ride_through_a_restart(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(restart_seconds=0.3)
    conn = await lakebase.asyncpg.connect()
    await asyncio.to_thread(emulator.restart)
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.AdminShutdownError,
                        asyncpg.exceptions.InternalClientError)):
        await conn.fetchval("SELECT 1")  # the session was terminated (57P01)
    conn.terminate()
    conn = await lakebase.asyncpg.connect()  # waits out the restart
    try:
        assert await whoami(conn) == emulator.app.name
    finally:
        await conn.close()


async def test_a_slow_wake_up_is_retried(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(wake_delay_seconds=3)
    wakeups = emulator.stats()["wakeups"]
    await asyncio.to_thread(emulator.suspend)
    conn = await lakebase.asyncpg.connect(connect_timeout=2)  # the first attempt times out
    try:
        assert await whoami(conn) == emulator.app.name
    finally:
        await conn.close()
    assert emulator.stats()["wakeups"] == wakeups + 1
    assert get_connector(connect_timeout=2).stats()["connect"]["retries"] >= 1


# ---- the pool ------------------------------------------------------------------------------------
async def test_a_pool_shares_one_token(emulator: Emulator, app_env: dict[str, str]) -> None:
    before = issued(emulator)
    async with lakebase.asyncpg.create_pool(min_size=2, max_size=5) as pool:
        assert isinstance(pool, asyncpg.Pool)
        users = await asyncio.gather(*(pool.fetchval("SELECT current_user") for _ in range(40)))
        assert set(users) == {emulator.app.name}
        stats = pool.stats()
        assert stats["credentials"]["mints"] == 1 and stats["pool"]["max"] == 5
    assert issued(emulator) - before == 1


async def test_a_pool_rides_through_restart_and_scale_to_zero(emulator: Emulator,
                                                              app_env: dict[str, str]) -> None:
    emulator.configure(restart_seconds=0.3)
    errors: list[BaseException] = []
    async with lakebase.asyncpg.create_pool(min_size=3, max_size=3) as pool:
        for fault in (emulator.restart, emulator.suspend):
            # The pool's sessions were ended, and their ends reached the client (the fault returns once the
            # proxy has closed both sides of each session): the default pre-ping sees what the server
            # sent, it does not ask. (No wait for active_sessions == 0: asyncpg's pool reconnects to keep
            # min_size as soon as it sees a connection close.)
            assert await asyncio.to_thread(fault) >= 1

            async def work() -> None:
                try:
                    async with pool.acquire() as conn:
                        assert await whoami(conn) == emulator.app.name
                except Exception as exc:
                    errors.append(exc)

            await asyncio.gather(*(work() for _ in range(6)))
    assert errors == []


async def test_the_pre_ping_replaces_a_connection_the_client_has_not_seen_die(
        emulator: Emulator, app_env: dict[str, str]) -> None:
    async with lakebase.asyncpg.create_pool(min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:  # a used connection gets pinged
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        assert pool.discarded == 0
        # End its session behind the pool's back, blocking the loop so that asyncpg cannot notice:
        # only the pre-ping can tell.
        with owner_connect(emulator, autocommit=True) as owner:
            owner.execute("SELECT pg_terminate_backend(%s)", (pid,))
            while owner.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                time.sleep(0.01)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") != pid
        assert pool.discarded == 1


async def test_the_pre_ping_honours_the_acquire_timeout(emulator: Emulator, app_env: dict[str, str]) -> None:
    """A connection whose server stopped answering (a network partition, a frozen compute) must not
    hold acquire() past its timeout for the whole connect_timeout."""
    import os
    import signal

    # A silent server sends no goodbye: only the round trip (pre_ping="query") can tell.
    async with lakebase.asyncpg.create_pool(min_size=1, max_size=1, pre_ping="query") as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        os.kill(pid, signal.SIGSTOP)  # the backend is there but answers nothing
        try:
            with pytest.raises(TimeoutError):
                async with pool.acquire(timeout=1):
                    pass
            assert pool.discarded == 1  # the unanswered connection was dropped, not handed out
        finally:
            os.kill(pid, signal.SIGCONT)
        async with pool.acquire(timeout=10) as conn:  # the pool recovers with a new connection
            assert await conn.fetchval("SELECT pg_backend_pid()") != pid


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("pre_ping", [True, False])
async def test_the_default_pre_ping_replaces_sessions_the_server_ended(emulator: Emulator, app_env: dict[str, str],
                                                                       fault: str, pre_ping: bool) -> None:
    """Zero errors with the default pre-ping; without one (pre_ping=False), the dead session is
    handed out: what the pre-ping prevents."""
    async with lakebase.asyncpg.create_pool(min_size=2, max_size=2, pre_ping=pre_ping) as pool:
        conns = [await pool.acquire() for _ in range(2)]
        dead = {await c.fetchval("SELECT pg_backend_pid()") for c in conns}
        for c in conns:
            await pool.release(c)
        # Block the loop meanwhile, as a busy application might: asyncpg has not read the goodbye yet.
        end_every_session(emulator, fault)
        if not pre_ping:
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            return
        for _ in range(4):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") not in dead


async def test_the_default_pre_ping_costs_no_round_trip(emulator: Emulator, app_env: dict[str, str]) -> None:
    """The server's view: a session's ``pg_stat_activity.query`` is the last statement it ran. After
    an acquire with the default pre-ping it is still the pool's reset on release; with
    pre_ping="query" (the control) it is the ping."""
    for pre_ping in (True, "query"):
        async with lakebase.asyncpg.create_pool(min_size=1, max_size=1, pre_ping=pre_ping) as pool:
            async with pool.acquire() as conn:
                pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with pool.acquire() as conn:
                with owner_connect(emulator, autocommit=True) as owner:
                    row = owner.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            assert row is not None and (row[0] == "SELECT 1") is (pre_ping == "query"), row


async def test_a_pending_notification_does_not_cost_the_connection(emulator: Emulator,
                                                                   app_env: dict[str, str]) -> None:
    """asyncpg's pool UNLISTENs on release by default; with a reset that keeps LISTEN, a notification
    can wait on an idle pooled connection: it must not cost the connection."""
    async def keep_listening(conn: Any) -> None:
        pass

    async with lakebase.asyncpg.create_pool(min_size=1, max_size=1, reset=keep_listening) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("LISTEN lakebase_asyncpg_check")
        with owner_connect(emulator, autocommit=True) as other:  # the loop is blocked: asyncpg reads nothing
            other.execute("NOTIFY lakebase_asyncpg_check, 'hello'")
            raw = pool._holders[0]._con
            wait_for(lambda: asyncpg_state(raw) == READABLE)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same connection
        assert pool.discarded == 0


async def test_a_pool_rotates_tokens_with_zero_errors(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(token_ttl_seconds=2)
    errors: list[BaseException] = []
    used: set[str] = set()
    # Connections older than max_lifetime are replaced on acquire: new logins over several token lives.
    async with lakebase.asyncpg.create_pool(min_size=1, max_size=3, max_lifetime=0.3) as pool:
        cache = pool.connector.credentials

        async def work() -> None:
            try:
                async with pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.02)

        for _ in range(3000):  # a hang guard; ends once logins have used three tokens
            await asyncio.gather(*(work() for _ in range(3)))
            if cache.credential is not None:
                used.add(cache.credential.fingerprint)
            if len(used) >= 3 and pool.recycled >= 3:
                break
    assert errors == [] and len(used) >= 3


# ---- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "kind"), [
    (asyncpg.InvalidPasswordError('Failed to decode token for role "x"'), Kind.AUTH),
    (asyncpg.AdminShutdownError("terminating connection due to administrator command"), Kind.TRANSIENT),
    (asyncpg.CannotConnectNowError("the database system is starting up"), Kind.TRANSIENT),
    (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), Kind.TRANSIENT),
    (asyncpg.ConnectionFailureError("connection failure"), Kind.TRANSIENT),
    (asyncpg.TooManyConnectionsError("sorry, too many clients already"), Kind.TRANSIENT),
    (ConnectionRefusedError(111, "Connection refused"), Kind.TRANSIENT),
    (TimeoutError(), Kind.TRANSIENT),
    (asyncpg.InvalidAuthorizationSpecificationError('role "x" does not exist'), Kind.FATAL),
    (asyncpg.InvalidCatalogNameError('database "x" does not exist'), Kind.FATAL),
    (asyncpg.InsufficientPrivilegeError("permission denied for database x"), Kind.FATAL),
])
def test_asyncpg_errors_classify_like_psycopg_errors(exc: BaseException, kind: Kind) -> None:
    assert classify(exc).kind is kind
