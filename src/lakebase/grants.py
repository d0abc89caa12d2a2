"""Give a role what an app needs on a Lakebase database, now and for tables created later.

The fix for ``permission denied for schema/table/sequence`` after each new table::

    lakebase grant <role> [--schema S]... [--read-only] [--create-role service_principal|user|group] [--dry-run]

or from Python::

    from lakebase.grants import grant
    report = grant("6b215d2b-f099-4bdb-900a-60837201ecec", schemas=["public"])

Run it as the project owner (or the role that owns the schemas' tables). It:

* creates the OAuth role with ``databricks_create_role`` when it is missing and ``create_role`` says
  which kind of identity it is (a role that is missing otherwise is an error naming the fix);
* ``GRANT CONNECT ON DATABASE``; on each schema ``GRANT USAGE`` (and ``CREATE`` unless read-only);
* on all the schema's tables ``SELECT, INSERT, UPDATE, DELETE`` (``SELECT`` when read-only), on all its
  sequences ``USAGE, SELECT`` (``SELECT``): without the sequence grant every ``INSERT`` into a
  ``SERIAL``/identity table fails with ``permission denied for sequence``;
* ``ALTER DEFAULT PRIVILEGES IN SCHEMA ... GRANT`` the same on tables and sequences created later.
  Postgres applies default privileges to objects created *by the role that ran the statement*: tables
  that you (the role running this) create later are covered; tables created by another role (say
  migrations run as a third identity) are not: run ``lakebase grant`` as that role too.

Every statement is safe to repeat, all of them run in one transaction, and the report says which
privileges the role did not have before. Identifiers (role names are emails or UUIDs) are quoted by
psycopg, never pasted into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

IDENTITY_TYPES = ("service_principal", "user", "group")

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "SELECT")
DEFAULT_PRIVILEGES_NOTE = ("ALTER DEFAULT PRIVILEGES covers tables and sequences created later by {owner} (the role "
                           "that ran it); objects another role creates need `lakebase grant` run as that role")


@dataclass
class GrantReport:
    """What :func:`grant` changed (``changed``), what the role already had (``unchanged``), the SQL."""

    role: str
    database: str
    schemas: list[str]
    read_only: bool
    owner: str
    role_created: bool = False
    role_exists: bool = True
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return DEFAULT_PRIVILEGES_NOTE.format(owner=self.owner)

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "database": self.database, "schemas": list(self.schemas),
                "read_only": self.read_only, "owner": self.owner, "role_created": self.role_created,
                "role_exists": self.role_exists,
                "changed": list(self.changed), "unchanged": list(self.unchanged),
                "statements": list(self.statements), "note": self.note}


def _privileges(read_only: bool) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(schema, table, sequence) privileges."""
    if read_only:
        return ("USAGE",), ("SELECT",), ("SELECT",)
    return ("USAGE", "CREATE"), TABLE_PRIVILEGES, SEQUENCE_PRIVILEGES


def grant_statements(role: str, database: str, schemas: Sequence[str], *, read_only: bool = False,
                     create_role: str | None = None) -> list[tuple[str, Any]]:
    """``(what, statement)`` pairs (psycopg ``sql.Composed``), in order; the role creation first when asked."""
    from psycopg import sql

    who = sql.Identifier(role)
    on_schema, on_tables, on_sequences = _privileges(read_only)

    def privs(names: Iterable[str]) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(name) for name in names)  # fixed keywords, never user input

    out: list[tuple[str, Any]] = []
    if create_role:
        out.append(("create the extension", sql.SQL("CREATE EXTENSION IF NOT EXISTS databricks_auth")))
        out.append((f"create role {role} ({create_role})",
                    sql.SQL("SELECT databricks_create_role({}, {})").format(sql.Literal(role),
                                                                            sql.Literal(create_role))))
    out.append((f"CONNECT on database {database}",
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who)))
    for schema in schemas:
        s = sql.Identifier(schema)
        out += [
            (f"{', '.join(on_schema)} on schema {schema}",
             sql.SQL("GRANT {} ON SCHEMA {} TO {}").format(privs(on_schema), s, who)),
            (f"{', '.join(on_tables)} on all tables in {schema}",
             sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(privs(on_tables), s, who)),
            (f"{', '.join(on_sequences)} on all sequences in {schema}",
             sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(privs(on_sequences), s, who)),
            (f"{', '.join(on_tables)} on tables created later in {schema}",
             sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
                 s, privs(on_tables), who)),
            (f"{', '.join(on_sequences)} on sequences created later in {schema}",
             sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON SEQUENCES TO {}").format(
                 s, privs(on_sequences), who)),
        ]
    return out


