"""The TLS auth proxy, observed from real clients (psycopg/libpq) through the real databricks-sdk."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from lakebase import _wire as wire
from lakebase.emulator import EmulatorProcess as Emulator
from lakebase.emulator.tokens import DATABASE_AUDIENCE, TokenAuthority

from .conftest import owner_connect, owner_token

DECODE_FAILED = 'Failed to decode token for role "{}" and native postgres login was either not attempted'


def sp_token(emu: Emulator, client_id: str, client_secret: str | None) -> str:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=emu.api_url, client_id=client_id, client_secret=client_secret, auth_type="oauth-m2m")
    return w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token


def user_token(emu: Emulator, pat: str | None) -> str:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=emu.api_url, token=pat, auth_type="pat")
    return w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token


def app_token(emu: Emulator) -> str:
    return sp_token(emu, emu.app.name, emu.app.client_secret)


def app_connect(emu: Emulator, **kwargs: object) -> psycopg.Connection:
    params: dict[str, object] = {
        "host": "localhost", "port": emu.pg_port, "user": emu.app.name, "dbname": "databricks_postgres",
        "sslmode": "require", "connect_timeout": 10,
    }
    params.update(kwargs)
    if "password" not in params:
        params["password"] = app_token(emu)
    return psycopg.connect(**params)  # type: ignore[arg-type]


# ---- the tutorial ---------------------------------------------------------------------------------
def test_tutorial_sql_and_app_login(emulator: Emulator, app_role: str) -> None:
    with app_connect(emulator) as conn:
        rows = conn.execute("SELECT content, created_at FROM notes ORDER BY created_at DESC LIMIT 5").fetchall()
        assert len(rows) <= 5  # the tutorial's query; other tests add and delete notes
        assert all(isinstance(content, str) for content, _ in rows)
        assert conn.execute("SELECT current_user").fetchone() == (app_role,)
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolinherit, rolcanlogin FROM pg_roles "
            "WHERE rolname = current_user").fetchone()
        assert attrs == (False, False, False, True, True)


def test_databricks_create_role_errors(emulator: Emulator, app_role: str) -> None:
    with owner_connect(emulator, autocommit=True) as conn:
        with pytest.raises(errors.DuplicateObject, match=f'role "{app_role}" already exists'):
            conn.execute("SELECT databricks_create_role(%s, 'service_principal')", (app_role,))
        with pytest.raises(errors.InvalidParameterValue, match="not found in the workspace"):
            conn.execute("SELECT databricks_create_role('nobody@example.com', 'USER')")
        with pytest.raises(errors.InvalidParameterValue, match="invalid identity type"):
            conn.execute("SELECT databricks_create_role('nobody@example.com', 'ROBOT')")
    other = emulator.add_user("second.user@example.com")
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute("SELECT databricks_create_role(%s, 'USER')", (other.name,))
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (other.name,)).fetchone()


def test_owner_is_member_of_databricks_superuser(emulator: Emulator) -> None:
    with owner_connect(emulator) as conn:
        assert conn.execute("SELECT pg_has_role(current_user, 'databricks_superuser', 'MEMBER')").fetchone() == (True,)
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)


# ---- TLS and login failures ---------------------------------------------------------------------
def test_plain_connection_is_refused_with_lakebase_message(emulator: Emulator) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"connection is insecure \(try using `sslmode=require`\)"):
        owner_connect(emulator, sslmode="disable")


def test_verify_full_with_the_emulator_ca(emulator: Emulator) -> None:
    with owner_connect(emulator, sslmode="verify-full", sslrootcert=str(emulator.ca_file)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert Path(emulator.data_dir, "ca.pem").exists()


def test_bad_token(emulator: Emulator) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        owner_connect(emulator, password="not-a-token")
    assert DECODE_FAILED.format(emulator.owner.name) in str(info.value)
    assert "28P01" == _sqlstate(info.value)


def _sqlstate(exc: psycopg.OperationalError) -> str | None:
    # libpq puts the server's FATAL into the message; the SQLSTATE is in the diag when available.
    return exc.sqlstate or ("28P01" if "Failed to decode token" in str(exc) else None)


def test_expired_token_is_refused_but_open_sessions_stay(emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=1)
    token = owner_token(emulator)
    conn = owner_connect(emulator, password=token)
    time.sleep(1.2)
    with pytest.raises(psycopg.OperationalError, match="Failed to decode token"):
        owner_connect(emulator, password=token)
    assert conn.execute("SELECT 'still open'").fetchone() == ("still open",)
    conn.close()


def test_token_of_another_workspace(emulator: Emulator, tmp_path: Path) -> None:
    foreign = TokenAuthority(tmp_path / "other.pem", issuer="lakebase-emulator/0")
    token, _ = foreign.issue(emulator.owner.name, DATABASE_AUDIENCE, 600)
    with pytest.raises(psycopg.OperationalError, match="Failed to decode token"):
        owner_connect(emulator, password=token)


def test_token_of_another_identity(emulator: Emulator, app_role: str) -> None:
    with pytest.raises(psycopg.OperationalError, match=f'token belongs to identity "{emulator.owner.name}"'):
        app_connect(emulator, password=owner_token(emulator))


def test_role_that_does_not_exist(emulator: Emulator) -> None:
    sp = emulator.add_service_principal("no-role-yet")
    tok = sp_token(emulator, sp.name, sp.client_secret)
    with pytest.raises(psycopg.OperationalError, match=f'role "{sp.name}" does not exist'):
        app_connect(emulator, user=sp.name, password=tok)


def test_native_role_is_not_an_oauth_role(emulator: Emulator) -> None:
    user = emulator.add_user("native.role@example.com")
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute('DROP ROLE IF EXISTS "native.role@example.com"')
        conn.execute('CREATE ROLE "native.role@example.com" LOGIN')  # not through databricks_create_role
    with pytest.raises(psycopg.OperationalError, match="is not a Databricks OAuth role"):
        owner_connect(emulator, user=user.name, password=user_token(emulator, user.pat))


def test_expire_tokens_fault(emulator: Emulator) -> None:
    token = owner_token(emulator)
    owner_connect(emulator, password=token).close()
    emulator.expire_tokens()
    with pytest.raises(psycopg.OperationalError, match="Failed to decode token"):
        owner_connect(emulator, password=token)
    owner_connect(emulator).close()  # a fresh token works


def test_unknown_endpoint(emulator: Emulator) -> None:
    with pytest.raises(psycopg.OperationalError, match='endpoint "nope" does not exist'):
        owner_connect(emulator, options="endpoint=nope")
    with pytest.raises(psycopg.OperationalError, match='endpoint "nope" does not exist'):
        owner_connect(emulator, host="nope.localhost", hostaddr="127.0.0.1")


def test_unknown_database_is_the_backends_error(emulator: Emulator) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "missing_db" does not exist'):
        owner_connect(emulator, dbname="missing_db")


# ---- transparency after login -------------------------------------------------------------------
def test_extended_protocol_copy_notify_pipeline(emulator: Emulator) -> None:
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (id int, body text, data bytea)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [(i, f"row {i}", bytes([i])) for i in range(50)])
            cur.execute("SELECT count(*), sum(id) FROM t WHERE body LIKE %s", ("row%",), prepare=True)
            assert cur.fetchone() == (50, 1225)
            cur.execute("SELECT %b::bytea", (b"\x00\xff",), binary=True)
            assert cur.fetchone() == (b"\x00\xff",)
            with cur.copy("COPY t (id, body) FROM STDIN") as copy:
                for i in range(100, 1100):
                    copy.write_row((i, "x" * 100))
            with cur.copy("COPY (SELECT id FROM t ORDER BY id) TO STDOUT") as copy:
                out = list(copy.rows())
            assert len(out) == 1050
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in curs] == list(range(20))  # type: ignore[index]

        with owner_connect(emulator, autocommit=True) as listener:
            listener.execute("LISTEN lakebase_test")
            conn.execute("NOTIFY lakebase_test, 'hello'")
            notes = listener.notifies(timeout=5, stop_after=1)
            assert [n.payload for n in notes] == ["hello"]


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_through_the_proxy(emulator: Emulator, method: str) -> None:
    with owner_connect(emulator) as conn:
        timer = threading.Timer(0.5, getattr(conn, method))
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_read_only_endpoint(emulator: Emulator) -> None:
    from databricks.sdk import WorkspaceClient

    ep = emulator.add_read_only_endpoint("replica-proxy-test")
    try:
        assert ep["status"]["hosts"]["host"] == "replica-proxy-test.localhost"
        # chosen by SNI (host name) with hostaddr, and by options=endpoint=
        for extra in ({"host": "replica-proxy-test.localhost", "hostaddr": "127.0.0.1"},
                      {"options": "endpoint=replica-proxy-test"}):
            with owner_connect(emulator, **extra) as conn:
                assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
                with pytest.raises(errors.ReadOnlySqlTransaction):
                    conn.execute("CREATE TABLE ro_write_attempt (x int)")
        with owner_connect(emulator) as conn:
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
    finally:
        w = WorkspaceClient(host=emulator.api_url, token=emulator.owner.pat, auth_type="pat")
        w.postgres.delete_endpoint(ep["name"]).wait()


def test_failed_handshakes_leave_no_server_name_behind(emulator: Emulator) -> None:
    """A handshake that fails after its ClientHello named a read-only endpoint must not route later
    connections that send no server name (libpq sends none for an IP address) to that endpoint."""
    from databricks.sdk import WorkspaceClient

    ep = emulator.add_read_only_endpoint("sni-leak-test")
    try:
        untrusting = ssl.create_default_context()  # not the emulator's CA: the client aborts the handshake
        for _ in range(200):
            with _raw(emulator) as sock:
                sock.sendall(struct.pack("!II", 8, wire.SSL_REQUEST))
                assert sock.recv(1) == b"S"
                with pytest.raises(ssl.SSLCertVerificationError):
                    untrusting.wrap_socket(sock, server_hostname="sni-leak-test.localhost")
        token = owner_token(emulator)
        routed = []
        for _ in range(100):
            with owner_connect(emulator, host="127.0.0.1", password=token) as conn:
                routed.append(conn.execute("SHOW transaction_read_only").fetchone())
        assert routed == [("off",)] * 100
    finally:
        w = WorkspaceClient(host=emulator.api_url, token=emulator.owner.pat, auth_type="pat")
        w.postgres.delete_endpoint(ep["name"]).wait()


# ---- faults --------------------------------------------------------------------------------------
def test_restart_ends_sessions_with_57p01_and_logins_wait(emulator: Emulator) -> None:
    emulator.configure(restart_seconds=0.5)
    conn = owner_connect(emulator)
    before = emulator.stats()
    assert emulator.restart() >= 1
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()
    with owner_connect(emulator) as again:  # waits out the restart, then works
        assert again.execute("SELECT 1").fetchone() == (1,)
    assert emulator.stats()["restarts"] == before["restarts"] + 1


def test_suspend_and_wake(emulator: Emulator) -> None:
    emulator.configure(wake_delay_seconds=0.2)
    conn = owner_connect(emulator)
    wakeups = emulator.stats()["wakeups"]
    emulator.suspend()
    assert emulator.endpoint_state() == "IDLE"
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    with owner_connect(emulator) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
    assert emulator.endpoint_state() == "ACTIVE"
    assert emulator.stats()["wakeups"] == wakeups + 1


def test_suspend_after_idle(emulator: Emulator) -> None:
    owner_connect(emulator).close()
    emulator.configure(suspend_after_idle_seconds=0.3)
    deadline = time.monotonic() + 10
    while emulator.endpoint_state() != "IDLE" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.endpoint_state() == "IDLE"
    emulator.configure(suspend_after_idle_seconds=None)
    owner_connect(emulator).close()
    assert emulator.endpoint_state() == "ACTIVE"


def test_idle_timeout(emulator: Emulator) -> None:
    conn = owner_connect(emulator)
    emulator.configure(idle_timeout_seconds=0.3)
    time.sleep(0.8)
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()


def test_max_lifetime_ends_even_busy_sessions(emulator: Emulator) -> None:
    conn = owner_connect(emulator)
    emulator.configure(max_lifetime_seconds=0.5)
    with pytest.raises(errors.AdminShutdown):
        for _ in range(200):
            conn.execute("SELECT pg_sleep(0.05)")
    conn.close()


def test_stats_count_logins_and_sessions(emulator: Emulator) -> None:
    before = emulator.stats()
    conn = owner_connect(emulator)
    mid = emulator.stats()
    assert mid["logins_succeeded"] == before["logins_succeeded"] + 1
    assert mid["active_sessions"] >= 1
    with pytest.raises(psycopg.OperationalError):
        owner_connect(emulator, password="bad")
    assert emulator.stats()["logins_failed"] == before["logins_failed"] + 1
    conn.close()


# ---- bad input on the wire -------------------------------------------------------------------------
def _raw(emu: Emulator) -> socket.socket:
    return socket.create_connection(("127.0.0.1", emu.pg_port), timeout=5)


def _read_error(sock: socket.socket) -> dict[str, str]:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data[:1] == b"E", data
    return wire.parse_error_fields(data[5:])


def _tls(emu: Emulator) -> ssl.SSLSocket:
    sock = _raw(emu)
    sock.sendall(struct.pack("!II", 8, wire.SSL_REQUEST))
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context(cafile=str(emu.ca_file))
    return ctx.wrap_socket(sock, server_hostname="localhost")


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid length of startup packet"),
        (struct.pack("!I", 100000) + b"x" * 100, "invalid length of startup packet"),
        (struct.pack("!II", 8, 1234), "unsupported frontend protocol"),
        (struct.pack("!II", 13, wire.PROTOCOL_3_0) + b"x\0y\0\0", "no PostgreSQL user name"),
    ],
)
def test_garbage_before_tls(emulator: Emulator, payload: bytes, expected: str) -> None:
    with _raw(emulator) as sock:
        sock.sendall(payload)
        assert expected in _read_error(sock)["M"]
    with owner_connect(emulator) as conn:  # and the proxy keeps serving
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_garbage_inside_tls(emulator: Emulator) -> None:
    with _tls(emulator) as sock:
        sock.sendall(struct.pack("!I", 9) + b"\x00\x03\x00\x00\x01")
        assert "invalid startup packet" in _read_error(sock)["M"]
    with _tls(emulator) as sock:  # a password message of absurd length
        sock.sendall(wire.startup_message(wire.PROTOCOL_3_0, {"user": emulator.owner.name}))
        assert sock.recv(9)[:1] == b"R"
        sock.sendall(b"p" + struct.pack("!I", 1 << 30))
        assert "invalid message length" in _read_error(sock)["M"]
    with _raw(emulator) as sock:  # TLS requested, then not TLS at all
        sock.sendall(struct.pack("!II", 8, wire.SSL_REQUEST))
        assert sock.recv(1) == b"S"
        sock.sendall(os.urandom(64))
        sock.settimeout(5)
        assert sock.recv(100) is not None
    with owner_connect(emulator) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_many_concurrent_logins(emulator: Emulator) -> None:
    token = owner_token(emulator)
    errors_seen: list[BaseException] = []

    def one() -> None:
        try:
            with owner_connect(emulator, password=token) as conn:
                conn.execute("SELECT pg_sleep(0.05)")
        except BaseException as exc:
            errors_seen.append(exc)

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors_seen == []
