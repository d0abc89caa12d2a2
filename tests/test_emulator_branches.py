"""Branches in the emulator through the real, unmodified ``databricks-sdk``: create (a long-running
operation), get, list, connect, isolation of writes, roles and grants copied, delete (sessions end,
storage freed), TTL expiry, authorization and errors.

Against the session emulator (``EmulatorProcess`` from conftest): each test makes uniquely named
branches and deletes what it makes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    AlreadyExists,
    BadRequest,
    NotFound,
    NotImplemented,
    PermissionDenied,
)
from databricks.sdk.service.postgres import (
    Branch,
    BranchSpec,
    BranchStatusState,
    Endpoint,
    EndpointSpec,
    EndpointType,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from lakebase.emulator import EmulatorProcess

from .conftest import owner_connect
from .lakebase_support import m2m_client, pat_client, wait_for

Emu = EmulatorProcess


def project(emu: Emu) -> str:
    return emu.endpoint_name.split("/branches/")[0]


def production(emu: Emu) -> str:
    return emu.endpoint_name.split("/endpoints/")[0]


def ttl(seconds: int) -> Duration:
    d = Duration()
    d.FromSeconds(seconds)
    return d


def new_branch(w: WorkspaceClient, emu: Emu, spec: BranchSpec | None = None, branch_id: str | None = None) -> Any:
    branch_id = branch_id or "br-" + uuid.uuid4().hex[:8]
    spec = spec or BranchSpec(no_expiry=True)
    return w.postgres.create_branch(parent=project(emu), branch=Branch(spec=spec), branch_id=branch_id).wait()


def branch_dir(emu: Emu, branch_id: str) -> Path:
    return emu.data_dir / "branches" / branch_id


def token(w: WorkspaceClient, endpoint: str) -> str:
    return w.postgres.generate_database_credential(endpoint=endpoint).token


def connect(emu: Emu, host: str, user: str, password: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host=host, hostaddr="127.0.0.1", port=emu.pg_port, user=user, password=password,
                           dbname="databricks_postgres", sslmode="require", connect_timeout=10, **kwargs)


@pytest.fixture
def branch(emulator: Emu, app_role: str) -> Iterator[Any]:
    """A branch of production (with the tutorial's app role, grants and notes), deleted after the test."""
    w = pat_client(emulator)
    made = new_branch(w, emulator)
    try:
        yield made
    finally:
        try:
            w.postgres.delete_branch(made.name).wait()
        except NotFound:
            pass


def test_create_get_list_connect_and_isolate(emulator: Emu, branch: Any) -> None:
    emu, w = emulator, pat_client(emulator)
    assert branch.name == f"{project(emu)}/branches/{branch.branch_id}"
    assert branch.status.current_state == BranchStatusState.READY
    assert branch.status.source_branch == production(emu) and branch.status.source_branch_lsn
    assert branch.status.default is False and branch.spec.no_expiry is True
    assert w.postgres.get_branch(branch.name).uid == branch.uid
    assert branch.name in [b.name for b in w.postgres.list_branches(parent=project(emu))]
    # Its own read-write endpoint, found as the library finds hosts (GET endpoint -> status.hosts.host).
    [ep] = list(w.postgres.list_endpoints(parent=branch.name))
    assert ep.name == f"{branch.name}/endpoints/primary"
    assert ep.status.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_WRITE
    host = w.postgres.get_endpoint(ep.name).status.hosts.host
    assert host.endswith(".localhost") and host != "localhost"
    # Reached by SNI and by options=endpoint=<uid>; the token of the production endpoint works too.
    owner = emu.owner.name
    with connect(emu, host, owner, token(w, ep.name), autocommit=True) as conn:
        conn.execute("CREATE TABLE only_on_branch (x int)")
        conn.execute("INSERT INTO notes (content) VALUES ('branch-only note')")
        assert conn.execute("SELECT current_database()").fetchone() == ("databricks_postgres",)
    with connect(emu, "localhost", owner, token(w, emu.endpoint_name), autocommit=True,
                 options=f"endpoint={ep.uid}") as conn:
        assert conn.execute("SELECT count(*) FROM only_on_branch").fetchone() == (0,)
    # Writes on production after the copy stay there, and the branch's stay on the branch.
    with owner_connect(emu, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('only_on_branch')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM notes WHERE content = 'branch-only note'").fetchone() == (0,)
        conn.execute("INSERT INTO notes (content) VALUES ('production-only note')")
        try:
            with connect(emu, host, owner, token(w, ep.name)) as bconn:
                assert bconn.execute(
                    "SELECT count(*) FROM notes WHERE content = 'production-only note'").fetchone() == (0,)
        finally:
            conn.execute("DELETE FROM notes WHERE content = 'production-only note'")
    # The branch's roles are the copy's: the app's role, its grants and the databases.
    roles = [r.status.postgres_role for r in w.postgres.list_roles(parent=branch.name)]
    assert emu.app.name in roles and owner in roles
    assert [d.status.postgres_database for d in w.postgres.list_databases(parent=branch.name)] == [
        "databricks_postgres"]


def test_app_logs_in_on_a_branch_with_its_grants(emulator: Emu, branch: Any) -> None:
    """The app's OAuth role and its grants came along: it reads and writes notes on the branch."""
    emu = emulator
    app = m2m_client(emu)
    endpoint = f"{branch.name}/endpoints/primary"
    host = app.postgres.get_endpoint(endpoint).status.hosts.host
    with connect(emu, host, emu.app.name, token(app, endpoint), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] >= 3  # type: ignore[index]
        assert conn.execute("UPDATE notes SET content = 'changed on a branch' WHERE id = 1").rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # what it was not granted, it has not
            conn.execute("CREATE DATABASE nope")
    with owner_connect(emu) as conn:
        assert conn.execute("SELECT content FROM notes WHERE id = 1").fetchone() != ("changed on a branch",)


def test_zero_argument_connect_to_a_branch(emulator: Emu, branch: Any, user_env: dict[str, str],
                                           monkeypatch: pytest.MonkeyPatch, fresh_registries: None) -> None:
    import lakebase

    monkeypatch.setenv("ENDPOINT_NAME", f"{branch.name}/endpoints/primary")
    monkeypatch.delenv("PGHOST")
    with lakebase.connect() as conn:
        conn.execute("CREATE TABLE zero_arg (x int)")
        conn.commit()
    with owner_connect(emulator) as conn:
        assert conn.execute("SELECT to_regclass('zero_arg')").fetchone() == (None,)


def test_suspend_and_restart_faults_on_a_branch_endpoint(emulator: Emu, branch: Any) -> None:
    """Suspending a branch's endpoint ends its sessions only; the next login wakes it; a restart ends
    the branch's sessions too."""
    emu, w = emulator, pat_client(emulator)
    endpoint = f"{branch.name}/endpoints/primary"
    host = w.postgres.get_endpoint(endpoint).status.hosts.host
    password = token(w, endpoint)
    with owner_connect(emu, autocommit=True) as on_production, \
            connect(emu, host, emu.owner.name, password, autocommit=True) as on_branch:
        assert emu.suspend(endpoint) == 1
        assert emu.endpoint_state(endpoint) == "IDLE" and emu.endpoint_state() == "ACTIVE"
        with pytest.raises(psycopg.errors.AdminShutdown):
            on_branch.execute("SELECT 1")
        assert on_production.execute("SELECT 1").fetchone() == (1,)
    with connect(emu, host, emu.owner.name, password, autocommit=True) as on_branch:
        assert emu.endpoint_state(endpoint) == "ACTIVE"
        emu.configure(restart_seconds=0)
        assert emu.restart() >= 1
        with pytest.raises(psycopg.errors.AdminShutdown):
            on_branch.execute("SELECT 1")


def test_delete_ends_sessions_and_frees_storage(emulator: Emu, app_role: str) -> None:
    emu, w = emulator, pat_client(emulator)
    made = new_branch(w, emu)
    endpoint = f"{made.name}/endpoints/primary"
    host = w.postgres.get_endpoint(endpoint).status.hosts.host
    conn = connect(emu, host, emu.owner.name, token(w, endpoint), autocommit=True)
    try:
        assert branch_dir(emu, made.branch_id).is_dir()
        w.postgres.delete_branch(made.name).wait()
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("SELECT 1")
        assert info.value.sqlstate in ("57P01", None)  # terminated (None: the closed socket was seen first)
    finally:
        conn.close()
    assert not branch_dir(emu, made.branch_id).exists()
    with pytest.raises(NotFound):
        w.postgres.get_branch(made.name)
    assert made.name not in [b.name for b in w.postgres.list_branches(parent=project(emu))]
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect(emu, host, emu.owner.name, token(w, emu.endpoint_name))
    with pytest.raises(NotFound):
        w.postgres.delete_branch(made.name)


def test_ttl_expiry_deletes_the_branch(emulator: Emu, app_role: str) -> None:
    emu, w = emulator, pat_client(emulator)
    made = new_branch(w, emu, BranchSpec(ttl=ttl(1)))
    assert made.status.expire_time is not None and made.spec.no_expiry is None

    def gone() -> bool:
        try:
            w.postgres.get_branch(made.name)
        except NotFound:
            return True
        return False

    wait_for(lambda: gone() and not branch_dir(emu, made.branch_id).exists(), timeout=30, interval=0.1,
             what="the branch expired and its storage was freed")


def test_only_the_owner_creates_and_deletes(emulator: Emu, branch: Any) -> None:
    app = m2m_client(emulator)
    with pytest.raises(PermissionDenied, match="CAN_MANAGE"):
        app.postgres.create_branch(parent=project(emulator), branch=Branch(spec=BranchSpec(no_expiry=True)),
                                   branch_id="by-the-app")
    with pytest.raises(PermissionDenied, match="CAN_MANAGE"):
        app.postgres.delete_branch(branch.name)
    assert app.postgres.get_branch(branch.name).name == branch.name  # reading needs CAN_USE only


def test_protected_branch_and_branch_of_a_branch(emulator: Emu, branch: Any) -> None:
    """A protected branch cannot be deleted until update_branch clears it; a branch of a branch copies
    the branch (not production)."""
    emu, w = emulator, pat_client(emulator)
    endpoint = f"{branch.name}/endpoints/primary"
    host = w.postgres.get_endpoint(endpoint).status.hosts.host
    with connect(emu, host, emu.owner.name, token(w, endpoint), autocommit=True) as conn:
        conn.execute("CREATE TABLE from_the_parent_branch (x int)")
    child = new_branch(w, emu, BranchSpec(no_expiry=True, is_protected=True, source_branch=branch.name))
    assert child.status.is_protected is True and child.status.source_branch == branch.name
    try:
        child_endpoint = f"{child.name}/endpoints/primary"
        child_host = w.postgres.get_endpoint(child_endpoint).status.hosts.host
        with connect(emu, child_host, emu.owner.name, token(w, child_endpoint)) as conn:
            assert conn.execute("SELECT to_regclass('from_the_parent_branch') IS NOT NULL").fetchone() == (True,)
        with pytest.raises(BadRequest, match="protected"):
            w.postgres.delete_branch(child.name)
        with pytest.raises(BadRequest, match="cannot expire"):
            w.postgres.update_branch(child.name, Branch(spec=BranchSpec(ttl=ttl(60))),
                                     FieldMask(paths=["spec.expiration"]))
        updated = w.postgres.update_branch(child.name, Branch(spec=BranchSpec(is_protected=False)),
                                           FieldMask(paths=["spec.is_protected"])).wait()
        assert updated.status.is_protected is False
    finally:
        w.postgres.delete_branch(child.name).wait()


def test_errors(emulator: Emu, branch: Any) -> None:
    emu, w = emulator, pat_client(emulator)
    p = project(emu)

    def create(branch_id: str, **spec: Any) -> Any:
        return w.postgres.create_branch(parent=p, branch=Branch(spec=BranchSpec(**spec)), branch_id=branch_id)

    with pytest.raises(BadRequest, match="branch_id"):
        create("Bad_Id", no_expiry=True)
    with pytest.raises(AlreadyExists):
        create(branch.branch_id, no_expiry=True)
    with pytest.raises(AlreadyExists):
        create("production", no_expiry=True)
    with pytest.raises(NotFound, match="does not exist"):
        create("x-" + uuid.uuid4().hex[:6], no_expiry=True, source_branch=f"{p}/branches/nope")
    with pytest.raises(NotFound):
        w.postgres.create_branch(parent="projects/other", branch=Branch(spec=BranchSpec(no_expiry=True)),
                                 branch_id="x")
    with pytest.raises(BadRequest, match="exactly one of"):
        create("x-" + uuid.uuid4().hex[:6])
    with pytest.raises(BadRequest, match="exactly one of"):
        create("x-" + uuid.uuid4().hex[:6], no_expiry=True, ttl=ttl(60))
    with pytest.raises(BadRequest, match="no_expiry may only be true"):
        create("x-" + uuid.uuid4().hex[:6], no_expiry=False)
    with pytest.raises(BadRequest, match="30 days"):
        create("x-" + uuid.uuid4().hex[:6], ttl=ttl(31 * 86400))
    past = Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(BadRequest, match="in the future"):
        create("x-" + uuid.uuid4().hex[:6], expire_time=past)
    with pytest.raises(NotImplemented, match="source_branch_lsn"):
        create("x-" + uuid.uuid4().hex[:6], no_expiry=True, source_branch_lsn="0/0")
    with pytest.raises(BadRequest, match="default branch"):
        w.postgres.delete_branch(production(emu))
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{p}/branches/nope")
    with pytest.raises(AlreadyExists, match="read-write"):
        w.postgres.create_endpoint(parent=branch.name, endpoint_id="second", endpoint=Endpoint(
            spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)))
    assert [b.name for b in w.postgres.list_branches(parent=p) if b.branch_id.startswith("x-")] == []


def branch_postgres_pids(pgdata: Path) -> list[int]:
    """Every process (postmaster and children) working in the branch's data directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(pgdata) and b"postgres" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def runtime_dirs_of(pid: int) -> list[Path]:
    from lakebase.emulator.postgres import OWNER_FILE, RUNTIME_PREFIX

    found = []
    for candidate in Path(tempfile.gettempdir()).glob(RUNTIME_PREFIX + "*"):
        with contextlib.suppress(OSError, ValueError):
            if int((candidate / OWNER_FILE).read_text()) == pid:
                found.append(candidate)
    return found


@pytest.mark.slow
def test_branches_survive_restarts_and_leave_no_process(tmp_path: Path) -> None:
    """A branch's cluster dies with its emulator, even a killed one; the next start sweeps what the
    killed one left (its runtime directories, a copy it never finished) and the branch, persisted,
    serves its data again; a clean stop leaves no process either. Its files are private."""
    emu = EmulatorProcess(tmp_path / "emu").start()
    try:
        w = pat_client(emu)
        made = new_branch(w, emu)
        endpoint = f"{made.name}/endpoints/primary"
        host = w.postgres.get_endpoint(endpoint).status.hosts.host
        with connect(emu, host, emu.owner.name, token(w, endpoint), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept AS SELECT 'on the branch' AS v")
        pgdata = branch_dir(emu, made.branch_id) / "pgdata"
        assert stat.S_IMODE(os.stat(branch_dir(emu, made.branch_id)).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(pgdata).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(emu.data_dir / "branches").st_mode) == 0o700
        pids = branch_postgres_pids(pgdata)
        runtime_dirs = runtime_dirs_of(emu.pid or 0)
        assert pids and len(runtime_dirs) == 2  # the primary's and the branch's
        (emu.data_dir / "branches" / "unfinished").mkdir()
        os.kill(emu.pid or 0, signal.SIGKILL)
        emu.stop()
        wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), timeout=15,
                 what="the branch's postgres ended with its killed emulator")
        emu.start()
        w = pat_client(emu)
        assert made.name in [b.name for b in w.postgres.list_branches(parent=project(emu))]
        with connect(emu, host, emu.owner.name, token(w, endpoint)) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("on the branch",)]
        assert not (emu.data_dir / "branches" / "unfinished").exists()
        assert not any(d.exists() for d in runtime_dirs)
        pids = branch_postgres_pids(pgdata)
        assert pids
    finally:
        emu.stop()
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]


def test_a_deleted_branch_does_not_stop_tokens_for_the_endpoints_left(
        emulator: Emu, user_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, fresh_registries: None) -> None:
    """One workspace-scoped token serves every endpoint of an identity, minted with one endpoint's name:
    when that endpoint's branch is deleted, the next mint uses an endpoint that still exists."""
    import lakebase

    w = pat_client(emulator)
    doomed = new_branch(w, emulator)
    monkeypatch.delenv("PGHOST")
    monkeypatch.setenv("ENDPOINT_NAME", f"{doomed.name}/endpoints/primary")
    with lakebase.connect() as conn:  # the identity's credential cache is made for the branch's endpoint
        assert conn.execute("SELECT 1").fetchone() == (1,)
    w.postgres.delete_branch(doomed.name).wait()
    monkeypatch.setenv("ENDPOINT_NAME", emulator.endpoint_name)
    emulator.expire_tokens()  # the cached token is refused: a new one must be minted
    with lakebase.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user_env["PGUSER"],)
