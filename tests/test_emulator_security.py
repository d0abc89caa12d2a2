"""The emulator as an attacker sees it: another local user, and a database user of the workspace.

CI machines run the emulator as root. Another local user (``nobody`` here) must not reach Postgres's
socket nor read the data directory's secrets, logs or Postgres data; a ``databricks_superuser``
member must not make ``databricks_create_role`` read server files. The OS-level tests need root
(to run commands as ``nobody``) and are skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from lakebase.emulator import Emulator
from lakebase.emulator.postgres import SYSTEM_USER, bin_path
from lakebase.emulator.process import read_env_file

from .conftest import owner_connect

pytestmark = pytest.mark.slow

ATTACKER = "nobody"
PUBLIC_FILES = {"ca.pem", "server.pem"}  # certificates: public by design


def _can_switch_user() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the emulator drops to its own OS user only when run as root"
    if shutil.which("runuser") is None:
        return "needs runuser (util-linux) to act as another local user"
    try:
        pwd.getpwnam(ATTACKER)
    except KeyError:
        return f"needs the OS user {ATTACKER!r}"
    return None


needs_root = pytest.mark.skipif(_can_switch_user() is not None, reason=str(_can_switch_user()))


def as_attacker(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    runuser = shutil.which("runuser") or "runuser"
    return subprocess.run([runuser, "-u", ATTACKER, "--", *cmd], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd="/")


@pytest.fixture(scope="module")
def open_data_dir() -> Iterator[tuple[Emulator, Path]]:
    """An emulator whose data directory every local user can reach (a project dir in a 0755 home)."""
    if _can_switch_user() is not None:
        pytest.skip(str(_can_switch_user()))
    base = Path(tempfile.mkdtemp(prefix="lakebase-security-"))
    try:
        base.chmod(0o755)
        data_dir = base / "emu"
        data_dir.mkdir(mode=0o755)
        data_dir.chmod(0o755)
        assert as_attacker("test", "-x", str(data_dir)).returncode == 0, (
            f"{ATTACKER} cannot reach {data_dir}: TMPDIR must be traversable by other users for this test")
        with Emulator(data_dir) as emu:
            yield emu, data_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_local_user_cannot_connect_to_postgres(open_data_dir: tuple[Emulator, Path]) -> None:
    emu, _ = open_data_dir
    pg = emu.runtime.pg
    socket_dir = pg.socket_dir
    # The wheel's own psql (no TLS needed on a Unix socket), as the attacker.
    result = as_attacker(str(bin_path("psql")), "-h", str(socket_dir), "-p", str(pg.port), "-U", "postgres",
                         "-d", "postgres", "-Atc", "SELECT pg_read_file('PG_VERSION')", env={"PGCONNECT_TIMEOUT": "5"})
    assert result.returncode != 0 and "Permission denied" in result.stderr, result
    # Were the directory open, Postgres itself would still refuse: peer authentication, emulator only.
    socket_dir.chmod(0o711)
    try:
        result = as_attacker(str(bin_path("psql")), "-h", str(socket_dir), "-p", str(pg.port), "-U", "postgres",
                             "-d", "postgres", "-Atc", "SELECT 1", env={"PGCONNECT_TIMEOUT": "5"})
    finally:
        socket_dir.chmod(0o700)
    assert result.returncode != 0 and "Peer authentication failed" in result.stderr, result
    st = socket_dir.stat()
    assert st.st_uid == pwd.getpwnam(SYSTEM_USER).pw_uid and stat.S_IMODE(st.st_mode) == 0o700
    assert not stat.S_IMODE(socket_dir.parent.stat().st_mode) & 0o002 or socket_dir.parent.stat().st_mode & 0o1000


@needs_root
def test_local_user_cannot_read_the_data_directory(open_data_dir: tuple[Emulator, Path]) -> None:
    emu, data_dir = open_data_dir
    owner = owner_connect(emu, sslmode="verify-full", sslrootcert=str(emu.ca_file), autocommit=True)
    with owner:  # something in every file: a role from the extension, a log line
        owner.execute("CREATE EXTENSION IF NOT EXISTS databricks_auth")
        owner.execute("SELECT databricks_create_role(%s, 'service_principal')", (emu.app.name,))
    emu.expire_tokens()
    pgdata = data_dir / "pgdata"  # 0700 as a whole: a few of its files stand for the rest
    secrets = [p for p in data_dir.rglob("*") if p.is_file() and p.name not in PUBLIC_FILES
               and (pgdata not in p.parents or p.parent == pgdata or p.name == "pg_control")]
    names = {p.name for p in secrets}
    assert {"user.env", "app.env", "workspace.json", "signing-key.pem", "ca-key.pem", "server-key.pem",
            "postgres.log", "revocations.json", "PG_VERSION", "pg_control", "databricks_auth_identities.json",
            "postgresql.conf"} <= names, names
    for path in secrets:
        if path.parent == data_dir:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    script = 'for f in "$@"; do head -c1 "$f" >/dev/null 2>&1 && echo "$f"; done; exit 0'
    readable = as_attacker("/bin/sh", "-c", script, "sh", *map(str, secrets))
    assert readable.returncode == 0 and readable.stdout == "", f"{ATTACKER} can read:\n{readable.stdout}"
    listing = as_attacker("ls", str(data_dir / "pgdata"), str(emu.runtime.pg.socket_dir))
    assert listing.returncode != 0 and listing.stdout == ""


@needs_root
def test_data_dir_under_a_private_parent_works_and_parents_are_left_alone(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data_dir = private / "project" / "emu"
    ancestors = [p for p in [tmp_path, *tmp_path.parents] if p != Path("/")] + [private]
    before = {p: stat.S_IMODE(p.stat().st_mode) for p in ancestors}
    with Emulator(data_dir) as emu:
        env = read_env_file(data_dir / "user.env")
        with psycopg.connect(**_libpq(env, emu), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (v int)")
            assert conn.execute("SELECT current_user").fetchone() == (emu.owner.name,)
    after = {p: stat.S_IMODE(p.stat().st_mode) for p in ancestors}
    assert after == before
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # made by the emulator: private


def _libpq(env: dict[str, str], emu: Any) -> dict[str, Any]:
    from .conftest import owner_token

    return {"host": env["PGHOST"], "port": env["PGPORT"], "dbname": env["PGDATABASE"], "user": env["PGUSER"],
            "sslmode": "verify-full", "sslrootcert": str(emu.ca_file), "password": owner_token(emu),
            "connect_timeout": 10}


def test_create_role_cannot_be_pointed_at_another_file(emulator: Any, tmp_path: Path) -> None:
    """A session setting must not redirect the SECURITY DEFINER function to a file of the attacker's choice."""
    base = Path(tempfile.mkdtemp(prefix="lakebase-security-"))
    try:
        base.chmod(0o755)
        forged = base / "identities.json"
        forged.write_text('{"forged.user@example.com": "USER"}')
        secret = base / "secret.txt"
        secret.write_text("not json: SECRET-MARKER-4242\n")
        for path in (forged, secret):
            path.chmod(0o644)
        with owner_connect(emulator, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS databricks_auth")
            conn.execute("SELECT set_config('databricks_auth.identities_file', %s, false)", (str(forged),))
            with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
                conn.execute("SELECT databricks_create_role('forged.user@example.com', 'user')")
            assert "was not found in the workspace" in str(err.value)
            assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'forged.user@example.com'").fetchone() is None
            conn.execute("SELECT set_config('databricks_auth.identities_file', %s, false)", (str(secret),))
            with pytest.raises(psycopg.Error) as err2:
                conn.execute("SELECT databricks_create_role('nobody@example.com', 'user')")
            diag = err2.value.diag
            shown = " ".join(str(x) for x in (diag.message_primary, diag.message_detail, diag.message_hint,
                                              diag.context, str(err2.value)))
            assert "SECRET-MARKER" not in shown and "not json" not in shown, shown
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_secret_files_are_private_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys, the workspace (PATs, client secrets) and revocations are never readable by others, not even
    for an instant: they are created 0600, not written and then chmod-ed (a chmod is refused here)."""
    from lakebase.emulator.state import Workspace
    from lakebase.emulator.tls import ensure_certificates
    from lakebase.emulator.tokens import TokenAuthority

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod{args}: the file existed with another mode first")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)
    old = os.umask(0o022)
    try:
        ensure_certificates(tmp_path)
        authority = TokenAuthority(tmp_path / "signing-key.pem", "test", revocations_path=tmp_path / "revoked.json")
        authority.revoke_issued_before("aud")
        Workspace.load_or_create(tmp_path / "workspace.json")
    finally:
        os.umask(old)
    for name in ("ca-key.pem", "server-key.pem", "signing-key.pem", "revoked.json", "workspace.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_extension_scripts_define_the_same_function() -> None:
    """The 1.0 -> 1.1 update and a fresh 1.1 install must leave the same databricks_create_role."""
    from lakebase.emulator.runtime import EXTENSION_SOURCE

    def function(name: str) -> str:
        text = (EXTENSION_SOURCE / name).read_text()
        return text[text.index("CREATE OR REPLACE FUNCTION"):text.index("$fn$;")]

    assert function("databricks_auth--1.1.sql") == function("databricks_auth--1.0--1.1.sql")
    assert "current_setting" not in function("databricks_auth--1.1.sql")


@needs_root
@pytest.mark.parametrize("handle", ["in-process", "child process"])
def test_a_data_directory_another_user_made_is_refused(handle: str) -> None:
    """A predictable path under a world-writable directory (/tmp/lb): another user creates it first,
    with a symlink inside where Postgres's data goes and a log that points at a root-owned file. The
    emulator must refuse it before it chowns, chmods or appends to anything."""
    tmp_path = Path(tempfile.mkdtemp(prefix="lakebase-security-"))  # pytest's own are 0700: unreachable
    try:
        _refuses_planted_directories(tmp_path, handle)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _refuses_planted_directories(tmp_path: Path, handle: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    tmp_path.chmod(0o755)
    victim_dir, victim_file = tmp_path / "victim-dir", tmp_path / "victim.txt"
    victim_dir.mkdir(mode=0o755)
    victim_file.write_text("root's\n")
    planted = shared / "lb"
    made = as_attacker("sh", "-c", f"mkdir -m 0777 {planted} && ln -s {victim_dir} {planted}/pgdata && "
                                   f"ln -s {victim_file} {planted}/emulator.log")
    assert made.returncode == 0, made.stderr
    from lakebase.emulator import EmulatorProcess
    from lakebase.emulator.files import UnsafeDirectory

    with pytest.raises(UnsafeDirectory, match=r"belongs to uid .*Fix: use a directory of your own"):
        if handle == "in-process":
            Emulator(planted).start()
        else:
            EmulatorProcess(planted).start()
    assert stat.S_IMODE(victim_dir.stat().st_mode) == 0o755 and victim_dir.stat().st_uid == 0
    assert victim_file.read_text() == "root's\n"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir(mode=0o700)
    with pytest.raises(UnsafeDirectory, match="is a symbolic link"):
        Emulator(link).start()
    made = as_attacker("ln", "-s", str(tmp_path), str(shared / "evil"))  # a link someone else owns, on the way
    assert made.returncode == 0, made.stderr
    with pytest.raises(UnsafeDirectory, match=r"is reached through .*evil, a symbolic link of uid"):
        EmulatorProcess(shared / "evil" / "emu").start()
    assert not (tmp_path / "emu").exists()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="writable by other users"):
        EmulatorProcess(open_dir).start()


def test_the_child_emulators_log_is_private(emulator: Any) -> None:
    assert stat.S_IMODE((emulator.data_dir / "emulator.log").stat().st_mode) == 0o600
