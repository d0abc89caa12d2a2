"""Native Postgres passwords in the emulator, through the real SDK and real drivers: roles made by the
roles API with PG_PASSWORD_SCRAM_SHA_256 (password revealed by the API), roles made in SQL with
LOGIN PASSWORD, the project's enable_pg_native_login switch, and Lakebase's 28P01 text on every
failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from databricks.sdk.errors import InvalidState, PermissionDenied
from databricks.sdk.service.postgres import Project, ProjectSpec, Role, RoleAuthMethod, RoleRoleSpec
from google.protobuf.field_mask_pb2 import FieldMask

from .conftest import Emulator, owner_connect
from .lakebase_support import m2m_client, pat_client

DECODE_FAILED = ('Failed to decode token for role "{role}" and native postgres login was either not attempted '
                 "due to configuration or failed.")
NATIVE_MASK = FieldMask(paths=["spec.enable_pg_native_login"])


def project_name(emu: Emulator) -> str:
    return emu.endpoint_name.split("/branches/")[0]


def set_native_login(emu: Emulator, enabled: bool) -> bool:
    """Flip the project's switch through the SDK as the owner; returns what the project then says."""
    project = pat_client(emu).postgres.update_project(
        name=project_name(emu), project=Project(spec=ProjectSpec(enable_pg_native_login=enabled)),
        update_mask=NATIVE_MASK).wait()
    assert project.status is not None
    return bool(project.status.enable_pg_native_login)


@pytest.fixture
def native_login(emulator: Emulator) -> Iterator[Callable[[bool], bool]]:
    """Switch native login on or off for one test; the project's setting before it is restored after."""
    before = pat_client(emulator).postgres.get_project(project_name(emulator)).status
    assert before is not None
    yield lambda enabled: set_native_login(emulator, enabled)
    set_native_login(emulator, bool(before.enable_pg_native_login))


def login(emu: Emulator, role: str, password: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host="localhost", port=emu.pg_port, user=role, password=password,
                           dbname="databricks_postgres", sslmode="require", connect_timeout=10, **kwargs)


def refusal(emu: Emulator, role: str, password: str) -> Any:
    """The server's error for a login that must fail, through asyncpg (which shows its SQLSTATE, message
    and detail exactly)."""
    import asyncpg

    async def attempt() -> Any:
        ctx = ssl.create_default_context(cafile=str(emu.ca_file))
        with pytest.raises(asyncpg.PostgresError) as caught:
            await asyncpg.connect(host="localhost", port=emu.pg_port, user=role, password=password,
                                  database="databricks_postgres", ssl=ctx, timeout=10)
        return caught.value

    error = asyncio.run(attempt())
    assert error.sqlstate == "28P01", repr(error)
    return error


def api_password_role(emu: Emulator) -> tuple[str, str]:
    """A PG_PASSWORD_SCRAM_SHA_256 role made through the SDK: (postgres role, role resource name)."""
    name = "tool-" + uuid.uuid4().hex[:8]
    role = pat_client(emu).postgres.create_role(
        parent=emu.endpoint_name.split("/endpoints/")[0],
        role=Role(spec=RoleRoleSpec(postgres_role=name, auth_method=RoleAuthMethod.PG_PASSWORD_SCRAM_SHA_256)),
    ).wait()
    assert role.status is not None and role.status.auth_method == RoleAuthMethod.PG_PASSWORD_SCRAM_SHA_256
    assert role.name is not None
    return name, role.name


def test_api_role_logs_in_with_its_revealed_password(emulator: Emulator,
                                                     native_login: Callable[[bool], bool]) -> None:
    role, resource = api_password_role(emulator)
    w = pat_client(emulator)
    with pytest.raises(InvalidState, match="native postgres login is off"):
        w.postgres.reveal_role_password(resource)
    assert native_login(True) is True
    password = w.postgres.reveal_role_password(resource).password
    assert password and w.postgres.reveal_role_password(resource).password == password  # the same, each time
    before = emulator.stats()["native_logins"]

    with login(emulator, role, password) as conn:  # psycopg 3 (libpq)
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    if shutil.which("psql"):
        out = subprocess.run(
            ["psql", f"host=localhost port={emulator.pg_port} dbname=databricks_postgres user={role} "
                     "sslmode=require", "-XAtc", "SELECT current_user"],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout.strip()) == (0, role), out.stderr
    import asyncpg

    async def via_asyncpg() -> Any:
        ctx = ssl.create_default_context(cafile=str(emulator.ca_file))
        conn = await asyncpg.connect(host="localhost", port=emulator.pg_port, user=role, password=password,
                                     database="databricks_postgres", ssl=ctx)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(via_asyncpg()) == role
    assert emulator.stats()["native_logins"] == before + (3 if shutil.which("psql") else 2)

    # Wrong password: Lakebase's text, nothing more telling in the message.
    diag = refusal(emulator, role, password[::-1])
    assert diag.message == DECODE_FAILED.format(role=role)
    assert diag.detail is not None and "Native postgres login failed: a wrong password" in diag.detail
    # Native login switched off: the right password gets the very same message.
    assert native_login(False) is False
    diag = refusal(emulator, role, password)
    assert diag.message == DECODE_FAILED.format(role=role)
    assert diag.detail is not None and "Native postgres login was not attempted: it is off" in diag.detail
    assert "enable_pg_native_login=True" in diag.detail

    # The password is in no log the emulator or its Postgres writes.
    for log in ("emulator.log", "postgres.log"):
        path = emulator.data_dir / log
        assert path.exists() and password not in path.read_text(errors="replace"), log


