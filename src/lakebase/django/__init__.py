"""Django on Lakebase: the ``lakebase.django`` database backend, ``database_config`` and ``run_transaction``.

::

    # settings.py
    import lakebase.django

    DATABASES = {"default": lakebase.django.database_config(pool={"max_size": 8})}
    # or just: DATABASES = {"default": {"ENGINE": "lakebase.django"}}

    # views.py
    from lakebase.django import run_transaction

    note = run_transaction(lambda: Note.objects.create(content=text))

See :mod:`lakebase.django.base` for the backend (settings, connection modes, the native pool). Needs the
``django`` extra (``pip install 'lakebase[django]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .._adapter import SETTINGS_FIELDS, refuse_secrets
from ..errors import ConfigurationError
from ..transactions import DEADLINE, MAX_ATTEMPTS

T = TypeVar("T")

ENGINE = "lakebase.django"

#: database_config() arguments that are top-level DATABASES keys.
_TOP_LEVEL = {"database": "NAME", "user": "USER", "host": "HOST", "port": "PORT", "conn_max_age": "CONN_MAX_AGE",
              "conn_health_checks": "CONN_HEALTH_CHECKS", "atomic_requests": "ATOMIC_REQUESTS",
              "autocommit": "AUTOCOMMIT", "time_zone": "TIME_ZONE", "test": "TEST"}


def database_config(*, conn_max_age: float | None = 0, conn_health_checks: bool = True,
                    pool: bool | dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                    **overrides: Any) -> dict[str, Any]:
    """A ``DATABASES`` entry for the ``lakebase.django`` backend, in the spirit of dj-database-url.

    ``overrides`` are :class:`~lakebase.Settings` fields (``endpoint``, ``instance_name``, ``database``,
    ``user``, ``host``, ``port``, ``read_only``, ``token_refresh``, ``sslmode``, ...) and Django's keys in
    lower case (``atomic_requests``, ``test``, ...). What is not given is read from the environment when
    connecting (``ENDPOINT_NAME``, ``PGHOST``, ...), so the same settings serve a laptop and a Databricks App.
    ``pool``: Django's native pool (True, or psycopg_pool options such as ``{"max_size": 8}``; then
    ``conn_max_age`` must stay 0). ``options``: more ``OPTIONS`` (psycopg's, Django's). A password is refused.
    """
    if "password" in overrides or "PASSWORD" in overrides:
        raise ConfigurationError("database_config() got a password, but lakebase sets the password (a fresh "
                                 "OAuth token) itself", setting="password", value="[REDACTED]",
                                 fix="remove the password argument")
    config: dict[str, Any] = {"ENGINE": ENGINE, "NAME": "", "CONN_MAX_AGE": conn_max_age,
                              "CONN_HEALTH_CHECKS": conn_health_checks, "OPTIONS": dict(options or {})}
    for key, value in overrides.items():
        if key in _TOP_LEVEL:
            config[_TOP_LEVEL[key]] = value
        elif key in SETTINGS_FIELDS:
            config["OPTIONS"][key] = value
        else:
            accepted = sorted({*SETTINGS_FIELDS, *_TOP_LEVEL, "pool", "options"})
            raise TypeError(f"database_config() got an unexpected argument {key!r}; expected one of "
                            f"{', '.join(accepted)}")
    if pool:
        config["OPTIONS"]["pool"] = pool
    refuse_secrets(config["OPTIONS"], "options")
    return config


def run_transaction(fn: Callable[[], T], using: str = "default", *, isolation_level: str | None = None,
                    read_only: bool = False, max_attempts: int = MAX_ATTEMPTS, deadline: float = DEADLINE) -> T:
    """Run ``fn()`` in ``transaction.atomic(using=using)`` and run it again when that is safe: after a
    serialization failure or deadlock, or a connection lost before COMMIT (on a new connection), with
    the commit-outcome rules of :func:`lakebase.run_transaction` (a COMMIT that lost its connection is
    looked up with ``pg_xact_status`` rather than run twice). Returns what ``fn`` returned.

    ``fn`` uses the ORM (or ``connections[using].cursor()``) as usual and may run more than once.
    Inside an outer ``atomic()`` block (e.g. a ``TestCase``) the transaction is the outer block's, which
    alone could be re-run: ``fn`` runs once, in a savepoint, and ``isolation_level``/``read_only`` are
    not applied. Raises what :func:`lakebase.run_transaction` raises (``TransactionFailed``,
    ``CommitOutcomeUnknown``, or ``fn``'s own error).
    """
    from django.db import connections, transaction

    from ..transactions import run_transaction as run

    connection = connections[using]
    if connection.in_atomic_block:
        with transaction.atomic(using=using):
            return fn()
    return run(connection, lambda _connection: fn(), isolation_level=isolation_level, read_only=read_only,
               max_attempts=max_attempts, deadline=deadline)


__all__ = ["ENGINE", "database_config", "run_transaction"]
