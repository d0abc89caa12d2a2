"""Notes on Lakebase, in Django: the pages, the JSON API and /healthz of the Flask and FastAPI apps.

* Every query runs through ``lakebase.django.run_transaction`` (reads with ``read_only=True``): a session
  ended by a restart or a scale to zero is retried on a new connection instead of becoming a 500.
* The forms are protected by Django's own CSRF middleware (a token in the page and a cookie; the
  browser's ``Origin`` is checked too). The JSON API is exempt from the token, as in the other apps: it
  insists on ``Content-Type: application/json`` (which a cross-site form cannot send) and refuses a write
  the browser marks as cross-origin (``Sec-Fetch-Site``, else ``Origin``).
* Note content is escaped (Django's autoescaping). Bad input gets a 400 with a message and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

import lakebase
from lakebase.django import run_transaction
from lakebase.transactions import CommitOutcomeUnknown

from .models import Note

MAX_NOTE_LENGTH = 1000
RECENT_NOTES = 5
API_LIMIT_DEFAULT, API_LIMIT_MAX = 50, 500
HEALTH_TIMEOUT = float(os.environ.get("NOTES_HEALTH_TIMEOUT", "3"))

log = logging.getLogger("notes")


# ---- data access -------------------------------------------------------------------------------------
def recent_notes(limit: int) -> list[Note]:
    """The ``limit`` most recent notes, newest first."""
    return run_transaction(lambda: list(Note.objects.order_by("-created_at", "-id")[:limit]), read_only=True)


def add_note(content: str) -> Note:
    return run_transaction(lambda: Note.objects.create(content=content))


def delete_note(note_id: int) -> bool:
    return run_transaction(lambda: Note.objects.filter(id=note_id).delete()[0] > 0)


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


# ---- cross-origin writes to the API (Fetch Metadata, else Origin) -------------------------------------
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_origin_refusal(method: str, sec_fetch_site: str | None, origin: str | None, host: str | None) -> str | None:
    """Why a write must be refused as cross-origin, or None (Go 1.25's ``CrossOriginProtection`` check,
    as in the other apps): ``Sec-Fetch-Site`` when the browser sends it, else ``Origin`` must be this host;
    a request with neither does not come from a browser."""
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


def _api_refusal(request: HttpRequest) -> HttpResponse | None:
    refusal = cross_origin_refusal(request.method or "GET", request.headers.get("Sec-Fetch-Site"),
                                   request.headers.get("Origin"), request.headers.get("Host"))
    return None if refusal is None else error(request, 403, refusal)


# ---- responses -----------------------------------------------------------------------------------------
def error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """JSON for the API (and non-HTML clients), a small HTML page for browsers."""
    if request.path.startswith("/api/") or "text/html" not in request.headers.get("Accept", ""):
        return JsonResponse({"error": message, "status": status}, status=status)
    return render(request, "notes_django/error.html", {"status": status, "message": message}, status=status)


def page(request: HttpRequest, status: int = 200, message: str | None = None, draft: str = "") -> HttpResponse:
    context = {"notes": recent_notes(RECENT_NOTES), "error": message, "draft": draft, "max_length": MAX_NOTE_LENGTH}
    return render(request, "notes_django/index.html", context, status=status)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF middleware refused a form post (CSRF_FAILURE_VIEW)."""
    return error(request, 403, f"cross-origin request refused (CSRF protection): {reason}; reload the app's "
                               "page and submit its form again")


# ---- pages ---------------------------------------------------------------------------------------------
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return page(request)


@require_POST
def create_from_form(request: HttpRequest) -> HttpResponse:
    raw = request.POST.get("content")
    try:
        content = validate_content(raw)
    except BadInput as exc:
        return page(request, 400, str(exc), (raw or "")[:MAX_NOTE_LENGTH * 2])
    add_note(content)
    return _see_other("/")


@require_POST
def delete_from_form(request: HttpRequest, note_id: str) -> HttpResponse:
    try:
        number = parse_note_id(note_id)
    except BadInput as exc:
        return page(request, 400, str(exc))
    if not delete_note(number):
        return page(request, 404, f"note {number} does not exist (deleted already?)")
    return _see_other("/")


