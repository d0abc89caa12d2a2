"""Error classification, backoff and the connect loop's decisions (no server; the same loop runs
against the emulator in test_psycopg)."""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest
from psycopg import errors

from lakebase import AuthenticationFailed, ConnectionFailed, CredentialsUnavailable, PermissionDenied, diagnosis
from lakebase.retry import Backoff, Deadline, Kind, aconnect_with_retry, classify, connect_with_retry
from lakebase.transactions import retry_reason

PREFIX = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '


def op(message: str) -> psycopg.OperationalError:
    """A connect error as psycopg raises it (libpq gives text, no SQLSTATE)."""
    return psycopg.OperationalError(PREFIX + message)


def asyncpg_error(name: str, message: str) -> BaseException:
    """An asyncpg server error as asyncpg raises it: with ``.sqlstate`` set."""
    import asyncpg

    return getattr(asyncpg.exceptions, name)(message)


@pytest.mark.parametrize(("exc", "kind", "error"), [
    # the token was refused: one retry with a fresh token
    (op('Failed to decode token for role "me@example.com" and native postgres login was either not attempted '
        "due to configuration or failed."), Kind.AUTH, None),
    (op('password authentication failed for user "me"'), Kind.AUTH, None),
    # never retried
    (op('role "nobody@example.com" does not exist'), Kind.FATAL, AuthenticationFailed),
    (op('database "nodb" does not exist'), Kind.FATAL, ConnectionFailed),
    (op('endpoint "replica-1" does not exist'), Kind.FATAL, ConnectionFailed),
    (op('permission denied for database "locked"\nDETAIL:  User does not have CONNECT privilege.'),
     Kind.FATAL, PermissionDenied),
    (op("connection is insecure (try using `sslmode=require`)"), Kind.FATAL, ConnectionFailed),
    (op('SASL authentication failed'), Kind.FATAL, AuthenticationFailed),
    (psycopg.OperationalError("failed to resolve host 'nope.example': [Errno -2] Name or service not known"),
     Kind.FATAL, ConnectionFailed),
    (CredentialsUnavailable("no", transient=False), Kind.FATAL, None),
    (ValueError("a bug"), Kind.FATAL, ConnectionFailed),
    # transient: back off and retry
    (op("terminating connection due to administrator command"), Kind.TRANSIENT, None),
    (op("the database system is starting up"), Kind.TRANSIENT, None),
    (op("External authorization failed."), Kind.TRANSIENT, None),
    # asyncpg gives the server's SQLSTATE: the message still decides (a new role is propagating)
    (asyncpg_error("InvalidPasswordError", "External authorization failed"), Kind.TRANSIENT, None),
    (asyncpg_error("InvalidAuthorizationSpecificationError", "External authorization failed"), Kind.TRANSIENT,
     None),
    # TLS verification: retrying cannot help
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                              "SSL error: certificate verify failed"), Kind.FATAL, ConnectionFailed),
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                              'server certificate for "localhost" does not match host name "ep-x.example"'),
     Kind.FATAL, ConnectionFailed),
    (op("sorry, too many clients already"), Kind.TRANSIENT, None),
    (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 1 failed: '
                              "Connection refused\n\tIs the server running on that host?"),
     Kind.TRANSIENT, None),
    (errors.ConnectionTimeout("connection timeout expired"), Kind.TRANSIENT, None),
    (op("server closed the connection unexpectedly"), Kind.TRANSIENT, None),
    (errors.AdminShutdown("terminating connection due to administrator command"), Kind.TRANSIENT, None),
    (ConnectionResetError(104, "Connection reset by peer"), Kind.TRANSIENT, None),
    (TimeoutError(), Kind.TRANSIENT, None),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), Kind.TRANSIENT, None),
    (CredentialsUnavailable("API down", transient=True), Kind.TRANSIENT, None),
    (psycopg.OperationalError("something new and network-ish"), Kind.TRANSIENT, None),
])
def test_classify(exc: BaseException, kind: Kind, error: type[ConnectionFailed] | None) -> None:
    verdict = classify(exc)
    assert verdict.kind is kind, verdict
    if error is not None:
        assert verdict.error is error


def test_sqlstates_win_when_the_driver_has_them() -> None:
    assert classify(errors.InvalidPassword("x")).kind is Kind.AUTH  # 28P01
    assert classify(errors.InsufficientPrivilege("x")).error is PermissionDenied  # 42501
    assert classify(errors.CannotConnectNow("x")).kind is Kind.TRANSIENT  # 57P03
    assert classify(errors.InvalidAuthorizationSpecification('role "x" does not exist')).kind is Kind.FATAL


# ---- one rule table (lakebase.diagnosis) for connecting, transactions and doctor ----------------------
@pytest.mark.parametrize("rule", [r for r in diagnosis.RULES if r.verdict is not None],
                         ids=lambda r: " ".join(r.fragments))
def test_each_rule_decides_how_to_connect(rule: diagnosis.Rule) -> None:
    assert classify(op(" ... ".join(rule.fragments))) == rule.verdict


@pytest.mark.parametrize("rule", [r for r in diagnosis.RULES if r.lost], ids=lambda r: " ".join(r.fragments))
def test_each_lost_connection_rule_decides_a_transaction_retry(rule: diagnosis.Rule) -> None:
    assert retry_reason(psycopg.OperationalError(" ... ".join(rule.fragments))) == ("the connection was lost", True)
    assert retry_reason(ValueError(" ... ".join(rule.fragments))) is None  # the caller's own error


