"""The ``lakebase.django`` database backend: Django's PostgreSQL backend, logging in with fresh tokens.

``DATABASES = {"default": {"ENGINE": "lakebase.django"}}`` is enough in a Databricks App and on a laptop:
where to connect comes from the environment the library reads (``ENDPOINT_NAME``, ``PGHOST``, ``PGPORT``,
``PGDATABASE``, ``PGUSER``, ``PGSSLMODE``, ...; see :class:`lakebase.Settings`). ``NAME``, ``USER``,
``HOST`` and ``PORT`` override the environment, and so do the ``OPTIONS`` named like a
:class:`~lakebase.Settings` field (``endpoint``, ``instance_name``, ``read_only``, ``token_refresh``,
``sslmode``, ``connect_deadline``, ...); every other option is Django's or psycopg's, as for the
``postgresql`` backend. ``PASSWORD`` (or an ``OPTIONS`` password or passfile) is refused: the password is
lakebase's, a fresh OAuth token.

Every physical connection is opened through the library's connector (:mod:`lakebase.connector`): a token
from the process-wide credential cache, the connect retry of :mod:`lakebase.retry` (wake-up, restart, a
refused token replaced once). That holds in each of Django's connection modes:

* ``CONN_MAX_AGE = 0`` (a connection per request) and persistent connections (``CONN_MAX_AGE > 0``;
  with ``CONN_HEALTH_CHECKS = True`` a connection the server ended is replaced at the next request);
* Django's native pool (``OPTIONS = {"pool": True}`` or a dict of psycopg_pool options): Django builds its
  pool once with ``kwargs=get_connection_params()``, so a password put there would go stale after an
  hour. Here the pool is a :class:`lakebase.ConnectionPool` whose connection class logs in with a token
  fetched when *it* connects, so connections opened hours after the pool was created carry fresh tokens.
  Its default ``check`` is :func:`lakebase.psycopg.check_liveness` (a connection the server ended is
  replaced without a round trip); ``CONN_HEALTH_CHECKS = True`` makes it psycopg_pool's
  ``check_connection`` (a round trip per checkout), as in Django.

psycopg 3 first (``pip install 'lakebase[django]'``). Where psycopg2 is what is installed, Django's
PostgreSQL backend uses it, and so does this one: each connection is opened by
:func:`lakebase.psycopg2.open_connection` (the same token cache and connect retry), in the modes Django
offers with psycopg2 (``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``; no native pool, as in Django).
"""

from __future__ import annotations

from typing import Any

from .._extras import requires_extra

with requires_extra("django", __name__):
    import django  # noqa: F401 - first, so that a missing Django is named as such
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured as DjangoImproperlyConfigured

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.base.validation import BaseDatabaseValidation

try:  # Django's PostgreSQL backend: psycopg 3 if it imports, else psycopg2
    from django.db.backends.postgresql import base as postgresql
except DjangoImproperlyConfigured as exc:  # neither is installed
    raise DjangoImproperlyConfigured(
        "The lakebase.django database backend needs psycopg 3, which is not installed (nor is psycopg2): "
        "pip install 'lakebase[django]' (psycopg[binary] and psycopg-pool come with it)"
    ) from exc

from .._adapter import SETTINGS_FIELDS, refuse_secrets
from ..connector import Connector, get_connector
from ..errors import ConfigurationError
from ..settings import DEFAULT_DATABASE, Settings
from .client import DatabaseClient

if postgresql.is_psycopg3:
    from .. import psycopg as adapter
    from ..psycopg import ConnectionPool
else:  # what Django uses without psycopg 3; no native pool (Django refuses it)
    from .. import psycopg2 as adapter  # type: ignore[no-redef]

#: The top-level DATABASES keys that override a :class:`~lakebase.Settings` field.
DJANGO_KEYS = {"NAME": "database", "USER": "user", "HOST": "host", "PORT": "port"}


