"""Notes on Lakebase: the Databricks tutorial's Flask app, done with ``lakebase``.

The same code runs on a laptop against the local emulator (``make demo``) and as a Databricks App:
it reads what Databricks Apps inject (``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``,
``PGSSLMODE``, ``DATABRICKS_HOST``, ``DATABRICKS_CLIENT_ID``/``SECRET``) plus ``ENDPOINT_NAME`` from
``app.yaml``, and is served by gunicorn (``gunicorn.conf.py`` binds ``DATABRICKS_APP_PORT``).

What changed from the tutorial's app.py:

* ``lakebase.ConnectionPool`` instead of a token minted for every physical connection: one cached,
  refreshed-ahead token per process; connect retries through restarts and scale-to-zero wake-ups.
* The pool is created lazily in the process that uses it, so gunicorn workers (with or without
  ``--preload``) never share a pool, its threads or its sockets with the master.
* Every query runs through ``lakebase.run_transaction`` (reads with ``read_only=True``): a session
  ended by a restart (57P01) is retried on a new connection instead of becoming a 500.
* Note content is escaped (Jinja autoescaping); the tutorial's f-string HTML was an XSS hole.
* Adding and deleting notes: HTML forms and a JSON API that insists on ``Content-Type: application/json``
  (which a cross-site form cannot send). CSRF: a write whose browser says it comes from another origin
  (``Sec-Fetch-Site``, else ``Origin``) gets a 403, as Go's ``net/http.CrossOriginProtection`` does;
  no token, no session, no cookie. Bad input gets a 400 with a message and writes nothing.
* ``/healthz``: database reachable, token age, pool statistics; 503 with the reason when unhealthy.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from flask import Flask, jsonify, redirect, render_template, request
from markupsafe import Markup

import lakebase
from lakebase.transactions import CommitOutcomeUnknown

try:
    from lakebase import run_transaction
except ImportError:  # pragma: no cover - before lakebase exported it at the top level
    from lakebase.transactions import run_transaction

MAX_NOTE_LENGTH = 1000
RECENT_NOTES = 5
API_LIMIT_DEFAULT, API_LIMIT_MAX = 50, 500
POOL_MAX_SIZE = int(os.environ.get("NOTES_POOL_MAX_SIZE", "8"))
POOL_TIMEOUT = float(os.environ.get("NOTES_POOL_TIMEOUT", "15"))
HEALTH_TIMEOUT = float(os.environ.get("NOTES_HEALTH_TIMEOUT", "3"))

log = logging.getLogger("notes")


# ---- the pool: one per process, created where it is used -------------------------------------------
_pool: lakebase.ConnectionPool | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _reset_after_fork() -> None:
    global _pool_lock
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_pool() -> lakebase.ConnectionPool:
    """This process's pool. A pool inherited through fork belongs to the parent (its worker threads did
    not survive the fork, and its sockets are the parent's): it is left alone, never used or closed."""
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _pool_lock:
            if _pool is None or _pool_pid != pid:
                _pool = lakebase.ConnectionPool(min_size=1, max_size=POOL_MAX_SIZE, timeout=POOL_TIMEOUT,
                                                name=f"notes-{pid}", open=True)
                _pool_pid = pid
    return _pool


