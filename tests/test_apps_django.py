"""apps/notes-django against the emulator: pages, forms with Django's CSRF protection, the JSON API,
/healthz under faults; manage.py migrate, check, makemigrations --check and test (subprocesses)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakebase import connector
from lakebase.emulator.supervise import clean_environment

from .apps_support import ensure_app_schema, note_count, owner_sql
from .django_support import DJANGO_DIR, close_all, setup_django

_CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(scope="module")
def django_ready(emulator: Any, app_role: str) -> None:
    setup_django()
    ensure_app_schema(emulator, app_role)


@pytest.fixture
def client(django_ready: None, emulator: Any, app_env: dict[str, str]) -> Iterator[Any]:
    """Django's test client with CSRF checks on (as in a browser), as the app's service principal."""
    from django.test import Client

    connector.reset()
    close_all()
    emulator.configure(restart_seconds=0.2)
    yield Client(enforce_csrf_checks=True)
    close_all()
    connector.reset()


def unique(prefix: str = "note") -> str:
    return f"{prefix} {uuid.uuid4().hex[:12]}"


def csrf(client: Any) -> str:
    """The form token of the page (Django's CsrfViewMiddleware; the cookie comes with it)."""
    match = _CSRF_RE.search(client.get("/").content.decode())
    assert match, "no CSRF token in the page"
    return match.group(1)


def api_post(client: Any, body: Any, **kwargs: Any) -> Any:
    return client.post("/api/notes", body, content_type="application/json", **kwargs)


# ---- pages and forms -----------------------------------------------------------------------------------
def test_page_shows_the_five_most_recent_notes(client: Any) -> None:
    added = [unique() for _ in range(6)]
    for content in added:
        assert api_post(client, {"content": content}).status_code == 201
    resp = client.get("/")
    html = resp.content.decode()
    assert resp.status_code == 200 and "Hello from <span>Lakebase</span>!" in html
    assert html.count("<li data-note-id=") == 5
    assert all(content in html for content in added[1:]) and added[0] not in html
    assert html.index(added[-1]) < html.index(added[-2])  # newest first
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["X-Frame-Options"] == "DENY"


def test_form_adds_and_deletes_a_note_with_the_csrf_token(client: Any, emulator: Any) -> None:
    content = unique("from the form")
    resp = client.post("/notes", {"content": content, "csrfmiddlewaretoken": csrf(client)})
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    assert content in client.get("/").content.decode()
    note_id = next(n["id"] for n in client.get("/api/notes").json()["notes"] if n["content"] == content)
    before = note_count(emulator)
    resp = client.post(f"/notes/{note_id}/delete", {"csrfmiddlewaretoken": csrf(client)})
    assert resp.status_code == 303 and note_count(emulator) == before - 1
    resp = client.post(f"/notes/{note_id}/delete", {"csrfmiddlewaretoken": csrf(client)})
    assert resp.status_code == 404 and "does not exist" in resp.content.decode()


@pytest.mark.parametrize("headers", [
    {},  # no token: a forged form
    {"HTTP_ORIGIN": "https://evil.example"},
], ids=["no-token", "other-origin"])
def test_forms_without_a_valid_token_or_from_another_origin_are_refused(client: Any, emulator: Any,
                                                                        headers: dict[str, str]) -> None:
    token = csrf(client) if headers else None
    data = {"content": unique("csrf"), **({"csrfmiddlewaretoken": token} if token else {})}
    before = note_count(emulator)
    resp = client.post("/notes", data, HTTP_ACCEPT="text/html", **headers)
    assert resp.status_code == 403
    assert "cross-origin request refused (CSRF protection)" in resp.content.decode()
    note_id = client.get("/api/notes?limit=1").json()["notes"][0]["id"]
    assert client.post(f"/notes/{note_id}/delete", {}, **headers).status_code == 403
    assert note_count(emulator) == before


@pytest.mark.parametrize(("content", "message"), [
    ("   \n\t ", "must not be empty"),
    ("x" * 1001, "at most 1000 characters"),
    ("bell \x07 character", "control characters"),
])
def test_form_rejects_bad_content_and_writes_nothing(client: Any, emulator: Any, content: str, message: str) -> None:
    before = note_count(emulator)
    resp = client.post("/notes", {"content": content, "csrfmiddlewaretoken": csrf(client)})
    assert resp.status_code == 400 and message in resp.content.decode()
    assert note_count(emulator) == before


def test_note_content_is_escaped(client: Any) -> None:
    payload = f'<script>alert("{uuid.uuid4().hex[:6]}")</script>'
    assert api_post(client, {"content": payload}).status_code == 201
    html = client.get("/").content.decode()
    assert payload not in html and "&lt;script&gt;alert(" in html


# ---- JSON API ------------------------------------------------------------------------------------------
def test_api_create_list_delete(client: Any) -> None:
    content = unique("api")
    resp = api_post(client, {"content": f"  {content}  "})
    assert resp.status_code == 201
    note = resp.json()
    assert note["content"] == content and note["created_at"] and resp.headers["Location"] == f"/api/notes/{note['id']}"
    assert client.get("/api/notes").json()["notes"][0]["id"] == note["id"]
    assert len(client.get("/api/notes?limit=2").json()["notes"]) == 2
    assert client.delete(f"/api/notes/{note['id']}").status_code == 204
    assert client.delete(f"/api/notes/{note['id']}").status_code == 404
    assert client.delete("/api/notes/abc").status_code == 400


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    ('{"content": "x"}', "text/plain", 415, "application/json"),
    ("{not json", "application/json", 400, "JSON object"),
    ({"content": 42}, "application/json", 400, "must be a string"),
    ({}, "application/json", 400, "content is required"),
    ({"content": "ok", "id": 7}, "application/json", 400, "unknown field"),
    ('{"content": "' + "z" * 70_000 + '"}', "application/json", 413, "too large"),
])
def test_api_rejects_bad_input_and_writes_nothing(client: Any, emulator: Any, body: Any, content_type: str,
                                                  status: int, message: str) -> None:
    before = note_count(emulator)
    resp = client.post("/api/notes", body, content_type=content_type)
    assert resp.status_code == status and message in resp.json()["error"]
    assert note_count(emulator) == before