@pytest.mark.parametrize("state", sorted(diagnosis.SQLSTATES))
def test_each_sqlstate_decides_connecting_and_transactions(state: str) -> None:
    meaning = diagnosis.SQLSTATES[state]
    exc = errors.lookup(state)("server said so")
    if meaning.connect is not None:
        assert classify(exc) == meaning.connect
    expected = (meaning.transaction, meaning.lost) if meaning.transaction else None
    assert retry_reason(exc) == expected


@pytest.mark.parametrize(("state", "message", "name"), [
    ("28000", 'role "nobody" does not exist', diagnosis.ROLE_MISSING),
    ("3D000", 'database "nodb" does not exist', diagnosis.DATABASE_MISSING),
    ("28P01", "external authorization failed", diagnosis.TOKEN_REFUSED),
    (None, "failed to decode token for role", diagnosis.TOKEN_REFUSED),
    ("42501", "no", diagnosis.PERMISSION_DENIED),
    (None, "user does not have connect privilege.", diagnosis.PERMISSION_DENIED),
    ("08P01", "connection is insecure (try using `sslmode=require`)", diagnosis.TLS_REQUIRED),
    (None, "timeout expired", diagnosis.TIMED_OUT),
])
def test_doctor_explains_what_the_table_names(state: str | None, message: str, name: str) -> None:
    assert name in diagnosis.names(state, message)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    b = Backoff(initial=0.1, factor=2, maximum=1.0)
    delays = [b.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays):
        base = min(1.0, 0.1 * 2 ** n)
        assert base / 2 <= delay <= base
    assert b.next_delay(retry_after=7.0) == 7.0
    b.reset()
    assert b.next_delay() <= 0.1


def test_deadline() -> None:
    d = Deadline(60)
    assert 59 < d.remaining() <= 60 and not d.expired
    assert Deadline(0).expired


class Tokens:
    """A token provider that hands out numbered tokens and records invalidations."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.current = 1
        self.invalidated: list[str] = []
        self.fail = fail

    def token(self, timeout: float | None = None) -> str:
        if self.fail is not None:
            raise self.fail
        return f"token-{self.current}"

    async def atoken(self, timeout: float | None = None) -> str:
        return self.token(timeout)

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        self.current += 1


def scripted(*outcomes: BaseException | str) -> tuple[list[str], object]:
    seen: list[str] = []

    def attempt(password: str, timeout: float) -> str:
        seen.append(password)
        outcome = outcomes[len(seen) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return seen, attempt


def test_transient_errors_are_retried_until_success() -> None:
    seen, attempt = scripted(op("the database system is starting up"), op("connection refused"), "conn")
    assert connect_with_retry(attempt, Tokens(), describe="t", deadline=30) == "conn"  # type: ignore[arg-type]
    assert seen == ["token-1"] * 3


def test_a_refused_token_is_replaced_once() -> None:
    tokens = Tokens()
    seen, attempt = scripted(op('Failed to decode token for role "r"'), "conn")
    assert connect_with_retry(attempt, tokens, describe="t") == "conn"  # type: ignore[arg-type]
    assert seen == ["token-1", "token-2"] and tokens.invalidated == ["token-1"]


def test_a_second_refusal_is_final() -> None:
    tokens = Tokens()
    refused = op('Failed to decode token for role "r"')
    _, attempt = scripted(refused, refused, "never")
    with pytest.raises(AuthenticationFailed) as info:
        connect_with_retry(attempt, tokens, describe="r@h:5432/db")  # type: ignore[arg-type]
    assert info.value.attempts == 2 and info.value.sqlstate == "28P01" and info.value.__cause__ is refused
    assert "refused again although freshly minted" in str(info.value)


def test_fatal_errors_are_not_retried() -> None:
    missing = op('role "nobody" does not exist')
    seen, attempt = scripted(missing, "never")
    with pytest.raises(AuthenticationFailed) as info:
        connect_with_retry(attempt, Tokens(), describe="nobody@h:5432/db")  # type: ignore[arg-type]
    assert len(seen) == 1 and info.value.cause is missing
    assert "the Postgres role does not exist" in str(info.value)
    assert "databricks_create_role" in str(info.value)


def test_transient_errors_until_the_deadline() -> None:
    refused = op("connection refused")
    _, attempt = scripted(*([refused] * 1000))
    with pytest.raises(ConnectionFailed) as info:
        connect_with_retry(attempt, Tokens(), describe="t", deadline=0.3)  # type: ignore[arg-type]
    assert info.value.attempts >= 1 and "gave up after" in str(info.value) and info.value.__cause__ is refused
    assert type(info.value) is ConnectionFailed


def test_credentials_unavailable_is_raised_as_is() -> None:
    down = CredentialsUnavailable("the token API is down", transient=True)
    _, attempt = scripted("never")
    with pytest.raises(CredentialsUnavailable) as info:
        connect_with_retry(attempt, Tokens(fail=down), describe="t", deadline=0.3)  # type: ignore[arg-type]
    assert info.value is down


def test_the_async_loop_decides_alike() -> None:
    tokens = Tokens()
    outcomes: list[BaseException | str] = [op("terminating connection due to administrator command"),
                                           op('Failed to decode token for role "r"'), "conn"]

    async def attempt(password: str, timeout: float) -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert asyncio.run(aconnect_with_retry(attempt, tokens, describe="t")) == "conn"
    assert tokens.invalidated == ["token-1"]
