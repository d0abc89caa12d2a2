"""``lakebase proxy`` through the real emulator: Python drivers, libpq tools, faults, operations.

One proxy child process serves the module (module-scoped fixture); the tests that need other flags
(Unix sockets and two endpoints, --max-connections and the SIGTERM drain, /quitquitquit) start their own.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from lakebase import _wire as wire
from lakebase.emulator import EmulatorProcess as Emulator

from .lakebase_support import wait_for
from .proxy_support import ProxyProcess

pytestmark = pytest.mark.xdist_group("local_proxy")

DEADLINE = "4"  # LAKEBASE_CONNECT_DEADLINE of the proxies: retries end well inside a test's time


def proxy_env(emu: Emulator) -> dict[str, str]:
    return {**emu.user_env, "LAKEBASE_CONNECT_DEADLINE": DEADLINE}


@pytest.fixture(scope="module")
def proxy(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """The module's proxy; stopped at the end by POST /quitquitquit, which must make it exit 0."""
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    p = ProxyProcess(proxy_env(emulator), log, "--port", "0", "--http-port", "0").start()
    try:
        yield p
        assert p.http("/quitquitquit", method="POST")[0] == 200
        assert p.wait(30) == 0
    finally:
        p.stop()
    # Never a token in any log line (the emulator's tokens are JWTs: base64 of '{"' is eyJ).
    assert "eyJ" not in log.read_text()


def connect(p: ProxyProcess, emu: Emulator, **kwargs: object) -> psycopg.Connection:
    params: dict[str, object] = {"host": "127.0.0.1", "port": p.port, "user": emu.owner.name,
                                 "dbname": "databricks_postgres", "connect_timeout": 20, "autocommit": True}
    params.update(kwargs)
    return psycopg.connect(**params)  # type: ignore[arg-type]


# ---- psycopg 3 ------------------------------------------------------------------------------------
def test_psycopg_without_password_query_copy_listen_notify_cancel(proxy: ProxyProcess, emulator: Emulator) -> None:
    with connect(proxy, emulator, application_name="proxied-app", options="-c search_path=public") as conn:
        assert conn.execute("SELECT current_user, current_setting('application_name'), "
                            "current_setting('search_path')").fetchone() == (
            emulator.owner.name, "proxied-app", "public")
        assert conn.info.password == ""
        conn.execute("CREATE TEMP TABLE t (n int, s text)")
        with conn.cursor().copy("COPY t FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        assert conn.execute("SELECT count(*), sum(n) FROM t").fetchone() == (1000, 499500)
        out = bytearray()
        with conn.cursor().copy("COPY (SELECT n FROM t WHERE n < 3 ORDER BY n) TO STDOUT") as copy:
            for block in copy:
                out += block
        assert bytes(out) == b"0\n1\n2\n"
        # pipelined extended protocol
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (i,)) for i in range(20)]
        assert [c.fetchone()[0] for c in cursors] == list(range(20))  # type: ignore[index]

        conn.execute("LISTEN proxy_channel")
        with connect(proxy, emulator) as other:
            other.execute("NOTIFY proxy_channel, 'hello'")
        notes = list(conn.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("proxy_channel", "hello")]

        threading.Timer(0.3, conn.cancel_safe).start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session survives the cancel
    assert proxy.metric("lakebase_proxy_cancels_forwarded_total") >= 1


def test_server_errors_reach_the_client_as_sent(proxy: ProxyProcess, emulator: Emulator) -> None:
    with pytest.raises(psycopg.OperationalError, match='database "no_such_db" does not exist'):
        connect(proxy, emulator, dbname="no_such_db")
    with pytest.raises(psycopg.OperationalError, match=r'logs in as "developer@example\.com" only'):
        connect(proxy, emulator, user="somebody-else")
    with connect(proxy, emulator) as conn, pytest.raises(errors.UndefinedTable):
        conn.execute("SELECT * FROM no_such_table")


