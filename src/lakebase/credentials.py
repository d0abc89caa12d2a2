"""Database credentials: minted through the workspace API, cached, refreshed, shared.

One :class:`CredentialCache` per workspace identity holds one token that serves every connection
until the server's ``expire_time`` minus a safety margin. Its behaviour, in one place:

* **Refresh strategies**, as separate classes. :class:`RefreshAhead` (the default) refreshes in a
  background thread at half the token's life, so no connection waits on HTTP. :class:`Lazy` has no
  thread: the first connection past the half-life waits for the refresh (serverless, short scripts).
* **Single flight**: however many threads and asyncio tasks ask at once on a cold or expiring
  cache, one API call is made; the others wait for it. The mint runs in a worker thread and every
  caller (thread, task, refresh thread) waits on its shared future, so async callers never run the
  (blocking) SDK on the event loop.
* **Bounded mints**: whatever the SDK does (its OAuth token request has no timeout at all), nobody
  waits for a mint longer than ``api_timeout`` (plus :data:`MINT_GRACE`, so that the SDK's own bounded
  retries can report the API's error first). A mint that overruns is abandoned: it fails as a
  ``TimeoutError``, the next attempt starts after the usual backoff on a fresh SDK authentication
  (the abandoned request may still hold the SDK's token lock), and at most :data:`MAX_MINT_WORKERS`
  worker threads per cache exist however long the API hangs. An abandoned request that answers late
  is still used if its token is the freshest (registered for redaction first, logged by fingerprint).
* **Implausible expiries** (already past, or days away, by this machine's clock: a clock that is
  off) are treated as unknown: the token is refreshed after a minute, backing off to 30 minutes, with
  one warning, instead of being re-minted as fast as the API answers.
* **Stale fallback**: when a refresh fails, the cached token keeps being used until it really
  expires, while refreshes are retried with jittered exponential backoff (honouring
  ``Retry-After``). With nothing valid left, :class:`~lakebase.errors.CredentialsUnavailable`
  carries the root cause; the cache recovers by itself once the API answers again.
* **Fork safety**: a forked child gets a new lock, no in-flight mint, no thread, new HTTP
  sessions and its own SDK authentication (the parent's OAuth token source may have been holding its
  lock at the fork) through ``os.register_at_fork`` plus pid checks. The token, a plain value, is kept.
* **No leaks**: tokens are registered with :mod:`lakebase._redact` before anyone sees them and never
  appear in a repr, str, log record or error message.

Token sources (:class:`EndpointTokenSource`, :class:`InstanceTokenSource`) do the actual API call,
bounded by :class:`lakebase._sdk.BoundedApis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from . import _redact, _sdk
from ._telemetry import Counters, event
from .errors import CredentialsUnavailable

log = logging.getLogger("lakebase.credentials")

#: Stop using a token this long before it expires (capped at a tenth of its lifetime): the login
#: must reach the server before expiry, and clocks drift.
SAFETY_MARGIN = 60.0
#: Refresh once this fraction of the token's lifetime has passed (RefreshAhead; Lazy on demand).
REFRESH_FRACTION = 0.5
#: Backoff between failed refreshes: from 1 s doubling up to 30 s (or a tenth of the lifetime).
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 300.0
#: A mint is abandoned this long after ``api_timeout`` if the SDK has not returned by then (its own
#: bounded retries normally end it first, with the API's error).
MINT_GRACE = 0.5
#: Mints without a source timeout (a custom token source) are abandoned after this long.
DEFAULT_MINT_TIMEOUT = 10.0
#: Worker threads per cache that may run a mint at once: the current one and one abandoned request
#: the SDK has not returned from (a new attempt, on a fresh SDK authentication, can succeed where a
#: dead connection keeps the old one stuck). While this many hang, no new request is sent.
MAX_MINT_WORKERS = 2
#: A token whose expiry is outside this range (seconds from now, by this machine's clock) has an
#: implausible expiry: the clock is off. It is treated as unknown.
PLAUSIBLE_LIFETIME = (1.0, 86400.0)
#: With an unknown expiry, refresh after this long, doubling with each consecutive implausible
#: answer up to the maximum (the server refuses an expired token anyway: the cache then re-mints).
UNKNOWN_EXPIRY_REFRESH = 60.0
UNKNOWN_EXPIRY_REFRESH_MAX = 1800.0


@dataclass(frozen=True, repr=False)
class Credential:
    """A database token and when it expires. Its repr and str never show the token."""

    token: str
    expire_time: datetime  # the server's, UTC
    obtained: float = field(default_factory=time.monotonic)  # monotonic clock when received
    lifetime: float = 3600.0  # seconds from ``obtained`` to expiry, by the local clock
    #: False when ``expire_time`` was implausible by the local clock (see :data:`PLAUSIBLE_LIFETIME`):
    #: ``lifetime`` is then an assumption (a refresh interval), not the server's word.
    expiry_known: bool = True

    @classmethod
    def from_expiry(cls, token: str, expire_time: datetime) -> Credential:
        now_wall, now_mono = time.time(), time.monotonic()
        lifetime = expire_time.timestamp() - now_wall
        low, high = PLAUSIBLE_LIFETIME
        if not low <= lifetime <= high:
            return cls(token, expire_time, now_mono, 2 * UNKNOWN_EXPIRY_REFRESH, expiry_known=False)
        return cls(token, expire_time, now_mono, lifetime)

    @property
    def margin(self) -> float:
        return min(SAFETY_MARGIN, self.lifetime * 0.1)

    @property
    def expires_at(self) -> float:
        """Monotonic time of expiry."""
        return self.obtained + self.lifetime

    @property
    def usable_until(self) -> float:
        """Monotonic time after which the token is not handed out any more."""
        return self.expires_at - self.margin

    @property
    def refresh_at(self) -> float:
        """Monotonic time from which a new token is wanted."""
        return min(self.obtained + self.lifetime * REFRESH_FRACTION, self.usable_until)

    def expires_in(self) -> float:
        return self.expires_at - time.monotonic()

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible id of the token (safe to log): ``sha256:1a2b3c4d``."""
        return "sha256:" + hashlib.sha256(self.token.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return (f"Credential(token=<{self.fingerprint}>, expire_time={self.expire_time.isoformat()}, "
                f"expires_in={self.expires_in():.1f}s)")

    __str__ = __repr__


def parse_rfc3339(text: str) -> datetime:
    """``2026-11-21T09:11:21.669877123Z`` (any fraction digits, Z or offset) as an aware datetime."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    if "." in value:
        head, rest = value.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = head + "." + rest[:digits][:6].ljust(6, "0") + rest[digits:]
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ---- token sources -----------------------------------------------------------------------------
class TokenSource(Protocol):
    """Mints a credential with one (bounded) API call; ``describe`` names it in messages."""

    describe: str

    def mint(self) -> Credential: ...


class _ApiTokenSource:
    """A token source that mints through the workspace API, bounded by its ``timeout``."""

    def __init__(self, apis: _sdk.BoundedApis, describe: str) -> None:
        self.apis = apis
        self.describe = describe

    @property
    def timeout(self) -> float:
        return self.apis.timeout

    def abandoned(self) -> None:
        """A mint overran its time: the next one uses a fresh SDK authentication."""
        self.apis.reset_auth()


class EndpointTokenSource(_ApiTokenSource):
    """Lakebase Autoscaling: ``w.postgres.generate_database_credential(endpoint=...)``.

    The token is workspace-scoped, so one source serves every endpoint its identity uses (``add``). It
    mints with the endpoint added last; when the API refuses that one (404: a deleted branch or endpoint;
    403: a project the identity may not use) it forgets it and mints with the one before, so connections
    to the endpoints that remain keep working. It remembers the last ``MAX_ENDPOINTS``.
    """

    MAX_ENDPOINTS = 8

    def __init__(self, apis: _sdk.BoundedApis, endpoint: str) -> None:
        super().__init__(apis, f"endpoint {endpoint}")
        self._endpoints = [endpoint]  # the most recently added last
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        with self._lock:
            return self._endpoints[-1]

    def add(self, endpoint: str) -> None:
        """An endpoint this source's tokens now also serve: the next mints use it."""
        with self._lock:
            if self._endpoints[-1] != endpoint:
                if endpoint in self._endpoints:
                    self._endpoints.remove(endpoint)
                self._endpoints.append(endpoint)
                del self._endpoints[:-self.MAX_ENDPOINTS]
            self.describe = f"endpoint {endpoint}"

    def _forget(self, endpoint: str) -> bool:
        """Drop a vanished endpoint; False when it is the only one left (kept, so errors name it)."""
        with self._lock:
            if len(self._endpoints) == 1 or endpoint not in self._endpoints:
                return False
            self._endpoints.remove(endpoint)
            self.describe = f"endpoint {self._endpoints[-1]}"
            return True

    def mint(self) -> Credential:
        api = self.apis.postgres
        while True:
            endpoint = self.endpoint
            try:
                response = self.apis.call(api.generate_database_credential, endpoint=endpoint)
            except Exception as exc:
                if _sdk.http_status(_sdk.root_cause(exc)) in (403, 404) and self._forget(endpoint):
                    continue
                raise
            break
        if not response.token or response.expire_time is None:
            raise ValueError("the credential response has no token or no expire_time")
        return Credential.from_expiry(response.token, response.expire_time.ToDatetime(tzinfo=UTC))


class InstanceTokenSource(_ApiTokenSource):
    """Lakebase Provisioned: ``w.database.generate_database_credential(instance_names=[...])``."""

    def __init__(self, apis: _sdk.BoundedApis, instance_name: str) -> None:
        super().__init__(apis, f"instance {instance_name}")
        self.instance_name = instance_name

    def mint(self) -> Credential:
        api = self.apis.database
        response = self.apis.call(api.generate_database_credential, instance_names=[self.instance_name],
                                  request_id=str(uuid.uuid4()))
        if not response.token or not response.expiration_time:
            raise ValueError("the credential response has no token or no expiration_time")
        return Credential.from_expiry(response.token, parse_rfc3339(response.expiration_time))


# ---- refresh strategies ------------------------------------------------------------------------
class Lazy:
    """Refresh on demand: no thread. The first caller past the half-life mints (others keep using
    the still-valid token or wait for that one mint)."""

    name = "lazy"
    inline_refresh = True

    def schedule(self, cache: CredentialCache) -> None:
        pass

    def after_fork(self) -> None:
        pass

    def close(self) -> None:
        pass


class RefreshAhead:
    """Refresh in a background (daemon) thread at half the token's life, and keep retrying with
    backoff after a failure, so connections never wait on the API while a token is valid."""

    name = "ahead"
    inline_refresh = False

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    def schedule(self, cache: CredentialCache) -> None:
        """(Re)consider the next refresh time; start the thread if needed."""
        if self._closed:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, args=(weakref.ref(cache),),
                                                name="lakebase-credential-refresh", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self, cache_ref: weakref.ref[CredentialCache]) -> None:
        while not self._closed:
            cache = cache_ref()
            if cache is None:
                return
            delay = cache._background_delay()
            del cache
            self._wake.wait(delay)
            self._wake.clear()
            if self._closed:
                return
            cache = cache_ref()
            if cache is None:
                return
            if cache._background_delay() == 0.0:
                cache._background_refresh()
            del cache

    def after_fork(self) -> None:
        self._thread = None  # threads do not survive fork
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


