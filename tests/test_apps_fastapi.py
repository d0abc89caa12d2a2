"""apps/notes-fastapi against the emulator: the async SQLAlchemy engine behind pages, forms and the API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from lakebase import connector
from lakebase.emulator.supervise import clean_environment, wait_http_ok

from .apps_support import FASTAPI_DIR, ensure_app_schema, free_port, load_module, note_count


@pytest.fixture(scope="module")
def fastapi_module(emulator: Any, app_role: str) -> Iterator[ModuleType]:
    ensure_app_schema(emulator, app_role)
    yield load_module(FASTAPI_DIR / "app.py", "notes_fastapi_app")


@contextlib.asynccontextmanager
async def serve(module: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    """The app on this event loop (lifespan run: the engine is created and disposed), fresh credentials."""
    connector.reset()
    app = module.app
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield c
    finally:
        connector.reset()


@pytest.fixture
async def client(fastapi_module: ModuleType, app_env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(fastapi_module) as c:
        yield c


# What Chromium sends with a form post from the app's own page (the test client's host is "testserver").
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}


def unique(prefix: str = "note") -> str:
    return f"{prefix} {uuid.uuid4().hex[:12]}"


async def count(emulator: Any) -> int:
    return await asyncio.to_thread(note_count, emulator)


async def test_page_shows_recent_notes_escaped(client: httpx.AsyncClient) -> None:
    payload = f"<script>alert('{uuid.uuid4().hex[:6]}')</script>"
    for content in [unique() for _ in range(5)] + [payload]:
        assert (await client.post("/api/notes", json={"content": content})).status_code == 201
    resp = await client.get("/")
    assert resp.status_code == 200
    assert "Hello from <span>Lakebase</span>!" in resp.text
    assert resp.text.count("<li data-note-id=") == 5
    assert payload not in resp.text and "&lt;script&gt;alert(" in resp.text
    assert "default-src 'none'" in resp.headers["content-security-policy"]


async def test_reads_run_in_read_only_transactions(client: httpx.AsyncClient, fastapi_module: ModuleType,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing runs read_only=True (no transaction id fetched before COMMIT); writes do not."""
    seen: list[bool] = []
    real = fastapi_module.run_transaction_async

    async def spy(target: Any, fn: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("read_only", False))
        return await real(target, fn, **kwargs)

    monkeypatch.setattr(fastapi_module, "run_transaction_async", spy)
    assert (await client.get("/")).status_code == 200
    assert (await client.get("/api/notes")).status_code == 200
    assert (await client.post("/api/notes", json={"content": unique()})).status_code == 201
    assert seen == [True, True, False]


async def test_form_add_and_delete(client: httpx.AsyncClient, emulator: Any) -> None:
    page = await client.get("/")
    assert "csrf" not in page.text and "set-cookie" not in page.headers  # no token, no cookie
    content = unique("fastapi form")
    resp = await client.post("/notes", data={"content": content}, headers=SAME_ORIGIN)
    assert resp.status_code == 303
    assert content in (await client.get("/")).text
    note_id = next(n["id"] for n in (await client.get("/api/notes")).json()["notes"] if n["content"] == content)
    before = await count(emulator)
    assert (await client.post(f"/notes/{note_id}/delete", headers=SAME_ORIGIN)).status_code == 303
    assert await count(emulator) == before - 1
    assert (await client.post(f"/notes/{note_id}/delete", headers=SAME_ORIGIN)).status_code == 404


# What a browser sends with a form post (or a fetch) from another origin: a page of another site, a sibling
# subdomain (same-site), an older browser without Fetch Metadata, a sandboxed or file:// page.
CROSS_ORIGIN = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://evil.testserver"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "null"},
]


