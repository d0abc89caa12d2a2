"""`lakebase emulator start` as a user runs it: a foreground process, env files, clean stops, persistence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lakebase.emulator.process import read_env_file

pytestmark = pytest.mark.slow


def start_cli(data_dir: Path) -> subprocess.Popen[str]:
    for name in ("user.env", "app.env"):
        (data_dir / name).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "PG"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakebase", "emulator", "start", "--data-dir", str(data_dir), "--pg-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.monotonic() + 60
    while not (data_dir / "app.env").exists():
        if proc.poll() is not None:
            raise AssertionError(f"emulator exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        assert time.monotonic() < deadline, "emulator did not become ready in 60 s"
        time.sleep(0.05)
    return proc


def postgres_pids(data_dir: Path) -> list[int]:
    """The postmasters (primary and read replica) and their children: every process working in a data
    directory of the emulator's."""
    pgdata = {str(data_dir / "pgdata"), str(data_dir / "pgdata-replica")}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cwd in pgdata and b"postgres" in cmd:
                pids.append(int(entry.name))
    return pids


def connect_as_owner(data_dir: Path) -> psycopg.Connection:
    from databricks.sdk import WorkspaceClient

    env = read_env_file(data_dir / "user.env")
    w = WorkspaceClient(host=env["DATABRICKS_HOST"], token=env["DATABRICKS_TOKEN"], auth_type="pat")
    token = w.postgres.generate_database_credential(endpoint=env["ENDPOINT_NAME"]).token
    return psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], dbname=env["PGDATABASE"], user=env["PGUSER"],
                           sslmode=env["PGSSLMODE"], sslrootcert=env["PGSSLROOTCERT"], password=token,
                           autocommit=True)