def test_sql_role_logs_in_with_its_password(emulator: Emulator, native_login: Callable[[bool], bool]) -> None:
    role, password = "report_" + uuid.uuid4().hex[:8], "s3cret-" + uuid.uuid4().hex
    with owner_connect(emulator, autocommit=True) as owner:
        owner.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    native_login(True)
    with login(emulator, role, password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    # The roles API shows it as a password role but cannot reveal a password it never made.
    w = pat_client(emulator)
    row = next(r for r in w.postgres.list_roles(parent=emulator.endpoint_name.split("/endpoints/")[0])
               if r.status is not None and r.status.postgres_role == role)
    assert row.status is not None and row.status.auth_method == RoleAuthMethod.PG_PASSWORD_SCRAM_SHA_256
    assert row.name is not None
    with pytest.raises(InvalidState, match="set in SQL"):
        w.postgres.reveal_role_password(row.name)

    with owner_connect(emulator, autocommit=True) as owner:  # an expired password, then no login at all
        owner.execute(f"ALTER ROLE {role} VALID UNTIL '2001-01-01'")
        diag = refusal(emulator, role, password)
        assert diag.message == DECODE_FAILED.format(role=role)
        assert diag.detail is not None and "Native postgres login failed" in diag.detail
        detail = diag.detail
        owner.execute(f"ALTER ROLE {role} VALID UNTIL 'infinity' NOLOGIN")
        diag = refusal(emulator, role, password)
        assert diag.message == DECODE_FAILED.format(role=role)
        assert diag.detail is not None and "Native postgres login failed" in diag.detail
        detail = diag.detail
        owner.execute(f"DROP ROLE {role}")
    # Gone: the same answer, which tells a client without a credential nothing about which roles exist.
    diag = refusal(emulator, role, password)
    assert (diag.message, diag.detail) == (DECODE_FAILED.format(role=role), detail)


def test_tokens_still_work_with_native_login_on(emulator: Emulator, native_login: Callable[[bool], bool],
                                                app_role: str) -> None:
    native_login(True)
    before = emulator.stats()
    with owner_connect(emulator) as conn:  # the owner's OAuth role, with a token
        assert conn.execute("SELECT current_user").fetchone() == (emulator.owner.name,)
    app_token = m2m_client(emulator).postgres.generate_database_credential(endpoint=emulator.endpoint_name).token
    assert app_token
    with login(emulator, app_role, app_token) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app_role,)
    after = emulator.stats()
    assert after["native_logins"] == before["native_logins"]
    assert after["logins_succeeded"] == before["logins_succeeded"] + 2
    # A token is no native password: the app's token for the owner's role is still refused.
    assert refusal(emulator, emulator.owner.name, app_token).message == \
        DECODE_FAILED.format(role=emulator.owner.name)


def test_clients_that_insist_on_scram_refuse_the_cleartext_request(emulator: Emulator,
                                                                   native_login: Callable[[bool], bool]) -> None:
    """As on Lakebase, the proxy asks every client for a cleartext password (tokens travel that way):
    libpq's require_auth=scram-sha-256 refuses to send it, whatever the role."""
    if psycopg.pq.version() < 160000:
        pytest.skip("require_auth needs libpq 16 or later")
    role, resource = api_password_role(emulator)
    native_login(True)
    password = pat_client(emulator).postgres.reveal_role_password(resource).password
    assert password
    with pytest.raises(psycopg.OperationalError, match="server requested a cleartext password"):
        login(emulator, role, password, require_auth="scram-sha-256").close()


def test_only_the_owner_reveals_passwords_and_flips_the_switch(emulator: Emulator) -> None:
    _, resource = api_password_role(emulator)
    app = m2m_client(emulator)
    with pytest.raises(PermissionDenied, match="CAN_MANAGE"):
        app.postgres.update_project(name=project_name(emulator),
                                    project=Project(spec=ProjectSpec(enable_pg_native_login=True)),
                                    update_mask=NATIVE_MASK)
    with pytest.raises(PermissionDenied, match="CAN_MANAGE"):
        app.postgres.reveal_role_password(resource)
    status = app.postgres.get_project(project_name(emulator)).status
    assert status is not None and not status.enable_pg_native_login


def test_doctor_names_a_native_password_role(emulator: Emulator, native_login: Callable[[bool], bool],
                                            user_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """PGUSER a native password role and PGPASSWORD its password (as for a BI tool): lakebase cannot log in
    as it (tokens only), and the doctor says so instead of blaming the token."""
    from lakebase import doctor

    role, resource = api_password_role(emulator)
    native_login(True)
    password = pat_client(emulator).postgres.reveal_role_password(resource).password
    assert password
    monkeypatch.setenv("PGUSER", role)
    monkeypatch.setenv("PGPASSWORD", password)
    results = {c.name: c for c in doctor.run(timeout=2)}
    login = results["login"]
    assert login.status == "fail" and f"{role} is a native Postgres password role" in login.summary, login
    assert login.fix and f"PGUSER={emulator.owner.name}" in login.fix
    assert password not in str(results)
