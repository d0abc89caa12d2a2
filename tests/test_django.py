"""The lakebase.django backend against the emulator: each of Django's connection modes through token
expiry, a restart, a suspend and credential outages; misconfigurations; run_transaction; dbshell."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakebase import CredentialsUnavailable, connector
from lakebase.errors import ConfigurationError

from .apps_support import ROOT, ensure_app_schema, owner_sql
from .conftest import owner_connect
from .django_support import HIDDEN_FOR_PSYCOPG2, MODES, close_all, setup_django
from .lakebase_support import issued, wait_for


@pytest.fixture(scope="module")
def django_ready(emulator: Any, app_role: str) -> None:
    setup_django()
    ensure_app_schema(emulator, app_role)


@pytest.fixture
def app(django_ready: None, emulator: Any, app_env: dict[str, str]) -> Iterator[None]:
    """Django as the app's service principal; fresh credential caches, connections and pools per test."""
    connector.reset()
    close_all()
    emulator.configure(restart_seconds=0.2)  # logins wait out a restart: keep it short (restored after)
    yield
    close_all()
    connector.reset()


def request(alias: str, sql: str = "SELECT current_user") -> Any:
    """What one Django request does with the database: request_started, a query, request_finished."""
    from django.db import close_old_connections

    close_old_connections()
    try:
        return query(alias, sql)
    finally:
        close_old_connections()


def query(alias: str, sql: str) -> Any:
    from django.db import connections

    with connections[alias].cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def strike(emulator: Any, action: str = "restart") -> threading.Thread:
    """Start ``emulator.restart()`` or ``suspend()`` in a thread and return once it has struck (the sessions
    open before it have ended). While idle sessions are held open (Django's persistent and pooled
    connections) the emulator's call waits up to 5 s for each client to read the end of its session, which
    the test's next request does: join the thread after that."""
    before = emulator.stats()

    def struck() -> bool:
        now = emulator.stats()
        happened = (now["restarts"] > before["restarts"] if action == "restart"
                    else emulator.endpoint_state() == "IDLE")
        ended = now["sessions_terminated"] > before["sessions_terminated"]
        return happened and (ended or not before["active_sessions"])

    thread = threading.Thread(target=getattr(emulator, action))
    thread.start()
    wait_for(struck, 30, 0.01, what=f"the {action}")
    return thread


@contextlib.contextmanager
def ending_sessions(emulator: Any, action: str = "restart") -> Iterator[None]:
    """The block runs right after :func:`strike`."""
    thread = strike(emulator, action)
    try:
        yield
    finally:
        thread.join(30)


def credentials(alias: str) -> Any:
    from django.db import connections

    return connections[alias].lakebase_connector().credentials


# ---- the connection modes ----------------------------------------------------------------------------
@pytest.mark.parametrize("alias", MODES)
def test_each_mode_survives_a_refused_token_a_restart_and_a_suspend(app: None, emulator: Any, alias: str) -> None:
    from django.db import connections

    assert request(alias) == emulator.app.name
    mode = connections[alias]
    assert (mode.pool is not None) == (alias == "pooled")
    emulator.expire_tokens()  # the cached token is now refused at login (28P01): new logins need a fresh one
    assert request(alias) == emulator.app.name
    with ending_sessions(emulator, "restart"):  # every session ends: each mode logs in again
        for _ in range(3):
            assert request(alias) == emulator.app.name
    with ending_sessions(emulator, "suspend"):
        assert request(alias) == emulator.app.name
    assert emulator.endpoint_state() == "ACTIVE"
    assert credentials(alias).stats()["mints"] == 2  # the first token, and one after it was refused


def test_connections_opened_after_the_first_token_expired_carry_fresh_ones(app: None, emulator: Any) -> None:
    """A short token life: the pool (built once from get_connection_params) and the other modes open new
    connections after the token they started with has expired, each with a valid token."""
    from django.db import connections

    emulator.configure(token_ttl_seconds=2)
    for alias in MODES:
        assert request(alias) == emulator.app.name
    pool = connections["pooled"].pool
    first = credentials("direct").credential
    wait_for(lambda: first.expires_in() <= 0, 10, what="the first token to expire")
    with ending_sessions(emulator):  # no session survives: every connection from now on is a new login
        for alias in MODES:
            for _ in range(2):
                assert request(alias) == emulator.app.name
    assert connections["pooled"].pool is pool  # the same pool, created before the first token expired
    assert credentials("direct").credential.token != first.token