# What the role has, as a set of labels, so that the report can say what a run changed.
_STATE_SQL = """
SELECT 'CONNECT on database ' || current_database()
 WHERE has_database_privilege(%(role)s, current_database(), 'CONNECT')
UNION ALL
SELECT p || ' on schema ' || n.nspname
  FROM pg_namespace n, unnest(%(schema_privs)s::text[]) p
 WHERE n.nspname = ANY(%(schemas)s) AND has_schema_privilege(%(role)s, n.oid, p)
UNION ALL
SELECT p || ' on ' || c.relkind::text || ' ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
       unnest(CASE WHEN c.relkind = 'S' THEN %(sequence_privs)s::text[] ELSE %(table_privs)s::text[] END) p
 WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND (c.relkind IN ('r', 'p', 'S') OR p = 'SELECT')
   AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(%(role)s, c.oid, p)
            ELSE has_table_privilege(%(role)s, c.oid, p) END
UNION ALL
SELECT a.privilege_type || ' by default on ' || d.defaclobjtype::text || ' in ' || n.nspname
  FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
 WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)
   AND n.nspname = ANY(%(schemas)s)
   AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %(role)s)
"""


def _state(conn: Any, role: str, schemas: Sequence[str], read_only: bool) -> set[str]:
    on_schema, on_tables, on_sequences = _privileges(read_only)
    rows = conn.execute(_STATE_SQL, {"role": role, "schemas": list(schemas), "schema_privs": list(on_schema),
                                     "table_privs": list(on_tables), "sequence_privs": list(on_sequences)})
    return {row[0] for row in rows}


_KINDS = {" on r in ": " on tables in ", " on S in ": " on sequences in ", " on r ": " on table ",
          " on p ": " on table ", " on f ": " on table ", " on v ": " on view ", " on m ": " on view ",
          " on S ": " on sequence "}


def _describe(labels: set[str]) -> list[str]:
    """``{"SELECT on r public.t", "INSERT on r public.t"}`` -> ``["SELECT, INSERT on table public.t"]``."""
    grouped: dict[str, list[str]] = {}
    for label in labels:
        privilege, rest = label.split(" ", 1)
        grouped.setdefault(rest, []).append(privilege)
    order = ("CONNECT", "USAGE", "CREATE", *TABLE_PRIVILEGES)
    out = []
    for rest, privileges in grouped.items():
        privileges.sort(key=lambda p: order.index(p) if p in order else len(order))
        line = f"{', '.join(privileges)} {rest}"
        for code, word in _KINDS.items():
            line = line.replace(code, word)
        out.append(line)
    return sorted(out)


def grant(role: str, *, schemas: Sequence[str] = ("public",), read_only: bool = False,
          create_role: str | None = None, dry_run: bool = False, conn: Any = None,
          **connect_args: Any) -> GrantReport:
    """Grant ``role`` what an app needs on ``schemas`` (see the module doc); idempotent.

    ``create_role`` (``service_principal``, ``user`` or ``group``) creates the role with
    ``databricks_create_role`` when it is missing. ``dry_run`` changes nothing: the report's
    ``statements`` are the SQL that would run. ``conn`` is an open psycopg connection (its
    transaction is used); without it one is opened with :func:`lakebase.connect` (``connect_args``).
    """
    from psycopg import errors

    role = role.strip()
    if not role:
        raise ValueError("the role is empty: pass the app's DATABRICKS_CLIENT_ID, a user's email or a group name")
    if create_role is not None and create_role not in IDENTITY_TYPES:
        raise ValueError(f"create_role must be one of {', '.join(IDENTITY_TYPES)}, got {create_role!r}")
    schemas = list(dict.fromkeys(s for s in schemas)) or ["public"]

    own = conn is None
    if own:
        import lakebase

        conn = lakebase.connect(**connect_args)
    try:
        with conn.transaction():
            database, owner = conn.execute("SELECT current_database(), current_user").fetchone()
            report = GrantReport(role=role, database=database, schemas=schemas, read_only=read_only, owner=owner)
            missing = [s for s in schemas
                       if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (s,)).fetchone() is None]
            if missing:
                raise ValueError(f"schema {', '.join(missing)} does not exist in database {database}: create it "
                                 "first (CREATE SCHEMA ...), or check --schema")
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
            report.role_exists = exists
            if not exists and create_role is None and not dry_run:
                raise ValueError(
                    f"the Postgres role {role!r} does not exist: pass --create-role service_principal (an app's "
                    "client id), user (an email) or group, to create it with databricks_create_role")
            statements = grant_statements(role, database, schemas, read_only=read_only,
                                          create_role=create_role if not exists else None)
            report.statements = [stmt.as_string(conn) + ";" for _, stmt in statements]
            if dry_run:
                return report
            before = _state(conn, role, schemas, read_only) if exists else set()
            for what, stmt in statements:
                if what.startswith("create role"):
                    try:
                        with conn.transaction():
                            conn.execute(stmt)
                    except errors.DuplicateObject:
                        continue  # created concurrently
                    report.role_created = True
                    report.changed.append(what + " with databricks_create_role")
                else:
                    conn.execute(stmt)
            after = _state(conn, role, schemas, read_only)
            report.changed += _describe(after - before)
            report.unchanged = _describe(after & before)
        return report
    finally:
        if own:
            conn.close()


__all__ = ["DEFAULT_PRIVILEGES_NOTE", "IDENTITY_TYPES", "GrantReport", "grant", "grant_statements"]