def test_a_cancel_request_with_an_unknown_key_is_ignored(proxy: ProxyProcess, emulator: Emulator) -> None:
    with connect(proxy, emulator) as conn:
        pid = conn.info.backend_pid
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(wire.cancel_request(pid, b"\0\0\0\0"))
            sock.settimeout(10)
            assert sock.recv(100) == b""
        assert conn.execute("SELECT 1").fetchone() == (1,)


# ---- psycopg2 -------------------------------------------------------------------------------------
def test_psycopg2_without_password_query_copy_listen_notify_cancel(proxy: ProxyProcess,
                                                                   emulator: Emulator) -> None:
    import io
    import select

    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (pip install '.[dev]')")
    import psycopg2
    import psycopg2.errors

    conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, user=emulator.owner.name, dbname="databricks_postgres")
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT current_user, %s::int", (42,))
        assert cur.fetchone() == (emulator.owner.name, 42)
        cur.execute("CREATE TEMP TABLE t (n int)")
        cur.copy_expert("COPY t FROM STDIN", io.StringIO("".join(f"{i}\n" for i in range(500))))
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (500,)
        out = io.StringIO()
        cur.copy_expert("COPY (SELECT 7) TO STDOUT", out)
        assert out.getvalue() == "7\n"

        cur.execute("LISTEN legacy")
        other = psycopg2.connect(host="127.0.0.1", port=proxy.port, user=emulator.owner.name,
                                 dbname="databricks_postgres")
        other.autocommit = True
        other.cursor().execute("NOTIFY legacy, 'from psycopg2'")
        other.close()
        deadline = time.monotonic() + 10
        while not conn.notifies and time.monotonic() < deadline:
            select.select([conn], [], [], 1)
            conn.poll()
        assert [(n.channel, n.payload) for n in conn.notifies] == [("legacy", "from psycopg2")]

        threading.Timer(0.3, conn.cancel).start()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(30)")
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    finally:
        conn.close()


# ---- libpq tools ----------------------------------------------------------------------------------
def _psql() -> str:
    from lakebase.cli import find_psql

    return find_psql()