def test_api_writes_from_another_origin_are_refused(client: Any, emulator: Any) -> None:
    before = note_count(emulator)
    resp = api_post(client, {"content": unique()}, HTTP_SEC_FETCH_SITE="cross-site")
    assert resp.status_code == 403 and "CSRF" in resp.json()["error"]
    note_id = client.get("/api/notes?limit=1").json()["notes"][0]["id"]
    assert client.delete(f"/api/notes/{note_id}", HTTP_ORIGIN="https://evil.example").status_code == 403
    assert note_count(emulator) == before


# ---- health and faults ---------------------------------------------------------------------------------
def test_healthz_reports_database_token_and_pool(client: Any) -> None:
    resp = client.get("/healthz")
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "ok" and body["database"]["ok"] and body["token"]["ok"]
    assert body["token"]["expires_in_seconds"] > 0 and body["pool"]["pool_max"] >= 1
    assert "mints" in body["credentials"] and "eyJ" not in resp.content.decode()


def test_requests_survive_a_restart_and_a_suspend(client: Any, emulator: Any) -> None:
    from .test_django import ending_sessions

    assert client.get("/").status_code == 200
    with ending_sessions(emulator, "restart"):
        assert client.get("/").status_code == 200
        assert api_post(client, {"content": unique("after restart")}).status_code == 201
    with ending_sessions(emulator, "suspend"):
        assert client.get("/api/notes").status_code == 200
    assert emulator.endpoint_state() == "ACTIVE"


def test_the_model_matches_the_table_init_schema_makes(django_ready: None, emulator: Any) -> None:
    """The app's Note model and the tutorial's notes table (made by the schema step) agree."""
    from notes_django.models import Note

    columns = owner_sql(emulator, "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                                  "WHERE table_schema = 'public' AND table_name = 'notes' ORDER BY ordinal_position")
    assert Note._meta.db_table == "notes"
    fields = [(f.column, f.null) for f in Note._meta.concrete_fields]
    assert [(name, nullable == "YES") for name, _, nullable in columns] == fields
    assert [t for _, t, _ in columns] == ["integer", "text", "timestamp without time zone"]


# ---- manage.py -------------------------------------------------------------------------------------------
def manage(emulator: Any, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environment = clean_environment({**env, "DATABRICKS_CONFIG_FILE": str(tmp_path / "nocfg")})
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=DJANGO_DIR, env=environment,
                          capture_output=True, text=True, timeout=180)


def test_manage_migrate_check_and_makemigrations(emulator: Any, app_role: str, tmp_path: Path) -> None:
    """As the app: migrate records the owner's table (CREATE TABLE IF NOT EXISTS) and makes
    django_migrations; check (with the database) passes; the model has no unmigrated change."""
    ensure_app_schema(emulator, app_role)
    before = note_count(emulator)
    script = ("import sys\nfrom django.core.management import call_command\n"
              "call_command('migrate', '--noinput')\ncall_command('check', '--database', 'default')\n"
              "call_command('makemigrations', '--check', '--dry-run')\n")
    result = manage(emulator, tmp_path, emulator.app_env, "shell", "-c", script)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Applying notes_django.0001_initial... OK" in result.stdout or "No migrations to apply" in result.stdout
    assert "System check identified no issues" in result.stdout and "No changes detected" in result.stdout
    assert owner_sql(emulator, "SELECT name FROM django_migrations WHERE app = 'notes_django'") == [("0001_initial",)]
    assert note_count(emulator) == before  # the notes are the owner's table's, untouched


def test_manage_test_creates_migrates_and_drops_a_test_database(emulator: Any, tmp_path: Path) -> None:
    """As the project owner (who may create databases): Django's test runner on Lakebase."""
    result = manage(emulator, tmp_path, emulator.user_env, "test", "notes_django", "--noinput", "-v", "2")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Creating test database for alias 'default'" in output and "Ran 2 tests" in output
    assert "Destroying test database for alias 'default'" in output
    assert owner_sql(emulator, "SELECT count(*) FROM pg_database WHERE datname LIKE 'test_%%'") == [(0,)]
    assert "eyJ" not in output
