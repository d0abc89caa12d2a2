"""Notes on Lakebase with FastAPI and an async SQLAlchemy engine, served by uvicorn.

The same features as apps/notes-flask (page, forms, JSON API, /healthz; CSRF: writes a browser says
come from another origin get a 403, as in the Flask app) on
``lakebase.sqlalchemy.create_async_engine``: the connection-patterns page's SQLAlchemy approach
done right. That recipe injects a token in a ``do_connect`` hook (which runs on the event loop) from
a hand-written background refresh task, with ``pool_recycle`` alone; here every new connection is
opened by lakebase off the event loop with the shared, refreshed-ahead token, ``pool_pre_ping``
replaces sessions a restart or scale-to-zero ended, and every query runs in
``lakebase.run_transaction_async``, which re-runs a unit of work whose connection was lost before
COMMIT.

Runs unchanged on a laptop (the emulator's app.env) and as a Databricks App (``app.yaml``):
``python app.py`` binds ``0.0.0.0:$DATABRICKS_APP_PORT`` (default 8000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import text

import lakebase
from lakebase.sqlalchemy import connector_of, create_async_engine
from lakebase.transactions import CommitOutcomeUnknown

try:
    from lakebase import run_transaction_async
except ImportError:  # pragma: no cover - before lakebase exported it at the top level
    from lakebase.transactions import run_transaction_async

MAX_NOTE_LENGTH = 1000
MAX_BODY = 64 * 1024
RECENT_NOTES = 5
API_LIMIT_DEFAULT, API_LIMIT_MAX = 50, 500
POOL_SIZE = int(os.environ.get("NOTES_POOL_SIZE", "5"))
POOL_TIMEOUT = float(os.environ.get("NOTES_POOL_TIMEOUT", "15"))
HEALTH_TIMEOUT = float(os.environ.get("NOTES_HEALTH_TIMEOUT", "3"))

log = logging.getLogger("notes")
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))


# ---- data access -------------------------------------------------------------------------------------
def _note(row: Any) -> dict[str, Any]:
    note_id, content, created_at = row
    return {"id": note_id, "content": content,
            "created_at": created_at.isoformat() if isinstance(created_at, datetime) else created_at}


async def recent_notes(engine: Any, limit: int) -> list[dict[str, Any]]:
    async def read(conn: Any) -> list[dict[str, Any]]:
        result = await conn.execute(text("SELECT id, content, created_at FROM notes "
                                         "ORDER BY created_at DESC, id DESC LIMIT :limit"), {"limit": limit})
        return [_note(r) for r in result.all()]

    return await run_transaction_async(engine, read, read_only=True)


async def add_note(engine: Any, content: str) -> dict[str, Any]:
    async def write(conn: Any) -> dict[str, Any]:
        result = await conn.execute(text("INSERT INTO notes (content) VALUES (:content) "
                                         "RETURNING id, content, created_at"), {"content": content})
        return _note(result.one())

    return await run_transaction_async(engine, write)


async def delete_note(engine: Any, note_id: int) -> bool:
    async def write(conn: Any) -> bool:
        result = await conn.execute(text("DELETE FROM notes WHERE id = :id"), {"id": note_id})
        return bool(result.rowcount)

    return await run_transaction_async(engine, write)


# ---- input validation ----------------------------------------------------------------------------------
class BadInput(ValueError):
    """Invalid user input: a 400 with this message."""


def validate_content(value: Any) -> str:
    if value is None:
        raise BadInput("content is required")
    if not isinstance(value, str):
        raise BadInput(f"content must be a string, not {type(value).__name__}")
    content = value.strip()
    if not content:
        raise BadInput("content must not be empty")
    if len(content) > MAX_NOTE_LENGTH:
        raise BadInput(f"content must be at most {MAX_NOTE_LENGTH} characters (got {len(content)})")
    if any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in content):
        raise BadInput("content must not contain control characters")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("content is not valid Unicode (lone surrogates)") from None
    return content


def parse_note_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise BadInput(f"note id must be a positive integer, got {value[:40]!r}")
    return int(value)


# ---- CSRF: Fetch Metadata and Origin (the same check as apps/notes-flask) --------------------------------
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_origin_refusal(method: str, sec_fetch_site: str | None, origin: str | None, host: str | None) -> str | None:
    """Why a request that may change data must be refused as cross-origin, or None to let it through.

    The check of Go 1.25's ``net/http.CrossOriginProtection``: browsers (all since 2023) tell in
    ``Sec-Fetch-Site`` where a request comes from, and a page of another origin (``cross-site``, or a
    sibling subdomain: ``same-site``) cannot forge it. Without that header, ``Origin`` must name this
    host. A request with neither header does not come from a (modern) browser: curl, scripts, the
    benchmark; it cannot be a CSRF. Needs no token, no session and no cookie."""
    if method in SAFE_METHODS:
        return None
    if sec_fetch_site:
        if sec_fetch_site in ("same-origin", "none"):
            return None
        return (f"cross-origin request refused (CSRF protection): your browser says this {method} comes from "
                f"another site (Sec-Fetch-Site: {sec_fetch_site[:20]}); use the app's own page")
    if not origin:
        return None
    if host and urlsplit(origin).netloc.lower() == host.lower():
        return None
    return (f"cross-origin request refused (CSRF protection): Origin {origin[:100]!r} is not this app "
            f"({host!r}); use the app's own page")


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (what browsers send); no python-multipart needed."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise BadInput("send the form as application/x-www-form-urlencoded")
    body = await read_body(request)
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


class TooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise TooLarge
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge
    return body


# ---- the app -----------------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Created on the event loop that serves requests, in the process that serves them.
    app.state.engine = create_async_engine(pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_timeout=POOL_TIMEOUT)
    try:
        yield
    finally:
        await app.state.engine.dispose()


app = FastAPI(title="Notes on Lakebase", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)


@app.middleware("http")
async def guard(request: Request, call_next: Any) -> Response:
    headers = request.headers
    refusal = cross_origin_refusal(request.method, headers.get("sec-fetch-site"), headers.get("origin"),
                                   headers.get("host"))
    if refusal is not None:
        response: Response = error(request, 403, refusal)
    else:
        response = await call_next(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def error(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": message, "status": status}, status_code=status)
    return templates.TemplateResponse(request, "error.html", {"status": status, "message": message},
                                      status_code=status)


async def page(request: Request, status: int = 200, error_message: str | None = None, draft: str = "") -> Response:
    notes = await recent_notes(request.app.state.engine, RECENT_NOTES)
    return templates.TemplateResponse(
        request, "index.html", {"notes": notes, "error": error_message, "draft": draft,
                                "max_length": MAX_NOTE_LENGTH}, status_code=status)


@app.get("/")
async def index(request: Request) -> Response:
    return await page(request)


@app.post("/notes")
async def create_from_form(request: Request) -> Response:
    try:
        form = await read_form(request)
    except BadInput as exc:
        return error(request, 415, str(exc))
    raw = form.get("content")
    try:
        content = validate_content(raw)
    except BadInput as exc:
        return await page(request, 400, str(exc), (raw or "")[:MAX_NOTE_LENGTH * 2])
    await add_note(request.app.state.engine, content)
    return RedirectResponse("/", status_code=303)


@app.post("/notes/{note_id}/delete")
async def delete_from_form(request: Request, note_id: str) -> Response:
    try:
        number = parse_note_id(note_id)
    except BadInput as exc:
        return await page(request, 400, str(exc))
    if not await delete_note(request.app.state.engine, number):
        return await page(request, 404, f"note {number} does not exist (deleted already?)")
    return RedirectResponse("/", status_code=303)


@app.get("/api/notes")
async def api_list(request: Request) -> Response:
    raw = request.query_params.get("limit", str(API_LIMIT_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= API_LIMIT_MAX:
        return error(request, 400, f"limit must be an integer from 1 to {API_LIMIT_MAX}")
    return JSONResponse({"notes": await recent_notes(request.app.state.engine, int(raw))})


@app.post("/api/notes")
async def api_create(request: Request) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return error(request, 415, "send the note as JSON with Content-Type: application/json")
    import json

    try:
        body = json.loads(await read_body(request))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return error(request, 400, 'the body must be a JSON object like {"content": "..."}')
    unknown = sorted(set(body) - {"content"})
    if unknown:
        return error(request, 400, f"unknown field(s): {', '.join(unknown)}")
    try:
        content = validate_content(body.get("content"))
    except BadInput as exc:
        return error(request, 400, str(exc))
    note = await add_note(request.app.state.engine, content)
    return JSONResponse(note, status_code=201, headers={"Location": f"/api/notes/{note['id']}"})


@app.delete("/api/notes/{note_id}")
async def api_delete(request: Request, note_id: str) -> Response:
    try:
        number = parse_note_id(note_id)
    except BadInput as exc:
        return error(request, 400, str(exc))
    if not await delete_note(request.app.state.engine, number):
        return error(request, 404, f"note {number} does not exist")
    return Response(status_code=204)


@app.get("/healthz")
async def healthz(request: Request) -> Response:
    """Healthy when a valid token is at hand (or can be minted) and the database answers SELECT 1.

    The body is public: status, reasons an operator can act on, counters. The errors themselves
    (which name hosts and the service principal) go to the log only."""
    engine = request.app.state.engine
    reasons: list[str] = []
    body: dict[str, Any] = {"pid": os.getpid()}
    started = time.monotonic()
    connector = connector_of(engine)
    try:
        await asyncio.to_thread(connector.prepare)  # builds the workspace client: blocking, off the loop
        cache = connector.credentials
        await cache.atoken(timeout=HEALTH_TIMEOUT)
        cred = cache.credential
        body["token"] = {
            "ok": True,
            "age_seconds": round(time.monotonic() - cred.obtained, 1) if cred else None,
            "expires_in_seconds": round(cred.expires_in(), 1) if cred else None,
        }
    except lakebase.LakebaseError as exc:
        log.warning("healthz: no valid database credential: %s", exc)
        body["token"] = {"ok": False}
        reasons.append(f"no valid database credential: the Databricks credential API failed or did not answer "
                       f"({type(exc).__name__}); see the app's logs")
    try:
        async def ping() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        await asyncio.wait_for(ping(), HEALTH_TIMEOUT)
        body["database"] = {"ok": True}
    except Exception as exc:
        detail = type(exc).__name__ if str(exc) else f"no answer within {HEALTH_TIMEOUT:g}s"
        log.warning("healthz: database unreachable: %s: %s", type(exc).__name__, exc)
        body["database"] = {"ok": False}
        reasons.append(f"database unreachable ({detail}); see the app's logs")
    pool = engine.pool
    body["pool"] = {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": pool.overflow(),
                    "checked_in": pool.checkedin(), "status": pool.status()}
    stats = connector.stats()
    body["credentials"] = {k: v for k, v in stats.get("credentials", {}).items()  # counters only: no identity
                           if isinstance(v, int | float) and not isinstance(v, bool)}
    body["seconds"] = round(time.monotonic() - started, 3)
    body["status"] = "unhealthy" if reasons else "ok"
    if reasons:
        body["reasons"] = reasons
    return JSONResponse(body, status_code=503 if reasons else 200)


@app.exception_handler(TooLarge)
async def too_large(request: Request, exc: Exception) -> Response:
    return error(request, 413, "the request body is too large")


@app.exception_handler(CommitOutcomeUnknown)
async def maybe_saved(request: Request, exc: Exception) -> Response:
    log.warning("write outcome unknown: %s", exc)
    return error(request, 503, "the database connection was lost while saving: the change may or may not have "
                               "been saved; reload to check before trying again")


@app.exception_handler(lakebase.LakebaseError)
async def database_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("request failed: %s", exc)
    return error(request, 503, f"the database is unavailable right now: {type(exc).__name__}: {exc}")


@app.exception_handler(sqlalchemy.exc.OperationalError)
async def database_error(request: Request, exc: Exception) -> Response:
    log.warning("request failed: %s", exc)
    return error(request, 503, "the database connection failed; try again")


@app.exception_handler(sqlalchemy.exc.TimeoutError)
async def pool_exhausted(request: Request, exc: Exception) -> Response:
    log.warning("request failed: %s", exc)
    return error(request, 503, "all database connections are busy; try again")


logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("NOTES_HOST", "0.0.0.0"),
                port=int(os.environ.get("DATABRICKS_APP_PORT", "8000")),
                proxy_headers=True, forwarded_allow_ips="*")
