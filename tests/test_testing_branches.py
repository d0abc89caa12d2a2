"""The plugin's branch fixtures (``lakebase_branch``, ``lakebase_module_branch``) run by pytester on this
session's emulator, and its real-workspace path with the emulator posing as the workspace (the SDK
cannot tell)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Emulator, owner_connect
from .lakebase_support import pat_client

pytest_plugins = ["pytester"]

PLUGIN = ("-p", "lakebase.testing")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "PG", "LAKEBASE_")) or key == "ENDPOINT_NAME":
            monkeypatch.delenv(key)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")  # as this suite's
    return pytester


def branches(emulator: Emulator) -> list[str]:
    project = emulator.endpoint_name.split("/branches/", 1)[0]
    return sorted(b.name.rsplit("/", 1)[-1] for b in pat_client(emulator).postgres.list_branches(parent=project))


@pytest.fixture
def main_table(emulator: Emulator) -> object:
    """A table with one row on the main branch, made before the inner run (so branches copy it)."""
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS plugin_main_data")
        conn.execute("CREATE TABLE plugin_main_data (x int)")
        conn.execute("INSERT INTO plugin_main_data VALUES (42)")
    yield
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS plugin_main_data")


INNER_BRANCHES = '''
import lakebase
import pytest

seen = []


def table_exists(conn, name):
    return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is not None


def test_a_branch_has_the_main_data_and_takes_writes(lakebase_branch, lakebase_env, lakebase_emulator):
    assert lakebase_env["ENDPOINT_NAME"] == lakebase_branch.endpoint_name != lakebase_emulator.endpoint_name
    assert lakebase_env["PGHOST"] == lakebase_branch.host
    seen.append(lakebase_branch.name)
    with lakebase.connect() as conn:
        assert conn.execute("SELECT x FROM plugin_main_data").fetchone()[0] == 42
        conn.execute("CREATE TABLE on_the_branch (x int)")
        conn.execute("INSERT INTO plugin_main_data VALUES (7)")
        conn.commit()


def test_the_next_test_gets_a_fresh_branch(lakebase_branch):
    assert lakebase_branch.name not in seen
    with lakebase.connect() as conn:
        assert not table_exists(conn, "on_the_branch")
        assert conn.execute("SELECT array_agg(x) FROM plugin_main_data").fetchone()[0] == [42]


def test_main_never_saw_the_writes(lakebase_env, lakebase_emulator):
    assert lakebase_env["ENDPOINT_NAME"] == lakebase_emulator.endpoint_name
    with lakebase.connect() as conn:
        assert not table_exists(conn, "on_the_branch")
        assert conn.execute("SELECT array_agg(x) FROM plugin_main_data").fetchone()[0] == [42]


def test_module_branch_first(lakebase_module_branch, lakebase_env):
    assert lakebase_env["ENDPOINT_NAME"] == lakebase_module_branch.endpoint_name
    seen.append(lakebase_module_branch.name)
    with lakebase.connect() as conn:
        conn.execute("CREATE TABLE in_the_module (x int)")
        conn.commit()


def test_module_branch_second(lakebase_module_branch, lakebase_env):
    assert lakebase_module_branch.name == seen[-1]
    with lakebase.connect() as conn:
        assert table_exists(conn, "in_the_module")


def test_the_app_on_a_branch(lakebase_branch, lakebase_app_env, lakebase_emulator):
    assert lakebase_app_env["ENDPOINT_NAME"] == lakebase_branch.endpoint_name
    with lakebase.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == lakebase_emulator.app.name


def test_faults_hit_the_branch(lakebase_branch, lakebase_faults, lakebase_emulator):
    with lakebase.connect(autocommit=True) as conn:  # nothing to commit when the session has ended
        conn.execute("SELECT 1")
        assert lakebase_faults.suspend() == 1  # this session, on the branch's endpoint
        assert lakebase_emulator.endpoint_state(lakebase_branch.endpoint_name) == "IDLE"
        assert lakebase_emulator.endpoint_state() != "IDLE"


def test_a_transaction_on_a_branch(lakebase_branch, lakebase_transaction):
    lakebase_transaction.execute("INSERT INTO plugin_main_data VALUES (1)")
    assert lakebase_transaction.execute("SELECT count(*) FROM plugin_main_data").fetchone()[0] == 2


def test_fails_on_purpose_on_a_branch(lakebase_branch):
    assert False, "on purpose"
'''


def test_branch_fixtures_on_the_sessions_emulator(inner: pytest.Pytester, emulator: Emulator, app_role: str,
                                                  main_table: object) -> None:
    before = branches(emulator)
    inner.makepyfile(test_inner=INNER_BRANCHES)
    result = inner.runpytest(*PLUGIN, "--lakebase-emulator", str(emulator.data_dir), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8, failed=1)
    result.stdout.fnmatch_lines(["*_ test_fails_on_purpose_on_a_branch _*", "*AssertionError: on purpose"])
    # Every branch made for a test or the module is gone, the failing test's too, with its storage.
    assert branches(emulator) == before
    assert not [p.name for p in (emulator.data_dir / "branches").glob("*") if p.name.startswith(("test-", "module-"))]


INNER_WORKSPACE = '''
import os

import lakebase
from databricks.sdk import WorkspaceClient

PROJECT = os.environ["LAKEBASE_TEST_PROJECT"]


def test_env_is_a_branch_never_main(lakebase_env):
    assert lakebase_env["ENDPOINT_NAME"].startswith(PROJECT + "/branches/session-")
    assert "PGUSER" not in lakebase_env  # the identity of the workspace auth, found with /Me
    with lakebase.connect() as conn:
        conn.execute("CREATE TABLE made_in_ci (x int)")
        conn.commit()


def test_a_branch_with_a_ttl(lakebase_branch, lakebase_env):
    assert lakebase_env["ENDPOINT_NAME"] == lakebase_branch.endpoint_name
    assert "/branches/test-" in lakebase_branch.name
    branch = WorkspaceClient().postgres.get_branch(lakebase_branch.name)
    assert branch.status.expire_time is not None
    with lakebase.connect() as conn:
        assert conn.execute("SELECT to_regclass('made_in_ci')").fetchone()[0] is None


def test_needs_the_emulator(lakebase_faults):
    raise AssertionError("not reached: skipped on a workspace")
'''


def test_the_workspace_path_with_the_emulator_posing_as_the_workspace(
        inner: pytest.Pytester, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    project = emulator.endpoint_name.split("/branches/", 1)[0]
    before = branches(emulator)
    # What a CI job has: the workspace's auth and the project; Lakebase's port and TLS (here the emulator's).
    for key, value in {"LAKEBASE_TEST_PROJECT": project, "DATABRICKS_HOST": emulator.api_url,
                       "DATABRICKS_TOKEN": emulator.owner.pat or "", "PGPORT": str(emulator.pg_port),
                       "PGSSLMODE": "require", "DATABRICKS_CONFIG_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    inner.makepyfile(test_inner=INNER_WORKSPACE)
    result = inner.runpytest(*PLUGIN, "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*lakebase_faults needs the Lakebase emulator*LAKEBASE_TEST_PROJECT*"])
    assert branches(emulator) == before
