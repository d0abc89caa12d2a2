"""Connecting with retries inside one deadline; shared by every driver, sync and async.

:func:`classify` sorts a connect error into one of three kinds:

* ``TRANSIENT``: back off and retry: 08xxx connection errors, 57P01 (terminated: a restart or
  scale-to-zero), 57P03 (starting up), 53300 (too many connections), refused/reset, timeouts,
  ``External authorization failed`` (right after a role is created), a token API that is down.
* ``AUTH``: 28P01, the token was refused: drop the cached token, mint a fresh one, retry once.
* ``FATAL``: never retried: ``does not exist`` (role, database, endpoint), 42501, a second 28P01,
  TLS refused, a server certificate that does not verify (``sslmode=verify-*``), configuration errors.

Drivers rarely give a SQLSTATE for login errors (libpq reports them as text), so the message is
matched too: the SQLSTATEs and message fragments are the rule table of :mod:`lakebase.diagnosis`,
which transactions and doctor read as well. :func:`connect_with_retry` / :func:`aconnect_with_retry`
run the loop around a driver's ``attempt(password, timeout)`` callable; they take the password from a
token provider (see :class:`TokenProvider`) on every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from ._redact import redact
from ._telemetry import Counters, event
from .diagnosis import (
    CONNECTION_ERRORS,
    EXTERNAL_AUTHORIZATION,
    SQLSTATES,
    Classification,
    Kind,
    sqlstate_of,
    verdict,
)
from .errors import (
    AuthenticationFailed,
    ConnectionFailed,
    CredentialsUnavailable,
    LakebaseError,
)

log = logging.getLogger("lakebase.connect")
T = TypeVar("T")


def classify(exc: BaseException) -> Classification:
    """Is ``exc`` (raised while connecting) worth a retry, a fresh token, or neither?"""
    if isinstance(exc, CredentialsUnavailable):
        kind = Kind.TRANSIENT if exc.transient else Kind.FATAL
        return Classification(kind, "no database credential")
    if isinstance(exc, LakebaseError):
        return Classification(Kind.FATAL, type(exc).__name__)
    state = sqlstate_of(exc)
    text = str(exc).lower()
    if EXTERNAL_AUTHORIZATION in text:
        return Classification(Kind.TRANSIENT, "external authorization failed (a new role is propagating)", state)
    known = SQLSTATES.get(state or "")
    if known is not None and known.connect is not None:
        return known.connect
    if state is not None and state.startswith("08") and "does not exist" not in text:
        return Classification(Kind.TRANSIENT, "connection error", state)
    found = verdict(text)
    if found is not None:
        if state and state != found.sqlstate:
            return Classification(found.kind, found.reason, state, found.hint, found.error)
        return found
    if state is not None and state.startswith("28"):
        return Classification(Kind.FATAL, "authentication failed", state, error=AuthenticationFailed)
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_AGAIN:
            return Classification(Kind.TRANSIENT, "DNS temporarily failing")
        return Classification(Kind.FATAL, "the host name does not resolve")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return Classification(Kind.TRANSIENT, "timed out")
    if isinstance(exc, (ConnectionError, OSError)):
        return Classification(Kind.TRANSIENT, "network error")
    if {cls.__name__ for cls in type(exc).__mro__} & CONNECTION_ERRORS:
        return Classification(Kind.TRANSIENT, "connection error", state)
    return Classification(Kind.FATAL, type(exc).__name__, state)


# ---- timing ------------------------------------------------------------------------------------
class Deadline:
    """A point in (monotonic) time; ``remaining()`` seconds until it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0


class Backoff:
    """Exponential backoff with jitter: ``initial * factor**n`` capped at ``maximum``, each delay
    drawn uniformly from its upper half; a server's ``Retry-After`` wins when longer."""

    def __init__(self, initial: float = 0.1, factor: float = 2.0, maximum: float = 5.0) -> None:
        self.initial, self.factor, self.maximum = initial, factor, maximum
        self.attempts = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor ** self.attempts)
        self.attempts += 1
        delay = random.uniform(base / 2, base)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        return delay

    def reset(self) -> None:
        self.attempts = 0


# ---- the connect loop --------------------------------------------------------------------------
class TokenProvider(Protocol):
    """What the connect loop needs from a credential cache (see :class:`lakebase.CredentialCache`)."""

    def token(self, timeout: float | None = None) -> str: ...

    async def atoken(self, timeout: float | None = None) -> str: ...

    def invalidate(self, token: str) -> None: ...