def _see_other(location: str) -> HttpResponse:
    response = HttpResponse(status=303)
    response["Location"] = location
    return response


# ---- JSON API ------------------------------------------------------------------------------------------
@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def api_notes(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return api_create(request)
    raw = request.GET.get("limit", str(API_LIMIT_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= API_LIMIT_MAX:
        return error(request, 400, f"limit must be an integer from 1 to {API_LIMIT_MAX}")
    return JsonResponse({"notes": [n.as_dict() for n in recent_notes(int(raw))]})


def api_create(request: HttpRequest) -> HttpResponse:
    refused = _api_refusal(request)
    if refused is not None:
        return refused
    if request.content_type != "application/json":
        return error(request, 415, "send the note as JSON with Content-Type: application/json")
    try:
        body = json.loads(request.body)
    except RequestDataTooBig:
        return error(request, 413, "the request body is too large")
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
    note = add_note(content)
    response = JsonResponse(note.as_dict(), status=201)
    response["Location"] = f"/api/notes/{note.pk}"
    return response


@csrf_exempt
@require_http_methods(["DELETE"])
def api_note(request: HttpRequest, note_id: str) -> HttpResponse:
    refused = _api_refusal(request)
    if refused is not None:
        return refused
    try:
        number = parse_note_id(note_id)
    except BadInput as exc:
        return error(request, 400, str(exc))
    if not delete_note(number):
        return error(request, 404, f"note {number} does not exist")
    return HttpResponse(status=204)


# ---- health --------------------------------------------------------------------------------------------
def _numbers(stats: dict[str, Any]) -> dict[str, Any]:
    """Only the counters of a stats dict: no identities, hosts or error text in a public body."""
    return {k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Healthy when a valid token is at hand (or can be minted) and the database answers SELECT 1.

    The body is public: status, reasons an operator can act on, counters; the errors go to the log."""
    reasons: list[str] = []
    body: dict[str, Any] = {"pid": os.getpid()}
    started = time.monotonic()
    connection = connections["default"]
    try:
        connector = connection.lakebase_connector()
        pool = connection.pool
    except lakebase.LakebaseError as exc:  # a configuration error
        log.error("healthz: misconfigured: %s", exc)
        return JsonResponse({**body, "status": "unhealthy",
                             "reasons": [f"the app is misconfigured ({type(exc).__name__}); see the app's logs"]},
                            status=503)
    try:
        cache = connector.credentials
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
    try:
        if pool is not None:
            pool.open()
            with pool.connection(timeout=HEALTH_TIMEOUT) as conn:
                conn.execute("SELECT 1")
        else:
            with connection.cursor() as cur:
                cur.execute("SELECT 1")
        body["database"] = {"ok": True}
    except Exception as exc:
        log.warning("healthz: database unreachable: %s: %s", type(exc).__name__, exc)
        body["database"] = {"ok": False}
        reasons.append(f"database unreachable ({type(exc).__name__}); see the app's logs")
    stats = pool.stats() if pool is not None else connector.stats()
    body["pool"] = _numbers(stats.get("pool", {}))
    body["credentials"] = _numbers(stats.get("credentials", {}))
    body["seconds"] = round(time.monotonic() - started, 3)
    body["status"] = "unhealthy" if reasons else "ok"
    if reasons:
        body["reasons"] = reasons
    return JsonResponse(body, status=503 if reasons else 200)


# ---- middleware ----------------------------------------------------------------------------------------
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    """Content-Security-Policy on every response (Django's SecurityMiddleware adds nosniff and Referrer-Policy)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class DatabaseErrors:
    """A database that cannot be reached is a 503 with a reason, not a 500."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        return response

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, CommitOutcomeUnknown):
            log.warning("write outcome unknown: %s", exc)
            return error(request, 503, "the database connection was lost while saving: the change may or may not "
                                       "have been saved; reload to check before trying again")
        if isinstance(exc, lakebase.LakebaseError):
            log.warning("request failed: %s", exc)
            return error(request, 503, f"the database is unavailable right now: {type(exc).__name__}: {exc}")
        if isinstance(exc, DatabaseError) and type(exc).__name__ in ("OperationalError", "InterfaceError"):
            log.warning("request failed: %s", exc)
            return error(request, 503, "the database connection failed; try again")
        return None
