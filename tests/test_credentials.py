"""The credential cache against the emulator's real token API: single flight, rotation, refresh
strategies, stale fallback through outages, bounded SDK retries, fork safety."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import psycopg
import pytest
import requests
from databricks.sdk.errors import TemporarilyUnavailable, TooManyRequests

import lakebase
from lakebase import CredentialCache, CredentialsUnavailable, _sdk
from lakebase.credentials import Credential, EndpointTokenSource, Lazy, RefreshAhead, parse_rfc3339
from lakebase.emulator import Emulator

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


def owner_query(emu: Emulator, token: str) -> int:
    with psycopg.connect(host="localhost", port=emu.pg_port, user=emu.owner.name,
                         dbname="databricks_postgres", sslmode="require", password=token,
                         connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        return int(row[0])


# ---- pure parts --------------------------------------------------------------------------------
def child_exit_code(pid: int, hung: str) -> int:
    """The exit code of the forked child ``pid``; killed, and the test failed with ``hung``, after 60 s."""
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(hung)
        time.sleep(0.05)


def test_parse_rfc3339() -> None:
    utc = UTC
    assert parse_rfc3339("2026-11-21T09:11:21.669877Z") == datetime(2026, 11, 21, 9, 11, 21, 669877, utc)
    assert parse_rfc3339("2026-11-21T09:11:21.669877123Z") == datetime(2026, 11, 21, 9, 11, 21, 669877, utc)
    assert parse_rfc3339("2026-11-21T09:11:21Z") == datetime(2026, 11, 21, 9, 11, 21, tzinfo=utc)
    assert parse_rfc3339("2026-11-21T10:11:21.5+01:00") == datetime(2026, 11, 21, 9, 11, 21, 500000, utc)


def test_credential_timing() -> None:
    cred = Credential("t" * 20, datetime.now(UTC), obtained=1000.0, lifetime=3600.0)
    assert cred.margin == 60.0 and cred.usable_until == 1000.0 + 3540.0
    assert cred.refresh_at == 1000.0 + 1800.0  # half-life
    short = Credential("t" * 20, datetime.now(UTC), obtained=0.0, lifetime=10.0)
    assert short.margin == 1.0 and short.refresh_at == 5.0 and short.usable_until == 9.0


# ---- single flight -----------------------------------------------------------------------------
def test_fifty_threads_on_a_cold_cache_cause_one_api_call(emulator: Emulator) -> None:
    cache = fresh_cache(emulator)
    before = issued(emulator)
    barrier = threading.Barrier(50)

    def get() -> str:
        barrier.wait()
        return cache.token()

    with ThreadPoolExecutor(50) as pool:
        tokens = list(pool.map(lambda _: get(), range(50)))
    assert issued(emulator) - before == 1
    assert len(set(tokens)) == 1
    assert cache.stats()["mints"] == 1
    cache.close()


def test_fifty_tasks_on_a_cold_cache_cause_one_api_call_off_the_event_loop(emulator: Emulator) -> None:
    minted_on: list[int] = []

    class Recording(EndpointTokenSource):
        def mint(self) -> Credential:
            minted_on.append(threading.get_ident())
            return super().mint()

    cache = CredentialCache(Recording(_sdk.BoundedApis(pat_client(emulator), 5), emulator.endpoint_name))
    before = issued(emulator)

    async def main() -> tuple[list[str], int]:
        tokens = await asyncio.gather(*(cache.atoken() for _ in range(50)))
        return list(tokens), threading.get_ident()

    tokens, loop_thread = asyncio.run(main())
    assert issued(emulator) - before == 1 and len(set(tokens)) == 1
    assert len(minted_on) == 1 and minted_on[0] != loop_thread  # the SDK never ran on the event loop
    cache.close()


def test_threads_and_tasks_together_share_one_mint(emulator: Emulator) -> None:
    cache = fresh_cache(emulator)
    before = issued(emulator)
    start = threading.Event()

    def in_thread() -> str:
        start.wait()
        return cache.token()

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(None, in_thread) for _ in range(20)]
        start.set()
        return list(await asyncio.gather(*futures, *(cache.atoken() for _ in range(20))))

    tokens = asyncio.run(main())
    assert issued(emulator) - before == 1 and len(set(tokens)) == 1
    cache.close()


def test_one_token_serves_every_connection(emulator: Emulator) -> None:
    cache = fresh_cache(emulator)
    before = issued(emulator)
    for _ in range(5):
        assert owner_query(emulator, cache.token()) == 1
    assert issued(emulator) - before == 1
    cache.close()


def test_a_cancelled_awaiter_does_not_cancel_the_shared_mint(emulator: Emulator) -> None:
    emulator.configure(latency_ms=300)
    cache = fresh_cache(emulator)

    async def main() -> str:
        first = asyncio.ensure_future(cache.atoken())
        second = asyncio.ensure_future(cache.atoken())
        await asyncio.sleep(0.05)
        first.cancel()
        return await second

    token = asyncio.run(main())
    assert token and cache.stats()["mints"] == 1
    cache.close()


# ---- refresh strategies and rotation -------------------------------------------------------------
def test_refresh_ahead_refreshes_in_the_background(emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=2)
    cache = fresh_cache(emulator, strategy="ahead")
    first = cache.token()
    # Nobody asks for a token: the background thread replaces it at about half its life.
    wait_for(lambda: cache.stats()["mints"] >= 2)
    assert cache.token() != first
    assert cache.stats()["background_refreshes"] >= 1
    assert any(t.name == "lakebase-credential-refresh" for t in threading.enumerate())
    cache.close()


def test_lazy_has_no_thread_and_refreshes_when_asked(emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=2)
    cache = fresh_cache(emulator, strategy="lazy")
    assert isinstance(cache.strategy, Lazy)
    first = cache.token()
    cred = cache.credential
    assert cred is not None
    wait_for(lambda: time.monotonic() > cred.refresh_at)
    assert cache.stats()["mints"] == 1  # nothing happened by itself
    second = cache.token()  # past the half-life: this caller refreshes inline
    assert second != first and cache.stats()["mints"] == 2
    assert cache.stats()["strategy"] == "lazy"


@pytest.mark.parametrize("strategy", ["ahead", "lazy"])
def test_rotation_over_many_lifetimes_with_threads_and_tasks(emulator: Emulator, strategy: str) -> None:
    """Tokens of 2 s, connections for ~3 lifetimes from 4 threads and 4 tasks: zero errors."""
    emulator.configure(token_ttl_seconds=2)
    cache = fresh_cache(emulator, strategy=strategy)
    before = issued(emulator)
    errors: list[BaseException] = []
    stop = time.monotonic() + 5
    connects = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal connects
        while time.monotonic() < stop:
            try:
                assert owner_query(emulator, cache.token()) == 1
                with lock:
                    connects += 1
            except BaseException as exc:
                errors.append(exc)
            time.sleep(0.05)

    async def task() -> None:
        nonlocal connects
        while time.monotonic() < stop:
            try:
                token = await cache.atoken()
                conn = await psycopg.AsyncConnection.connect(
                    host="localhost", port=emulator.pg_port, user=emulator.owner.name,
                    dbname="databricks_postgres", sslmode="require", password=token, connect_timeout=10)
                async with conn:
                    await conn.execute("SELECT 1")
                connects += 1
            except BaseException as exc:
                errors.append(exc)
            await asyncio.sleep(0.05)

    async def tasks() -> None:
        await asyncio.gather(*(task() for _ in range(4)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    cache.close()
    assert errors == []
    assert connects > 20
    assert issued(emulator) - before >= 3  # it did rotate across lifetimes


# ---- stale fallback, outages, recovery -------------------------------------------------------------
def test_an_outage_shorter_than_the_token_life_causes_no_error(emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=10)
    cache = fresh_cache(emulator, strategy="ahead", api_timeout=1)
    first = cache.token()
    emulator.credential_outage(6, status=503)
    errors: list[BaseException] = []
    # Keep connecting while the background refresh (due at ~5 s) fails, until a new token arrives.
    deadline = time.monotonic() + 30
    while cache.stats()["mints"] < 2 and time.monotonic() < deadline:
        try:
            assert owner_query(emulator, cache.token()) == 1
        except BaseException as exc:
            errors.append(exc)
        time.sleep(0.1)
    stats = cache.stats()
    cache.close()
    assert errors == []
    assert stats["mints"] == 2 and stats["failures"] >= 1  # it failed, fell back, then recovered by itself
    assert stats["stale_served"] >= 1
    assert cache.token() != first


def test_an_outage_longer_than_the_token_life_then_recovery(emulator: Emulator,
                                                            clean_env: pytest.MonkeyPatch) -> None:
    emulator.configure(token_ttl_seconds=3)
    cache = fresh_cache(emulator, strategy="ahead", api_timeout=1)
    cache.token()
    emulator.credential_outage(120, status=503)

    def unavailable() -> CredentialsUnavailable | None:
        try:
            cache.token(timeout=5)
        except CredentialsUnavailable as exc:
            return exc
        return None

    exc = wait_for(unavailable)
    assert exc.transient
    assert isinstance(exc.cause, TemporarilyUnavailable) and exc.__cause__ is exc.cause
    text = str(exc)
    assert "TemporarilyUnavailable (HTTP 503)" in text and "the cached token expired" in text
    assert "retrying by itself" in text
    # Through the psycopg layer, within a short connect deadline: the same clear error.
    with pytest.raises(CredentialsUnavailable):
        lakebase.connect(host="localhost", port=emulator.pg_port, user=emulator.owner.name,
                         endpoint=emulator.endpoint_name, credentials=cache, connect_deadline=1)
    end_outage(emulator)
    # Nobody calls: the background thread recovers by itself.
    wait_for(lambda: cache.credential is not None and cache.credential.expires_in() > 1)
    assert owner_query(emulator, cache.token()) == 1
    assert cache.stats()["consecutive_failures"] == 0
    cache.close()


def test_lazy_also_falls_back_and_recovers(emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=8)
    cache = fresh_cache(emulator, strategy="lazy", api_timeout=1)
    first = cache.token()
    cred = cache.credential
    assert cred is not None
    emulator.credential_outage(120, status=503)
    wait_for(lambda: time.monotonic() > cred.refresh_at)
    assert cache.token() == first  # the refresh failed: the still-valid token is used
    assert cache.stats()["failures"] == 1 and cache.stats()["stale_served"] >= 1
    end_outage(emulator)

    def recovered() -> bool:
        try:
            return cache.token() != first
        except CredentialsUnavailable:  # expired meanwhile and backing off: the next attempt will do
            return False

    wait_for(recovered)


def test_throttling_honours_retry_after(emulator: Emulator) -> None:
    cache = fresh_cache(emulator, strategy="lazy", api_timeout=1)
    emulator.credential_outage(30, status=429)
    with pytest.raises(CredentialsUnavailable) as info:
        cache.token()
    assert isinstance(info.value.cause, TooManyRequests) and info.value.transient
    # The next attempt waits for Retry-After (whole seconds left of the outage): no new API call now.
    before = emulator.stats()["credential_requests_rejected"]
    with pytest.raises(CredentialsUnavailable, match="next attempt in"):
        cache.token()
    assert emulator.stats()["credential_requests_rejected"] == before
    assert cache._next_attempt - time.monotonic() > 5  # scheduled after the server's Retry-After


def test_sdk_retries_are_bounded_and_the_callers_config_is_untouched(emulator: Emulator) -> None:
    w = pat_client(emulator)
    retry_timeout = w.config.retry_timeout_seconds
    apis = _sdk.BoundedApis(w, 1)
    emulator.credential_outage(60, status=429)  # Retry-After: 60
    with pytest.raises(Exception) as info:
        apis.call(apis.postgres.generate_database_credential, endpoint=emulator.endpoint_name)
    assert isinstance(_sdk.root_cause(info.value), TooManyRequests)
    assert _sdk.is_transient(info.value) and _sdk.retry_after(info.value) is not None
    # It gave up long before the outage (and the SDK's default 300 s) was over.
    assert emulator.stats()["credential_outage_seconds_left"] > 30
    assert w.config.retry_timeout_seconds == retry_timeout


def test_permanent_api_errors_are_not_transient(emulator: Emulator) -> None:
    apis = _sdk.BoundedApis(pat_client(emulator), 5)
    cache = CredentialCache(EndpointTokenSource(apis, "projects/emulator/branches/production/endpoints/nope"),
                            Lazy())
    with pytest.raises(CredentialsUnavailable) as info:
        cache.token()
    assert not info.value.transient
    assert "NotFound (HTTP 404)" in str(info.value) and "Hint: check the endpoint" in str(info.value)


def test_invalidate_drops_only_the_refused_token(emulator: Emulator) -> None:
    cache = fresh_cache(emulator, strategy="lazy")
    first = cache.token()
    cache.invalidate("some-other-token")
    assert cache.token() == first
    emulator.expire_tokens()
    before = issued(emulator)
    cache.invalidate(first)
    cache.invalidate(first)  # many refused connections, one new mint
    second = cache.token()
    assert second != first and issued(emulator) - before == 1
    assert owner_query(emulator, second) == 1


# ---- fork ----------------------------------------------------------------------------------------
def test_a_forked_child_uses_its_own_lock_thread_and_sessions(emulator: Emulator) -> None:
    cache = fresh_cache(emulator, strategy="ahead")
    parent_token = cache.token()
    parent_session = cache.source.apis._client()  # type: ignore[attr-defined]
    cache._lock.acquire()  # held by the parent at fork time: a child using it would hang
    try:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 1
            try:
                assert cache.token() == parent_token  # a plain value, still valid
                assert cache.refresh().token != parent_token  # its own HTTP session
                assert cache.source.apis._client() is not parent_session  # type: ignore[attr-defined]
                assert owner_query(emulator, cache.token()) == 1
                code = 0
            finally:
                os._exit(code)
    finally:
        cache._lock.release()
    assert child_exit_code(pid, "the forked child hung (did it use the parent's lock?)") == 0
    assert cache.token() == parent_token  # the parent is unaffected
    cache.close()


def test_repr_and_stats_never_show_the_token(emulator: Emulator) -> None:
    cache = fresh_cache(emulator, strategy="lazy")
    token = cache.token()
    for text in (repr(cache), str(cache), repr(cache.credential), str(cache.stats())):
        assert token not in text and token[:16] not in text
    assert isinstance(cache.strategy, Lazy) and not isinstance(cache.strategy, RefreshAhead)


# ---- a workspace API that hangs ------------------------------------------------------------------
@pytest.fixture
def api_hang(emulator: Emulator) -> Iterator[Callable[[float], None]]:
    """``api_hang(N)`` starts the emulator's api-hang fault; it always ends with the test."""
    yield emulator.api_hang
    emulator.api_hang(0)


