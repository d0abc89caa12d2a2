"""apps/notes-flask against the emulator: pages, API, validation, CSRF, health under faults, gunicorn."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from lakebase import connector
from lakebase.emulator.supervise import clean_environment, start_gunicorn, stop_process_group, wait_http_ok

from .apps_support import FLASK_DIR, ensure_app_schema, free_port, load_module, note_count
from .lakebase_support import wait_for


@pytest.fixture(scope="module")
def flask_module(emulator: Any, app_role: str) -> Iterator[ModuleType]:
    ensure_app_schema(emulator, app_role)
    module = load_module(FLASK_DIR / "app.py", "notes_flask_app")
    yield module
    module.close_pool()


@pytest.fixture
def client(flask_module: ModuleType, app_env: dict[str, str]) -> Iterator[Any]:
    """A test client of the app running as the app's service principal; a fresh pool per test."""
    connector.reset()  # a new credential cache: tokens follow this test's emulator settings
    flask_module.app.config["TESTING"] = True
    with flask_module.app.test_client() as c:
        yield c
    flask_module.close_pool()
    connector.reset()


def unique(prefix: str = "note") -> str:
    return f"{prefix} {uuid.uuid4().hex[:12]}"


def page_html(client: Any) -> str:
    resp = client.get("/")
    assert resp.status_code == 200
    return str(resp.get_data(as_text=True))


# What Chromium sends with a form post from the app's own page (the test client's host is "localhost").
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}


# ---- pages ---------------------------------------------------------------------------------------------
def test_page_shows_the_five_most_recent_notes(client: Any) -> None:
    added = [unique() for _ in range(6)]
    for content in added:
        assert client.post("/api/notes", json={"content": content}).status_code == 201
    html = page_html(client)
    assert "Hello from <span>Lakebase</span>!" in html
    assert html.count("<li data-note-id=") == 5
    for content in added[1:]:
        assert content in html
    assert added[0] not in html  # the sixth most recent is not shown
    assert html.index(added[-1]) < html.index(added[-2])  # newest first


