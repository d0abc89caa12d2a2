"""lakebase.grants.grant and `lakebase grant` against the emulator: the role created, what an app needs on
every table and sequence, tables created later, read-only, idempotence, dry runs and hostile names."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest

import lakebase
from lakebase.emulator.supervise import clean_environment
from lakebase.grants import grant

from .apps_support import owner_sql
from .conftest import owner_connect

Emulator = Any


@pytest.fixture(autouse=True)
def _fresh_registries(fresh_registries: None) -> None:
    """Every test starts and ends with no shared connectors (conftest.fresh_registries)."""


@pytest.fixture
def schema(emulator: Emulator) -> str:
    """A schema of its own with a SERIAL table (and its sequence), made by the owner."""
    name = f"g_{uuid.uuid4().hex[:8]}"
    owner_sql(emulator, f'CREATE SCHEMA "{name}"')
    owner_sql(emulator, f'CREATE TABLE "{name}".items (id SERIAL PRIMARY KEY, label TEXT)')
    return name


@pytest.fixture
def sp(emulator: Emulator) -> Any:
    """A service principal with no Postgres role yet."""
    return emulator.add_service_principal(f"grant-{uuid.uuid4().hex[:6]}")


def as_sp(emulator: Emulator, sp: Any) -> psycopg.Connection[Any]:
    from .lakebase_support import m2m_client

    return lakebase.connect(workspace_client=m2m_client(emulator, sp.name, sp.client_secret), user=sp.name,
                            host="localhost", port=emulator.pg_port, endpoint=emulator.endpoint_name, autocommit=True)


def run_grant(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_environment({**emulator.user_env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg"})
    return subprocess.run([sys.executable, "-m", "lakebase", "grant", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_an_app_can_use_every_table_now_and_later(emulator: Emulator, user_env: dict[str, str], schema: str,
                                                  sp: Any) -> None:
    report = grant(sp.name, schemas=[schema], create_role="service_principal")
    assert report.role_created and report.owner == emulator.owner.name
    assert f"SELECT, INSERT, UPDATE, DELETE on table {schema}.items" in report.changed
    assert f"USAGE, SELECT on sequence {schema}.items_id_seq" in report.changed
    assert f"SELECT, INSERT, UPDATE, DELETE by default on tables in {schema}" in report.changed
    assert f"USAGE, CREATE on schema {schema}" in report.changed
    with as_sp(emulator, sp) as conn:
        conn.execute(f'INSERT INTO "{schema}".items (label) VALUES (%s)', ("now",))  # the sequence too
        owner_sql(emulator, f'CREATE TABLE "{schema}".later (id BIGINT GENERATED ALWAYS AS IDENTITY, x TEXT)')
        conn.execute(f'INSERT INTO "{schema}".later (x) VALUES (%s)', ("later",))  # default privileges
        conn.execute(f'CREATE TABLE "{schema}".own (x int)')  # CREATE on the schema
        assert conn.execute(f'SELECT count(*) FROM "{schema}".later').fetchone() == (1,)


def test_idempotent_and_says_nothing_changed(emulator: Emulator, user_env: dict[str, str], schema: str,
                                             sp: Any) -> None:
    first = grant(sp.name, schemas=[schema], create_role="service_principal")
    again = grant(sp.name, schemas=[schema], create_role="service_principal")
    assert first.changed and not again.role_created and again.changed == []
    assert sorted(again.unchanged) == sorted(first.changed[1:])  # all but the role creation


def test_read_only(emulator: Emulator, user_env: dict[str, str], schema: str, sp: Any) -> None:
    report = grant(sp.name, schemas=[schema], create_role="service_principal", read_only=True)
    assert not any("INSERT" in c or "CREATE" in c for c in report.changed), report.changed
    owner_sql(emulator, f'INSERT INTO "{schema}".items (label) VALUES (%s)', ("x",))
    owner_sql(emulator, f'CREATE TABLE "{schema}".later (x int)')
    with as_sp(emulator, sp) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".items').fetchone() == (1,)
        assert conn.execute(f'SELECT count(*) FROM "{schema}".later').fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'INSERT INTO "{schema}".items (label) VALUES (%s)', ("y",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'CREATE TABLE "{schema}".mine (x int)')


def test_a_missing_role_without_create_role_names_the_fix(emulator: Emulator, user_env: dict[str, str],
                                                           schema: str, sp: Any) -> None:
    with pytest.raises(ValueError, match="--create-role service_principal"):
        grant(sp.name, schemas=[schema])
    with pytest.raises(ValueError, match="does not exist"):
        grant(sp.name, schemas=["no_such_schema"], create_role="service_principal")


def test_dry_run_prints_the_sql_and_changes_nothing(emulator: Emulator, user_env: dict[str, str], schema: str,
                                                    sp: Any) -> None:
    report = grant(sp.name, schemas=[schema], create_role="service_principal", dry_run=True)
    assert report.statements[1] == f"SELECT databricks_create_role('{sp.name}', 'service_principal');"
    assert f'ALTER DEFAULT PRIVILEGES IN SCHEMA "{schema}" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES ' \
           f'TO "{sp.name}";' in report.statements
    assert owner_sql(emulator, "SELECT 1 FROM pg_roles WHERE rolname = %s", (sp.name,)) == []


def test_hostile_names_are_quoted(emulator: Emulator, user_env: dict[str, str]) -> None:
    """A group and a schema whose names try to end the statement: they are identifiers, nothing else."""
    name = f'ops"; DROP TABLE victim; --{uuid.uuid4().hex[:4]}'
    emulator.add_group(name)
    schema = 'we"ird; sch'
    owner_sql(emulator, "CREATE TABLE IF NOT EXISTS victim (x int)")
    owner_sql(emulator, 'CREATE SCHEMA IF NOT EXISTS "we""ird; sch"')
    owner_sql(emulator, 'CREATE TABLE IF NOT EXISTS "we""ird; sch".t (x int)')
    report = grant(name, schemas=[schema], create_role="group")
    assert report.role_created, report
    assert 'SELECT, INSERT, UPDATE, DELETE on table "we""ird; sch".t' in report.changed, report.changed
    assert owner_sql(emulator, "SELECT to_regclass('victim') IS NOT NULL") == [(True,)]
    with owner_connect(emulator) as conn:
        assert conn.execute("SELECT has_table_privilege(%s, '\"we\"\"ird; sch\".t', 'INSERT')",
                            (name,)).fetchone() == (True,)


def test_cli_prints_the_changes_then_nothing(emulator: Emulator, schema: str, sp: Any) -> None:
    first = run_grant(emulator, sp.name, "--schema", schema, "--create-role", "service_principal")
    assert first.returncode == 0, first.stderr
    assert f"+ create role {sp.name} (service_principal) with databricks_create_role" in first.stdout
    assert f"+ SELECT, INSERT, UPDATE, DELETE by default on tables in {schema}" in first.stdout
    assert "tables and sequences created later by" in first.stderr and emulator.owner.name in first.stderr
    again = run_grant(emulator, sp.name, "--schema", schema, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] == []
    dry = run_grant(emulator, sp.name, "--schema", schema, "--dry-run", "--read-only")
    assert dry.returncode == 0 and f'GRANT USAGE ON SCHEMA "{schema}" TO "{sp.name}";' in dry.stdout


def test_cli_missing_role_exits_1_with_the_fix(emulator: Emulator, sp: Any) -> None:
    result = run_grant(emulator, sp.name)
    assert result.returncode == 1 and "--create-role" in result.stderr
    dry = run_grant(emulator, sp.name, "--dry-run")
    assert dry.returncode == 0 and "does not exist: add --create-role" in dry.stderr
    assert f'GRANT CONNECT ON DATABASE "databricks_postgres" TO "{sp.name}";' in dry.stdout


def test_init_schema_covers_tables_created_later(emulator: Emulator, user_env: dict[str, str], sp: Any) -> None:
    from lakebase.schema import init_schema

    table = f"notes_{uuid.uuid4().hex[:6]}"
    init_schema(sp.name, table=table)
    later = f"later_{uuid.uuid4().hex[:6]}"
    owner_sql(emulator, f"CREATE TABLE {later} (id SERIAL PRIMARY KEY, x TEXT)")
    with as_sp(emulator, sp) as conn:
        conn.execute(f"INSERT INTO {later} (x) VALUES ('a')")
        conn.execute(f"INSERT INTO {table} (content) VALUES ('b')")