def hanging(emu: Emulator) -> int:
    return int(emu.stats()["api_requests_hanging"])


def guarded(fn: Callable[[], object], what: str) -> object:
    """``fn()`` in a daemon thread: its result (or exception, returned); fails the test if it hangs
    (the thread is then left to the api_hang fixture, which ends the hang)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    threading.Thread(target=run, daemon=True).start()
    wait_for(lambda: outcome, what=what)
    return outcome[0]


def test_the_api_hang_fault_holds_the_api_and_the_token_endpoint_until_it_ends(
        emulator: Emulator, api_hang: Callable[[float], None]) -> None:
    app = emulator.app
    api_hang(600)
    with ThreadPoolExecutor(2) as pool:
        oauth = pool.submit(requests.post, emulator.api_url + "/oidc/v1/token",
                            data={"grant_type": "client_credentials"}, auth=(app.name, app.client_secret or ""),
                            timeout=60)
        api = pool.submit(pat_client(emulator).postgres.generate_database_credential,
                          endpoint=emulator.endpoint_name)
        wait_for(lambda: hanging(emulator) == 2)  # both held; the admin API still answers
        assert not oauth.done() and not api.done()
        api_hang(0)
        assert oauth.result(60).status_code == 200 and api.result(60).token
    assert hanging(emulator) == 0


@pytest.mark.parametrize("env", ["app_env", "user_env"])
def test_a_connect_deadline_holds_while_the_workspace_api_hangs(
        emulator: Emulator, env: str, request: pytest.FixtureRequest, api_hang: Callable[[float], None]) -> None:
    """The issue's case: lakebase.connect(connect_deadline=..., api_timeout=...) with a token endpoint
    that never answers (OAuth M2M, the app), or a credential API that never answers (PAT, the user)."""
    request.getfixturevalue(env)
    if env == "app_env":
        request.getfixturevalue("app_role")
    api_hang(600)
    outcome = guarded(lambda: lakebase.connect(connect_deadline=2, api_timeout=1),
                      what="lakebase.connect to give up at its connect deadline")
    assert isinstance(outcome, CredentialsUnavailable), outcome
    assert outcome.transient
    if env == "app_env":  # the SDK's token request has no timeout of its own: the cache abandoned it
        assert "did not answer within 1.5s (api_timeout 1s)" in str(outcome)
        assert "LAKEBASE_API_TIMEOUT" in str(outcome)
    api_hang(0)

    def connected() -> bool:
        with lakebase.connect(connect_deadline=30, api_timeout=1) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    assert wait_for(connected)  # the shared cache recovered


def test_threads_and_tasks_give_up_on_a_hanging_token_endpoint_with_bounded_workers(
        emulator: Emulator, api_hang: Callable[[float], None]) -> None:
    records = Records()
    logging.getLogger().addHandler(records)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        cache = fresh_cache(emulator, client=m2m_client(emulator), strategy="lazy", api_timeout=1)
        api_hang(600)

        def in_thread() -> BaseException | str:
            try:
                return cache.token()
            except CredentialsUnavailable as exc:
                return exc

        async def in_task() -> BaseException | str:
            try:
                return await cache.atoken()
            except CredentialsUnavailable as exc:
                return exc

        async def both() -> list[BaseException | str]:
            loop = asyncio.get_running_loop()
            threads = [loop.run_in_executor(None, in_thread) for _ in range(10)]
            return list(await asyncio.gather(*threads, *(in_task() for _ in range(10))))

        results = guarded(lambda: asyncio.run(both()), what="the callers to give up")
        assert isinstance(results, list) and len(results) == 20
        assert all(isinstance(r, CredentialsUnavailable) and "did not answer" in str(r) for r in results), results
        # More attempts while it hangs: abandoned requests do not pile up (one more at most).
        for _ in range(4):
            error = guarded(cache.refresh, what="refresh to give up")
            assert isinstance(error, TimeoutError), error
            assert cache.stats()["mint_workers"] <= 2
        assert "no new request is sent until one does" in str(error)
        assert cache.stats()["abandoned"] == 2 and cache.stats()["mint_workers"] == 2
        api_hang(0)
        # The held requests are answered: the stuck workers finish, a late token is used, and the
        # cache serves tokens again.
        wait_for(lambda: cache.stats()["mint_workers"] == 0)
        token = wait_for(lambda: guarded(lambda: cache.token(), what="token") if cache.credential else None)
        assert cache.stats().get("late_mints", 0) >= 1
        assert owner_query_as(emulator, emulator.app.name, token) == 1
        assert token not in records.text() and token[:16] not in records.text()
    finally:
        logging.getLogger().removeHandler(records)
        logging.getLogger().setLevel(old_level)


def owner_query_as(emu: Emulator, user: str, token: str) -> int:
    with psycopg.connect(host="localhost", port=emu.pg_port, user=user, dbname="databricks_postgres",
                         sslmode="require", password=token, connect_timeout=10) as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        return int(row[0])


def test_the_refresh_thread_is_not_stuck_by_a_hanging_token_endpoint(
        emulator: Emulator, app_role: str, api_hang: Callable[[float], None]) -> None:
    # OAuth tokens of 30 s count as expired for the SDK: each refresh asks the token endpoint again.
    emulator.configure(token_ttl_seconds=4, oauth_token_ttl_seconds=30)
    cache = fresh_cache(emulator, client=m2m_client(emulator), strategy="ahead", api_timeout=1)
    first = cache.token()
    api_hang(600)
    # The background refresh (due at ~2 s) hangs in the SDK; it is abandoned and retried, so the
    # thread keeps working (a stuck thread would never record a second failure).
    wait_for(lambda: cache.stats().get("failures", 0) >= 3)
    stats = cache.stats()
    assert stats.get("abandoned", 0) >= 1 and stats["mint_workers"] <= 2
    api_hang(0)
    # Nobody calls: the refresh thread recovers by itself.
    wait_for(lambda: cache.stats()["consecutive_failures"] == 0 and cache.credential is not None
             and cache.credential.token != first and cache.credential.expires_in() > 1)
    assert owner_query_as(emulator, app_role, cache.token()) == 1


# ---- a clock that is off ---------------------------------------------------------------------------
def test_an_expire_time_in_the_past_is_refreshed_on_a_floor_with_one_warning(emulator: Emulator) -> None:
    emulator.configure(expire_time_skew_seconds=-3600)  # what a machine whose clock is an hour fast sees
    records = Records()
    logger = logging.getLogger("lakebase.credentials")
    logger.addHandler(records)
    try:
        cache = fresh_cache(emulator, strategy="ahead")
        token = cache.token()
        cred = cache.credential
        assert cred is not None
        # Not every half second: after a minute (the token works: the server's clock is right).
        assert cred.refresh_at - cred.obtained == pytest.approx(60.0)
        assert not cred.expiry_known and cache.stats()["expiry_known"] is False
        assert cache._background_delay() is not None and cache._background_delay() > 50  # type: ignore[operator]
        assert owner_query(emulator, token) == 1
        # Each further implausible answer backs off; the warning is given once.
        for interval in (120.0, 240.0):
            cache.invalidate(cache.token())
            cache.token()
            cred = cache.credential
            assert cred is not None and cred.refresh_at - cred.obtained == pytest.approx(interval)
        warnings = [r for r in records.records if r.levelno == logging.WARNING and "clock" in r.getMessage()]
        assert len(warnings) == 1 and "is the system clock right?" in warnings[0].getMessage()
        # Back to a right clock: the server's expiry is used again.
        emulator.configure(expire_time_skew_seconds=0)
        cache.invalidate(cache.token())
        cache.token()
        cred = cache.credential
        assert cred is not None and cred.expiry_known and cred.lifetime > 3000
    finally:
        logger.removeHandler(records)


# ---- fork while the SDK refreshes its OAuth token ----------------------------------------------------
def test_a_child_forked_while_the_sdk_holds_its_oauth_lock_gets_its_own_client(
        emulator: Emulator, app_role: str, api_hang: Callable[[float], None]) -> None:
    cache = fresh_cache(emulator, client=m2m_client(emulator), strategy="lazy", api_timeout=2)
    api_hang(600)
    # A parent thread asks for a token: the SDK requests an OAuth token holding its token source's lock.
    def ask() -> None:
        with contextlib.suppress(Exception):
            cache.token()

    threading.Thread(target=ask, daemon=True).start()
    wait_for(lambda: hanging(emulator) >= 1)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            while emulator.stats()["api_hang_seconds_left"] > 0:  # the parent ends it at once
                time.sleep(0.05)
            # The parent's lock, copied locked, is never released here: the child must not use it.
            token = cache.token()
            assert cache.stats().get("abandoned", 0) == 0  # at once, not after abandoning a stuck mint
            assert owner_query_as(emulator, app_role, token) == 1
            code = 0
        finally:
            os._exit(code)
    api_hang(0)  # the endpoint answers again (the parent's stuck request too)
    assert child_exit_code(pid, "the forked child hung (did it wait for the SDK lock its parent held?)") == 0
    assert owner_query_as(emulator, app_role, cache.token()) == 1  # the parent recovered too
