"""Alembic migrations on Lakebase: :func:`run_migrations`, the body of an ``env.py``.

``lakebase alembic-init DIR`` writes an Alembic environment whose ``env.py`` is::

    from alembic import context
    from lakebase.alembic import run_migrations

    target_metadata = None   # or your models' Base.metadata, for --autogenerate
    run_migrations(context, target_metadata=target_metadata)

Online (``alembic upgrade head``), the migrations run on an engine from
:func:`lakebase.sqlalchemy.create_engine` with a ``NullPool``: every login gets a valid OAuth token
(a migration may take longer than a token lives), rides out a compute waking from scale to zero or
restarting within the connect deadline (``LAKEBASE_CONNECT_DEADLINE``), and replaces a refused token
once. No token or password is in ``alembic.ini`` or a URL: the target comes from the environment, as
for the rest of the library, or from ``sqlalchemy.url`` in ``alembic.ini`` (host, port, database,
user; a password there is refused). An email user name may be written ``%40`` or ``%%40`` there: the
URL is read without configparser's ``%`` interpolation when that fails.

Offline (``alembic upgrade head --sql``), the SQL is printed for the PostgreSQL dialect and nothing
connects.
"""

from __future__ import annotations

import configparser
from typing import Any

from ._extras import requires_extra

with requires_extra("alembic", __name__):
    import alembic  # noqa: F401 - the extra's dependency, named when missing
    from sqlalchemy import pool

from .errors import ConfigurationError


def configured_url(config: Any) -> str | None:
    """``sqlalchemy.url`` of the Alembic config, or None when empty or the template's placeholder.

    A URL that configparser cannot interpolate (``%40`` for the ``@`` of an email user name) is read
    raw instead of failing."""
    try:
        url = config.get_main_option("sqlalchemy.url")
    except (ValueError, configparser.Error):
        url = config.file_config.get(config.config_ini_section, "sqlalchemy.url", raw=True, fallback=None)
    if not url or not url.strip() or url.strip().startswith("driver://"):
        return None
    return str(url).strip()


def run_migrations(context: Any, *, target_metadata: Any = None,
                   configure: dict[str, Any] | None = None, **engine_kwargs: Any) -> None:
    """Run the migrations of ``context`` (``alembic.context``), online or offline.

    ``configure`` is passed on to ``context.configure`` (``compare_type``, ``include_schemas``,
    ``version_table_schema``, ...). ``engine_kwargs`` go to :func:`lakebase.sqlalchemy.create_engine`
    (settings such as ``endpoint``, ``database``, ``connect_deadline``; ``connect_args``).
    """
    options = dict(configure or {})
    url = configured_url(context.config)
    if context.is_offline_mode():
        if url is not None:
            from sqlalchemy.engine import make_url

            if make_url(url).password is not None:
                raise ConfigurationError("sqlalchemy.url in alembic.ini contains a password; lakebase sets the "
                                         "password (a fresh OAuth token) itself", setting="sqlalchemy.url",
                                         value="[REDACTED]", fix="remove the password from sqlalchemy.url")
            context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                              dialect_opts={"paramstyle": "named"}, **options)
        else:
            context.configure(dialect_name="postgresql", target_metadata=target_metadata, literal_binds=True,
                              dialect_opts={"paramstyle": "named"}, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    from .sqlalchemy import create_engine

    engine_kwargs.setdefault("poolclass", pool.NullPool)
    engine = create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def init(directory: str, ini: str = "alembic.ini") -> list[str]:
    """Write an Alembic environment in ``directory`` (and ``ini`` unless it exists) whose ``env.py``
    uses :func:`run_migrations`; the paths written."""
    from importlib import resources
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    ini_path = Path(ini)
    ini_existed = ini_path.exists()
    command.init(Config(str(ini_path)), directory, template="generic")
    env_py = Path(directory) / "env.py"
    env_py.write_text(resources.files("lakebase").joinpath("templates/alembic/env.py").read_text())
    written = [str(env_py)]
    if not ini_existed:
        lines = []
        for line in ini_path.read_text().splitlines():
            if line.startswith("sqlalchemy.url"):
                lines += ["# Not needed with lakebase: the target comes from the environment (ENDPOINT_NAME, PGHOST,",
                          "# PGUSER, PGDATABASE, DATABRICKS_*), the password is a fresh OAuth token for each login.",
                          "# To pin host/user/database here, never with a password (write the @ of an email as %%40):",
                          "# sqlalchemy.url = postgresql+psycopg://you%%40example.com@<host>/databricks_postgres",
                          "sqlalchemy.url ="]
            else:
                lines.append(line)
        ini_path.write_text("\n".join(lines) + "\n")
        written.append(str(ini_path))
    return written


__all__ = ["configured_url", "init", "run_migrations"]
