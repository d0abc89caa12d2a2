"""Django in the test process: configured once (settings cannot be configured twice in a process).

The settings are the notes-django app's own (apps/notes-django/notes_django/settings.py; its ``default``
database uses Django's native pool) plus one alias per other connection mode and a small-timeout pool,
all on the ``lakebase.django`` backend and all reading the environment when they connect (the tests set
it with the ``app_env``/``user_env`` fixtures).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .apps_support import APPS

DJANGO_DIR = APPS / "notes-django"

#: The connection modes, by alias: a connection per request, persistent connections with health checks,
#: Django's native pool (with a short pool timeout, for the tests that expect it to give up).
MODES = ("direct", "persistent", "pooled")


def setup_django() -> None:
    """Configure Django with the app's settings plus :data:`MODES` (once per process)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    if str(DJANGO_DIR) not in sys.path:
        sys.path.insert(0, str(DJANGO_DIR))
    import lakebase.django

    app: Any = importlib.import_module("notes_django.settings")
    values = {k: getattr(app, k) for k in dir(app) if k.isupper()}
    values["DATABASES"] = {
        **app.DATABASES,
        "direct": lakebase.django.database_config(),
        "persistent": lakebase.django.database_config(conn_max_age=None, conn_health_checks=True),
        "pooled": lakebase.django.database_config(pool={"min_size": 1, "max_size": 4, "timeout": 3}),
    }
    values["LOGGING_CONFIG"] = None  # leave the test process's logging alone
    settings.configure(**values)
    django.setup()


def close_all() -> None:
    """Close every Django connection of this thread and every pool (between tests)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
    for alias in connections:
        connection = connections[alias]
        if alias in getattr(connection, "_connection_pools", {}):  # only pools that exist (.pool makes one)
            connection.close_pool()


# ---- psycopg2: run in a child process where psycopg 3 cannot be imported ----------------------------------
#: What the child hides before anything imports Django: Django's PostgreSQL backend then uses psycopg2.
HIDDEN_FOR_PSYCOPG2 = ("psycopg", "psycopg_pool")


def psycopg2_child() -> None:
    """test_django's psycopg2 scenario, in a child process started with :data:`HIDDEN_FOR_PSYCOPG2` hidden
    and the app's environment (the emulator configured with a short token life by the test).

    It cannot drive the emulator itself (its client needs psycopg 3): it prints ``restart`` and waits for
    the test process to answer ``done`` once the restart has struck. Its last line is a JSON object of
    what it saw (never a token)."""
    import json
    import time

    import django
    from django.conf import settings

    import lakebase.django

    settings.configure(
        DATABASES={
            "default": {"ENGINE": "lakebase.django"},  # zero config: all from the environment
            "persistent": lakebase.django.database_config(conn_max_age=None, conn_health_checks=True),
            "pooled": lakebase.django.database_config(pool=True),
            "password": {"ENGINE": "lakebase.django", "PASSWORD": "s3cret"},
        },
        INSTALLED_APPS=[], USE_TZ=True, LOGGING_CONFIG=None)
    django.setup()
    from django.db import close_old_connections, connections
    from django.db.backends.postgresql import base as postgresql

    from lakebase.django import run_transaction

    seen: dict[str, Any] = {"is_psycopg3": postgresql.is_psycopg3}

    def ask(action: str) -> None:
        print(action, flush=True)
        answer = sys.stdin.readline().strip()
        if answer != "done":
            raise RuntimeError(f"the test process answered {answer!r} to {action!r}")

    def query(alias: str, sql: str = "SELECT current_user") -> Any:
        with connections[alias].cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]

    def request(alias: str, sql: str = "SELECT current_user") -> Any:
        close_old_connections()
        try:
            return query(alias, sql)
        finally:
            close_old_connections()

    def error(call: Any) -> str:
        try:
            call()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    def pid(alias: str) -> int:
        return int(query(alias, "SELECT pg_backend_pid()"))

    # Zero config, a connection per request, each opened by psycopg2.
    seen["user"] = request("default")
    connections["default"].ensure_connection()
    seen["driver"] = type(connections["default"].connection).__module__
    connections["default"].close()

    # Token expiry between connections: the next connection logs in with a new token; an open
    # persistent connection is not affected (the token is checked at login only).
    seen["persistent_user"] = request("persistent")
    persistent_pid = pid("persistent")
    credentials = connections["default"].lakebase_connector().credentials
    first = credentials.credential
    deadline = time.monotonic() + 30
    while first.expires_in() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    seen["first_token_expired"] = first.expires_in() <= 0
    seen["after_expiry"] = [request("default") for _ in range(2)]
    seen["new_token"] = credentials.credential.token != first.token
    seen["persistent_after_expiry"] = request("persistent")
    seen["persistent_kept"] = pid("persistent") == persistent_pid

    # A restart ends every session: the health check replaces the persistent connection, and new ones
    # wait out the restart (the connect retry).
    ask("restart")
    seen["after_restart"] = [request(alias) for alias in ("persistent", "default", "persistent", "default")]
    seen["persistent_replaced"] = pid("persistent") != persistent_pid

    # run_transaction: a unit whose connection is lost before COMMIT runs again, once, on a new one.
    marker = f"psycopg2 {time.time_ns()}"
    attempts: list[int] = []

    def unit() -> int:
        attempts.append(1)
        with connections["default"].cursor() as cur:
            if len(attempts) == 1:
                cur.execute("SELECT 1")
                ask("restart")  # the session ends before COMMIT
            cur.execute("INSERT INTO notes (content) VALUES (%s) RETURNING id", [marker])
            return int(cur.fetchone()[0])

    note_id = run_transaction(unit)
    seen["attempts"] = len(attempts)
    with connections["default"].cursor() as cur:
        cur.execute("SELECT id FROM notes WHERE content = %s", [marker])
        seen["inserted"] = [row[0] == note_id for row in cur.fetchall()]

    # run_transaction's isolation level and READ ONLY go with the BEGIN, and are put back afterwards.
    request("persistent")  # a new request: the health check replaces the connection the restart ended
    persistent_pid = pid("persistent")
    seen["isolation"] = run_transaction(lambda: query("persistent", "SHOW transaction_isolation"),
                                        using="persistent", isolation_level="repeatable read")
    seen["read_only"] = error(lambda: run_transaction(
        lambda: query("persistent", "INSERT INTO notes (content) VALUES ('read only?') RETURNING id"),
        using="persistent", read_only=True))
    seen["afterwards"] = [query("persistent", "SHOW transaction_isolation"),
                          query("persistent", "SHOW transaction_read_only"), pid("persistent") == persistent_pid]

    # Refused: Django's native pool (psycopg 3's), and a password.
    seen["pool"] = error(connections["pooled"].ensure_connection)
    seen["pool_check"] = [(issue.id, issue.msg) for issue in connections["pooled"].validation.check()]
    seen["password"] = error(connections["password"].ensure_connection)
    connections.close_all()
    print(json.dumps(seen), flush=True)