def close_pool() -> None:
    """Close this process's pool (gunicorn's worker_exit hook calls this)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and _pool_pid == os.getpid():
        pool.close(timeout=5)


# ---- data access -------------------------------------------------------------------------------------
def _note(row: tuple[Any, ...]) -> dict[str, Any]:
    note_id, content, created_at = row
    return {"id": note_id, "content": content,
            "created_at": created_at.isoformat() if isinstance(created_at, datetime) else created_at}


def recent_rows(limit: int) -> list[tuple[Any, ...]]:
    """(id, content, created_at) of the ``limit`` most recent notes, newest first."""
    def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute("SELECT id, content, created_at FROM notes ORDER BY created_at DESC, id DESC "
                            "LIMIT %s", (limit,)).fetchall()

    return run_transaction(get_pool(), read, read_only=True)


def recent_notes(limit: int) -> list[dict[str, Any]]:
    return [_note(r) for r in recent_rows(limit)]


def add_note(content: str) -> dict[str, Any]:
    def write(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        row = conn.execute("INSERT INTO notes (content) VALUES (%s) RETURNING id, content, created_at",
                           (content,)).fetchone()
        return _note(row)

    return run_transaction(get_pool(), write)


def delete_note(note_id: int) -> bool:
    def write(conn: psycopg.Connection[Any]) -> bool:
        return conn.execute("DELETE FROM notes WHERE id = %s", (note_id,)).rowcount > 0

    return run_transaction(get_pool(), write)


# ---- input validation ----------------------------------------------------------------------------------
class BadInput(ValueError):
    """Invalid user input: a 400 with this message."""


def validate_content(value: Any) -> str:
    if value is None:
        raise BadInput("content is required")
    if not isinstance(value, str):
        raise BadInput(f"content must be a string, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadInput("content must not be empty")
    if len(text) > MAX_NOTE_LENGTH:
        raise BadInput(f"content must be at most {MAX_NOTE_LENGTH} characters (got {len(text)})")
    if any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in text):
        raise BadInput("content must not contain control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput("content is not valid Unicode (lone surrogates)") from None
    return text


def parse_note_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise BadInput(f"note id must be a positive integer, got {value[:40]!r}")
    return int(value)


# ---- CSRF: Fetch Metadata and Origin ---------------------------------------------------------------------
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


# ---- the app -----------------------------------------------------------------------------------------
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)


class Guard:
    """WSGI middleware around the Flask app: refuses cross-origin writes before Flask does any work and
    adds the security headers to every response (what a before_request and an after_request hook would
    do, at a fraction of their cost per request)."""

    def __init__(self, app: Flask) -> None:
        self.app, self.wsgi_app = app, app.wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend(h for h in SECURITY_HEADERS if h[0].lower() not in present)
            return start_response(status, headers, exc_info)

        refusal = cross_origin_refusal(environ["REQUEST_METHOD"], environ.get("HTTP_SEC_FETCH_SITE"),
                                       environ.get("HTTP_ORIGIN"), environ.get("HTTP_HOST"))
        if refusal is not None:
            with self.app.request_context(environ):
                response = self.app.make_response(_error(403, refusal))
            return response(environ, start)
        return self.wsgi_app(environ, start)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=64 * 1024)
    app.wsgi_app = Guard(app)  # type: ignore[method-assign]

    # Looked up once (Flask's render_template looks it up, runs the context processors and sends two
    # signals on every call); autoescaping is the Flask environment's, as with render_template.
    index_template = app.jinja_env.get_template("index.html")
    note_template = app.jinja_env.get_template("note.html")

    @functools.lru_cache(maxsize=1024)
    def note_html(note_id: int, content: str, created_at: datetime | None) -> Markup:
        """A note's list item, rendered once per process: a note never changes (it can only be deleted)."""
        created = created_at.isoformat(" ", "seconds")[:19] if created_at else ""
        return Markup(note_template.render(id=note_id, content=content, created=created).strip())

    def page(status: int = 200, error: str | None = None, draft: str = "") -> Any:
        notes = [note_html(*row) for row in recent_rows(RECENT_NOTES)]
        return index_template.render(notes=notes, error=error, draft=draft, max_length=MAX_NOTE_LENGTH), status

    @app.get("/")
    def index() -> Any:
        return page()

    @app.post("/notes")
    def create_from_form() -> Any:
        raw = request.form.get("content")
        try:
            content = validate_content(raw)
        except BadInput as exc:
            return page(400, str(exc), (raw or "")[:MAX_NOTE_LENGTH * 2])
        add_note(content)
        return redirect("/", code=303)

    @app.post("/notes/<note_id>/delete")
    def delete_from_form(note_id: str) -> Any:
        try:
            number = parse_note_id(note_id)
        except BadInput as exc:
            return page(400, str(exc))
        if not delete_note(number):
            return page(404, f"note {number} does not exist (deleted already?)")
        return redirect("/", code=303)

    # ---- JSON API ----
    @app.get("/api/notes")
    def api_list() -> Any:
        raw = request.args.get("limit", str(API_LIMIT_DEFAULT))
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= API_LIMIT_MAX:
            return _error(400, f"limit must be an integer from 1 to {API_LIMIT_MAX}")
        return jsonify({"notes": recent_notes(int(raw))})

    @app.post("/api/notes")
    def api_create() -> Any:
        if request.mimetype != "application/json":
            return _error(415, "send the note as JSON with Content-Type: application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, 'the body must be a JSON object like {"content": "..."}')
        unknown = sorted(set(body) - {"content"})
        if unknown:
            return _error(400, f"unknown field(s): {', '.join(unknown)}")
        try:
            content = validate_content(body.get("content"))
        except BadInput as exc:
            return _error(400, str(exc))
        note = add_note(content)
        return jsonify(note), 201, {"Location": f"/api/notes/{note['id']}"}

    @app.delete("/api/notes/<note_id>")
    def api_delete(note_id: str) -> Any:
        try:
            number = parse_note_id(note_id)
        except BadInput as exc:
            return _error(400, str(exc))
        if not delete_note(number):
            return _error(404, f"note {number} does not exist")
        return "", 204

    # ---- health ----
    @app.get("/healthz")
    def healthz() -> Any:
        return health_report()

    # ---- errors ----
    @app.errorhandler(CommitOutcomeUnknown)
    def maybe_saved(exc: Exception) -> Any:
        log.warning("write outcome unknown: %s", exc)
        return _error(503, "the database connection was lost while saving: the change may or may not have "
                           "been saved; reload to check before trying again")

    @app.errorhandler(lakebase.LakebaseError)
    def database_unavailable(exc: Exception) -> Any:
        log.warning("request failed: %s", exc)
        return _error(503, f"the database is unavailable right now: {type(exc).__name__}: {exc}")

    @app.errorhandler(psycopg.OperationalError)
    def database_error(exc: Exception) -> Any:
        log.warning("request failed: %s", exc)
        return _error(503, "the database connection failed; try again")

    @app.errorhandler(413)
    def too_large(exc: Exception) -> Any:
        return _error(413, "the request body is too large")

    return app


def _error(status: int, message: str) -> Any:
    """JSON for the API (and non-HTML clients), a small HTML page for browsers."""
    if request.path.startswith("/api/") or not request.accept_mimetypes.accept_html:
        return jsonify({"error": message, "status": status}), status
    return render_template("error.html", status=status, message=message), status


def _numbers(stats: dict[str, Any]) -> dict[str, Any]:
    """Only the counters of a stats dict: no identities, hosts or error text in a public body."""
    return {k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def health_report() -> Any:
    """Healthy when a valid token is at hand (or can be minted) and the database answers SELECT 1.

    The body is public: status, reasons an operator can act on, counters. The errors themselves
    (which name hosts and the service principal) go to the log only."""
    reasons: list[str] = []
    body: dict[str, Any] = {"pid": os.getpid()}
    started = time.monotonic()
    try:
        pool = get_pool()
    except lakebase.LakebaseError as exc:  # e.g. a configuration error
        log.error("healthz: no connection pool: %s", exc)
        return jsonify({**body, "status": "unhealthy",
                        "reasons": [f"the app is misconfigured ({type(exc).__name__}); see the app's logs"]}), 503
    # Token: the cached one while valid; a failing credential API only matters once it has expired.
    try:
        cache = pool.connector.credentials
        cache.token(timeout=HEALTH_TIMEOUT)
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
    # Database: a round trip on a pooled connection.
    try:
        with pool.connection(timeout=HEALTH_TIMEOUT) as conn:
            conn.execute("SELECT 1")
        body["database"] = {"ok": True}
    except Exception as exc:
        log.warning("healthz: database unreachable: %s: %s", type(exc).__name__, exc)
        body["database"] = {"ok": False}
        reasons.append(f"database unreachable ({type(exc).__name__}); see the app's logs")
    stats = pool.stats()
    body["pool"] = _numbers(stats.get("pool", {}))
    body["credentials"] = _numbers(stats.get("credentials", {}))
    body["seconds"] = round(time.monotonic() - started, 3)
    body["status"] = "unhealthy" if reasons else "ok"
    if reasons:
        body["reasons"] = reasons
    return jsonify(body), 503 if reasons else 200


logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                    format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
app = create_app()

if __name__ == "__main__":  # the tutorial's `python app.py`, for a quick local try (use gunicorn to serve)
    app.run(host="127.0.0.1", port=int(os.environ.get("DATABRICKS_APP_PORT", "8000")))