class RetryState:
    """The decisions of one connect-with-retry run, shared by the sync and async loops."""

    def __init__(self, describe: str, deadline: float, connect_timeout: float,
                 counters: Counters | None = None, backoff: Backoff | None = None) -> None:
        self.describe = describe
        self.deadline = Deadline(deadline)
        self.connect_timeout = connect_timeout
        self.counters = counters
        self.backoff = backoff or Backoff()
        self.attempts = 0
        self.auth_retried = False

    def attempt_timeout(self) -> float:
        """Seconds for the next attempt: ``connect_timeout``, never past the deadline (at least 1)."""
        self.attempts += 1
        self._count("attempts")
        return max(1.0, min(self.connect_timeout, self.deadline.remaining()))

    def token_timeout(self) -> float:
        return max(0.1, self.deadline.remaining())

    def succeeded(self) -> None:
        if self.attempts > 1:
            event(log, logging.INFO, "connect.recovered",
                  f"connected to {self.describe} after {self.attempts} attempts",
                  attempts=self.attempts, target=self.describe)

    def failed(self, exc: BaseException, token: str | None, provider: TokenProvider) -> float:
        """Seconds to wait before the next attempt, or raise the error to give the caller."""
        verdict = classify(exc)
        if verdict.kind is Kind.AUTH and token is not None:
            if self.auth_retried:
                self._count("failures")
                raise self._final(verdict, exc, "the token was refused again although freshly minted "
                                                "(does the role belong to this workspace identity?)",
                                  AuthenticationFailed) from exc
            self.auth_retried = True
            self._count("auth_retries")
            provider.invalidate(token)
            event(log, logging.INFO, "connect.token_rejected",
                  f"connecting to {self.describe}: the token was refused (28P01); "
                  "retrying once with a fresh token",
                  target=self.describe, attempt=self.attempts)
            return 0.0
        if verdict.kind is not Kind.TRANSIENT:
            self._count("failures")
            if isinstance(exc, LakebaseError):
                raise exc
            raise self._final(verdict, exc, "not retried", verdict.error) from exc
        delay = self.backoff.next_delay()
        left = self.deadline.remaining()
        if delay >= left:
            self._count("failures")
            if isinstance(exc, CredentialsUnavailable):
                raise exc
            raise self._final(verdict, exc, f"gave up after {self.attempts} attempts in "
                                            f"{self.deadline.seconds:g}s (the connect deadline)",
                              ConnectionFailed) from exc
        self._count("retries")
        event(log, logging.WARNING if self.attempts > 2 else logging.INFO, "connect.retry",
              f"connecting to {self.describe} failed ({verdict.reason}): {_short(exc)}; "
              f"retrying in {delay:.2f}s ({left:.1f}s left)",
              target=self.describe, attempt=self.attempts, reason=verdict.reason, delay=round(delay, 3),
              sqlstate=verdict.sqlstate)
        return delay

    def _final(self, verdict: Classification, exc: BaseException, what: str,
               error: type[ConnectionFailed]) -> ConnectionFailed:
        message = f"Could not connect to {self.describe}: {verdict.reason}; {what}. Last error: {_short(exc)}"
        if verdict.hint:
            message += f". Hint: {verdict.hint}"
        event(log, logging.ERROR, "connect.failed", message, target=self.describe, attempts=self.attempts,
              reason=verdict.reason, sqlstate=verdict.sqlstate)
        return error(message, cause=exc, sqlstate=verdict.sqlstate, attempts=self.attempts)

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.add(name)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return redact(text if text else type(exc).__name__)


def connect_with_retry(attempt: Callable[[str, float], T], provider: TokenProvider, *, describe: str,
                       deadline: float = 30.0, connect_timeout: float = 10.0,
                       counters: Counters | None = None) -> T:
    """Call ``attempt(password, timeout)`` until it succeeds, a fatal error, or the deadline."""
    state = RetryState(describe, deadline, connect_timeout, counters)
    while True:
        token: str | None = None
        try:
            token = provider.token(timeout=state.token_timeout())
            result = attempt(token, state.attempt_timeout())
        except Exception as exc:
            delay = state.failed(exc, token, provider)
        else:
            state.succeeded()
            return result
        if delay:
            time.sleep(delay)


async def aconnect_with_retry(attempt: Callable[[str, float], Awaitable[T]], provider: TokenProvider, *,
                              describe: str, deadline: float = 30.0, connect_timeout: float = 10.0,
                              counters: Counters | None = None) -> T:
    """The async twin of :func:`connect_with_retry`: never blocks the event loop."""
    state = RetryState(describe, deadline, connect_timeout, counters)
    while True:
        token: str | None = None
        try:
            token = await provider.atoken(timeout=state.token_timeout())
            result = await attempt(token, state.attempt_timeout())
        except Exception as exc:
            delay = state.failed(exc, token, provider)
        else:
            state.succeeded()
            return result
        if delay:
            await asyncio.sleep(delay)