def make_strategy(name: str) -> Lazy | RefreshAhead:
    return Lazy() if name == "lazy" else RefreshAhead()


# ---- the cache ---------------------------------------------------------------------------------
_caches: weakref.WeakSet[CredentialCache] = weakref.WeakSet()


class _Mint(Future[Credential]):
    """One mint: the future its waiters share, and when it is abandoned if still running.

    ``claimed`` is set, under the cache's lock, by whoever resolves the future: the worker with its
    outcome, or an abandonment with a ``TimeoutError``; only one of them does.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.set_running_or_notify_cancel()  # an awaiter's cancellation must not cancel the shared mint
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.claimed = False

    def overdue(self) -> bool:
        return not self.claimed and time.monotonic() >= self.deadline


@dataclass(frozen=True)
class _Failure:
    """What a failed mint did to the cache, for the log line written after the lock is released."""

    exc: BaseException
    failures: int
    delay: float
    cred: Credential | None
    valid: bool


class CredentialCache:
    """One identity's database token, shared by every connection (see the module doc).

    ``token()`` / ``await atoken()`` return a valid token (minting one if needed) or raise
    :class:`~lakebase.errors.CredentialsUnavailable`; ``invalidate(token)`` drops a token the
    server refused; ``stats()`` returns counters; ``close()`` stops the refresh thread.
    """

    def __init__(self, source: TokenSource, strategy: Lazy | RefreshAhead | str = "ahead",
                 identity: str = "") -> None:
        _redact.install()
        self.source = source
        self.strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
        self.identity = identity
        #: Seconds a mint may take before it is abandoned: the source's ``api_timeout`` plus a grace.
        self.mint_timeout = float(getattr(source, "timeout", DEFAULT_MINT_TIMEOUT)) + MINT_GRACE
        self._lock = threading.Lock()
        self._credential: Credential | None = None
        self._inflight: _Mint | None = None
        self._workers: dict[int, float] = {}  # id(mint) -> monotonic start, per running worker thread
        self._failures = 0
        self._last_error: BaseException | None = None
        self._next_attempt = 0.0
        self._falling_back = False
        self._implausible = 0  # consecutive tokens with an implausible expire_time
        self._clock_warned = False
        self._pid = os.getpid()
        self.counters = Counters("credential", source=source.describe)
        _caches.add(self)

    def __repr__(self) -> str:
        cred = self._credential
        state = f"expires_in={cred.expires_in():.0f}s" if cred else "empty"
        return (f"<CredentialCache {self.identity or '?'} {self.source.describe} "
                f"refresh={self.strategy.name} {state} failures={self._failures}>")

    # ---- public ----------------------------------------------------------------------------------
    def token(self, timeout: float | None = None) -> str:
        """A valid token; mints (once, for all concurrent callers) when needed. Waits at most
        ``timeout`` seconds, and never longer than the mint may take (``mint_timeout``)."""
        fast = self._fast_token()
        if fast is not None:
            return fast
        decision = self._decide()
        if isinstance(decision, str):
            return decision
        try:
            return decision.result(self._wait_time(decision, timeout)).token
        except Exception:
            return self._settle(decision, timeout)

    async def atoken(self, timeout: float | None = None) -> str:
        """The async twin of :meth:`token`: the API call runs in a worker thread, never on the loop."""
        fast = self._fast_token()
        if fast is not None:
            return fast
        decision = self._decide()
        if isinstance(decision, str):
            return decision
        try:
            credential = await asyncio.wait_for(asyncio.wrap_future(decision),
                                                self._wait_time(decision, timeout))
        except Exception:
            return self._settle(decision, timeout)
        return credential.token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the server refused it) so the next caller mints a fresh one.

        A no-op if the cache has moved on to another token already, so that many connections
        refused at once cause one new mint, not one each.
        """
        self._check_fork()
        with self._lock:
            cred = self._credential
            if cred is not None and cred.token == token:
                self._credential = None
                self._next_attempt = 0.0
                self.counters.add("invalidations")
                event(log, logging.INFO, "credential.invalidated",
                      f"dropped the cached token for {self.source.describe} ({cred.fingerprint}): "
                      "the server refused it",
                      source=self.source.describe, fingerprint=cred.fingerprint)

    def refresh(self) -> Credential:
        """Mint a new token now (joining a mint in flight); raise the API's error on failure (a
        ``TimeoutError`` if the API does not answer within ``mint_timeout``)."""
        self._check_fork()
        self._abandon_if_overdue()
        with self._lock:
            mint, start = self._begin_mint()
        if start:
            self._start(mint)
        try:
            return mint.result(self._wait_time(mint, None))
        except Exception:
            if mint.overdue():
                self._abandon(mint)
            return mint.result(MINT_GRACE)  # its own error, or the abandonment's TimeoutError

    @property
    def credential(self) -> Credential | None:
        """The cached credential, if any (its token may be past its refresh point)."""
        return self._credential

    def stats(self) -> dict[str, Any]:
        cred = self._credential
        return {
            **self.counters.snapshot(),
            "source": self.source.describe,
            "identity": self.identity,
            "strategy": self.strategy.name,
            "expires_in": round(cred.expires_in(), 3) if cred else None,
            "expiry_known": cred.expiry_known if cred else None,
            "fingerprint": cred.fingerprint if cred else None,
            "consecutive_failures": self._failures,
            "mint_workers": len(self._workers),
            "last_error": _sdk.describe_error(self._last_error) if self._last_error else None,
        }

    def close(self) -> None:
        self.strategy.close()

    # ---- decisions -------------------------------------------------------------------------------
    def _fast_token(self) -> str | None:
        """The cached token if it is fresh (no lock); None if the slow path must decide."""
        if self._pid != os.getpid():
            self._check_fork()
        cred = self._credential
        if cred is not None and time.monotonic() < cred.refresh_at:
            return cred.token
        return None

    def _decide(self) -> str | _Mint:
        """The token to use now, or the mint to wait for (started here if new); raises
        CredentialsUnavailable while backing off with no valid token."""
        self._abandon_if_overdue()
        with self._lock:
            decision = self._decide_locked()
        if isinstance(decision, str):
            return decision
        mint, start = decision
        if start:
            self._start(mint)
        return mint

    def _decide_locked(self) -> str | tuple[_Mint, bool]:
        now = time.monotonic()
        cred = self._credential
        if cred is not None and now < cred.refresh_at:
            return cred.token
        if cred is not None and now < cred.usable_until:
            # Past the refresh point, still valid.
            if not self.strategy.inline_refresh or self._inflight is not None or now < self._next_attempt:
                if self._failures:
                    self._note_fallback(cred)
                self.strategy.schedule(self)
                return cred.token
            return self._begin_mint()
        if self._inflight is None and now < self._next_attempt and self._last_error is not None:
            raise self._unavailable(self._last_error)
        return self._begin_mint()

    def _begin_mint(self) -> tuple[_Mint, bool]:
        """(the in-flight mint, whether the caller must start it); call with the lock held."""
        if self._inflight is not None:
            self.counters.add("waits")
            return self._inflight, False
        self._inflight = _Mint(self.mint_timeout)
        return self._inflight, True

    def _wait_time(self, mint: _Mint, timeout: float | None) -> float:
        left = mint.deadline - time.monotonic()
        return max(0.0, left if timeout is None else min(left, timeout))

    def _settle(self, mint: _Mint, timeout: float | None) -> str:
        """After waiting for ``mint``: its token, else the fallback for its failure (abandoning it if
        it overran), else the fallback for having waited ``timeout`` in vain."""
        if mint.overdue():
            self._abandon(mint)
        if mint.claimed and not mint.done():
            # Being resolved this very moment (its outcome is logged first): a matter of microseconds.
            with contextlib.suppress(Exception):
                mint.result(MINT_GRACE)
        if not mint.done():
            return self._after_failure(self._waited_too_long(timeout))
        exc = mint.exception()
        if exc is None:
            return mint.result().token
        return self._after_failure(exc)

    # ---- the worker ------------------------------------------------------------------------------
    def _start(self, mint: _Mint) -> None:
        """Run ``mint`` in a worker thread, unless MAX_MINT_WORKERS are still stuck in the API."""
        now = time.monotonic()
        with self._lock:
            busy = len(self._workers) >= MAX_MINT_WORKERS
            oldest = min(self._workers.values(), default=now)
            if not busy:
                self._workers[id(mint)] = now
        if busy:
            self._fail(mint, TimeoutError(
                f"the last {MAX_MINT_WORKERS} requests to the workspace API for a database credential "
                f"have not returned (the oldest for {now - oldest:.0f}s); no new request is sent until one "
                "does. Check that DATABRICKS_HOST answers"))
            return
        try:
            threading.Thread(target=self._run_mint, args=(mint,), name="lakebase-credential-mint",
                             daemon=True).start()
        except BaseException as exc:  # RuntimeError: can't start new thread
            with self._lock:
                self._workers.pop(id(mint), None)
            self._fail(mint, exc)
            if not isinstance(exc, Exception):
                raise

    def _run_mint(self, mint: _Mint) -> None:
        """The worker: call the API, publish the outcome (even after ``mint`` was abandoned)."""
        try:
            try:
                credential = self.source.mint()
            except BaseException as exc:
                if not self._fail(mint, exc):
                    event(log, logging.DEBUG, "credential.late_failure",
                          f"an abandoned request for a database token for {self.source.describe} ended "
                          f"after {time.monotonic() - mint.started:.1f}s: {_sdk.describe_error(exc)}",
                          source=self.source.describe, error=_sdk.describe_error(exc))
                if not isinstance(exc, Exception):
                    raise
                return
            self._publish(mint, credential)
        finally:
            with self._lock:
                self._workers.pop(id(mint), None)

    def _publish(self, mint: _Mint, credential: Credential) -> None:
        """A minted credential: cache it (a late one only if it is the freshest) and resolve ``mint``."""
        _redact.register_secret(credential.token)  # before anyone can log it
        duration = time.monotonic() - mint.started
        with self._lock:
            current, mint.claimed = not mint.claimed, True
            if self._inflight is mint:
                self._inflight = None
            credential, implausible, first_warning = self._judge_expiry(credential)
            old = self._credential
            adopt = current or old is None or credential.expires_at > old.expires_at
            recovered = self._failures
            if adopt:
                self._credential = credential
                self._failures = 0
                self._last_error = None
                self._next_attempt = 0.0
                self._falling_back = False
        try:
            self._log_minted(credential, adopt, current, duration, recovered, implausible, first_warning)
        finally:
            if current:
                mint.set_result(credential)
        if adopt:
            self.strategy.schedule(self)

    def _log_minted(self, credential: Credential, adopt: bool, current: bool, duration: float, recovered: int,
                    implausible: float | None, first_warning: bool) -> None:
        if implausible is not None:
            self._warn_expiry(credential, implausible, first_warning)
        late = "" if current else f" (a late answer, {duration:.1f}s after the request, which had been abandoned)"
        if not adopt:
            self.counters.add("late_unused")
            event(log, logging.DEBUG, "credential.late_unused",
                  f"an abandoned request for {self.source.describe} answered after {duration:.1f}s; "
                  f"its token ({credential.fingerprint}) is not needed",
                  source=self.source.describe, fingerprint=credential.fingerprint)
            return
        self.counters.add("mints")
        if not current:
            self.counters.add("late_mints")
        event(log, logging.INFO, "credential.refreshed",
              f"new database token for {self.source.describe} ({credential.fingerprint}), expires in "
              f"{credential.expires_in():.0f}s" + ("" if credential.expiry_known else " (assumed)") + late
              + (f", after {recovered} failed attempts" if recovered else ""),
              source=self.source.describe, fingerprint=credential.fingerprint,
              expires_in=round(credential.expires_in(), 3), duration=round(duration, 3),
              recovered_after=recovered, late=not current, expiry_known=credential.expiry_known)

    def _judge_expiry(self, credential: Credential) -> tuple[Credential, float | None, bool]:
        """An unknown expiry gets a refresh interval that backs off; lock held. Returns the
        credential to cache and, for an implausible one, the lifetime the server's time implied and
        whether this is the cache's first such token (the one warned about)."""
        if credential.expiry_known:
            self._implausible = 0
            return credential, None, False
        self._implausible += 1
        interval = min(UNKNOWN_EXPIRY_REFRESH_MAX, UNKNOWN_EXPIRY_REFRESH * 2 ** (self._implausible - 1))
        implied = credential.expire_time.timestamp() - time.time()
        first, self._clock_warned = not self._clock_warned, True
        return replace(credential, lifetime=2 * interval), implied, first

    def _warn_expiry(self, credential: Credential, implied: float, first: bool) -> None:
        interval = credential.lifetime / 2
        event(log, logging.WARNING if first else logging.DEBUG, "credential.implausible_expiry",
              f"the database token for {self.source.describe} ({credential.fingerprint}) expires at "
              f"{credential.expire_time.isoformat()}, {implied:.0f}s from now by this machine's clock: is the "
              f"system clock right? Treating its expiry as unknown: refreshing it in {interval:.0f}s "
              f"(backing off to {UNKNOWN_EXPIRY_REFRESH_MAX:.0f}s); a refused token is replaced at once"
              + ("" if first else " (warned once)"),
              source=self.source.describe, fingerprint=credential.fingerprint, implied_lifetime=round(implied, 3),
              refresh_in=round(interval, 3))

    # ---- failures --------------------------------------------------------------------------------
    def _fail(self, mint: _Mint, exc: BaseException) -> bool:
        """Fail ``mint`` with ``exc`` if it is still the one in flight (False: it was already
        resolved or abandoned): record it, back off, log, and let RefreshAhead retry after the backoff."""
        with self._lock:
            if mint.claimed:
                return False
            mint.claimed = True
            if self._inflight is mint:
                self._inflight = None
            failure = self._record_failure(exc)
        try:
            self._log_failure(failure)
        finally:
            mint.set_exception(exc)
        self.strategy.schedule(self)
        return True

    def _abandon(self, mint: _Mint) -> None:
        """``mint`` overran ``mint_timeout``: fail it so a later one can start; its worker finishes on
        its own (see :meth:`_publish`), and the next attempt uses a fresh SDK authentication."""
        api_timeout = mint.timeout - MINT_GRACE
        error = TimeoutError(
            f"the workspace API did not answer within {mint.timeout:.1f}s (api_timeout {api_timeout:g}s); "
            "the request was abandoned. Check that DATABRICKS_HOST answers, or raise LAKEBASE_API_TIMEOUT")
        if not self._fail(mint, error):
            return
        self.counters.add("abandoned")
        reset = getattr(self.source, "abandoned", None)
        if callable(reset):
            reset()

    def _abandon_if_overdue(self) -> None:
        mint = self._inflight
        if mint is not None and mint.overdue():
            self._abandon(mint)

    def _record_failure(self, exc: BaseException) -> _Failure:
        """Count a failure and schedule the next attempt (jittered backoff, Retry-After); lock held."""
        now = time.monotonic()
        self._failures += 1
        self._last_error = exc
        cred = self._credential
        cap = BACKOFF_MAX if cred is None else min(BACKOFF_MAX, max(BACKOFF_INITIAL, cred.lifetime / 10))
        delay = min(cap, BACKOFF_INITIAL * 2 ** (self._failures - 1))
        delay = random.uniform(delay / 2, delay)
        after = _sdk.retry_after(exc)
        if after is not None:
            delay = max(delay, min(after, RETRY_AFTER_MAX))
        self._next_attempt = now + delay
        valid = cred is not None and now < cred.usable_until
        return _Failure(exc, self._failures, delay, cred, valid)

    def _log_failure(self, failure: _Failure) -> None:
        self.counters.add("failures")
        cred, exc = failure.cred, failure.exc
        fallback = (f"keeping the cached token ({cred.fingerprint}, expires in {cred.expires_in():.0f}s)"
                    if failure.valid and cred else "no valid token cached")
        event(log, logging.WARNING, "credential.refresh_failed",
              f"minting a database token for {self.source.describe} failed ({_sdk.describe_error(exc)}); "
              f"{fallback}; next attempt in {failure.delay:.1f}s",
              source=self.source.describe, error=_sdk.describe_error(exc), failures=failure.failures,
              retry_in=round(failure.delay, 3), transient=_sdk.is_transient(exc), stale_fallback=failure.valid)

    def _after_failure(self, exc: BaseException) -> str:
        """A failed mint: the still-valid cached token, else CredentialsUnavailable."""
        with self._lock:
            cred = self._credential
            if cred is not None and time.monotonic() < cred.usable_until:
                self._note_fallback(cred)
                return cred.token
        raise self._unavailable(exc) from exc

    def _waited_too_long(self, timeout: float | None) -> BaseException:
        """Why a caller stopped waiting for the mint in flight: the last API error if there is one."""
        waited = TimeoutError(f"no answer from the credential API within {timeout or 0:.1f}s")
        return self._last_error or waited

    def _note_fallback(self, cred: Credential) -> None:
        """Count a token served after a failed refresh (log the first of a run). Lock held."""
        self.counters.add("stale_served")
        if not self._falling_back:
            self._falling_back = True
            event(log, logging.WARNING, "credential.stale_fallback",
                  f"the token API is failing; using the cached token for {self.source.describe} "
                  f"({cred.fingerprint}) until it expires in {cred.expires_in():.0f}s",
                  source=self.source.describe, fingerprint=cred.fingerprint,
                  expires_in=round(cred.expires_in(), 3))

    def _unavailable(self, exc: BaseException) -> CredentialsUnavailable:
        transient = _sdk.is_transient(exc)
        cred = self._credential
        state = ("the cached token expired" if cred is not None else "no token is cached")
        wait = max(0.0, self._next_attempt - time.monotonic())
        message = (f"No valid Lakebase database credential for {self.identity or 'this identity'} "
                   f"({self.source.describe}): minting one failed ({_sdk.describe_error(exc)}) and {state}")
        if transient:
            message += f"; retrying by itself (next attempt in {wait:.1f}s)"
        hint = _sdk.error_hint(exc)
        if hint:
            message += f". Hint: {hint}"
        error = CredentialsUnavailable(message, cause=_sdk.root_cause(exc), transient=transient)
        error.__cause__ = _sdk.root_cause(exc)
        return error

    # ---- background refresh (RefreshAhead) -------------------------------------------------------
    def _background_delay(self) -> float | None:
        """Seconds until the thread should refresh (0: now); None: nothing to do until woken."""
        with self._lock:
            cred = self._credential
            if cred is None and (self._last_error is None or not _sdk.is_transient(self._last_error)):
                # Never used, invalidated, or refused for good (bad name, no permission): the next
                # caller mints; no point in asking the API again and again meanwhile.
                return None
            now = time.monotonic()
            due = max(cred.refresh_at if cred is not None else now, self._next_attempt)
            if self._inflight is not None:
                if self._inflight.overdue():
                    return 0.0  # nobody else is waiting for it: the thread abandons it (refresh())
                return max(0.05, due - now) if due > now else 0.05
            return max(0.0, due - now)

    def _background_refresh(self) -> None:
        mint = self._inflight
        if mint is not None and mint.overdue():
            self._abandon(mint)  # nobody was waiting for it; the next attempt comes after the backoff
            return
        self.counters.add("background_refreshes")
        try:
            self.refresh()
        except Exception:  # already recorded and logged; the thread retries after the backoff
            pass

    # ---- fork ------------------------------------------------------------------------------------
    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """In a forked child: nothing of the parent's that could be locked, running or connected."""
        self._lock = threading.Lock()
        self._inflight = None
        self._workers = {}  # the parent's worker threads do not exist here
        self._next_attempt = 0.0
        self.strategy.after_fork()
        self.counters.after_fork()
        self._pid = os.getpid()


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