def test_reads_run_in_read_only_transactions(client: Any, flask_module: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing runs read_only=True (no transaction id fetched before COMMIT); writes do not."""
    seen: list[bool] = []
    real = flask_module.run_transaction

    def spy(target: Any, fn: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("read_only", False))
        return real(target, fn, **kwargs)

    monkeypatch.setattr(flask_module, "run_transaction", spy)
    assert client.get("/").status_code == 200
    assert client.get("/api/notes").status_code == 200
    assert client.post("/api/notes", json={"content": unique()}).status_code == 201
    assert seen == [True, True, False]


def test_form_adds_and_deletes_a_note(client: Any, emulator: Any) -> None:
    content = unique("from the form")
    resp = client.post("/notes", data={"content": content}, headers=SAME_ORIGIN)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/")
    html = page_html(client)
    assert content in html
    assert "csrf" not in html and "Set-Cookie" not in client.get("/").headers  # no token, no session
    note_id = next(n["id"] for n in client.get("/api/notes").get_json()["notes"] if n["content"] == content)
    before = note_count(emulator)
    resp = client.post(f"/notes/{note_id}/delete", headers=SAME_ORIGIN)
    assert resp.status_code == 303
    assert note_count(emulator) == before - 1
    assert content not in page_html(client)
    assert client.post(f"/notes/{note_id}/delete", headers=SAME_ORIGIN).status_code == 404


def test_note_content_is_escaped(client: Any) -> None:
    payload = f'<script>alert("{uuid.uuid4().hex[:6]}")</script><img src=x onerror=alert(1)>'
    assert client.post("/api/notes", json={"content": payload}).status_code == 201
    resp = client.get("/")
    html = resp.get_data(as_text=True)
    assert payload not in html
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


# ---- form validation and CSRF --------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "message"), [
    ("", "must not be empty"),
    ("   \n\t ", "must not be empty"),
    ("x" * 1001, "at most 1000 characters"),
    ("bell \x07 character", "control characters"),
])
def test_form_rejects_bad_content_and_writes_nothing(client: Any, emulator: Any, content: str, message: str) -> None:
    before = note_count(emulator)
    resp = client.post("/notes", data={"content": content}, headers=SAME_ORIGIN)
    assert resp.status_code == 400
    assert message in resp.get_data(as_text=True)
    assert note_count(emulator) == before


def test_form_without_content_field_is_a_400(client: Any, emulator: Any) -> None:
    before = note_count(emulator)
    resp = client.post("/notes", data={}, headers=SAME_ORIGIN)
    assert resp.status_code == 400 and "content is required" in resp.get_data(as_text=True)
    assert note_count(emulator) == before


# What a browser sends with a form post (or a fetch) from another origin: a page of another site, a sibling
# subdomain (same-site), an older browser without Fetch Metadata, a sandboxed or file:// page.
CROSS_ORIGIN = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://evil.localhost"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://localhost.evil.example"},
    {"Origin": "null"},
]


@pytest.mark.parametrize("headers", CROSS_ORIGIN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_cross_origin_form_posts_are_refused(client: Any, emulator: Any, headers: dict[str, str]) -> None:
    before = note_count(emulator)
    resp = client.post("/notes", data={"content": unique("csrf")}, headers={"Accept": "text/html", **headers})
    assert resp.status_code == 403
    assert "cross-origin request refused (CSRF protection)" in resp.get_data(as_text=True)
    note_id = client.get("/api/notes?limit=1").get_json()["notes"][0]["id"]
    assert client.post(f"/notes/{note_id}/delete", headers=headers).status_code == 403
    resp = client.post("/api/notes", json={"content": unique()}, headers=headers)
    assert resp.status_code == 403 and "CSRF" in resp.get_json()["error"]
    assert client.delete(f"/api/notes/{note_id}", headers=headers).status_code == 403
    assert note_count(emulator) == before


@pytest.mark.parametrize("headers", [
    SAME_ORIGIN,
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed or bookmarked by the user
    {"Origin": "http://localhost"},  # a browser without Fetch Metadata, on the app's own page
    {},  # not a browser: curl, a script
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "no-headers")
def test_same_origin_and_non_browser_form_posts_are_accepted(client: Any, emulator: Any,
                                                             headers: dict[str, str]) -> None:
    content = unique("same origin")
    before = note_count(emulator)
    assert client.post("/notes", data={"content": content}, headers=headers).status_code == 303
    assert note_count(emulator) == before + 1 and content in page_html(client)


def test_cross_origin_refusal_follows_go_cross_origin_protection(flask_module: ModuleType) -> None:
    refusal = flask_module.cross_origin_refusal
    for method in ("GET", "HEAD", "OPTIONS"):
        assert refusal(method, "cross-site", "https://evil.example", "app.example") is None
    assert refusal("POST", "same-origin", "https://evil.example", "app.example") is None  # the browser knows
    assert refusal("POST", None, "https://app.example", "app.example") is None
    assert refusal("POST", None, "https://App.Example", "app.example") is None
    assert refusal("PUT", None, "https://app.example:8443", "app.example") is not None  # another origin
    assert refusal("PATCH", "same-site", None, "app.example") is not None
    assert refusal("POST", None, "https://evil.example", None) is not None


def test_bad_note_ids_are_400_or_404(client: Any) -> None:
    assert client.post("/notes/abc/delete", headers=SAME_ORIGIN).status_code == 400
    assert client.post("/notes/-1/delete", headers=SAME_ORIGIN).status_code == 400
    assert client.delete("/api/notes/1e3").status_code == 400
    assert client.delete("/api/notes/99999999999").status_code == 400
    assert client.delete("/api/notes/2147483600").status_code == 404


# ---- JSON API ------------------------------------------------------------------------------------------
def test_api_create_list_delete(client: Any, emulator: Any) -> None:
    content = unique("api")
    resp = client.post("/api/notes", json={"content": f"  {content}  "})
    assert resp.status_code == 201
    note = resp.get_json()
    assert note["content"] == content and note["created_at"] and resp.headers["Location"] == f"/api/notes/{note['id']}"
    listed = client.get("/api/notes").get_json()["notes"]
    assert listed[0]["id"] == note["id"]
    assert len(client.get("/api/notes?limit=2").get_json()["notes"]) == 2
    assert client.delete(f"/api/notes/{note['id']}").status_code == 204
    assert client.delete(f"/api/notes/{note['id']}").status_code == 404
    assert all(n["id"] != note["id"] for n in client.get("/api/notes").get_json()["notes"])


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"data": '{"content": "x"}', "content_type": "text/plain"}, 415, "application/json"),
    ({"data": {"content": "x"}}, 415, "application/json"),  # a form post: what a cross-site form can send
    ({"data": "{not json", "content_type": "application/json"}, 400, "JSON object"),
    ({"json": ["content", "x"]}, 400, "JSON object"),
    ({"json": {"content": 42}}, 400, "must be a string"),
    ({"json": {"content": None}}, 400, "content is required"),
    ({"json": {}}, 400, "content is required"),
    ({"json": {"content": ""}}, 400, "must not be empty"),
    ({"json": {"content": "y" * 1001}}, 400, "at most 1000"),
    ({"json": {"content": "nul \x00 byte"}}, 400, "control characters"),
    ({"data": '{"content": "\\ud800"}', "content_type": "application/json"}, 400, "not valid Unicode"),
    ({"json": {"content": "ok", "id": 7}}, 400, "unknown field"),
])
def test_api_rejects_bad_input_and_writes_nothing(client: Any, emulator: Any, kwargs: dict[str, Any], status: int,
                                                  message: str) -> None:
    before = note_count(emulator)
    resp = client.post("/api/notes", **kwargs)
    assert resp.status_code == status
    body = resp.get_json()
    assert message in body["error"] and body["status"] == status
    assert note_count(emulator) == before


def test_api_limit_is_validated(client: Any) -> None:
    for bad in ("0", "-1", "abc", "501", "²", "١٢"):  # non-ASCII digits pass str.isdigit()
        resp = client.get(f"/api/notes?limit={bad}")
        assert resp.status_code == 400 and "limit must be an integer" in resp.get_json()["error"]


def test_api_body_size_is_limited(client: Any, emulator: Any) -> None:
    before = note_count(emulator)
    resp = client.post("/api/notes", data='{"content": "' + "z" * 70_000 + '"}', content_type="application/json")
    assert resp.status_code == 413
    assert note_count(emulator) == before


# ---- health and faults ---------------------------------------------------------------------------------
def test_healthz_reports_database_token_and_pool(client: Any) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok" and body["database"]["ok"] and body["token"]["ok"]
    assert body["token"]["age_seconds"] >= 0 and body["token"]["expires_in_seconds"] > 0
    assert body["pool"]["pool_max"] >= 1 and "mints" in body["credentials"]
    assert "eyJ" not in resp.get_data(as_text=True)  # never a token


def test_requests_survive_a_restart_and_a_suspend(client: Any, emulator: Any) -> None:
    assert client.get("/").status_code == 200
    emulator.restart()
    assert client.get("/").status_code == 200
    assert client.post("/api/notes", json={"content": unique("after restart")}).status_code == 201
    emulator.suspend()
    assert emulator.endpoint_state() == "IDLE"
    assert client.get("/api/notes").status_code == 200
    assert emulator.endpoint_state() == "ACTIVE"


def test_healthz_503_when_the_credential_outage_outlives_the_token(client: Any, emulator: Any) -> None:
    emulator.configure(token_ttl_seconds=3)
    assert client.get("/healthz").status_code == 200  # a 3 s token is cached
    emulator.credential_outage(120, 503)
    # While the cached token is valid the app is healthy; once it has expired, it is not.
    resp = wait_for(lambda: (r := client.get("/healthz")).status_code == 503 and r, 60, 0.2, what="/healthz 503")
    body = resp.get_json()
    assert body["status"] == "unhealthy" and not body["token"]["ok"]
    # The reason names the credential API's failure: its 503, or no answer while it is being retried.
    assert any("no valid database credential" in r and ("503" in r or "credential API" in r)
               for r in body["reasons"]), body["reasons"]
    assert body["database"]["ok"]  # pooled sessions outlive their token: the database itself answers
    emulator.credential_outage(0)  # recovery
    wait_for(lambda: client.get("/healthz").status_code == 200, 60, 0.2,
             what="/healthz 200 after the outage")
    assert client.post("/api/notes", json={"content": unique("after outage")}).status_code == 201


def test_healthz_503_when_the_database_is_unreachable(flask_module: ModuleType, app_env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    connector.reset()
    flask_module.close_pool()
    monkeypatch.setenv("PGPORT", str(free_port()))  # nothing listens there
    monkeypatch.setattr(flask_module, "HEALTH_TIMEOUT", 1.0)
    monkeypatch.setattr(flask_module, "POOL_TIMEOUT", 2.0)
    monkeypatch.setenv("LAKEBASE_CONNECT_DEADLINE", "2")
    try:
        with flask_module.app.test_client() as c:
            resp = c.get("/healthz")
            assert resp.status_code == 503
            body = resp.get_json()
            assert any("database unreachable" in r for r in body["reasons"])
            text = resp.get_data(as_text=True)  # public: no principal, host, port or raw error text
            for secret in (app_env["DATABRICKS_CLIENT_ID"], os.environ["PGHOST"], os.environ["PGPORT"], "Error:"):
                assert secret not in text, secret
            page = c.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 503 and "database is unavailable" in page.get_data(as_text=True)
    finally:
        flask_module.close_pool()
        connector.reset()


# ---- the real server -----------------------------------------------------------------------------------
def _gunicorn(emulator: Any, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = clean_environment({**emulator.app_env, "DATABRICKS_CONFIG_FILE": str(tmp_path / "nocfg")})
    proc = start_gunicorn(FLASK_DIR, env, port, 3, log, extra_args=extra)
    url = f"http://127.0.0.1:{port}"
    if wait_http_ok(url + "/healthz", 60, alive=lambda: proc.poll() is None) is None:
        stop_process_group(proc)
        pytest.fail("gunicorn did not become healthy:\n" + log.read_text(errors="replace")[-3000:])
    return proc, url, log


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_workers_serve_pages_forms_and_api(emulator: Any, app_role: str, flask_module: ModuleType,
                                                    tmp_path: Path, preload: bool) -> None:
    proc, url, log = _gunicorn(emulator, tmp_path, *(["--preload"] if preload else []))
    try:
        pids = set()
        with httpx.Client(base_url=url, timeout=30) as http:
            for i in range(6):  # every worker serves the page and accepts the form
                assert http.get("/").status_code == 200
                content = unique(f"gunicorn {i}")
                resp = http.post("/notes", data={"content": content},
                                 headers={"Sec-Fetch-Site": "same-origin", "Origin": url})
                assert resp.status_code == 303, resp.text
                assert content in http.get("/").text
                pids.add(http.get("/healthz").json()["pid"])
            resp = http.post("/api/notes", json={"content": unique("gunicorn api")})
            assert resp.status_code == 201
            assert http.delete(f"/api/notes/{resp.json()['id']}").status_code == 204
            emulator.restart()
            assert http.get("/").status_code == 200
        assert pids and os.getpid() not in pids
    finally:
        stop_process_group(proc)
    assert proc.returncode is not None
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "eyJ" not in text  # no token in the logs
