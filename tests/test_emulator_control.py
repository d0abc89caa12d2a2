"""One control contract (``EmulatorControl``), two handles: every test here runs against an in-process
``Emulator`` and against an ``EmulatorProcess``, and the admin API's routes are the contract's operations.

No test here uses libpq's legacy cancel (``PQcancel``): in the same process as an in-process emulator
it would hold the GIL while waiting for a proxy that then cannot run.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psycopg
import pytest
from databricks.sdk import WorkspaceClient

from lakebase.emulator import ConfigError, Emulator, EmulatorProcess, api
from lakebase.emulator.control import ADMIN_ROUTES, EmulatorControl
from lakebase.emulator.process import read_env_file


@pytest.fixture(scope="module", params=["in-process", "child-process"])
def handle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorControl]:
    data_dir = tmp_path_factory.mktemp(request.param)
    emu: EmulatorControl = Emulator(data_dir) if request.param == "in-process" else EmulatorProcess(data_dir)
    with emu:
        yield emu


@pytest.fixture
def emu(handle: EmulatorControl) -> Iterator[EmulatorControl]:
    before = handle.config()
    yield handle
    handle.configure(**before)
    handle.credential_outage(0)
    handle.api_hang(0)


def owner_token(emu: EmulatorControl) -> str:
    w = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat")
    token = w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token
    assert token
    return token


def connect_owner(emu: EmulatorControl, token: str) -> psycopg.Connection:
    env = emu.user_env
    return psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], dbname=env["PGDATABASE"], user=env["PGUSER"],
                           sslmode="verify-full", sslrootcert=str(emu.ca_file), password=token, autocommit=True,
                           connect_timeout=10)


def test_both_handles_keep_the_contract(handle: EmulatorControl) -> None:
    assert isinstance(handle, EmulatorControl)


def test_connection_facts_match_the_env_files(emu: EmulatorControl) -> None:
    assert read_env_file(emu.data_dir / "user.env") == emu.user_env
    assert read_env_file(emu.data_dir / "app.env") == emu.app_env
    assert emu.api_url == emu.user_env["DATABRICKS_HOST"] == emu.app_env["DATABRICKS_HOST"]
    assert emu.pg_port == int(emu.user_env["PGPORT"])
    assert emu.ca_file == emu.data_dir / "ca.pem" == Path(emu.user_env["PGSSLROOTCERT"])
    assert emu.endpoint_name == emu.user_env["ENDPOINT_NAME"]
    assert (emu.owner.name, emu.owner.type, emu.owner.pat) == (
        emu.user_env["PGUSER"], "USER", emu.user_env["DATABRICKS_TOKEN"])
    assert (emu.app.name, emu.app.type, emu.app.client_secret) == (
        emu.app_env["DATABRICKS_CLIENT_ID"], "SERVICE_PRINCIPAL", emu.app_env["DATABRICKS_CLIENT_SECRET"])
    assert emu.app.display_name == emu.app_env["PGAPPNAME"]


def test_config(emu: EmulatorControl) -> None:
    assert emu.configure(wake_delay_seconds=0.05)["wake_delay_seconds"] == 0.05
    assert emu.config()["wake_delay_seconds"] == 0.05
    with pytest.raises(ConfigError, match="latency_ms must be between"):
        emu.configure(latency_ms=-1, wake_delay_seconds=1)
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        emu.configure(nope=1)
    assert emu.config()["wake_delay_seconds"] == 0.05  # a rejected update changes nothing


def test_outage_and_hang_show_in_stats(emu: EmulatorControl) -> None:
    emu.credential_outage(30, status=429)
    emu.api_hang(30)
    stats = emu.stats()
    assert stats["credential_outage_seconds_left"] > 0 and stats["api_hang_seconds_left"] > 0
    emu.credential_outage(0)
    emu.api_hang(0)
    stats = emu.stats()
    assert stats["credential_outage_seconds_left"] == 0 and stats["api_hang_seconds_left"] == 0
    assert stats["endpoints"][emu.endpoint_name] == emu.endpoint_state()


def test_expire_tokens(emu: EmulatorControl) -> None:
    token = owner_token(emu)
    connect_owner(emu, token).close()
    emu.expire_tokens()
    with pytest.raises(psycopg.OperationalError, match="expire-tokens"):
        connect_owner(emu, token)
    connect_owner(emu, owner_token(emu)).close()


def test_restart_and_suspend_end_sessions(emu: EmulatorControl) -> None:
    emu.configure(restart_seconds=0, wake_delay_seconds=0)
    token = owner_token(emu)
    with connect_owner(emu, token) as conn:
        assert emu.restart() == 1
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("SELECT 1")
    with connect_owner(emu, token) as conn:
        assert emu.endpoint_state() == "ACTIVE"
        assert emu.suspend() == 1
        assert emu.endpoint_state() == "IDLE"
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("SELECT 1")
    with connect_owner(emu, token) as conn:  # the next login wakes it
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert emu.endpoint_state() == "ACTIVE"
    assert emu.stats()["restarts"] >= 1


def test_identities(emu: EmulatorControl) -> None:
    user = emu.add_user("contract@example.com")
    assert (user.name, user.type) == ("contract@example.com", "USER") and user.pat
    me = WorkspaceClient(host=emu.api_url, token=user.pat, auth_type="pat").current_user.me()
    assert me.user_name == "contract@example.com"
    sp = emu.add_service_principal("contract-sp")
    assert (sp.type, sp.display_name) == ("SERVICE_PRINCIPAL", "contract-sp") and sp.client_secret
    group = emu.add_group("contract-group")
    assert (group.name, group.type) == ("contract-group", "GROUP")


def test_admin_routes_are_the_contract_operations() -> None:
    """Every /emulator/ route is one operation of the contract, and every operation has its route."""
    app = api.build_app(cast(Any, SimpleNamespace()))
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/emulator/") and r.method != "HEAD"}
    assert served == set(ADMIN_ROUTES.values())
    operations = {name for name, _ in inspect.getmembers(EmulatorControl, callable) if not name.startswith("_")}
    for name in ADMIN_ROUTES:
        wanted = {"add_user", "add_service_principal", "add_group"} if name == "add_identity" else {name}
        assert wanted <= operations, name
