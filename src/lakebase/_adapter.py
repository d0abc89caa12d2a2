"""The driver-adapter layer: the argument rules every driver integration shares, written once.

Each driver module is one small adapter over :class:`~lakebase.connector.Connector`:
:mod:`lakebase.psycopg` (``open_connection``, ``open_connection_async``), :mod:`lakebase.psycopg2` and
:mod:`lakebase.asyncpg` (``open_connection``) each expose a package-level function that opens one
connection through a connector (fresh token, retries); :mod:`lakebase.sqlalchemy` builds its engines
on those functions (and :mod:`lakebase.streamlit` its connection on an engine).
What every adapter enforces on its caller's arguments lives here:

* :func:`split_settings`: arguments named like :class:`~lakebase.Settings` fields configure the
  target; the rest belong to the driver (or its pool, or the engine);
* :func:`refuse_secrets`: a password from the caller is refused, as is anything else that would
  carry one (``passfile``, asyncpg's ``dsn``): lakebase sets the password, a fresh OAuth token;
* :func:`require_tls`: a TLS mode that would allow plaintext is refused (the token is the password);
* :func:`check_arguments`: both, on one set of driver arguments;
* :func:`libpq_params`: a target's libpq parameters (psycopg's, and through ``lakebase env`` psql's);
* :func:`libpq_connect_params`, :func:`libpq_connect_timeout`: those merged with a caller's libpq
  arguments, and the per-attempt ``connect_timeout`` (the libpq drivers: psycopg and psycopg2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .settings import SAFE_SSLMODES, Settings

if TYPE_CHECKING:
    from .endpoints import Target

#: The arguments that configure the target rather than the driver (the :class:`~lakebase.Settings` fields).
SETTINGS_FIELDS = frozenset(f.name for f in fields(Settings) if f.name != "sources")

#: What a caller may not pass to a driver: the password is lakebase's (a fresh OAuth token).
PASSWORD_ARGUMENTS = ("password", "passfile")

_SHOWN = {"dsn": "a DSN"}
_FIXES = {"dsn": "remove dsn; use host=, port=, database=, user= (or the PG* environment variables) instead"}


def split_settings(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the arguments that are settings overrides, the others)."""
    overrides = {k: v for k, v in options.items() if k in SETTINGS_FIELDS}
    rest = {k: v for k, v in options.items() if k not in SETTINGS_FIELDS}
    return overrides, rest


def refuse_secrets(given: Mapping[str, Any], where: str = "the connection arguments", *,
                   names: Iterable[str] = PASSWORD_ARGUMENTS, sets: str = "the password") -> None:
    """Raise :class:`~lakebase.ConfigurationError` if ``given`` sets one of ``names`` (a None value is unset).

    ``where`` names the arguments in the message (``connect_args``...); ``sets`` says what lakebase sets
    itself instead.
    """
    for name in names:
        if given.get(name) is not None:
            raise ConfigurationError(
                f"{_SHOWN.get(name, name + '=')} was given in {where}, but lakebase sets {sets} "
                "(a fresh OAuth token) itself",
                setting=name, value="[REDACTED]", fix=_FIXES.get(name, f"remove {name} from {where}"),
            )


def require_tls(value: Any, setting: str = "sslmode", where: str | None = "the connection arguments", *,
                fix: str = "use sslmode=require (or verify-full), or leave it out") -> str:
    """``value``, a libpq ``sslmode``, in lower case if it encrypts; else :class:`~lakebase.ConfigurationError`.

    ``None`` is refused too: a driver that drops it would fall back to libpq's default, ``prefer``.
    """
    mode = str(value).lower()
    if mode in SAFE_SSLMODES:
        return mode
    place = f" in {where}" if where else ""
    raise ConfigurationError(f"{setting}={value!r}{place}: Lakebase requires TLS (the token is the password)",
                             setting=setting, value=value, fix=fix)


def check_arguments(given: Mapping[str, Any], where: str = "the connection arguments", *,
                    names: Iterable[str] = PASSWORD_ARGUMENTS, sets: str = "the password") -> None:
    """The rules for driver arguments known before connecting: an ``sslmode`` given must encrypt; no password."""
    if given.get("sslmode") is not None:
        require_tls(given["sslmode"], where=where)
    refuse_secrets(given, where, names=names, sets=sets)


#: TCP keepalives: notice a dead peer (a restarted compute, a dropped NAT entry) within ~1 minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def connection_string(given: str, kwargs: Mapping[str, Any], keyword: str) -> tuple[str, dict[str, Any]]:
    """The caller's libpq connection string, whether given as the argument or as ``keyword=`` (what
    ``connect_args``, a pool's ``kwargs`` or Django's ``OPTIONS`` pass), and the other keyword arguments:
    checked alike, never passed through unchecked."""
    rest = dict(kwargs)
    if keyword not in rest:
        return given, rest
    if given:
        raise TypeError(f"got a {keyword} both as an argument and as {keyword}=")
    return rest.pop(keyword) or "", rest


def libpq_params(target: Target, hostaddr: str | None = None) -> dict[str, Any]:
    """The connection parameters of ``target`` for libpq/psycopg, without the password."""
    params: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "dbname": target.database,
        "user": target.user,
        "sslmode": target.sslmode,
        "application_name": target.application_name,
        **KEEPALIVES,
    }
    if target.sslrootcert:
        params["sslrootcert"] = target.sslrootcert
    if hostaddr:
        params["hostaddr"] = hostaddr
    return params


def libpq_connect_params(target: Target, hostaddr: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Ours, then the caller's libpq arguments (conninfo and keywords, merged); the password stays ours."""
    params = libpq_params(target, hostaddr)
    given = dict(given)
    refuse_secrets(given)
    for secret in PASSWORD_ARGUMENTS:  # given as None: unset
        given.pop(secret, None)
    if "host" in given and "hostaddr" not in given:
        params.pop("hostaddr", None)
    params.update(given)
    require_tls(params.get("sslmode", ""))  # sslmode=None too: a driver would drop it (libpq's prefer)
    return params


def libpq_connect_timeout(attempt_timeout: float, requested: Any) -> int:
    """libpq's connect_timeout: whole seconds, at least 2; never longer than the caller asked for."""
    seconds = attempt_timeout
    if requested not in (None, ""):
        try:
            if float(requested) > 0:
                seconds = min(seconds, float(requested))
        except (TypeError, ValueError):
            pass
    return max(2, math.ceil(seconds))
