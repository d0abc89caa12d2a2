"""Where to connect and how: explicit arguments first, then the environment, then defaults.

The environment is what Databricks Apps inject (``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``,
``PGSSLMODE``, ``PGAPPNAME``, ``DATABRICKS_CLIENT_ID``) plus the endpoint path an ``app.yaml`` adds
(``ENDPOINT_NAME``, ``PGENDPOINT`` or ``LAKEBASE_ENDPOINT``), or ``LAKEBASE_INSTANCE_NAME`` for a
Provisioned instance; with only ``PGHOST``, the endpoint that has that host is found later (one listing
of the workspace). Everything is validated here, without network calls; a bad value raises a
:class:`~lakebase.errors.ConfigurationError` that names the variable, what was found and the fix.
What needs the workspace API (the host from the endpoint, the user from ``/Me``) is looked up later
by :mod:`lakebase.endpoints`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import ConfigurationError

DEFAULT_DATABASE = "databricks_postgres"
DEFAULT_PORT = 5432
DEFAULT_APPLICATION_NAME = "lakebase-python"
ENDPOINT_VARIABLES = ("ENDPOINT_NAME", "PGENDPOINT", "LAKEBASE_ENDPOINT")
INSTANCE_VARIABLE = "LAKEBASE_INSTANCE_NAME"
SAFE_SSLMODES = ("require", "verify-ca", "verify-full")
UNSAFE_SSLMODES = ("disable", "allow", "prefer")

_ID = r"[a-z0-9][a-z0-9-]{0,62}"  # the docs say letter first; project ids shown in the UI can be UUIDs
_ENDPOINT_RE = re.compile(rf"^projects/({_ID})/branches/({_ID})/endpoints/({_ID})$")
_ENDPOINT_FORM = "projects/<project>/branches/<branch>/endpoints/<endpoint>"

TokenRefresh = Literal["ahead", "lazy"]


@dataclass(frozen=True)
class Settings:
    """Connection settings for Lakebase; ``Settings()`` reads them from the environment.

    Every argument left as None is taken from the environment (or ``env=``, a mapping used instead
    of ``os.environ``), else its default:

    ====================  ======================================================  ====================
    argument              environment                                             default
    ====================  ======================================================  ====================
    ``endpoint``          ``ENDPOINT_NAME``, ``PGENDPOINT``, ``LAKEBASE_ENDPOINT``   the one with ``host``
    ``instance_name``     ``LAKEBASE_INSTANCE_NAME`` (Lakebase Provisioned)
    ``host``              ``PGHOST``                                              from the endpoint
    ``port``              ``PGPORT``                                              5432
    ``database``          ``PGDATABASE``                                          databricks_postgres
    ``user``              ``PGUSER``, then ``DATABRICKS_CLIENT_ID``                the workspace's /Me
    ``sslmode``           ``PGSSLMODE`` (require, verify-ca or verify-full)       require
    ``sslrootcert``       ``PGSSLROOTCERT``
    ``application_name``  ``PGAPPNAME``                                           lakebase-python
    ``read_only``         ``LAKEBASE_READ_ONLY``: use the read-only host            false
    ``token_refresh``     ``LAKEBASE_TOKEN_REFRESH``: ``ahead`` or ``lazy``           ahead
    ``connect_deadline``  ``LAKEBASE_CONNECT_DEADLINE``: seconds for all retries    30
    ``connect_timeout``   ``PGCONNECT_TIMEOUT``: seconds per attempt                10
    ``api_timeout``       ``LAKEBASE_API_TIMEOUT``: seconds per workspace API call  10
    ====================  ======================================================  ====================

    ``token_refresh="ahead"`` refreshes the token in a background thread before it expires, so no
    connection waits on the API; ``"lazy"`` refreshes when a connection needs it, with no thread
    (serverless functions, short scripts). Settings are immutable and hashable; :meth:`replace`
    returns a changed copy.
    """

    endpoint: str | None = None
    instance_name: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT
    database: str = DEFAULT_DATABASE
    user: str | None = None
    sslmode: str = "require"
    sslrootcert: str | None = None
    application_name: str = DEFAULT_APPLICATION_NAME
    read_only: bool = False
    token_refresh: TokenRefresh = "ahead"
    connect_deadline: float = 30.0
    connect_timeout: float = 10.0
    api_timeout: float = 10.0
    # Where each value came from ("argument endpoint", "environment variable PGPORT", "default"),
    # so that later errors can name it.
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        instance_name: str | None = None,
        host: str | None = None,
        port: int | str | None = None,
        database: str | None = None,
        user: str | None = None,
        sslmode: str | None = None,
        sslrootcert: str | None = None,
        application_name: str | None = None,
        read_only: bool | str | None = None,
        token_refresh: str | None = None,
        connect_deadline: float | str | None = None,
        connect_timeout: float | str | None = None,
        api_timeout: float | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        reader = _Reader(os.environ if env is None else env)
        get, source = reader.first, reader.sources.get
        values: dict[str, Any] = {}

        values["endpoint"] = _endpoint(get("endpoint", endpoint, ENDPOINT_VARIABLES), source("endpoint"))
        values["instance_name"] = _instance(get("instance_name", instance_name, (INSTANCE_VARIABLE,)),
                                            source("instance_name"))
        values["host"] = _host(get("host", host, ("PGHOST",)), source("host"))
        if values["endpoint"] is None and values["instance_name"] is None and values["host"] is None:
            raise ConfigurationError(
                "No Lakebase endpoint or instance is configured: none of the environment variables "
                f"{', '.join(ENDPOINT_VARIABLES)}, {INSTANCE_VARIABLE} or PGHOST is set and no endpoint=, "
                "instance_name= or host= argument was given",
                setting="endpoint",
                fix=f"set ENDPOINT_NAME={_ENDPOINT_FORM} for Lakebase Autoscaling (in a Databricks App, "
                "add it to app.yaml with `valueFrom: postgres`; `databricks postgres list-endpoints` shows "
                f"the names), or {INSTANCE_VARIABLE}=<instance> for Lakebase Provisioned, or pass "
                "endpoint= or instance_name= to lakebase (with only PGHOST set, lakebase finds the endpoint "
                "that has this host)",
            )
        if values["endpoint"] is not None and values["instance_name"] is not None:
            raise ConfigurationError(
                f"Both an Autoscaling endpoint ({reader.sources['endpoint']}={values['endpoint']!r}) and a "
                f"Provisioned instance ({reader.sources['instance_name']}={values['instance_name']!r}) are "
                "configured; lakebase cannot tell which one to use",
                setting="endpoint",
                fix="keep only one of them",
            )

        values["port"] = _port(get("port", port, ("PGPORT",)), source("port"))
        values["database"] = _nonempty(get("database", database, ("PGDATABASE",)), "database",
                                       DEFAULT_DATABASE)
        values["user"] = get("user", user, ("PGUSER", "DATABRICKS_CLIENT_ID")) or None
        values["sslmode"] = _sslmode(get("sslmode", sslmode, ("PGSSLMODE",)), source("sslmode"))
        values["sslrootcert"] = get("sslrootcert", sslrootcert, ("PGSSLROOTCERT",)) or None
        values["application_name"] = _nonempty(get("application_name", application_name, ("PGAPPNAME",)),
                                               "application_name", DEFAULT_APPLICATION_NAME)
        values["read_only"] = _bool(get("read_only", read_only, ("LAKEBASE_READ_ONLY",)), source("read_only"))
        values["token_refresh"] = _token_refresh(
            get("token_refresh", token_refresh, ("LAKEBASE_TOKEN_REFRESH",)), source("token_refresh"))
        for name, explicit, variable, default in (
            ("connect_deadline", connect_deadline, "LAKEBASE_CONNECT_DEADLINE", 30.0),
            ("connect_timeout", connect_timeout, "PGCONNECT_TIMEOUT", 10.0),
            ("api_timeout", api_timeout, "LAKEBASE_API_TIMEOUT", 10.0),
        ):
            values[name] = _seconds(get(name, explicit, (variable,)), source(name), default)
        values["sources"] = dict(reader.sources)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # ---- derived -------------------------------------------------------------------------------
    @property
    def product(self) -> Literal["autoscaling", "provisioned"]:
        return "provisioned" if self.instance_name is not None else "autoscaling"

    @property
    def find_endpoint(self) -> bool:
        """Only a host is configured: the endpoint is the one that has it (found by
        :func:`lakebase.endpoints.find_endpoint`, which lists the workspace's endpoints)."""
        return self.endpoint is None and self.instance_name is None

    @property
    def target_name(self) -> str:
        """The endpoint name (Autoscaling) or instance name (Provisioned); the host while the endpoint of
        a host-only configuration is not found yet."""
        name = self.endpoint if self.endpoint is not None else self.instance_name
        if name is None:
            assert self.host is not None
            return self.host
        return name

    def source(self, name: str) -> str:
        """How ``name`` was set: ``"argument port"``, ``"environment variable PGPORT"`` or ``"default"``."""
        return self.sources.get(name, "default")

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (validated like constructor arguments)."""
        current = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        current.update(changes)
        new = Settings(env={}, **current)
        sources = {**self.sources, **{k: v for k, v in new.sources.items() if k in changes}}
        object.__setattr__(new, "sources", sources)
        return new

    def __replace__(self, **changes: Any) -> Settings:  # copy.replace (3.13)
        return self.replace(**changes)


class _Reader:
    """Looks up a value: explicit argument, else the first set environment variable; records the source."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.sources: dict[str, str] = {}

    def first(self, name: str, explicit: Any, variables: tuple[str, ...]) -> Any:
        if explicit is not None:
            self.sources[name] = f"argument {name}"
            return explicit
        found = [(var, self.env[var]) for var in variables if self.env.get(var, "").strip()]
        if not found:
            return None
        var, value = found[0]
        if name == "endpoint" and len({v.strip() for _, v in found}) > 1:
            shown = ", ".join(f"{k}={v!r}" for k, v in found)
            raise ConfigurationError(
                f"The environment names different Lakebase endpoints ({shown})",
                setting=var, value=value,
                fix="set only one of " + ", ".join(variables) + ", or make them agree",
            )
        self.sources[name] = f"environment variable {var}"
        return value.strip()


def _where(source: str | None) -> str:
    """``PGPORT`` for an environment variable, ``port=`` for an argument."""
    if source is None:
        return "value"
    if source.startswith("environment variable "):
        return source[len("environment variable "):]
    return source[len("argument "):] if source.startswith("argument ") else source


def _endpoint(value: Any, source: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not _ENDPOINT_RE.match(text):
        hint = ""
        if text.startswith("ep-") or "/" not in text:
            hint = " (it looks like an endpoint id or host; the full resource name is needed)"
        raise ConfigurationError(
            f"{_where(source)}={text!r} is not a Lakebase endpoint name{hint}: expected the form "
            f"{_ENDPOINT_FORM} with lowercase ids (letters, digits and hyphens, at most 63 chars)",
            setting=_where(source), value=text,
            fix="copy the endpoint's `name` from `databricks postgres list-endpoints "
            "projects/<project>/branches/<branch>`, "
            "e.g. projects/my-app/branches/production/endpoints/primary",
        )
    return text


def _instance(value: Any, source: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if not text or "/" in text or " " in text:
        raise ConfigurationError(
            f"{_where(source)}={text!r} is not a Lakebase Provisioned instance name",
            setting=_where(source), value=text,
            fix="use the instance name shown by `databricks database list-database-instances`",
        )
    return text


def _host(value: Any, source: str | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    if "://" in text or "/" in text or " " in text:
        raise ConfigurationError(
            f"{_where(source)}={text!r} is not a hostname",
            setting=_where(source), value=text,
            fix="use the bare endpoint hostname, e.g. "
            "ep-cool-name-123.database.us-west-2.cloud.databricks.com "
            "(or unset it to have it looked up from the endpoint)",
        )
    return text or None


def _port(value: Any, source: str | None) -> int:
    if value is None:
        return DEFAULT_PORT
    try:
        port = int(str(value).strip())
    except ValueError:
        port = -1
    if isinstance(value, bool) or not 1 <= port <= 65535:
        raise ConfigurationError(
            f"{_where(source)}={value!r} is not a port number (expected an integer between 1 and 65535)",
            setting=_where(source), value=value,
            fix=f"set {_where(source)}={DEFAULT_PORT} (the Lakebase port) or unset it",
        )
    return port


def _nonempty(value: Any, name: str, default: str) -> str:
    if value is None:
        return default
    text = str(value).strip()
    if not text:
        raise ConfigurationError(f"{name} is empty", setting=name, value=value,
                                 fix=f"unset it to use {default!r}")
    return text


def _sslmode(value: Any, source: str | None) -> str:
    if value is None:
        return "require"
    mode = str(value).strip().lower()
    if mode in UNSAFE_SSLMODES:
        raise ConfigurationError(
            f"{_where(source)}={value!r}: Lakebase requires TLS (the OAuth token is sent as the password), "
            f"and sslmode={mode} would allow an unencrypted connection",
            setting=_where(source), value=value,
            fix=f"set {_where(source)}=require (or verify-full with sslrootcert), or unset it to use require",
        )
    if mode not in SAFE_SSLMODES:
        raise ConfigurationError(
            f"{_where(source)}={value!r} is not an sslmode Lakebase accepts "
            f"(expected one of {', '.join(SAFE_SSLMODES)})",
            setting=_where(source), value=value, fix=f"set {_where(source)}=require, or unset it",
        )
    return mode


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(value: Any, source: str | None) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(
        f"{_where(source)}={value!r} is not a boolean", setting=_where(source), value=value,
        fix="use true or false",
    )


def _token_refresh(value: Any, source: str | None) -> TokenRefresh:
    if value is None:
        return "ahead"
    text = str(value).strip().lower()
    if text not in ("ahead", "lazy"):
        raise ConfigurationError(
            f"{_where(source)}={value!r} is not a token refresh strategy (expected 'ahead' or 'lazy')",
            setting=_where(source), value=value,
            fix="use 'ahead' (background refresh, the default) or 'lazy' (no background thread: "
            "serverless functions and short scripts)",
        )
    return text  # type: ignore[return-value]


def _seconds(value: Any, source: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(str(value).strip()) if not isinstance(value, bool) else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:
        raise ConfigurationError(
            f"{_where(source)}={value!r} is not a positive number of seconds",
            setting=_where(source), value=value, fix=f"use a number such as {default:g}, or unset it",
        )
    return seconds