@pytest.mark.parametrize("headers", CROSS_ORIGIN, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
async def test_cross_origin_form_posts_are_refused(client: httpx.AsyncClient, emulator: Any,
                                                   headers: dict[str, str]) -> None:
    before = await count(emulator)
    resp = await client.post("/notes", data={"content": unique("csrf")}, headers={"Accept": "text/html", **headers})
    assert resp.status_code == 403 and "cross-origin request refused (CSRF protection)" in resp.text
    note_id = (await client.get("/api/notes?limit=1")).json()["notes"][0]["id"]
    assert (await client.post(f"/notes/{note_id}/delete", headers=headers)).status_code == 403
    resp = await client.post("/api/notes", json={"content": unique()}, headers=headers)
    assert resp.status_code == 403 and "CSRF" in resp.json()["error"]
    assert await count(emulator) == before


@pytest.mark.parametrize("headers", [
    SAME_ORIGIN, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": "http://testserver"}, {},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()) or "no-headers")
async def test_same_origin_and_non_browser_form_posts_are_accepted(client: httpx.AsyncClient, emulator: Any,
                                                                   headers: dict[str, str]) -> None:
    content = unique("same origin")
    before = await count(emulator)
    assert (await client.post("/notes", data={"content": content}, headers=headers)).status_code == 303
    assert await count(emulator) == before + 1 and content in (await client.get("/")).text


@pytest.mark.parametrize(("content", "message"), [
    ("", "must not be empty"), ("  ", "must not be empty"), ("x" * 1001, "at most 1000"),
    ("nul \x00", "control characters"),
])
async def test_form_rejects_bad_content(client: httpx.AsyncClient, emulator: Any, content: str, message: str) -> None:
    before = await count(emulator)
    resp = await client.post("/notes", data={"content": content}, headers=SAME_ORIGIN)
    assert resp.status_code == 400 and message in resp.text
    assert await count(emulator) == before


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"content": b'{"content": "x"}', "headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
    ({"data": {"content": "x"}}, 415, "application/json"),
    ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "JSON object"),
    ({"json": ["content"]}, 400, "JSON object"),
    ({"json": {"content": 1}}, 400, "must be a string"),
    ({"json": {}}, 400, "content is required"),
    ({"json": {"content": " "}}, 400, "must not be empty"),
    ({"json": {"content": "y" * 1001}}, 400, "at most 1000"),
    ({"json": {"content": "ok", "extra": 1}}, 400, "unknown field"),
    ({"content": b'{"content": "\\ud800"}', "headers": {"Content-Type": "application/json"}}, 400, "Unicode"),
    ({"content": b'{"content": "' + b"z" * 70_000 + b'"}', "headers": {"Content-Type": "application/json"}},
     413, "too large"),
])
async def test_api_rejects_bad_input(client: httpx.AsyncClient, emulator: Any, kwargs: dict[str, Any], status: int,
                                     message: str) -> None:
    before = await count(emulator)
    resp = await client.post("/api/notes", **kwargs)
    assert resp.status_code == status
    assert message in resp.json()["error"]
    assert await count(emulator) == before


async def test_api_round_trip_and_cross_site_refusal(client: httpx.AsyncClient, emulator: Any) -> None:
    resp = await client.post("/api/notes", json={"content": unique("api")})
    assert resp.status_code == 201
    note = resp.json()
    assert (await client.get("/api/notes?limit=1")).json()["notes"][0]["id"] == note["id"]
    assert (await client.get("/api/notes?limit=0")).status_code == 400
    for bad in ("²", "١٢"):  # non-ASCII digits pass str.isdigit()
        resp = await client.get(f"/api/notes?limit={bad}")
        assert resp.status_code == 400 and "limit must be an integer" in resp.json()["error"]
    assert (await client.delete("/api/notes/abc")).status_code == 400
    before = await count(emulator)
    resp = await client.delete(f"/api/notes/{note['id']}", headers={"Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 403 and await count(emulator) == before
    assert (await client.delete(f"/api/notes/{note['id']}")).status_code == 204
    assert (await client.delete(f"/api/notes/{note['id']}")).status_code == 404


async def test_survives_restart_and_suspend(client: httpx.AsyncClient, emulator: Any) -> None:
    assert (await client.get("/")).status_code == 200
    await asyncio.to_thread(emulator.restart)
    assert (await client.get("/api/notes")).status_code == 200
    assert (await client.post("/api/notes", json={"content": unique("after restart")})).status_code == 201
    await asyncio.to_thread(emulator.suspend)
    assert (await client.get("/")).status_code == 200
    assert emulator.endpoint_state() == "ACTIVE"


async def test_healthz_under_a_long_credential_outage(fastapi_module: ModuleType, app_env: dict[str, str],
                                                      emulator: Any) -> None:
    emulator.configure(token_ttl_seconds=3)
    async with serve(fastapi_module) as client:  # its tokens live 3 s
        await _outage_and_recovery(client, emulator)


async def _outage_and_recovery(client: httpx.AsyncClient, emulator: Any) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200 and resp.json()["token"]["ok"] and resp.json()["database"]["ok"]
    emulator.credential_outage(120, 503)
    for _ in range(300):  # hang guard
        resp = await client.get("/healthz")
        if resp.status_code == 503:
            break
        await asyncio.sleep(0.2)
    assert resp.status_code == 503
    body = resp.json()
    assert any("no valid database credential" in r for r in body["reasons"])
    for secret in (emulator.app_env["DATABRICKS_CLIENT_ID"], emulator.app_env["DATABRICKS_HOST"], "Error:"):
        assert secret not in resp.text, secret  # public: no principal, host or raw error text
    emulator.credential_outage(0)
    for _ in range(300):
        resp = await client.get("/healthz")
        if resp.status_code == 200:
            break
        await asyncio.sleep(0.2)
    assert resp.status_code == 200


def test_uvicorn_serves_the_app(emulator: Any, app_role: str, fastapi_module: ModuleType, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = clean_environment({**emulator.app_env, "DATABRICKS_APP_PORT": str(port), "NOTES_HOST": "127.0.0.1",
                             "DATABRICKS_CONFIG_FILE": str(tmp_path / "nocfg")})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=FASTAPI_DIR, env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_http_ok(url + "/healthz", 60, alive=lambda: proc.poll() is None) is not None, log.read_text()
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/").status_code == 200
            content = unique("uvicorn")
            resp = http.post("/notes", data={"content": content}, headers={"Sec-Fetch-Site": "same-origin"})
            assert resp.status_code == 303
            assert content in http.get("/").text
            emulator.restart()
            assert http.get("/api/notes").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "eyJ" not in text
