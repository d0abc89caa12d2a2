"""`lakebase alembic-init` and `alembic upgrade head` against the emulator: no secret in alembic.ini, an
email user name in the URL, a suspended compute, tokens that expire during the migration, offline mode."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from lakebase.emulator.supervise import clean_environment

from .apps_support import owner_sql

Emulator = Any

REVISION = '''"""{message}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = clean_environment({**env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg",
                              "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def alembic(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(cwd, env, "-m", "alembic", *args)


def alembic_init(cwd: Path) -> Any:
    from click.testing import CliRunner

    from lakebase.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, ["alembic-init", "migrations"])
    finally:
        os.chdir(old)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """`lakebase alembic-init migrations` in an empty directory."""
    result = alembic_init(tmp_path)
    assert result.exit_code == 0, result.output
    return tmp_path


@pytest.fixture
def schema(emulator: Emulator) -> str:
    """A schema of the test's own, first on the search path (PGOPTIONS): its own alembic_version table."""
    name = f"al_{uuid.uuid4().hex[:8]}"
    owner_sql(emulator, f"CREATE SCHEMA {name}")
    return name


@pytest.fixture
def owner_env(emulator: Emulator, schema: str) -> dict[str, str]:
    return {**emulator.user_env, "PGOPTIONS": f"-c search_path={schema}"}


def add_revision(project: Path, rev: str, down: str | None, body: str) -> None:
    path = project / "migrations" / "versions" / f"{rev}.py"
    path.write_text(REVISION.format(message=rev, rev=rev, down=down, body=body))


def table_body(table: str) -> str:
    return f'    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True), sa.Column("x", sa.Text))'


def exists(emulator: Emulator, schema: str, table: str) -> bool:
    return bool(owner_sql(emulator, "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{table}",))[0][0])


def test_init_writes_an_env_py_with_no_secret(project: Path) -> None:
    env_py = (project / "migrations" / "env.py").read_text()
    assert "from lakebase.alembic import run_migrations" in env_py
    ini = (project / "alembic.ini").read_text()
    assert "driver://user:pass" not in ini
    assert [line for line in ini.splitlines() if line.startswith("sqlalchemy.url")] == ["sqlalchemy.url ="]
    again = alembic_init(project)
    assert again.exit_code == 1 and "not empty" in again.output


def test_upgrade_head_as_the_owner_from_the_environment(emulator: Emulator, project: Path, schema: str,
                                                       owner_env: dict[str, str]) -> None:
    table = f"al_{uuid.uuid4().hex[:8]}"
    add_revision(project, "r1", None, table_body(table))
    result = alembic(project, owner_env, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert exists(emulator, schema, table)
    current = alembic(project, owner_env, "current")
    assert "r1 (head)" in current.stdout, current.stdout + current.stderr
    assert "eyJ" not in result.stdout + result.stderr


def test_an_email_user_name_in_the_url(emulator: Emulator, project: Path, schema: str,
                                       owner_env: dict[str, str]) -> None:
    """The owner's email, %40-encoded in alembic.ini (which configparser cannot interpolate), and no PG*."""
    owner = emulator.owner.name
    assert "@" in owner
    ini = project / "alembic.ini"
    url = f"postgresql+psycopg://{owner.replace('@', '%40')}@localhost:{emulator.pg_port}/databricks_postgres"
    ini.write_text(ini.read_text().replace("sqlalchemy.url =", f"sqlalchemy.url = {url}"))
    env = {k: v for k, v in owner_env.items() if not k.startswith("PG") or k == "PGOPTIONS"}
    table = f"al_{uuid.uuid4().hex[:8]}"
    add_revision(project, "r1", None, table_body(table))
    result = alembic(project, env, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert exists(emulator, schema, table)


def test_a_password_in_the_url_is_refused(emulator: Emulator, project: Path, owner_env: dict[str, str]) -> None:
    ini = project / "alembic.ini"
    ini.write_text(ini.read_text().replace(
        "sqlalchemy.url =", f"sqlalchemy.url = postgresql+psycopg://u:hunter2@localhost:{emulator.pg_port}/x"))
    add_revision(project, "r1", None, "    pass")
    result = alembic(project, owner_env, "upgrade", "head")
    assert result.returncode != 0 and "contains a password" in result.stderr
    assert "hunter2" not in result.stderr


def test_upgrade_wakes_a_suspended_compute(emulator: Emulator, project: Path, schema: str,
                                           owner_env: dict[str, str]) -> None:
    emulator.configure(wake_delay_seconds=3)
    emulator.suspend()
    wakeups = emulator.stats()["wakeups"]
    table = f"al_{uuid.uuid4().hex[:8]}"
    add_revision(project, "r1", None, table_body(table))
    result = alembic(project, {**owner_env, "PGCONNECT_TIMEOUT": "2"}, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert exists(emulator, schema, table) and emulator.stats()["wakeups"] == wakeups + 1


def test_tokens_shorter_than_the_migration(emulator: Emulator, project: Path, schema: str,
                                           owner_env: dict[str, str]) -> None:
    """Tokens live 2 s; the migration sleeps past that, then logs in again (a second connection)."""
    emulator.configure(token_ttl_seconds=2)
    table = f"al_{uuid.uuid4().hex[:8]}"
    add_revision(project, "r1", None, table_body(table) + "\n    op.execute('SELECT pg_sleep(3)')")
    add_revision(project, "r2", "r1", "\n".join([
        "    op.execute('SELECT pg_sleep(3)')",
        "    with op.get_bind().engine.connect() as other:  # a new login, after the first token expired",
        "        other.execute(sa.text('SELECT 1'))",
        f"    op.execute(\"INSERT INTO {table} (x) VALUES ('after')\")",
    ]))
    issued = emulator.stats()["credentials_issued"]
    result = alembic(project, owner_env, "upgrade", "head")
    assert result.returncode == 0, result.stderr
    assert owner_sql(emulator, f"SELECT x FROM {schema}.{table}") == [("after",)]
    assert emulator.stats()["credentials_issued"] >= issued + 2  # the second login got a fresh token


def test_offline_mode_prints_sql_and_connects_to_nothing(project: Path) -> None:
    add_revision(project, "r1", None, table_body("offline_t"))
    result = alembic(project, {}, "upgrade", "head", "--sql")  # no environment at all
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE offline_t" in result.stdout and "alembic_version" in result.stdout