class ImproperlyConfigured(ConfigurationError, DjangoImproperlyConfigured):
    """A bad ``DATABASES`` entry: lakebase's :class:`~lakebase.ConfigurationError` and Django's
    ``ImproperlyConfigured`` at once (``setting``, ``value`` and ``fix`` as for the former)."""


def _located(exc: ConfigurationError, alias: str, options: dict[str, Any]) -> ImproperlyConfigured:
    """``exc`` (from :class:`~lakebase.Settings`) with where in ``DATABASES`` the bad value was set."""
    where = f"DATABASES[{alias!r}]"
    keys = {field: key for key, field in DJANGO_KEYS.items()}
    if exc.setting in options:
        where += f"['OPTIONS'][{exc.setting!r}]"
    elif exc.setting in keys:
        where += f"[{keys[exc.setting]!r}]"
    error = ImproperlyConfigured(f"{where}: {exc}", setting=exc.setting, value=exc.value)
    error.fix = exc.fix
    return error


def lakebase_settings(settings_dict: dict[str, Any], alias: str = "default") -> Settings:
    """The :class:`~lakebase.Settings` of a ``DATABASES`` entry: its ``NAME``/``USER``/``HOST``/``PORT``
    and lakebase ``OPTIONS`` over the environment. ``NAME=None`` (Django's "no database" connection, used
    to create and drop test databases) is the ``postgres`` database. Raises :class:`ImproperlyConfigured`."""
    where = f"DATABASES[{alias!r}]"
    if settings_dict.get("PASSWORD"):
        raise ImproperlyConfigured(
            f"{where}['PASSWORD'] is set, but lakebase sets the password (a fresh OAuth token) itself",
            setting="PASSWORD", value="[REDACTED]", fix=f"remove PASSWORD from {where}")
    options = dict(settings_dict.get("OPTIONS") or {})
    try:
        refuse_secrets(options, f"{where}['OPTIONS']")
    except ConfigurationError as exc:
        raise ImproperlyConfigured(str(exc), setting=exc.setting, value=exc.value) from None
    overrides = {k: v for k, v in options.items() if k in SETTINGS_FIELDS}
    for key, field in DJANGO_KEYS.items():
        value = settings_dict.get(key)
        if value not in (None, ""):
            overrides[field] = value
    if "NAME" in settings_dict and settings_dict["NAME"] is None:
        overrides["database"] = "postgres"
    try:
        return Settings(**overrides)
    except ConfigurationError as exc:
        raise _located(exc, alias, options) from None