def _libpq_env(p: ProxyProcess, emu: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABRICKS_"))}
    env.update({"PGHOST": "127.0.0.1", "PGPORT": str(p.port), "PGUSER": emu.owner.name,
                "PGDATABASE": "databricks_postgres", "PGCONNECT_TIMEOUT": "20", "PGPASSFILE": "/nonexistent"})
    return env


def test_psql_and_pgbench_without_password(proxy: ProxyProcess, emulator: Emulator, tmp_path: Path) -> None:
    import shutil

    if not shutil.which("psql") or not shutil.which("pgbench"):
        pytest.skip("psql/pgbench not installed (make install installs postgresql-client as root)")
    env = _libpq_env(proxy, emulator)
    script = tmp_path / "s.sql"
    script.write_text("CREATE TEMP TABLE t (n int);\n\\copy t from stdin\n1\n2\n\\.\n"
                      "SELECT sum(n) AS total FROM t;\nLISTEN c;\nNOTIFY c, 'psql';\n")
    out = subprocess.run([_psql(), "-X", "-v", "ON_ERROR_STOP=1", "-w", "-f", str(script)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert " 3\n" in out.stdout
    assert 'Asynchronous notification "c" with payload "psql"' in out.stdout

    # A cancel: psql sends one on SIGINT.
    sleeper = subprocess.Popen([_psql(), "-X", "-w", "-c", "SELECT pg_sleep(30) /* proxied-psql */"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with connect(proxy, emulator) as conn:
        wait_for(lambda: conn.execute("SELECT 1 FROM pg_stat_activity WHERE query LIKE '%proxied-psql%' "
                                      "AND pid <> pg_backend_pid()").fetchone(), what="psql's query running")
    sleeper.send_signal(signal.SIGINT)
    _, err = sleeper.communicate(timeout=20)
    assert "canceling statement due to user request" in err

    pgbench = tmp_path / "bench.sql"
    pgbench.write_text("SELECT 1;\n")
    out = subprocess.run(["pgbench", "-n", "-c", "4", "-t", "25", "-f", str(pgbench)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "number of transactions actually processed: 100/100" in out.stdout


CLIENTS = Path(__file__).parent / "clients"
NODE_MODULES = Path(sys.prefix) / "node_modules"  # make install: npm install --prefix .venv pg pg-copy-streams
JDBC_JAR = Path("/usr/share/java/postgresql.jar")  # make install: apt-get install libpostgresql-jdbc-java


def _expect_ok(out: subprocess.CompletedProcess[str], *what: str) -> None:
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line for line in out.stdout.splitlines() if line.startswith("ok ")] == [f"ok {w}" for w in what]


def test_node_postgres_without_password(proxy: ProxyProcess, emulator: Emulator) -> None:
    import shutil

    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "pg").is_dir() or not (NODE_MODULES / "pg-copy-streams").is_dir():
        pytest.skip(f"node or the npm packages pg and pg-copy-streams in {NODE_MODULES} are missing "
                    "(make install puts them there as root)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABRICKS_"))}
    env["NODE_PATH"] = str(NODE_MODULES)
    out = subprocess.run([node, str(CLIENTS / "proxy_client.js"), "127.0.0.1", str(proxy.port), emulator.owner.name,
                          "databricks_postgres"], env=env, capture_output=True, text=True, timeout=90)
    _expect_ok(out, "query", "copy in", "copy out", "listen/notify", "cancel", "session after cancel")


def test_jdbc_without_password(proxy: ProxyProcess, emulator: Emulator) -> None:
    import shutil

    java = shutil.which("java")
    if java is None or not JDBC_JAR.is_file():
        pytest.skip(f"java or {JDBC_JAR} is missing (make install installs libpostgresql-jdbc-java as root)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABRICKS_"))}
    url = f"jdbc:postgresql://127.0.0.1:{proxy.port}/databricks_postgres"
    out = subprocess.run([java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", str(JDBC_JAR),  # quick start
                          str(CLIENTS / "ProxyClient.java"), url, emulator.owner.name],
                         env=env, capture_output=True, text=True, timeout=120)
    _expect_ok(out, "query", "copy in", "copy out", "listen/notify", "cancel", "session after cancel")


# ---- tokens and faults ----------------------------------------------------------------------------
def test_sessions_opened_after_several_token_lifetimes_still_log_in(proxy: ProxyProcess,
                                                                    emulator: Emulator) -> None:
    emulator.configure(token_ttl_seconds=1.5)
    emulator.expire_tokens()  # the proxy's hour-long token is refused once (28P01): it gets a 1.5 s one
    started = time.monotonic()
    logins = 0
    while time.monotonic() - started < 4:  # over two and a half token lifetimes
        with connect(proxy, emulator) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        logins += 1
        time.sleep(0.25)
    assert logins >= 5
    assert proxy.metric("lakebase_proxy_token_expires_in_seconds") <= 1.5


def test_restart_and_suspend_mid_run(proxy: ProxyProcess, emulator: Emulator) -> None:
    conn = connect(proxy, emulator)
    emulator.restart()
    with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
        conn.execute("SELECT 1")
    conn.close()
    with connect(proxy, emulator) as conn:  # logs in once the restart is over
        assert conn.execute("SELECT 1").fetchone() == (1,)
        emulator.suspend()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert emulator.endpoint_state() == "IDLE"
    with connect(proxy, emulator) as conn:  # wakes the endpoint
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_credential_outage_shorter_than_the_token_life_is_invisible(proxy: ProxyProcess,
                                                                     emulator: Emulator) -> None:
    with connect(proxy, emulator) as conn:  # the proxy holds a valid token
        conn.execute("SELECT 1")
    emulator.credential_outage(60)
    for _ in range(3):
        with connect(proxy, emulator) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_credential_outage_longer_than_the_token_life_fails_clearly_then_recovers(
        proxy: ProxyProcess, emulator: Emulator) -> None:
    before = proxy.metric("lakebase_proxy_token_errors_total")
    emulator.credential_outage(60)
    emulator.expire_tokens()  # the token the proxy holds is no longer valid: it needs a new one, and cannot
    with pytest.raises(psycopg.OperationalError, match=r"lakebase proxy: .*(credential|token)"):
        connect(proxy, emulator)
    assert proxy.metric("lakebase_proxy_token_errors_total") == before + 1
    status, body = proxy.http("/readiness")
    assert status == 503 and "token" in body
    emulator.credential_outage(0)
    with connect(proxy, emulator) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert proxy.http("/readiness")[0] == 200


# ---- robustness -----------------------------------------------------------------------------------
def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_garbage_and_oversized_packets_leave_the_proxy_serving_others(proxy: ProxyProcess,
                                                                     emulator: Emulator) -> None:
    with connect(proxy, emulator) as busy:
        assert b"invalid length of startup packet" in _send_raw(proxy.port, struct.pack("!I", 1 << 30) + b"x" * 64)
        assert b"unsupported frontend protocol" in _send_raw(proxy.port, struct.pack("!II", 16, 0x12345678) + b"\0" * 8)
        assert b"08P01" in _send_raw(proxy.port, os.urandom(3) + b"\xff" * 200)
        assert b"08P01" in _send_raw(proxy.port, wire.startup_message(wire.PROTOCOL_3_0, {"user": "x"})[:-1] + b"A")
        idle = socket.create_connection(("127.0.0.1", proxy.port))  # says nothing at all
        try:
            assert busy.execute("SELECT 1").fetchone() == (1,)
            with connect(proxy, emulator) as fresh:
                assert fresh.execute("SELECT 2").fetchone() == (2,)
        finally:
            idle.close()
    assert proxy.metric("lakebase_proxy_protocol_errors_total") >= 4


def test_a_client_that_leaves_during_the_login_holds_no_connection(proxy: ProxyProcess, emulator: Emulator) -> None:
    with connect(proxy, emulator) as conn:  # the proxy has logged in before: the next login is quick
        conn.execute("SELECT 1")
    wait_for(lambda: proxy.metric("lakebase_proxy_connections_open") == 0, what="no connection open")
    before = proxy.metric("lakebase_proxy_connections_total")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(wire.startup_message(wire.PROTOCOL_3_0, {"user": emulator.owner.name}))
    with connect(proxy, emulator) as conn:  # a login that started after theirs ends after theirs
        conn.execute("SELECT 1")
    wait_for(lambda: proxy.metric("lakebase_proxy_connections_open") == 0, what="the leavers' connections closed")
    assert proxy.metric("lakebase_proxy_connections_total") == before + 1  # theirs never became sessions


# ---- operations -----------------------------------------------------------------------------------
def test_health_checks_and_metrics(proxy: ProxyProcess, emulator: Emulator) -> None:
    assert proxy.http("/startup")[0] == 200
    assert proxy.http("/liveness")[0] == 200
    status, body = proxy.http("/readiness")
    assert status == 200, body
    before = proxy.metric("lakebase_proxy_connections_total")
    with connect(proxy, emulator) as conn:
        assert proxy.metric("lakebase_proxy_connections_open") >= 1
        conn.execute("SELECT repeat('x', 100000)").fetchone()
    assert proxy.metric("lakebase_proxy_connections_total") == before + 1
    assert proxy.metric("lakebase_proxy_bytes_total", direction="to_client") > 100000
    assert 0 <= proxy.metric("lakebase_proxy_token_age_seconds") < 3600
    assert proxy.http("/nope")[0] == 404


def test_web_pages_cannot_stop_the_proxy_or_read_its_metrics(proxy: ProxyProcess) -> None:
    """A page in the user's browser may POST anywhere without a CORS preflight, and a rebound DNS name
    makes 127.0.0.1 its own origin: neither gets an answer from the health server."""
    cross_site = {"Origin": "https://attacker.example"}
    assert proxy.http("/quitquitquit", method="POST", headers=cross_site)[0] == 403
    assert proxy.http("/readiness", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403  # an <img src>
    assert proxy.http("/metrics", headers={"Sec-Fetch-Site": "none"})[0] == 200  # typed in the address bar
    rebound = {"Host": f"attacker.example:{proxy.http_port}"}
    assert proxy.http("/quitquitquit", method="POST", headers=rebound)[0] == 403
    status, body = proxy.http("/metrics", headers=rebound)
    assert status == 403 and "lakebase_proxy" not in body
    assert proxy.http("/liveness", headers={"Host": f"localhost:{proxy.http_port}"})[0] == 200
    assert proxy.http("/liveness", headers={"Host": f"[::1]:{proxy.http_port}"})[0] == 200
    assert proxy.http("/startup")[0] == 200  # still serving


def test_a_silent_http_client_is_dropped(proxy: ProxyProcess) -> None:
    """Each HTTP connection has a thread: one that never sends its request must not keep it forever."""
    assert proxy.http_port is not None
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=30) as sock:
        assert sock.recv(1) == b""  # closed by the proxy (a TimeoutError here: still held)


def test_a_non_loopback_address_is_refused_unless_allowed(emulator: Emulator) -> None:
    from click.testing import CliRunner

    from lakebase.cli import main

    result = CliRunner().invoke(main, ["proxy", "--address", "0.0.0.0", "--port", "0"], env=proxy_env(emulator))
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0, which is not a loopback address" in result.output
    assert "--allow-remote" in result.output


def test_unix_sockets_two_endpoints_max_connections_and_sigterm_drain(emulator: Emulator, replica: str,
                                                                      tmp_path: Path) -> None:
    sockets = tmp_path / "sock"
    sockets.mkdir()
    p = ProxyProcess(proxy_env(emulator), tmp_path / "proxy.log", "--unix-socket", str(sockets),
                     "--endpoint", f"{emulator.endpoint_name}=6543", "--endpoint", f"{replica}=6544",
                     "--max-connections", "2", "--max-sigterm-delay", "30", "--http-port", "0").start(expect=2)
    try:
        assert sorted(os.path.basename(s) for s in p.sockets.values()) == [".s.PGSQL.6543", ".s.PGSQL.6544"]
        params = {"host": str(sockets), "user": emulator.owner.name, "dbname": "databricks_postgres",
                  "autocommit": True, "connect_timeout": 20}
        primary = psycopg.connect(port=6543, **params)  # type: ignore[arg-type]
        read_only = psycopg.connect(port=6544, **params)  # type: ignore[arg-type]
        assert primary.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        assert read_only.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            read_only.execute("CREATE TABLE nope (n int)")
        # clients that send nothing hold no more than --max-connections sockets (for 30 s each)
        path = str(sockets / ".s.PGSQL.6543")
        silent = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        try:
            for sock in silent:
                sock.settimeout(20)
                sock.connect(path)
            assert b"53300" in silent[2].recv(4096)  # refused at once, not after the startup timeout
        finally:
            for sock in silent:
                sock.close()
        # a third connection is one too many
        with pytest.raises(psycopg.OperationalError,
                           match=r"too many connections to lakebase proxy.*--max-connections 2"):
            psycopg.connect(port=6543, **params)  # type: ignore[arg-type]
        assert p.http("/readiness")[0] == 503  # full

        p.signal(signal.SIGTERM)
        wait_for(lambda: any(r.get("event") == "proxy.draining" for r in p.records()), what="draining")
        with pytest.raises(psycopg.OperationalError):  # no new connections ...
            psycopg.connect(port=6543, **params)  # type: ignore[arg-type]
        assert primary.execute("SELECT 1").fetchone() == (1,)  # ... while the open ones keep working
        primary.close()
        read_only.close()
        assert p.wait(30) == 0
        assert not list(sockets.iterdir())
    finally:
        p.stop()


def test_verify_full_matches_host_names_as_libpq_does() -> None:
    from lakebase.proxy.upstream import host_matches

    assert host_matches("replica-1.localhost", "*.localhost")
    assert host_matches("EP-1.Example.COM.", "ep-1.example.com")
    assert not host_matches("a.b.localhost", "*.localhost")
    assert not host_matches("localhost", "*.localhost")
    assert not host_matches("evil.com", "good.com")


def test_endpoint_options_and_ports() -> None:
    from lakebase.errors import ConfigurationError
    from lakebase.proxy.config import EndpointOption, ProxyConfig, choose_ports

    assert EndpointOption.parse("projects/p/branches/b/endpoints/e=6000") == EndpointOption(
        "projects/p/branches/b/endpoints/e", 6000)
    assert EndpointOption.parse("replica") == EndpointOption("replica")
    for bad in ("=5432", "primary=x", "primary=70000"):
        with pytest.raises(ConfigurationError, match="--endpoint"):
            EndpointOption.parse(bad)
    two = (EndpointOption("a"), EndpointOption("b"))
    assert choose_ports(ProxyConfig()) == [(5432, False)]  # the default: the next free port if taken
    assert choose_ports(ProxyConfig(endpoints=two, port=7000)) == [(7000, True), (7001, True)]
    assert choose_ports(ProxyConfig(endpoints=(EndpointOption("a", 6001), EndpointOption("b")))) == [
        (6001, True), (5433, False)]


def test_an_allowed_remote_address_is_warned_about(emulator: Emulator, fresh_registries: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from lakebase.proxy import ProxyConfig, build
    from lakebase.settings import Settings

    settings = Settings(env=emulator.user_env, token_refresh="lazy")
    with caplog.at_level("WARNING", logger="lakebase.proxy"):
        proxy = build(ProxyConfig(address="0.0.0.0", allow_remote=True, settings=settings))  # builds, binds nothing
    assert [li.name for li in proxy.listeners] == [emulator.endpoint_name]
    assert "ANYONE WHO CAN REACH THIS PORT USES THE DATABASE AS THIS IDENTITY" in caplog.text


def test_a_unix_socket_is_the_owners_alone_from_the_moment_it_exists(
        emulator: Emulator, fresh_registries: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not 0755 until a chmod after the bind (another local user could connect in between)."""
    import asyncio
    import stat

    from lakebase.proxy import ProxyConfig, build
    from lakebase.proxy import server as proxy_server
    from lakebase.settings import Settings

    seen: list[int] = []
    real_chmod = os.chmod

    def chmod(path: str, mode: int) -> None:  # the mode the socket had before any chmod
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(path, mode)

    monkeypatch.setattr(proxy_server.os, "chmod", chmod)
    proxy = build(ProxyConfig(unix_socket=str(tmp_path), settings=Settings(env=emulator.user_env,
                                                                           token_refresh="lazy")))

    async def bind() -> int:
        listener = proxy.listeners[0]
        await proxy._listen(listener)
        mode = stat.S_IMODE(os.stat(listener.path).st_mode)
        assert listener.server is not None
        listener.server.close()
        return mode

    old = os.umask(0o022)  # a usual umask, whatever this process had
    try:
        assert asyncio.run(bind()) == 0o600
    finally:
        os.umask(old)
    assert seen and all(mode & 0o077 == 0 for mode in seen), [oct(m) for m in seen]


def test_readiness_probes_do_not_keep_the_compute_awake(proxy: ProxyProcess, emulator: Emulator) -> None:
    """Once the latest upstream login succeeded, /readiness logs in no more, however long after (a
    sidecar's probe every 10 s would otherwise keep a scale-to-zero compute from ever suspending)."""
    with connect(proxy, emulator) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    logins = emulator.stats()["logins_succeeded"]
    time.sleep(10.5)  # past the 10 s after which a probe used to log in again
    for _ in range(3):
        status, body = proxy.http("/readiness")
        assert status == 200, body
    assert emulator.stats()["logins_succeeded"] == logins
