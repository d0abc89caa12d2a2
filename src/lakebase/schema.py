"""The tutorial's step 2 as an idempotent function: a role for the app, grants, the notes table.

Run it as the project owner (a developer with a PAT or ``databricks auth login``; ``PGUSER`` is the
owner's email), once before the app is deployed and again whenever you like::

    lakebase init-schema --app-client-id <the app's DATABRICKS_CLIENT_ID>

or from Python::

    from lakebase.schema import init_schema
    report = init_schema("6b215d2b-f099-4bdb-900a-60837201ecec")

It does what the Databricks tutorial's SQL does, so that the sample app works, and a little more:

* ``CREATE TABLE IF NOT EXISTS notes (...)``;
* what ``lakebase grant <client id> --schema public --create-role <type>`` does (:mod:`lakebase.grants`):
  ``databricks_create_role`` unless the role exists, ``GRANT CONNECT ON DATABASE``, ``GRANT CREATE,
  USAGE ON SCHEMA public``, ``SELECT, INSERT, UPDATE, DELETE`` on all its tables, ``USAGE, SELECT``
  on all its sequences (the tutorial forgets the id sequence, which is fine for its read-only page but
  makes every ``INSERT`` by the app fail with ``permission denied for sequence notes_id_seq``), and
  the same by default on tables and sequences the owner creates later;
* the three sample notes, only when the table was created by this run (re-running keeps your notes).

Every statement is safe to repeat; the whole step runs in one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .grants import IDENTITY_TYPES

SAMPLE_NOTES = (
    "Welcome to Lakebase Autoscaling!",
    "This app connects to Postgres",
    "Data fetched from your database",
)

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def guess_identity_type(identity: str) -> str:
    """``service_principal`` for an application id (a UUID), ``user`` for an email, else ``group``."""
    if _UUID_RE.match(identity):
        return "service_principal"
    if "@" in identity:
        return "user"
    return "group"


@dataclass
class SchemaReport:
    """What :func:`init_schema` did (``actions``) and found already done (``unchanged``)."""

    role: str
    database: str
    schema: str
    table: str
    role_created: bool = False
    table_created: bool = False
    notes_inserted: int = 0
    actions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role, "database": self.database, "schema": self.schema, "table": self.table,
            "role_created": self.role_created, "table_created": self.table_created,
            "notes_inserted": self.notes_inserted, "actions": list(self.actions),
        }


def init_schema(app_client_id: str, *, identity_type: str | None = None, schema: str = "public",
                table: str = "notes", sample_data: bool = True, conn: Any = None,
                **connect_args: Any) -> SchemaReport:
    """Create (or complete) the app's role, grants, table and sample notes; idempotent.

    ``conn`` is an open psycopg connection of the project owner; without it one is opened with
    :func:`lakebase.connect` (``connect_args`` are passed on, the rest comes from the environment).
    ``identity_type`` defaults to a guess from ``app_client_id`` (see :func:`guess_identity_type`).
    """
    from psycopg import sql

    from .grants import grant

    identity = app_client_id.strip()
    if not identity:
        raise ValueError("app_client_id is empty: pass the app's DATABRICKS_CLIENT_ID (its Postgres role)")
    kind = (identity_type or guess_identity_type(identity)).lower()
    if kind not in IDENTITY_TYPES:
        raise ValueError(f"identity_type must be one of {', '.join(IDENTITY_TYPES)}, got {identity_type!r}")

    own = conn is None
    if own:
        import lakebase

        conn = lakebase.connect(**connect_args)
    try:
        qualified = sql.Identifier(schema, table)
        with conn.transaction():
            database = conn.execute("SELECT current_database()").fetchone()[0]
            report = SchemaReport(role=identity, database=database, schema=schema, table=table)
            exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)).fetchone()[0]
            if exists is None:
                conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id SERIAL PRIMARY KEY, content TEXT NOT NULL, "
                    "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)").format(qualified))
                report.table_created = True
                report.actions.append(f"created table {schema}.{table}")
            granted = grant(identity, schemas=[schema], create_role=kind, conn=conn)
            report.role_created = granted.role_created
            report.actions += [("granted " + change) if not change.startswith("create role") else change
                               for change in granted.changed]
            if report.table_created and sample_data:
                with conn.cursor() as cur:
                    cur.executemany(sql.SQL("INSERT INTO {} (content) VALUES (%s)").format(qualified),
                                    [(note,) for note in SAMPLE_NOTES])
                report.notes_inserted = len(SAMPLE_NOTES)
                report.actions.append(f"inserted {len(SAMPLE_NOTES)} sample notes")
        return report
    finally:
        if own:
            conn.close()
