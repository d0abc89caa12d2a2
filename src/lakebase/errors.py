"""The exceptions this library raises, all rooted at :class:`LakebaseError`.

Messages say what went wrong, what was found and how to fix it. They never contain a token: the
root cause (a driver or SDK error) is chained as ``__cause__`` and kept in ``.cause``.

::

    LakebaseError
    ├── ConfigurationError (also a ValueError)   a setting is missing, malformed or unsafe
    ├── ResolutionError                          the workspace API could not tell host / user
    ├── CredentialsUnavailable                   no valid token: minting failed, the cache is empty or expired
    └── ConnectionFailed                         Postgres refused us, or kept failing until the deadline
        ├── AuthenticationFailed                 28P01 with a fresh token, 28000 role does not exist
        └── PermissionDenied                     42501 (e.g. no CONNECT privilege)

The psycopg integration also raises ``lakebase.PoolTimeout`` (a LakebaseError and a
``psycopg_pool.PoolTimeout``) naming why the pool could not connect.
"""

from __future__ import annotations


class LakebaseError(Exception):
    """Base class of every error raised by lakebase."""


class ConfigurationError(LakebaseError, ValueError):
    """A setting is missing, malformed or unsafe.

    ``setting`` names the argument or environment variable, ``value`` is what was found (None when
    missing) and ``fix`` says what to do; all three are part of the message.
    """

    def __init__(self, problem: str, *, setting: str | None = None, value: object = None,
                 fix: str | None = None) -> None:
        message = problem.rstrip(".") + "."
        if fix:
            message += f" Fix: {fix.rstrip('.')}."
        super().__init__(message)
        self.setting = setting
        self.value = value
        self.fix = fix


class ResolutionError(LakebaseError):
    """A connection parameter (host, user) could not be looked up through the workspace API."""

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class CredentialsUnavailable(LakebaseError):
    """No valid database credential is available.

    Raised when minting a token failed and no cached token is still valid. ``cause`` is the root
    error from the SDK (also chained as ``__cause__``); ``transient`` says whether waiting may help
    (service unavailable, throttled, network) as opposed to a permanent refusal (bad endpoint name,
    no permission, broken workspace authentication).
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, transient: bool = True) -> None:
        super().__init__(message)
        self.cause = cause
        self.transient = transient


class ConnectionFailed(LakebaseError):
    """Connecting to Postgres failed for good.

    Either the error is not worth retrying (see the subclasses), or transient errors went on until
    the connect deadline. ``sqlstate`` is the server's code when known, ``attempts`` the number of
    connection attempts made, ``cause`` the last driver error.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None, sqlstate: str | None = None,
                 attempts: int = 0) -> None:
        super().__init__(message)
        self.cause = cause
        self.sqlstate = sqlstate
        self.attempts = attempts


class AuthenticationFailed(ConnectionFailed):
    """Login refused: a freshly minted token was rejected (28P01), or the role is missing (28000)."""


class PermissionDenied(ConnectionFailed):
    """Login accepted but access refused (42501), e.g. no CONNECT privilege on the database."""
