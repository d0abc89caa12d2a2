"""The lakebase command against the emulator: help, token, env, psql, init-schema and doctor under faults.

doctor and psql run as subprocesses (a clean environment each, as a user would run them); the quick
commands run in-process with click's CliRunner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import certifi
import pytest
from click.testing import CliRunner

from lakebase import connector
from lakebase.cli import main
from lakebase.emulator.supervise import clean_environment

from .apps_support import ensure_app_schema, free_port, owner_sql
from .lakebase_support import wait_for

COMMANDS = [[], ["emulator"], ["emulator", "start"], ["demo"], ["init-schema"], ["doctor"], ["psql"], ["token"],
            ["env"]]


@pytest.fixture(autouse=True)
def _fresh_registries(fresh_registries: None) -> None:
    """Every test starts and ends with no shared connectors (conftest.fresh_registries)."""


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full = clean_environment({**env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg"})
    return subprocess.run([sys.executable, "-m", "lakebase", *args], env=full, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = run_cli(env, "doctor", "--json", "--timeout", "2", *args)
    report = json.loads(result.stdout)
    assert "eyJ" not in result.stdout + result.stderr  # never a token
    return result.returncode, report


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def failed(report: dict[str, Any]) -> dict[str, Any]:
    """The failing check; every later one was skipped."""
    bad = [c for c in report["checks"] if c["status"] == "fail"]
    assert len(bad) == 1, report
    names = [c["name"] for c in report["checks"]]
    assert all(c["status"] == "skip" for c in report["checks"][names.index(bad[0]["name"]) + 1:])
    assert bad[0]["fix"], bad[0]
    return bad[0]


# ---- help --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lakebase")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_emulator_start_keeps_its_options() -> None:
    result = CliRunner().invoke(main, ["emulator", "start", "--help"])
    for option in ("--data-dir", "--api-port", "--pg-port", "--token-ttl"):
        assert option in result.output


# ---- token and env --------------------------------------------------------------------------------------
def test_token_prints_a_token(user_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["token"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("eyJ") and len(result.output.strip().splitlines()) == 1


def test_token_json_has_the_expiry(user_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["token", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["token"].startswith("eyJ") and data["expire_time"] and 0 < data["expires_in"] <= 3600
    assert data["endpoint"] == user_env["ENDPOINT_NAME"] and data["fingerprint"].startswith("sha256:")


def test_token_fails_with_the_configuration_fix(clean_env: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["token"])
    assert result.exit_code == 1
    assert "ENDPOINT_NAME" in result.output and "Fix:" in result.output


def test_env_prints_export_lines_without_the_token(user_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["env"])
    assert result.exit_code == 0, result.output
    lines = dict(line.removeprefix("export ").split("=", 1) for line in result.output.splitlines()
                 if line.startswith("export "))
    assert lines["PGHOST"] == "localhost" and lines["PGPORT"] == user_env["PGPORT"]
    assert lines["PGUSER"] == user_env["PGUSER"] and lines["PGSSLMODE"] == "verify-full"
    assert lines["PGSSLROOTCERT"] == user_env["PGSSLROOTCERT"]
    assert "PGPASSWORD" not in lines and "eyJ" not in result.output


def test_env_with_token_and_json(user_env: dict[str, str]) -> None:
    result = CliRunner().invoke(main, ["env", "--with-token"])
    assert result.exit_code == 0 and "export PGPASSWORD=eyJ" in result.output
    data = json.loads(CliRunner().invoke(main, ["env", "--json"]).output)
    assert data["PGDATABASE"] == "databricks_postgres" and "PGPASSWORD" not in data


def test_env_names_are_the_ones_libpq_reads(user_env: dict[str, str]) -> None:
    """`lakebase env` exports the target's libpq parameters under the names libpq itself gives them."""
    from psycopg import pq

    from lakebase._adapter import libpq_params
    from lakebase.cli import LIBPQ_ENVIRONMENT
    from lakebase.endpoints import hostaddr_for

    libpq = {o.keyword.decode(): o.envvar.decode() for o in pq.Conninfo.get_defaults() if o.envvar}
    assert LIBPQ_ENVIRONMENT == {key: libpq[key] for key in LIBPQ_ENVIRONMENT}
    target = connector.get_connector(token_refresh="lazy").target()
    exported = json.loads(CliRunner().invoke(main, ["env", "--json"]).output)
    params = libpq_params(target, hostaddr_for(target.host, target.port))
    assert exported == {libpq[key]: str(value) for key, value in params.items() if key in libpq}
    assert "PGAPPNAME" in exported and not any(key.startswith("keepalives") for key in exported)


