"""Alembic environment for Lakebase, written by `lakebase alembic-init`.

Connections come from lakebase, not from a URL: each login gets a fresh OAuth token (so a migration
may outlast a token), waits through a compute waking from scale to zero or restarting, and a refused
token is replaced once. Nothing secret belongs in alembic.ini: the target comes from the environment
(ENDPOINT_NAME, PGHOST, PGUSER, PGDATABASE and the workspace credentials: DATABRICKS_HOST with
DATABRICKS_TOKEN, DATABRICKS_CLIENT_ID/SECRET, or a `databricks auth login` profile), or from a
sqlalchemy.url in alembic.ini without a password (an email user name written as %%40 there).

    alembic upgrade head          # online: runs the migrations against Lakebase
    alembic upgrade head --sql    # offline: prints the SQL, connects to nothing
"""

from alembic import context

from lakebase.alembic import run_migrations

# Your models' MetaData, for `alembic revision --autogenerate`:
# from myapp.models import Base
# target_metadata = Base.metadata
target_metadata = None

run_migrations(context, target_metadata=target_metadata)
