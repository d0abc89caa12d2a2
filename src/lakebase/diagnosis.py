"""What an error from Postgres or a driver means: one rule table, read in three places.

* :func:`lakebase.retry.classify` (connecting): retry, mint a fresh token, or give up — a rule's
  ``verdict`` (kind, cause, fix);
* :func:`lakebase.transactions.retry_reason` (a unit of work): run it again, and was the connection
  lost — a SQLSTATE's ``transaction`` reason and ``lost``, a rule's ``lost``;
* ``lakebase doctor`` (the login check): which explanation to print — a SQLSTATE's or a rule's ``name``.

Drivers rarely give a SQLSTATE for login errors (libpq reports them as text), so the message is
matched too: :data:`SQLSTATES` by code (read by :func:`sqlstate_of` from any driver's error),
:data:`RULES` by lowercase message fragments (all of a rule's fragments must occur; for a verdict,
the first matching rule wins).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import AuthenticationFailed, ConnectionFailed, PermissionDenied


class Kind(enum.Enum):
    TRANSIENT = "transient"
    AUTH = "auth"
    FATAL = "fatal"


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str
    sqlstate: str | None = None
    hint: str = ""
    error: type[ConnectionFailed] = ConnectionFailed


# What doctor explains (the ``name`` of a SQLSTATE or a rule).
TOKEN_REFUSED = "token refused"
PERMISSION_DENIED = "permission denied"
ROLE_MISSING = "role missing"
DATABASE_MISSING = "database missing"
TLS_REQUIRED = "TLS required"
TIMED_OUT = "timed out"


@dataclass(frozen=True)
class State:
    """What one SQLSTATE means."""

    connect: Classification | None = None  # while connecting (None: decided by the message, class 08, ...)
    transaction: str | None = None  # why a unit of work that failed with it is worth running again
    lost: bool = False  # the session is gone (in a transaction: the connection was lost)
    name: str = ""  # doctor's explanation


def _transient(reason: str, state: str) -> Classification:
    return Classification(Kind.TRANSIENT, reason, state)


SQLSTATES: dict[str, State] = {
    "28P01": State(Classification(Kind.AUTH, "token rejected", "28P01"), name=TOKEN_REFUSED),
    "42501": State(Classification(Kind.FATAL, "permission denied", "42501", error=PermissionDenied),
                   name=PERMISSION_DENIED),
    "57P01": State(_transient("connection terminated by the server (restart or scale to zero)", "57P01"),
                   "the session was terminated (restart or scale to zero)", lost=True),
    "57P02": State(_transient("crash shutdown", "57P02"), "the server crashed", lost=True),
    "57P03": State(_transient("the server is starting up", "57P03"), "the server is starting up", lost=True),
    "53300": State(_transient("too many connections", "53300")),
    "53000": State(_transient("insufficient resources", "53000")),
    "40001": State(_transient("serialization failure", "40001"), "serialization failure"),
    "40P01": State(transaction="deadlock detected"),
}

#: Whatever SQLSTATE it comes with (28P01, 28000, XX000): right after a role is created, retry.
EXTERNAL_AUTHORIZATION = "external authorization failed"


@dataclass(frozen=True)
class Rule:
    """Message fragments (lowercase; all must occur) and what they mean."""

    fragments: tuple[str, ...]
    verdict: Classification | None = None  # while connecting (None: only a sign of a lost connection)
    lost: bool = False  # in a transaction: the connection was lost
    name: str = ""  # doctor's explanation


_NO_HOST = Classification(Kind.FATAL, "the host name does not resolve", None,
                          "check PGHOST or the endpoint's host")
_TOKEN_REJECTED = Classification(Kind.AUTH, "token rejected", "28P01")
_TOO_MANY = Classification(Kind.TRANSIENT, "too many connections", "53300")
_LOST = Classification(Kind.TRANSIENT, "connection lost", "08006")
_UNREACHABLE = Classification(Kind.TRANSIENT, "network unreachable", "08001")

# Checked in order for a verdict: the first match wins.
RULES: list[Rule] = [
    Rule(("failed to decode token",), _TOKEN_REJECTED, name=TOKEN_REFUSED),
    Rule(("password authentication failed",), _TOKEN_REJECTED, name=TOKEN_REFUSED),
    Rule(("sasl authentication failed",), Classification(
        Kind.FATAL, "authentication failed", "28P01",
        "OAuth tokens are not accepted by the built-in pooler hosts (...-pooler...): use the endpoint's host",
        AuthenticationFailed)),
    Rule(("connection is insecure",), Classification(
        Kind.FATAL, "TLS is required", "08P01", "use sslmode=require", ConnectionFailed), name=TLS_REQUIRED),
    # TLS verification (sslmode=verify-ca/verify-full): retrying cannot make a certificate verify.
    Rule(("certificate verify failed",), Classification(
        Kind.FATAL, "the server's TLS certificate did not verify", "08006",
        "check sslrootcert (PGSSLROOTCERT), or use sslmode=require")),
    Rule(("does not match host name",), Classification(
        Kind.FATAL, "the server's TLS certificate is for another host name", "08006",
        "connect with the endpoint's host name, or use sslmode=verify-ca or require")),
    Rule(("root certificate file",), Classification(
        Kind.FATAL, "the TLS root certificate (sslrootcert) cannot be read", None,
        "check sslrootcert (PGSSLROOTCERT) points to a readable PEM file")),
    Rule(("permission denied",), Classification(
        Kind.FATAL, "permission denied", "42501",
        'as the owner: GRANT CONNECT ON DATABASE <db> TO "<role>" (and schema and table privileges)',
        PermissionDenied), name=PERMISSION_DENIED),
    Rule(("connect privilege",), Classification(
        Kind.FATAL, "permission denied", "42501", 'as the owner: GRANT CONNECT ON DATABASE <db> TO "<role>"',
        PermissionDenied), name=PERMISSION_DENIED),
    Rule(("role \"", "does not exist"), Classification(
        Kind.FATAL, "the Postgres role does not exist", "28000",
        "create it as the project owner: CREATE EXTENSION IF NOT EXISTS databricks_auth; "
        "SELECT databricks_create_role('<user email or service principal client id>', "
        "'<user|service_principal>')",
        AuthenticationFailed), name=ROLE_MISSING),
    Rule(("database \"", "does not exist"), Classification(
        Kind.FATAL, "the database does not exist", "3D000",
        "check PGDATABASE (default databricks_postgres)"), name=DATABASE_MISSING),
    Rule(("does not exist",), Classification(
        Kind.FATAL, "not found", None, "check the endpoint and database names")),
    Rule(("endpoint is disabled",), Classification(Kind.FATAL, "the endpoint is disabled", None)),
    Rule(("temporary failure in name resolution",), Classification(Kind.TRANSIENT, "DNS temporarily failing")),
    Rule(("could not translate host name",), _NO_HOST),
    Rule(("failed to resolve host",), _NO_HOST),
    Rule(("name or service not known",), _NO_HOST),
    Rule(("nodename nor servname",), _NO_HOST),
    Rule(("terminating connection",),
         Classification(Kind.TRANSIENT, "connection terminated by the server", "57P01"), lost=True),
    Rule(("the database system is",),
         Classification(Kind.TRANSIENT, "the server is starting or stopping", "57P03")),
    Rule(("too many clients",), _TOO_MANY),
    Rule(("too many connections",), _TOO_MANY),
    Rule(("remaining connection slots",), _TOO_MANY),
    Rule(("connection refused",), Classification(Kind.TRANSIENT, "connection refused", "08001")),
    Rule(("connection reset",), Classification(Kind.TRANSIENT, "connection reset", "08006"), lost=True),
    Rule(("server closed the connection",),
         Classification(Kind.TRANSIENT, "connection closed by the server", "08006"), lost=True),
    Rule(("timeout expired",), Classification(Kind.TRANSIENT, "timed out", "08001"), name=TIMED_OUT),
    Rule(("timed out",), Classification(Kind.TRANSIENT, "timed out", "08001"), name=TIMED_OUT),
    Rule(("couldn't connect to compute",), Classification(Kind.TRANSIENT, "the compute is waking up", "08001")),
    Rule(("could not receive data",), _LOST, lost=True),
    Rule(("could not send data",), _LOST, lost=True),
    Rule(("ssl syscall error",), _LOST, lost=True),
    Rule(("ssl connection has been closed",), _LOST, lost=True),
    Rule(("eof detected",), _LOST, lost=True),
    Rule(("network is unreachable",), _UNREACHABLE),
    Rule(("no route to host",), _UNREACHABLE),
    # Only signs of a lost connection (a driver's own words, not a server's or libpq's login errors).
    Rule(("connection is closed",), lost=True),
    Rule(("connection already closed",), lost=True),  # psycopg2
    Rule(("connection is lost",), lost=True),
    Rule(("connection was closed",), lost=True),
    Rule(("connection has been closed",), lost=True),
    Rule(("consuming input failed",), lost=True),
    Rule(("broken pipe",), lost=True),
    # asyncpg detaches a pool's proxy when its connection dies; run_transaction holds the proxy
    Rule(("released back to the pool",), lost=True),
]

#: Driver error classes (by name, so no driver need be installed) that mean the connection is gone.
LOST_CONNECTION_ERRORS = frozenset({"ConnectionDoesNotExistError", "ConnectionFailureError"})
#: Driver error classes worth another connect attempt whatever their message.
CONNECTION_ERRORS = frozenset({"OperationalError", "InterfaceError", "ConnectionDoesNotExistError",
                               "CannotConnectNowError", "TooManyConnectionsError"})


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE a driver's error carries: ``sqlstate`` (psycopg 3, asyncpg) or ``pgcode`` (psycopg2)."""
    for attr in ("sqlstate", "pgcode"):
        state = getattr(exc, attr, None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


def _matches(rule: Rule, text: str) -> bool:
    return all(f in text for f in rule.fragments)


def verdict(text: str) -> Classification | None:
    """The connect verdict of the first rule whose fragments all occur in ``text`` (lowercase)."""
    return next((r.verdict for r in RULES if r.verdict is not None and _matches(r, text)), None)


def connection_lost(text: str) -> bool:
    """Does ``text`` (lowercase) say the connection was lost?"""
    return any(r.lost and _matches(r, text) for r in RULES)


def names(sqlstate: str | None, text: str) -> set[str]:
    """What doctor may explain: the name of ``sqlstate``'s entry and of the first rule matching ``text``."""
    found = {SQLSTATES[sqlstate].name} if sqlstate in SQLSTATES else set()
    rule = next((r for r in RULES if r.verdict is not None and _matches(r, text)), None)
    if rule is not None:
        found.add(rule.name)
    return found - {""}