def test_env_output_works_for_psql(user_env: dict[str, str]) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no system psql (apt-get install postgresql-client)")
    out = CliRunner().invoke(main, ["env", "--json", "--with-token"]).output
    env = {**clean_environment(), **json.loads(out)}
    result = subprocess.run([psql, "-XAtc", "select current_user"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == user_env["PGUSER"], result.stderr


# ---- psql ------------------------------------------------------------------------------------------------
@pytest.fixture
def psql_binary() -> str:
    found = shutil.which("psql")
    if found is None:
        pytest.skip("no system psql (apt-get install postgresql-client; `make test` installs it as root)")
    return found


def test_psql_runs_with_a_fresh_token(emulator: Any, psql_binary: str) -> None:
    env = {**emulator.user_env, "PGPASSWORD": "stale-password-from-the-shell"}
    result = run_cli(env, "psql", "--", "-XAt", "-c", "select current_user", "-c", "\\conninfo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == emulator.user_env["PGUSER"]
    assert "SSL connection" in result.stdout  # the system psql speaks TLS (the proxy requires it)


def test_psql_reconnects_after_the_first_token_expired(emulator: Any, psql_binary: str, tmp_path: Path) -> None:
    emulator.configure(token_ttl_seconds=3)
    script = tmp_path / "session.sql"
    script.write_text("select 'first';\n\\! sleep 5\n\\c databricks_postgres\nselect 'second', current_user;\n")
    result = run_cli(emulator.user_env, "psql", "--", "-XAt", "-v", "ON_ERROR_STOP=1", "-f", str(script))
    assert result.returncode == 0, result.stderr
    assert "first" in result.stdout and f"second|{emulator.user_env['PGUSER']}" in result.stdout
    leftovers = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("lakebase-psql-*")]
    assert not [p for p in leftovers if p.stat().st_mtime > script.stat().st_mtime]  # passfile removed


@pytest.mark.parametrize("who", ["user", "app"])
def test_psql_and_its_children_get_no_workspace_credentials(emulator: Any, app_role: str, psql_binary: str,
                                                              who: str) -> None:
    """psql's environment, as a \\! shell command sees it: the libpq settings, none of the workspace's
    secrets (the owner's PAT, the app's client secret), though lakebase itself used them to mint the token."""
    env = emulator.user_env if who == "user" else emulator.app_env
    result = run_cli(env, "psql", "--", "-XAt", "-v", "ON_ERROR_STOP=1", "-c", "select current_user", "-c", "\\! env")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == env["PGUSER"]  # logged in with the token minted from those credentials
    child = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert child["PGHOST"] == env["PGHOST"] and "PGPASSFILE" in child
    assert not [k for k in child if k.startswith("DATABRICKS_")], sorted(child)
    secrets = [env[k] for k in ("DATABRICKS_TOKEN", "DATABRICKS_CLIENT_SECRET") if k in env]
    assert len(secrets) == 1
    assert not [s for s in secrets if s in result.stdout]


def test_psql_missing_names_the_fix(user_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LAKEBASE_PSQL", raising=False)
    result = CliRunner().invoke(main, ["psql"])
    assert result.exit_code == 127
    assert "postgresql-client" in result.output and "psql was not found" in result.output


def test_psql_exit_code_is_psql_s(emulator: Any, psql_binary: str) -> None:
    result = run_cli(emulator.user_env, "psql", "--", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select 1/0")
    assert result.returncode != 0 and "division by zero" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_psql_ended_by_a_signal_removes_its_passfile(emulator: Any, psql_binary: str, tmp_path: Path,
                                                     signum: int) -> None:
    """A closed terminal (SIGHUP) or a kill (SIGTERM) ended lakebase psql without its cleanup: the
    passfile, a valid token, stayed on disk."""
    marker = tmp_path / "passfile"
    command = f'\\! echo "$PGPASSFILE" > {marker}.tmp && mv {marker}.tmp {marker} && sleep 60'
    env = clean_environment({**emulator.user_env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg"})
    proc = subprocess.Popen([sys.executable, "-m", "lakebase", "psql", "--", "-XAt", "-c", command], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: psql and sleep are ended with it
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, timeout=60)
        assert marker.exists(), proc.communicate(timeout=30)[1]
        passfile = Path(marker.read_text().strip())
        assert passfile.exists()  # psql is connected and running
        os.kill(proc.pid, signum)
        proc.wait(timeout=30)
        assert proc.returncode == 128 + signum
        assert not passfile.parent.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


# ---- init-schema ----------------------------------------------------------------------------------------
def test_init_schema_is_idempotent(emulator: Any, tmp_path: Path) -> None:
    sp = emulator.add_service_principal(f"cli-app-{uuid.uuid4().hex[:6]}")
    table = f"notes_{uuid.uuid4().hex[:6]}"
    first = run_cli(emulator.user_env, "init-schema", "--app-client-id", sp.name, "--table", table, "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["role_created"] and report["table_created"] and report["notes_inserted"] == 3
    again = json.loads(run_cli(emulator.user_env, "init-schema", "--app-client-id", sp.name, "--table", table,
                               "--json").stdout)
    assert not again["role_created"] and not again["table_created"] and again["notes_inserted"] == 0
    assert owner_sql(emulator, f"SELECT count(*) FROM {table}")[0][0] == 3
    # The app's service principal can now log in and INSERT (the sequence grant the tutorial lacks).
    env = {**emulator.app_env, "DATABRICKS_CLIENT_ID": sp.name, "DATABRICKS_CLIENT_SECRET": sp.client_secret,
           "PGUSER": sp.name}
    code, result = doctor(env, "--table", table)
    assert code == 0, result
    assert check(result, "privileges")["status"] == "ok"


def test_init_schema_as_a_non_owner_fails_clearly(emulator: Any, app_role: str) -> None:
    result = run_cli(emulator.app_env, "init-schema", "--app-client-id", str(uuid.uuid4()))
    assert result.returncode == 1
    assert "run it as the project owner" in result.stderr


# ---- doctor ---------------------------------------------------------------------------------------------
def test_doctor_all_green_as_owner_and_as_app(emulator: Any, app_role: str) -> None:
    ensure_app_schema(emulator, app_role)
    for env in (emulator.user_env, emulator.app_env):
        code, report = doctor(env)
        assert code == 0, report
        assert [c["name"] for c in report["checks"]] == ["configuration", "endpoint", "dns", "tcp", "tls", "token",
                                                         "login", "privileges"]
        assert all(c["status"] == "ok" for c in report["checks"]), report
    assert env["PGUSER"] in check(report, "login")["summary"]


def test_doctor_human_output_has_one_line_per_check(emulator: Any, app_role: str) -> None:
    ensure_app_schema(emulator, app_role)
    result = run_cli(emulator.app_env, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("configuration", "endpoint", "dns", "tcp", "tls", "token", "login", "privileges"):
        assert sum(1 for line in lines if line.startswith("✓ " + name)) == 1, result.stdout
    assert "all checks passed" in result.stdout and "eyJ" not in result.stdout


def test_doctor_without_any_environment() -> None:
    code, report = doctor({})
    bad = failed(report)
    assert code == 1 and bad["name"] == "configuration"
    assert "ENDPOINT_NAME" in bad["summary"] and "ENDPOINT_NAME=projects/" in bad["fix"]


def test_doctor_without_workspace_credentials(emulator: Any) -> None:
    env = {k: v for k, v in emulator.user_env.items() if not k.startswith("DATABRICKS_")}
    code, report = doctor(env)
    bad = failed(report)
    assert code == 1 and bad["name"] == "configuration" and "DATABRICKS_HOST" in bad["fix"]


@pytest.mark.parametrize(("change", "name", "summary", "fix"), [
    ({"PGHOST": "no-such-host.invalid"}, "dns", "does not resolve", "PGHOST=localhost"),
    ({"PGPORT": "__free__"}, "tcp", "connection refused", "PGPORT"),
    ({"PGSSLMODE": "disable"}, "configuration", "requires TLS", "PGSSLMODE=require"),
    ({"PGSSLROOTCERT": "__other_ca__"}, "tls", "does not verify", "PGSSLROOTCERT"),
    ({"DATABRICKS_TOKEN": "dapi00000000000000000000000000000000"}, "endpoint", "401", "DATABRICKS_TOKEN"),
    ({"DATABRICKS_HOST": "http://127.0.0.1:__free__"}, "endpoint", "cannot reach the workspace", "DATABRICKS_HOST"),
    ({"ENDPOINT_NAME": "projects/emulator/branches/production/endpoints/nope"}, "endpoint", "404", "ENDPOINT_NAME"),
    ({"ENDPOINT_NAME": "ep-primary"}, "configuration", "not a Lakebase endpoint name", "list-endpoints"),
    ({"PGUSER": "someone-else@example.com"}, "login", "tokens are minted for", "PGUSER=developer@"),
    ({"PGDATABASE": "nodb"}, "login", "does not exist", "PGDATABASE"),
])
def test_doctor_misconfigurations(emulator: Any, change: dict[str, str], name: str, summary: str, fix: str) -> None:
    env = {**emulator.user_env}
    for key, value in change.items():
        env[key] = value.replace("__free__", str(free_port())).replace("__other_ca__", certifi.where())
    code, report = doctor(env)
    bad = failed(report)
    assert code == 1
    assert bad["name"] == name, report
    assert summary in bad["summary"], bad
    assert fix in bad["fix"], bad


def test_doctor_wrong_client_secret(emulator: Any) -> None:
    code, report = doctor({**emulator.app_env, "DATABRICKS_CLIENT_SECRET": "wrong"})
    bad = failed(report)
    assert code == 1 and "DATABRICKS_CLIENT_SECRET" in bad["fix"]


def test_doctor_warns_about_pghost_not_matching_the_endpoint(emulator: Any) -> None:
    code, report = doctor({**emulator.user_env, "PGHOST": "127.0.0.1"})
    endpoint = check(report, "endpoint")
    assert endpoint["status"] == "warn" and "PGHOST=localhost" in endpoint["fix"]
    assert code == 0  # 127.0.0.1 reaches the emulator all the same


def test_doctor_with_only_pghost_finds_the_endpoint(emulator: Any, app_role: str) -> None:
    ensure_app_schema(emulator, app_role)
    env = {k: v for k, v in emulator.user_env.items() if k != "ENDPOINT_NAME"}
    code, report = doctor(env)
    assert code == 0, report
    assert check(report, "endpoint")["summary"].startswith(emulator.user_env["ENDPOINT_NAME"] + " is "), report


def test_doctor_with_a_pghost_no_endpoint_has(emulator: Any) -> None:
    env = {k: v for k, v in emulator.user_env.items() if k != "ENDPOINT_NAME"}
    code, report = doctor({**env, "PGHOST": "ep-nowhere.localhost"})
    bad = failed(report)
    assert code == 1 and bad["name"] == "endpoint", report
    assert "ep-nowhere.localhost" in bad["summary"] and "ENDPOINT_NAME" in bad["fix"], bad


@pytest.mark.parametrize("status", [503, 429])
def test_doctor_credential_outage(emulator: Any, status: int) -> None:
    emulator.credential_outage(120, status)
    code, report = doctor(emulator.user_env)
    bad = failed(report)
    assert code == 1 and bad["name"] == "token" and str(status) in bad["summary"]
    assert "run `lakebase doctor` again" in bad["fix"]
    emulator.credential_outage(0)
    assert doctor(emulator.user_env)[0] == 0


def _late_app(emulator: Any) -> dict[str, str]:
    """A service principal whose app was deployed before anyone ran databricks_create_role."""
    sp = emulator.add_service_principal(f"late-app-{uuid.uuid4().hex[:6]}")
    return {**emulator.app_env, "DATABRICKS_CLIENT_ID": sp.name, "DATABRICKS_CLIENT_SECRET": sp.client_secret,
            "PGUSER": sp.name}


def test_doctor_role_missing_then_no_privileges_then_fixed(emulator: Any, app_role: str) -> None:
    env = _late_app(emulator)
    role = env["PGUSER"]
    code, report = doctor(env)
    bad = failed(report)
    assert code == 1 and bad["name"] == "login" and "does not exist" in bad["summary"]
    assert f"lakebase init-schema --app-client-id {role}" in bad["fix"] and "databricks_create_role" in bad["fix"]

    owner_sql(emulator, "SELECT databricks_create_role(%s, 'service_principal')", (role,))
    code, report = doctor(env)
    bad = failed(report)
    assert code == 1 and bad["name"] == "privileges" and "no privilege" in bad["summary"]
    assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"' in bad["fix"]

    assert run_cli(emulator.user_env, "init-schema", "--app-client-id", role).returncode == 0
    code, report = doctor(env, "--table", "notes")
    assert code == 0, report


def test_doctor_points_out_the_missing_sequence_grant(emulator: Any, app_role: str) -> None:
    env = _late_app(emulator)
    role = env["PGUSER"]
    owner_sql(emulator, "SELECT databricks_create_role(%s, 'service_principal')", (role,))
    owner_sql(emulator, f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE notes TO "{role}"')  # the tutorial's grants
    code, report = doctor(env)
    privileges = check(report, "privileges")
    assert code == 0 and privileges["status"] == "warn"
    assert "no USAGE on its sequence" in privileges["summary"]
    assert "GRANT USAGE, SELECT ON SEQUENCE" in privileges["fix"]


def test_doctor_wakes_a_suspended_endpoint(emulator: Any, app_role: str) -> None:
    emulator.suspend()
    assert emulator.endpoint_state() == "IDLE"
    code, report = doctor(emulator.app_env)
    assert code == 0, report
    assert "IDLE" in check(report, "endpoint")["summary"]
    login = check(report, "login")
    assert login["details"]["woke"] and "woke it" in login["summary"]
    assert emulator.endpoint_state() == "ACTIVE"


def test_doctor_rides_out_a_restart(emulator: Any, app_role: str) -> None:
    emulator.configure(restart_seconds=2)
    emulator.restart()
    code, report = doctor(emulator.app_env)
    assert code == 0, report


def test_doctor_after_tokens_were_revoked(emulator: Any, app_role: str) -> None:
    emulator.expire_tokens()
    code, report = doctor(emulator.app_env)
    assert code == 0, report  # the doctor mints its own fresh token


# ---- demo -----------------------------------------------------------------------------------------------
def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args and "pytest" not in args:
            found.append(f"{cmdline.parent.name}: {args[:120]}")
    return found


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _run_demo(data_dir: Path, content: str | None) -> list[str]:
    """`lakebase demo` until its app answers; optionally add a note; Ctrl-C; return the notes it served."""
    import re
    import signal

    import httpx

    env = clean_environment({"DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg"})
    proc = subprocess.Popen([sys.executable, "-m", "lakebase", "demo", "--data-dir", str(data_dir), "--port", "0",
                             "--pg-port", "0", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        url = None
        assert proc.stdout is not None
        for line in proc.stdout:  # the banner comes once the app is healthy
            match = re.search(r"Notes app:\s+(http://\S+)", line)
            if match:
                url = match.group(1)
            if "Press Ctrl-C" in line:
                break
        assert url, proc.stderr.read() if proc.stderr else ""
        with httpx.Client(base_url=url, timeout=30) as http:
            if content is not None:
                assert http.post("/api/notes", json={"content": content}).status_code == 201
            notes = [n["content"] for n in http.get("/api/notes").json()["notes"]]
            assert http.get("/healthz").json()["status"] == "ok"
        children = _descendants(proc.pid)  # postgres, gunicorn master and workers
        assert len(children) >= 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert [pid for pid in children if _alive(pid)] == []  # no orphans
    return notes


def test_demo_serves_the_app_stops_cleanly_and_keeps_notes(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    content = f"kept across demos {uuid.uuid4().hex[:8]}"
    first = _run_demo(data_dir, content)
    assert content in first and "Welcome to Lakebase Autoscaling!" in first
    assert _processes_mentioning(str(data_dir)) == []  # no postgres, no gunicorn left behind
    second = _run_demo(data_dir, None)
    assert content in second
    assert second.count("Welcome to Lakebase Autoscaling!") == 1  # the sample notes were not added again
    assert _processes_mentioning(str(data_dir)) == []


# ---- emulator start: Lakebase's port 5432 when free ---------------------------------------------------------
@pytest.fixture(scope="module")
def port_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("emulator-5432")


def _emulator_without_pg_port(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, str], Path]:
    """`lakebase emulator start` with no --pg-port, until ready: the process, user.env and its stderr file."""
    import time

    from lakebase.emulator.process import read_env_file

    for name in ("user.env", "app.env"):
        (data_dir / name).unlink(missing_ok=True)
    stderr = data_dir / "start.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "lakebase", "emulator", "start", "--data-dir", str(data_dir),
                                 "--api-port", "0"], env=clean_environment(), stdout=subprocess.DEVNULL, stderr=err,
                                text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (data_dir / "app.env").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the emulator did not start:\n{stderr.read_text()}")
        time.sleep(0.05)
    return proc, read_env_file(data_dir / "user.env"), stderr


def _stop(proc: subprocess.Popen[str]) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0


@pytest.mark.xdist_group("port-5432")  # both take the port: one worker runs them in turn
def test_emulator_start_says_when_5432_is_taken(port_data_dir: Path) -> None:
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 5432))
        holder.listen()
    except OSError:
        pass  # something else has it: the emulator must step aside all the same
    try:
        proc, env, stderr = _emulator_without_pg_port(port_data_dir)
        try:
            port = int(env["PGPORT"])
            assert port != 5432
            said = " ".join(stderr.read_text().split())
            assert "port 5432 (Lakebase's Postgres port) is taken" in said
            assert f"listens on port {port} instead" in said and "--pg-port" in said
        finally:
            _stop(proc)
    finally:
        holder.close()


@pytest.mark.xdist_group("port-5432")  # both take the port: one worker runs them in turn
def test_emulator_start_listens_on_5432_when_free(port_data_dir: Path) -> None:
    import socket

    import psycopg
    from databricks.sdk import WorkspaceClient

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 5432))
        except OSError:
            pytest.skip("port 5432 is in use on this machine")
    proc, env, stderr = _emulator_without_pg_port(port_data_dir)
    try:
        assert env["PGPORT"] == "5432" and "is taken" not in stderr.read_text()
        w = WorkspaceClient(host=env["DATABRICKS_HOST"], token=env["DATABRICKS_TOKEN"], auth_type="pat",
                            config_file="/nonexistent/databrickscfg")
        token = w.postgres.generate_database_credential(endpoint=env["ENDPOINT_NAME"]).token
        # As a client that assumes Lakebase's port (it reads only the host from the endpoint).
        with psycopg.connect(host=env["PGHOST"], port=5432, dbname=env["PGDATABASE"], user=env["PGUSER"],
                             sslmode="require", password=token) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        _stop(proc)


# ---- doctor: what teams get wrong next -------------------------------------------------------------------
def test_doctor_an_instance_name_given_as_the_endpoint(emulator: Any) -> None:
    code, report = doctor({**emulator.user_env, "ENDPOINT_NAME": "emulator-instance"})
    bad = failed(report)
    assert code == 1 and bad["name"] == "configuration"
    assert "is a Lakebase Provisioned instance" in bad["fix"] and "LAKEBASE_INSTANCE_NAME=emulator-instance" \
        in bad["fix"], bad


def test_doctor_an_endpoint_name_given_as_the_instance(emulator: Any) -> None:
    env = {k: v for k, v in emulator.user_env.items() if k != "ENDPOINT_NAME"}
    code, report = doctor({**env, "LAKEBASE_INSTANCE_NAME": emulator.endpoint_name})
    bad = failed(report)
    assert code == 1 and bad["name"] == "configuration"
    assert f"set ENDPOINT_NAME={emulator.endpoint_name} and unset LAKEBASE_INSTANCE_NAME" in bad["fix"], bad


def test_doctor_a_wrong_database_lists_the_databases(emulator: Any) -> None:
    code, report = doctor({**emulator.user_env, "PGDATABASE": "databricks_postgress"})
    bad = failed(report)
    assert code == 1 and bad["name"] == "login" and "'databricks_postgress' does not exist" in bad["summary"]
    assert "the databases are: " in bad["fix"] and "databricks_postgres" in bad["fix"].split("are: ")[1], bad


def test_doctor_a_pat_as_pgpassword(emulator: Any, app_role: str) -> None:
    code, report = doctor({**emulator.user_env, "PGPASSWORD": emulator.owner.pat})
    token = check(report, "token")
    assert code == 0 and token["status"] == "warn", report
    assert "PGPASSWORD holds a Databricks personal access token" in token["summary"]
    assert "unset PGPASSWORD" in token["fix"] and "lakebase psql" in token["fix"]


def test_doctor_the_workspace_oauth_token_as_pgpassword(emulator: Any, app_role: str) -> None:
    from .lakebase_support import m2m_client

    bearer = m2m_client(emulator).config.authenticate()["Authorization"].removeprefix("Bearer ")
    code, report = doctor({**emulator.app_env, "PGPASSWORD": bearer})
    login = check(report, "login")
    assert code == 0 and login["status"] == "warn", report
    assert "PGPASSWORD is refused by Postgres" in login["summary"] and "workspace OAuth token" in login["summary"]
    assert "unset PGPASSWORD" in login["fix"] and "lakebase token" in login["fix"]
    assert bearer not in json.dumps(report)


def test_doctor_no_warning_for_a_database_credential_as_pgpassword(emulator: Any, app_role: str) -> None:
    from .conftest import owner_token

    code, report = doctor({**emulator.user_env, "PGPASSWORD": owner_token(emulator)})
    assert code == 0 and check(report, "token")["status"] == "ok" and check(report, "login")["status"] == "ok", \
        report


def test_doctor_the_macos_resolver_failure(emulator: Any, app_role: str, user_env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The system resolver cannot resolve the host (as macOS's cannot resolve some Lakebase names; this
    cannot happen for real here, so getaddrinfo and the DNS query are replaced); lakebase's own DNS can."""
    import socket

    from lakebase import doctor as doctor_module
    from lakebase import endpoints

    host = user_env["PGHOST"]
    real = socket.getaddrinfo

    def getaddrinfo(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name == host:
            raise socket.gaierror(socket.EAI_NONAME, "nodename nor servname provided, or not known")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(endpoints, "query_dns", lambda name, *a, **k: "127.0.0.1")
    monkeypatch.setattr(endpoints, "_dns_cache", {})
    results = {c.name: c for c in doctor_module.run(timeout=2)}
    dns = results["dns"]
    assert dns.status == "warn" and "not by the system resolver" in dns.summary, dns
    assert dns.fix and "lakebase psql" in dns.fix and "PGHOSTADDR=127.0.0.1" in dns.fix
    assert results["login"].status == "ok", results["login"]