class _Driver:
    """What the backend calls ``Database`` (the psycopg module), except that ``connect`` opens through
    the wrapper's connector: a fresh token and the connect retry for every physical connection."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    def connect(self, **params: Any) -> Any:
        return adapter.open_connection(self._wrapper.lakebase_connector(), **params)

    def __getattr__(self, name: str) -> Any:
        return getattr(postgresql.Database, name)


class DatabaseValidation(BaseDatabaseValidation):
    """``manage.py check --database ALIAS``: the lakebase settings of the entry, without connecting."""

    def check(self, **kwargs: Any) -> list[Any]:
        issues = list(super().check(**kwargs))
        try:
            self.connection.lakebase_settings()
            self.connection.refuse_pool_without_psycopg3()
        except ConfigurationError as exc:
            issues.append(checks.Error(str(exc), hint=exc.fix, obj=f"DATABASES[{self.connection.alias!r}]",
                                       id="lakebase.E001"))
        return issues


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """Django's PostgreSQL backend (psycopg 3, else psycopg2) whose connections log in to Lakebase with
    fresh tokens."""

    settings_dict: dict[str, Any]
    display_name = "Lakebase PostgreSQL"
    client_class = DatabaseClient
    validation_class = DatabaseValidation

    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        super().__init__(settings_dict, alias)
        if settings_dict.get("NAME") == "":  # ENGINE alone: the test runner names test databases after it
            try:
                settings_dict["NAME"] = self.lakebase_settings().database
            except ConfigurationError:  # reported when connecting, and by `manage.py check`
                settings_dict["NAME"] = DEFAULT_DATABASE
        self.Database = _Driver(self)

    # ---- lakebase ------------------------------------------------------------------------------------
    def lakebase_settings(self) -> Settings:
        return lakebase_settings(self.settings_dict, self.alias)

    def lakebase_connector(self) -> Connector:
        """The shared connector of this entry's settings (its credential cache is the process's)."""
        return get_connector(self.lakebase_settings())

    def refuse_pool_without_psycopg3(self) -> None:
        """Django's native pool is psycopg 3's: with psycopg2 ``OPTIONS['pool']`` is an error that says so."""
        if self.settings_dict["OPTIONS"].get("pool") and not postgresql.is_psycopg3:
            where = f"DATABASES[{self.alias!r}]['OPTIONS']['pool']"
            raise ImproperlyConfigured(
                f"{where} asks for Django's native pool, which needs psycopg 3, but psycopg 3 is not installed "
                "(Django is using psycopg2)", setting="pool", value=self.settings_dict["OPTIONS"]["pool"],
                fix=f"pip install 'lakebase[django]' (psycopg 3 and psycopg-pool), or remove {where} and keep "
                    "connections with CONN_MAX_AGE > 0 and CONN_HEALTH_CHECKS = True")

    # ---- Django ----------------------------------------------------------------------------------------
    def get_connection_params(self) -> dict[str, Any]:
        """Django's psycopg arguments, without what lakebase sets (host, port, database, user, password,
        TLS: from the settings, for each connection)."""
        if self.alias in self._connection_pools and self.settings_dict["OPTIONS"].get("pool"):
            # Django calls this on every checkout from its pool and then only uses the pool, which was
            # built from them (and validated): skip rebuilding them per request.
            return {}
        settings = self.lakebase_settings()  # a bad entry fails here, before anything else
        self.refuse_pool_without_psycopg3()
        own: dict[str, Any] = self.settings_dict
        options = {k: v for k, v in own["OPTIONS"].items() if k not in SETTINGS_FIELDS}
        self.settings_dict = {**own, "NAME": settings.database, "USER": "", "PASSWORD": "", "HOST": "",
                              "PORT": "", "OPTIONS": options}
        try:
            params: dict[str, Any] = super().get_connection_params()
        finally:
            self.settings_dict = own
        params.pop("dbname", None)
        return params

    @property
    def pool(self) -> ConnectionPool | None:
        """Django's native pool, as a :class:`lakebase.ConnectionPool` (see the module doc)."""
        pool: ConnectionPool | None = self._connection_pools.get(self.alias)
        if pool is not None:  # the common case, several times per request: made (and checked) already
            return pool
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not pool_options or not postgresql.is_psycopg3:
            return None  # without psycopg 3 get_connection_params() refuses OPTIONS['pool']
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise DjangoImproperlyConfigured(
                    f"DATABASES[{self.alias!r}]: pooling doesn't support persistent connections; set "
                    "CONN_MAX_AGE to 0 (connections go back to the pool after each request) or remove "
                    "OPTIONS['pool']")
            options = {} if pool_options is True else dict(pool_options)
            kwargs = self.get_connection_params()
            kwargs["autocommit"] = True  # as in Django: it sets autocommit itself later
            check = (ConnectionPool.check_connection if self.settings_dict["CONN_HEALTH_CHECKS"]
                     else ConnectionPool.check_liveness)
            made = ConnectionPool(settings=self.lakebase_settings(), kwargs=kwargs,
                                  **{"open": False, "configure": self._configure_connection, "check": check,
                                     "name": f"django-{self.alias}", **options})
            self._connection_pools.setdefault(self.alias, made)
        return self._connection_pools[self.alias]