def wait_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_env_files_sigterm_and_persistence(tmp_path: Path) -> None:
    data_dir = tmp_path / "emu"
    proc = start_cli(data_dir)
    try:
        user, app = read_env_file(data_dir / "user.env"), read_env_file(data_dir / "app.env")
        assert set(user) == {"DATABRICKS_HOST", "DATABRICKS_TOKEN", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER",
                             "PGSSLMODE", "PGSSLROOTCERT", "ENDPOINT_NAME"}
        assert user["DATABRICKS_HOST"].startswith("http://127.0.0.1:")
        assert user["PGDATABASE"] == "databricks_postgres" and user["PGSSLMODE"] == "verify-full"
        assert user["PGSSLROOTCERT"] == app["PGSSLROOTCERT"] == str(data_dir / "ca.pem")
        assert user["ENDPOINT_NAME"] == "projects/emulator/branches/production/endpoints/primary"
        assert "DATABRICKS_TOKEN" not in app
        assert {"DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "PGAPPNAME"} <= set(app)
        assert app["PGUSER"] == app["DATABRICKS_CLIENT_ID"]
        with connect_as_owner(data_dir) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives restarts')")
        pids = postgres_pids(data_dir)
        assert pids
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert wait_gone(pids), "postgres outlived the emulator"
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()

    proc = start_cli(data_dir)  # same DIR again: data is there, no stale lock
    try:
        with connect_as_owner(data_dir) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("survives restarts",)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def runtime_dirs_of(pid: int) -> list[Path]:
    """The private runtime directories (socket, pg_hba.conf) of the emulator process ``pid``."""
    from lakebase.emulator.postgres import OWNER_FILE, RUNTIME_PREFIX

    found = []
    for candidate in Path(tempfile.gettempdir()).glob(RUNTIME_PREFIX + "*"):
        try:
            if int((candidate / OWNER_FILE).read_text()) == pid:
                found.append(candidate)
        except (OSError, ValueError):
            continue
    return found


def test_killed_emulator_leaves_no_orphan_and_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "emu"
    proc = start_cli(data_dir)
    pids = postgres_pids(data_dir)
    left = runtime_dirs_of(proc.pid)
    assert len(left) == 1, left  # the primary's (no read replica here)
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_gone(pids), "postgres kept running after the emulator was killed"
    # A killed emulator cannot clean up: the next start (this one, or any other emulator's) does.
    proc = start_cli(data_dir)
    try:
        with connect_as_owner(data_dir) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not left[0].exists(), "the killed emulator's runtime directory was not removed"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_in_process_emulator_api(tmp_path: Path) -> None:
    """The in-process ``Emulator`` offers the same controls as ``EmulatorProcess``, without HTTP."""
    from databricks.sdk import WorkspaceClient

    from lakebase.emulator import ConfigError, Emulator

    with Emulator(tmp_path / "emu", token_ttl=600) as emu:
        assert read_env_file(emu.data_dir / "user.env") == emu.user_env
        assert emu.configure(wake_delay_seconds=0.05)["token_ttl_seconds"] == 600
        with pytest.raises(ConfigError, match="latency_ms must be between"):
            emu.configure(latency_ms=-1)
        user = emu.add_user("in.process@example.com")
        w = WorkspaceClient(host=emu.api_url, token=user.pat, auth_type="pat")
        cred = w.postgres.generate_database_credential(endpoint=emu.endpoint_name)
        assert cred.token
        owner = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat")
        token = owner.postgres.generate_database_credential(endpoint=emu.endpoint_name).token
        with psycopg.connect(host="localhost", port=emu.pg_port, user=emu.owner.name, dbname="databricks_postgres",
                             sslmode="verify-full", sslrootcert=emu.ca_file, password=token, autocommit=True) as conn:
            assert emu.stats()["active_sessions"] == 1
            assert emu.suspend() == 1
            assert emu.endpoint_state() == "IDLE"
            with pytest.raises(psycopg.errors.AdminShutdown):
                conn.execute("SELECT 1")
        assert emu.add_read_only_endpoint("replica-in-process").host == "replica-in-process.localhost"
        assert emu.stats()["credentials_issued"] == 2


def test_restart_keeps_revocations_and_updates_the_extension(tmp_path: Path) -> None:
    """expire-tokens outlives a restart; a databricks_auth installed by an older emulator is updated."""
    from lakebase.emulator import Emulator

    data_dir = tmp_path / "emu"
    with Emulator(data_dir) as emu:
        token = owner_token(emu)
        with owner_conn(emu, token) as conn:
            conn.execute("CREATE EXTENSION databricks_auth")
        emu.expire_tokens()
        with psycopg.connect(**emu.runtime.pg.connect_kwargs(dbname="databricks_postgres"),  # type: ignore[arg-type]
                             autocommit=True) as su:  # what an emulator of version 1.0 left behind
            su.execute("UPDATE pg_extension SET extversion = '1.0' WHERE extname = 'databricks_auth'")
            su.execute("CREATE OR REPLACE FUNCTION databricks_create_role(identity text, identity_type text) "
                       "RETURNS text LANGUAGE sql AS $$ SELECT 'version 1.0' $$")
    with Emulator(data_dir) as emu:
        with pytest.raises(psycopg.OperationalError, match="expire-tokens"):
            owner_conn(emu, token)
        with owner_conn(emu, owner_token(emu)) as conn:
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'databricks_auth'")
            assert version.fetchone() == ("1.1",)
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="was not found in the workspace"):
                conn.execute("SELECT databricks_create_role('nobody@example.com', 'user')")


def owner_token(emu: Any) -> str:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat")
    return w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token


def owner_conn(emu: Any, token: str) -> psycopg.Connection:
    env = emu.user_env
    return psycopg.connect(host=env["PGHOST"], port=env["PGPORT"], dbname=env["PGDATABASE"], user=env["PGUSER"],
                           sslmode="verify-full", sslrootcert=emu.ca_file, password=token,
                           autocommit=True, connect_timeout=10)


def gone(pid: int) -> bool:
    """No process ``pid``, or only its zombie (whoever adopted it has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_supervised_child_dies_with_its_parent() -> None:
    """What gunicorn (demo, tests, benchmarks) and Postgres (the emulator) are started with."""
    parent = subprocess.Popen([sys.executable, "-c", """
import signal, subprocess, sys
from lakebase.emulator.supervise import parent_death_signal
child = subprocess.Popen(["sleep", "600"], preexec_fn=parent_death_signal(signal.SIGTERM))
print(child.pid, flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert not gone(child)
        parent.kill()
        parent.wait(30)
        deadline = time.monotonic() + 15  # a hang guard: the signal comes at once
        while not gone(child):
            assert time.monotonic() < deadline, "the child outlived its parent"
            time.sleep(0.05)
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(30)