def test_many_connections_share_one_token(app: None, emulator: Any) -> None:
    """Churn: a new connection per request in threads (each thread has its own Django connections)."""
    before = issued(emulator)
    errors: list[BaseException] = []

    def work() -> None:
        from django.db import connections

        try:
            for _ in range(5):
                for alias in MODES:
                    assert request(alias) == emulator.app.name
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert issued(emulator) - before == 1  # one token for 60 requests in three modes and four threads


def test_a_short_credential_outage_goes_unnoticed(app: None, emulator: Any) -> None:
    for alias in MODES:
        assert request(alias) == emulator.app.name
    emulator.credential_outage(120, 503)  # shorter than the cached token's life (an hour)
    with ending_sessions(emulator):  # new logins are needed, with the cached token
        for alias in MODES:
            for _ in range(2):
                assert request(alias) == emulator.app.name


def test_an_outage_longer_than_the_token_is_a_clear_error(app: None, emulator: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    monkeypatch.setenv("LAKEBASE_CONNECT_DEADLINE", "1")
    monkeypatch.setenv("LAKEBASE_API_TIMEOUT", "1")
    emulator.configure(token_ttl_seconds=2)
    for alias in MODES:
        assert request(alias) == emulator.app.name
    emulator.credential_outage(120, 503)
    cred = credentials("direct").credential
    wait_for(lambda: cred.expires_in() <= 0, 10, what="the cached token to expire")
    with ending_sessions(emulator):
        for alias in ("direct", "persistent"):
            with pytest.raises(CredentialsUnavailable) as info:
                request(alias)
            assert "TemporarilyUnavailable (HTTP 503)" in str(info.value)
        # The pool times out naming why: Django wraps psycopg_pool's timeout, lakebase's PoolTimeout says why.
        with pytest.raises(OperationalError) as pooled:
            request("pooled")
    assert "TemporarilyUnavailable (HTTP 503)" in str(pooled.value)
    assert isinstance(pooled.value.__cause__.__cause__, CredentialsUnavailable)
    emulator.credential_outage(0)
    for alias in MODES:
        assert wait_for(lambda alias=alias: _succeeds(alias), 30, 0.2) == emulator.app.name


def _succeeds(alias: str) -> Any:
    try:
        return request(alias)
    except Exception:
        return None


# ---- misconfiguration ----------------------------------------------------------------------------------
def wrapper_for(entry: dict[str, Any], alias: str = "bad") -> Any:
    from django.db import connections

    from lakebase.django.base import DatabaseWrapper

    configured = connections.configure_settings({"default": {}, alias: {"ENGINE": "lakebase.django", **entry}})
    return DatabaseWrapper(configured[alias], alias)


@pytest.mark.parametrize(("entry", "message"), [
    ({"PASSWORD": "s3cret"}, "DATABASES['bad']['PASSWORD'] is set, but lakebase sets the password"),
    ({"OPTIONS": {"password": "s3cret"}}, "password= was given in DATABASES['bad']['OPTIONS']"),
    ({"OPTIONS": {"passfile": "/tmp/pgpass"}}, "passfile= was given in DATABASES['bad']['OPTIONS']"),
    ({"OPTIONS": {"sslmode": "disable"}}, "DATABASES['bad']['OPTIONS']['sslmode']: sslmode='disable': Lakebase "
                                          "requires TLS"),
    ({"PORT": "54x"}, "DATABASES['bad']['PORT']: port='54x' is not a port number"),
    ({"OPTIONS": {"endpoint": "ep-primary"}}, "DATABASES['bad']['OPTIONS']['endpoint']: endpoint='ep-primary' is "
                                              "not a Lakebase endpoint name"),
    ({"OPTIONS": {"token_refresh": "sometimes"}}, "DATABASES['bad']['OPTIONS']['token_refresh']"),
    ({"OPTIONS": {"read_only": "maybe"}}, "DATABASES['bad']['OPTIONS']['read_only']"),
    ({"OPTIONS": {"connect_deadline": "soon"}}, "DATABASES['bad']['OPTIONS']['connect_deadline']"),
], ids=lambda v: "-".join(v) if isinstance(v, dict) else None)
def test_a_misconfiguration_names_the_setting(django_ready: None, app_env: dict[str, str], entry: dict[str, Any],
                                              message: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    wrapper = wrapper_for(entry)
    with pytest.raises(ImproperlyConfigured) as info:
        wrapper.get_connection_params()
    assert message in str(info.value)
    assert isinstance(info.value, ConfigurationError)
    assert "s3cret" not in str(info.value)
    issues = wrapper.validation.check()  # manage.py check --database bad: the same, without connecting
    assert [i.id for i in issues] == ["lakebase.E001"] and message in issues[0].msg


def test_no_endpoint_configured(django_ready: None, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError) as info:
        wrapper_for({}).ensure_connection()
    assert "No Lakebase endpoint or instance is configured" in str(info.value)
    assert "ENDPOINT_NAME" in str(info.value)


def test_a_pool_with_persistent_connections_is_refused(django_ready: None, app_env: dict[str, str]) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="pooling doesn't support persistent connections; set "
                                                   "CONN_MAX_AGE to 0"):
        wrapper_for({"CONN_MAX_AGE": 60, "OPTIONS": {"pool": True}}).ensure_connection()


def test_database_config(django_ready: None) -> None:
    import lakebase.django

    config = lakebase.django.database_config(endpoint="projects/p/branches/b/endpoints/e", port=5433,
                                             read_only=True, pool={"max_size": 4}, atomic_requests=True)
    assert config == {"ENGINE": "lakebase.django", "NAME": "", "PORT": 5433, "CONN_MAX_AGE": 0,
                      "CONN_HEALTH_CHECKS": True, "ATOMIC_REQUESTS": True,
                      "OPTIONS": {"endpoint": "projects/p/branches/b/endpoints/e", "read_only": True,
                                  "pool": {"max_size": 4}}}
    with pytest.raises(ConfigurationError, match="lakebase sets the password"):
        lakebase.django.database_config(password="x")
    with pytest.raises(ConfigurationError, match="passfile= was given in options"):
        lakebase.django.database_config(options={"passfile": "/x"})
    with pytest.raises(TypeError, match="unexpected argument 'endpont'"):
        lakebase.django.database_config(endpont="x")


def test_the_backend_needs_psycopg_3(django_ready: None) -> None:
    code = ("import sys; sys.modules['psycopg'] = sys.modules['psycopg2'] = None\n"
            "from django.conf import settings; settings.configure()\n"
            "from django.core.exceptions import ImproperlyConfigured\n"
            "try:\n    import lakebase.django.base\nexcept ImproperlyConfigured as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "The lakebase.django database backend needs psycopg 3" in out.stdout, out.stderr[-2000:]
    assert "pip install 'lakebase[django]'" in out.stdout


def test_psycopg2_where_psycopg_3_is_not_installed(django_ready: None, emulator: Any, app_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """Django uses psycopg2 where psycopg 3 does not import, decided when its backend is imported: a child
    process without psycopg 3 (tests/django_support.psycopg2_child) connects with zero config, across a
    token expiry and restarts, runs run_transaction, and is refused the native pool and a password."""
    emulator.configure(token_ttl_seconds=2, restart_seconds=0.2)
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in HIDDEN_FOR_PSYCOPG2)
    code = f"import sys\n{hide}from tests.django_support import psycopg2_child\npsycopg2_child()\n"
    faults: list[threading.Thread] = []
    with (tmp_path / "stderr").open("w+") as stderr:
        child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert child.stdin is not None and child.stdout is not None
        lines = []
        for line in child.stdout:  # what the child asks the emulator to do, then what it saw
            if line.strip() == "restart":
                faults.append(strike(emulator))
                child.stdin.write("done\n")
                child.stdin.flush()
            else:
                lines.append(line)
        child.wait(60)
        for fault in faults:
            fault.join(30)
        stderr.seek(0)
        assert child.returncode == 0 and lines, stderr.read()[-3000:]
    seen = json.loads(lines[-1])
    user = emulator.app.name
    assert seen["is_psycopg3"] is False and seen["driver"].startswith("psycopg2")
    assert seen["user"] == user and seen["persistent_user"] == user
    assert seen["first_token_expired"] and seen["after_expiry"] == [user] * 2 and seen["new_token"]
    assert seen["persistent_after_expiry"] == user and seen["persistent_kept"]
    assert seen["after_restart"] == [user] * 4 and seen["persistent_replaced"]
    assert len(faults) == 2
    assert seen["attempts"] == 2 and seen["inserted"] == [True]  # run again once, committed once
    assert seen["isolation"] == "repeatable read"
    assert "read-only transaction" in seen["read_only"]
    assert seen["afterwards"] == ["read committed", "off", True]  # put back, on the same connection
    pool_message = ("DATABASES['pooled']['OPTIONS']['pool'] asks for Django's native pool, which needs psycopg 3, "
                    "but psycopg 3 is not installed (Django is using psycopg2)")
    assert seen["pool"].startswith("ImproperlyConfigured: " + pool_message)
    assert "pip install 'lakebase[django]'" in seen["pool"] and "CONN_MAX_AGE > 0" in seen["pool"]
    assert [(id_, pool_message in msg) for id_, msg in seen["pool_check"]] == [("lakebase.E001", True)]
    assert seen["password"].startswith("ImproperlyConfigured: DATABASES['password']['PASSWORD'] is set, but "
                                       "lakebase sets the password")
    assert "s3cret" not in seen["password"]


# ---- run_transaction -----------------------------------------------------------------------------------
@pytest.mark.parametrize("alias", ["direct", "pooled"])
def test_run_transaction_reruns_a_unit_whose_connection_was_lost(app: None, emulator: Any, alias: str) -> None:
    from django.db import connections

    from lakebase.django import run_transaction

    marker = f"lost {alias} {os.urandom(4).hex()}"
    attempts: list[int] = []
    faults: list[threading.Thread] = []

    def unit() -> int:
        attempts.append(1)
        with connections[alias].cursor() as cur:
            if len(attempts) == 1:
                cur.execute("SELECT 1")
                faults.append(strike(emulator))  # the session ends before COMMIT
            cur.execute("INSERT INTO notes (content) VALUES (%s) RETURNING id", [marker])
            return int(cur.fetchone()[0])

    request(alias)
    note_id = run_transaction(unit, using=alias)
    faults[0].join(30)
    assert len(attempts) == 2
    assert owner_sql(emulator, "SELECT id FROM notes WHERE content = %s", (marker,)) == [(note_id,)]


@pytest.mark.parametrize("alias", ["direct", "pooled"])
def test_run_transaction_reruns_a_unit_whose_commit_lost_its_connection(app: None, emulator: Any,
                                                                        alias: str) -> None:
    """The session ends during COMMIT (a deferred trigger ends it; the server rolls back): Django's
    atomic() closes the connection, the outcome is looked up on a new one, and the unit runs again."""
    from django.db import connections

    from lakebase.django import run_transaction

    table = f"dj_{os.urandom(4).hex()}"
    with connections[alias].cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, note text)")
        cur.execute(f"""CREATE FUNCTION {table}_die() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN
                            IF NEW.note = 'die' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                            RETURN NULL;
                        END $$""")
        cur.execute(f"CREATE CONSTRAINT TRIGGER {table}_die AFTER INSERT ON {table} DEFERRABLE INITIALLY "
                    f"DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_die()")
    attempts: list[int] = []

    def unit() -> int:
        attempts.append(1)
        with connections[alias].cursor() as cur:
            cur.execute(f"INSERT INTO {table} (note) VALUES (%s)", ["die" if len(attempts) == 1 else "ok"])
        return len(attempts)

    try:
        assert run_transaction(unit, using=alias) == 2
        assert request(alias, f"SELECT string_agg(note, ',') FROM {table}") == "ok"
    finally:
        with connections[alias].cursor() as cur:
            cur.execute(f"DROP TABLE {table}")
            cur.execute(f"DROP FUNCTION {table}_die()")


def test_run_transaction_reruns_a_serialization_failure(app: None, emulator: Any) -> None:
    from django.db import connections

    from lakebase.django import run_transaction

    note_id = owner_sql(emulator, "INSERT INTO notes (content) VALUES ('serial') RETURNING id")[0][0]
    attempts: list[int] = []

    def unit() -> None:
        attempts.append(1)
        with connections["direct"].cursor() as cur:
            cur.execute("SELECT content FROM notes WHERE id = %s", [note_id])  # the snapshot
            if len(attempts) == 1:  # another session changes the row after it
                with owner_connect(emulator, autocommit=True) as other:
                    other.execute("UPDATE notes SET content = 'theirs' WHERE id = %s", (note_id,))
            cur.execute("UPDATE notes SET content = content || ' + ours' WHERE id = %s", [note_id])  # 40001 once

    run_transaction(unit, using="direct", isolation_level="repeatable read")
    assert len(attempts) == 2
    assert owner_sql(emulator, "SELECT content FROM notes WHERE id = %s", (note_id,)) == [("theirs + ours",)]


def test_run_transaction_read_only_and_inside_atomic(app: None, emulator: Any) -> None:
    from django.db import DatabaseError, connections, transaction

    from lakebase.django import run_transaction

    def write() -> None:
        with connections["pooled"].cursor() as cur:
            cur.execute("INSERT INTO notes (content) VALUES ('read only?')")

    with pytest.raises(DatabaseError, match="read-only transaction"):
        run_transaction(write, using="pooled", read_only=True)
    assert request("pooled", "SHOW transaction_read_only") == "off"  # the connection got its setting back
    with transaction.atomic(using="pooled"):  # an outer block: the unit runs once, in a savepoint
        assert run_transaction(lambda: query("pooled", "SELECT 41 + 1"), using="pooled") == 42
        assert connections["pooled"].in_atomic_block


# ---- dbshell -------------------------------------------------------------------------------------------
def test_dbshell_runs_psql_with_a_fresh_token_kept_out_of_sight(app: None, emulator: Any, capfd: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import call_command

    from lakebase.cli import find_psql

    try:
        find_psql()
    except SystemExit:
        pytest.skip("no TLS-capable psql (apt-get install postgresql-client; `make test` does it as root)")
    seen: dict[str, Any] = {}
    real_run = subprocess.run

    def spy(args: list[str], **kwargs: Any) -> Any:  # records what psql got, then runs it for real
        env = kwargs["env"]
        path = Path(env["PGPASSFILE"])
        seen.update(args=args, env=env, path=path, mode=stat.S_IMODE(path.stat().st_mode),
                    dir_mode=stat.S_IMODE(path.parent.stat().st_mode))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    call_command("dbshell", "--database", "direct", "--", "-At", "-c", "SELECT current_user")
    assert capfd.readouterr().out.strip() == emulator.app.name
    token = credentials("direct").token()
    assert token not in " ".join(seen["args"])
    assert "PGPASSWORD" not in seen["env"] and token not in "".join(seen["env"].values())
    assert not any(k.startswith("DATABRICKS_") for k in seen["env"])  # no workspace credentials for psql
    assert seen["mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert not seen["path"].exists()  # removed afterwards


def test_run_transaction_read_only_on_a_connection_the_health_check_replaces(app: None, emulator: Any) -> None:
    """A persistent connection the server ended is replaced by Django's health check: READ ONLY must go
    with the BEGIN of the new one, not be set on the old one."""
    from lakebase.django import run_transaction

    assert request("persistent") == emulator.app.name
    with ending_sessions(emulator):
        shown = run_transaction(lambda: query("persistent", "SHOW transaction_read_only"), using="persistent",
                                read_only=True)
    assert shown == "on"
