"""Shared fixtures: one real emulator for the whole session, and clean environments around it.

The emulator and the owner's environment are the plugin's (``lakebase.testing``: ``lakebase_emulator``,
``lakebase_env``), so ``--lakebase-emulator DIR`` runs the suite against a running emulator too.

The emulator runs in its own process (``EmulatorProcess``), as Lakebase runs elsewhere than the
client: a client blocking in C with the GIL held (libpq's legacy cancel) cannot stall it. Tests that
change its config or inject faults get them undone by the autouse ``_restore_emulator`` fixture, so
test order never matters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.service.postgres import Endpoint, EndpointSpec, EndpointType

from lakebase import connector
from lakebase.emulator import EmulatorProcess

from .lakebase_support import pat_client

pytest_plugins = ["lakebase.testing"]  # a no-op where the installed entry point has loaded it already

Emulator = EmulatorProcess  # the type the fixtures hand out

TUTORIAL_STEP2_SQL = """
-- Enable the Databricks authentication extension
CREATE EXTENSION IF NOT EXISTS databricks_auth;
-- Create a Postgres role for your app's service principal
SELECT databricks_create_role('<DATABRICKS_CLIENT_ID>', 'service_principal');
-- Grant necessary permissions (use the same DATABRICKS_CLIENT_ID)
GRANT CONNECT ON DATABASE databricks_postgres TO "<DATABRICKS_CLIENT_ID>";
GRANT CREATE, USAGE ON SCHEMA public TO "<DATABRICKS_CLIENT_ID>";
-- Create a sample table
CREATE TABLE notes (
id SERIAL PRIMARY KEY,
content TEXT NOT NULL,
created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
-- Grant permissions to your app's service principal (use your DATABRICKS_CLIENT_ID)
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE notes TO "<DATABRICKS_CLIENT_ID>";
-- Insert sample data
INSERT INTO notes (content) VALUES
('Welcome to Lakebase Autoscaling!'),
('This app connects to Postgres'),
('Data fetched from your database');
"""


def clear_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path | None = None) -> None:
    # Imported here: importing the plugin before pytest_plugins registers it would keep pytest from
    # rewriting its asserts (a warning).
    from lakebase.testing import clear_env as clear_all_env

    # A developer's ~/.databrickscfg must not leak into tests.
    clear_all_env(monkeypatch, (tmp_path or Path("/nonexistent")) / "no-databrickscfg")


@pytest.fixture(scope="session")
def emulator(lakebase_emulator: Emulator) -> Emulator:
    return lakebase_emulator


@pytest.fixture(autouse=True)
def _restore_emulator(request: pytest.FixtureRequest) -> Iterator[None]:
    if "emulator" not in request.fixturenames:
        yield
        return
    emu: EmulatorProcess = request.getfixturevalue("emulator")
    before = emu.config()
    yield
    emu.configure(**before)
    emu.credential_outage(0)
    emu.api_hang(0)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    clear_env(monkeypatch, tmp_path)
    return monkeypatch


@pytest.fixture
def user_env(emulator: Emulator, clean_env: pytest.MonkeyPatch, lakebase_env: dict[str, str]) -> dict[str, str]:
    """The process environment of the project owner working on a laptop (PAT); set after clean_env's
    clearing (a test that asks for both gets the owner's)."""
    return lakebase_env


@pytest.fixture
def app_env(emulator: Emulator, clean_env: pytest.MonkeyPatch, app_role: str) -> dict[str, str]:
    """The process environment of a deployed Databricks App (OAuth M2M service principal)."""
    for key, value in emulator.app_env.items():
        clean_env.setenv(key, value)
    return emulator.app_env


def owner_token(emu: Emulator) -> str:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat")
    return w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token


def owner_connect(emu: Emulator, **kwargs: Any) -> Any:
    import psycopg

    params: dict[str, Any] = {
        "host": "localhost", "port": emu.pg_port, "user": emu.owner.name, "dbname": "databricks_postgres",
        "sslmode": "require", "password": owner_token(emu), "connect_timeout": 10,
    }
    params.update(kwargs)
    return psycopg.connect(**params)


@pytest.fixture(scope="session")
def app_role(emulator: Emulator) -> str:
    """The tutorial's step 2, verbatim, as the owner: the app's role, grants, table and notes."""
    app = emulator.app.name
    with owner_connect(emulator, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (app,)).fetchone()
        if not exists:
            conn.execute(TUTORIAL_STEP2_SQL.replace("<DATABRICKS_CLIENT_ID>", app))  # type: ignore[arg-type]
    return app


@pytest.fixture
def fresh_registries() -> Iterator[None]:
    """No shared connector (credential cache, target) survives from one test into the next."""
    connector.reset()
    yield
    connector.reset()


@pytest.fixture
def replica(emulator: Emulator) -> Iterator[str]:
    """A read-only endpoint (its id), made through the SDK for one test and deleted after it."""
    w = pat_client(emulator)
    parent = emulator.endpoint_name.rsplit("/endpoints/", 1)[0]
    endpoint_id = "replica-" + uuid.uuid4().hex[:6]
    w.postgres.create_endpoint(parent=parent, endpoint_id=endpoint_id, endpoint=Endpoint(
        spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_ONLY))).wait()
    try:
        yield endpoint_id
    finally:
        w.postgres.delete_endpoint(f"{parent}/endpoints/{endpoint_id}").wait()
