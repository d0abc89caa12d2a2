"""wait_until_ready / wait_until_ready_async / `lakebase wait` against the emulator: wake-ups, restarts,
API outages (waited through), and what waiting cannot cure (failed at once, exit status 2)."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from lakebase import AuthenticationFailed, ConnectionFailed
from lakebase.emulator.supervise import clean_environment
from lakebase.startup import EXIT_NOT_READY, EXIT_PERMANENT, NotReady, wait_until_ready, wait_until_ready_async

Emulator = Any


@pytest.fixture(autouse=True)
def _fresh_registries(fresh_registries: None) -> None:
    """Every test starts and ends with no shared connectors (conftest.fresh_registries)."""


def lakebase_wait(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = clean_environment({**env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg"})
    return subprocess.run([sys.executable, "-m", "lakebase", "wait", *args], env=full, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def late_app(emulator: Emulator) -> dict[str, str]:
    """A service principal that has no Postgres role (nobody ran databricks_create_role)."""
    sp = emulator.add_service_principal(f"late-{uuid.uuid4().hex[:6]}")
    return {**emulator.app_env, "DATABRICKS_CLIENT_ID": sp.name, "DATABRICKS_CLIENT_SECRET": sp.client_secret,
            "PGUSER": sp.name}


def test_ready_at_once(emulator: Emulator, app_env: dict[str, str]) -> None:
    ready = wait_until_ready(timeout=30)
    assert ready.user == emulator.app.name and ready.database == "databricks_postgres"
    assert ready.attempts == 1


def test_wakes_a_suspended_compute_slower_than_one_attempt(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(wake_delay_seconds=3)
    wakeups = emulator.stats()["wakeups"]
    emulator.suspend()
    assert emulator.endpoint_state() == "IDLE"
    ready = wait_until_ready(timeout=60, connect_timeout=2)
    assert ready.user == emulator.app.name
    assert emulator.stats()["wakeups"] == wakeups + 1
    assert emulator.endpoint_state() == "ACTIVE"


def test_waits_through_a_restart(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(restart_seconds=2)
    restarts = emulator.stats()["restarts"]
    emulator.restart()
    assert wait_until_ready(timeout=60).user == emulator.app.name
    assert emulator.stats()["restarts"] == restarts + 1


def test_waits_through_a_token_api_outage(emulator: Emulator, app_env: dict[str, str]) -> None:
    """The token API is down when the app starts, and comes back while it waits."""
    emulator.credential_outage(120, status=503)
    ended = threading.Timer(2.0, emulator.credential_outage, (0,))
    ended.start()
    try:
        ready = wait_until_ready(timeout=60, api_timeout=1)
    finally:
        ended.cancel()
    assert ready.user == emulator.app.name


def test_not_ready_within_the_timeout_is_transient(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.credential_outage(120, status=503)
    with pytest.raises(NotReady) as info:
        wait_until_ready(timeout=2, api_timeout=1)
    assert "within 2s" in str(info.value) and "503" in str(info.value)
    assert isinstance(info.value, ConnectionFailed)


def test_a_missing_role_fails_at_once(emulator: Emulator, clean_env: pytest.MonkeyPatch) -> None:
    for key, value in late_app(emulator).items():
        clean_env.setenv(key, value)
    with pytest.raises(AuthenticationFailed) as info:
        wait_until_ready(timeout=600)  # not waited out: the pytest timeout (120 s) would fail the test
    assert not isinstance(info.value, NotReady)
    assert "databricks_create_role" in str(info.value)


def test_a_wrong_database_fails_at_once(emulator: Emulator, app_env: dict[str, str]) -> None:
    with pytest.raises(ConnectionFailed) as info:
        wait_until_ready(timeout=600, database="nodb")
    assert not isinstance(info.value, NotReady) and "does not exist" in str(info.value)


async def test_async_wakes_a_suspended_compute(emulator: Emulator, app_env: dict[str, str]) -> None:
    emulator.configure(wake_delay_seconds=2)
    emulator.suspend()
    ready = await wait_until_ready_async(timeout=60, connect_timeout=2)
    assert ready.user == emulator.app.name and emulator.endpoint_state() == "ACTIVE"


async def test_async_fails_at_once_on_a_missing_role(emulator: Emulator, clean_env: pytest.MonkeyPatch) -> None:
    for key, value in late_app(emulator).items():
        clean_env.setenv(key, value)
    with pytest.raises(AuthenticationFailed):
        await wait_until_ready_async(timeout=600)


# ---- the command ------------------------------------------------------------------------------------------
def test_cli_ready_exit_0_after_a_suspend(emulator: Emulator, app_role: str) -> None:
    emulator.suspend()
    result = lakebase_wait(emulator.app_env, "--timeout", "60", "--json")
    assert result.returncode == 0, result.stderr
    assert f'"user": "{emulator.app.name}"' in result.stdout
    assert emulator.endpoint_state() == "ACTIVE"


def test_cli_not_ready_exit_1(emulator: Emulator, app_role: str) -> None:
    emulator.credential_outage(120, status=503)
    result = lakebase_wait({**emulator.app_env, "LAKEBASE_API_TIMEOUT": "1"}, "--timeout", "2")
    assert result.returncode == EXIT_NOT_READY == 1, result.stderr
    assert "did not take a login within 2s" in result.stderr and "lakebase doctor" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("case", ["role", "database", "configuration", "secret"])
def test_cli_permanent_errors_exit_2(emulator: Emulator, app_role: str, case: str) -> None:
    env = {
        "role": lambda: late_app(emulator),
        "database": lambda: {**emulator.app_env, "PGDATABASE": "nodb"},
        "configuration": lambda: {**emulator.app_env, "PGSSLMODE": "disable"},
        "secret": lambda: {**emulator.app_env, "DATABRICKS_CLIENT_SECRET": "wrong"},
    }[case]()
    result = lakebase_wait(env, "--timeout", "600")
    assert result.returncode == EXIT_PERMANENT == 2, (result.returncode, result.stderr)
    assert "\nerror: " in result.stderr and "eyJ" not in result.stderr
    expected = {"role": "databricks_create_role", "database": "PGDATABASE", "configuration": "sslmode",
                "secret": "wrong secret"}[case]
    assert expected.lower() in result.stderr.lower(), result.stderr


def test_cli_help_documents_the_exit_statuses() -> None:
    from click.testing import CliRunner

    from lakebase.cli import main

    result = CliRunner().invoke(main, ["wait", "--help"])
    assert result.exit_code == 0
    for line in ("0  ready", "1  not ready within --timeout", "2  permanent"):
        assert line in result.output

