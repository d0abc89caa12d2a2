"""What every route table of the workspace API shares: Databricks' error JSON, request bodies,
paging, long-running operations, the app's keys and the ``@requires`` route marker."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf.duration_pb2 import Duration

from ..runtime import Runtime
from ..state import Identity

MAX_BODY_BYTES = 1 << 20
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_OPERATIONS = 1000
OPERATION_WAIT = 10.0  # seconds a poll of an unfinished operation waits for it before answering

log = logging.getLogger("lakebase.emulator.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- errors ------------------------------------------------------------------------------------
class ApiError(Exception):
    """Raised by handlers; the middleware turns it into Databricks' error JSON."""

    def __init__(self, status: int, error_code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.error_code, self.message, self.headers)


def error_response(status: int, error_code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error_code": error_code, "message": message}, status=status, headers=headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def already_exists(message: str) -> ApiError:
    return ApiError(409, "ALREADY_EXISTS", message)


def too_large() -> ApiError:
    return ApiError(400, "MALFORMED_REQUEST", f"the request body is larger than {MAX_BODY_BYTES} bytes")


def shown(value: Any, limit: int = 120) -> str:
    """A client-supplied value for an error message (never a token: callers pass ids and names)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."



def http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (no route, wrong method, body too large) in Databricks' shape."""
    if exc.status == 404:
        return error_response(404, "ENDPOINT_NOT_FOUND",
                              f"No API found for '{request.method} {request.path}'")
    if exc.status == 405:
        return error_response(501, "NOT_IMPLEMENTED",
                              f"{request.method} {request.path} is not supported by the Lakebase emulator")
    if exc.status == 413:
        return too_large().response()
    return error_response(exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR", exc.reason)




# ---- small formats -----------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """Protobuf JSON duration, as the SDK parses it: ``300s``, ``0.500s``."""
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d.ToJsonString()



# ---- request bodies and parameters -------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object in the body (``{}`` when empty); 400 for anything else or above 1 MiB."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = ""
        if isinstance(exc, json.JSONDecodeError):
            detail = f" ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise ApiError(400, "MALFORMED_REQUEST", f"the request body is not valid JSON{detail}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "MALFORMED_REQUEST", "the request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False,
          label: str | None = None) -> Any:
    """``body[name]`` if it has the JSON type ``kind`` (booleans are not numbers), else 400."""
    label = label or name
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"{label} is required")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = {str: "a string", bool: "a boolean", list: "a list", dict: "an object",
                    int: "a number", float: "a number"}[kinds[0]]
        raise bad_request(f"{label} must be {expected}, got {shown(value)}")
    return value


def page(request: web.Request, items: list[dict[str, Any]], collection: str, scope: str) -> dict[str, Any]:
    """``page_size`` / ``page_token`` paging; the token is opaque and tied to ``scope``."""
    raw_size = request.query.get("page_size", "")
    try:
        size = int(raw_size) if raw_size else 0
    except ValueError:
        raise bad_request(f"page_size must be an integer, got {shown(raw_size)}") from None
    if size < 0:
        raise bad_request("page_size cannot be negative")
    size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = 0
    token = request.query.get("page_token", "")
    if token:
        offset = _decode_page_token(token, scope, len(items))
    result: dict[str, Any] = {}
    chunk = items[offset:offset + size]
    if chunk:
        result[collection] = chunk
    if offset + size < len(items):
        result["next_page_token"] = _encode_page_token(scope, offset + size)
    return result


def _encode_page_token(scope: str, offset: int) -> str:
    raw = json.dumps({"s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, scope: str, total: int) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = data["o"]
        ok = data["s"] == scope and isinstance(offset, int) and 0 <= offset <= total
    except (ValueError, TypeError, KeyError, binascii.Error):
        ok = False
    if not ok:
        raise bad_request("page_token is not valid: pass the next_page_token of the previous response "
                          "of the same list call")
    return int(offset)




# ---- app state: keys, operations ---------------------------------------------------------------
class Operations:
    """Long-running operations, in memory. Each is done from its first poll on: the POST answers
    ``done: false`` (the SDK's ``.wait()`` then polls once, without sleeping). One with work still
    under way (``pending``, a future of its response) is done when that work is; a poll waits for it
    up to ``OPERATION_WAIT`` seconds (``settle``), so the SDK's ``.wait()`` rarely has to sleep."""

    def __init__(self) -> None:
        self._ops: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def start(self, parent: str, response: dict[str, Any] | None = None,
              pending: asyncio.Future[dict[str, Any]] | None = None) -> dict[str, Any]:
        name = f"{parent}/operations/{uuid.uuid4().hex}"
        self._ops[name] = {"name": name, "metadata": {}, "response": response or {}}
        if pending is not None:
            self._pending[name] = pending
            pending.add_done_callback(_log_failure)
        while len(self._ops) > MAX_OPERATIONS:
            old, _ = self._ops.popitem(last=False)
            self._pending.pop(old, None)
        return {"name": name, "done": False, "metadata": {}}

    async def settle(self, name: str, timeout: float = OPERATION_WAIT) -> None:
        """Wait (up to ``timeout``) for the operation's work, if it has some under way."""
        fut = self._pending.get(name)
        if fut is not None and not fut.done():
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout)

    def get(self, name: str) -> dict[str, Any] | None:
        op = self._ops.get(name)
        if op is None:
            return None
        fut = self._pending.get(name)
        if fut is None:
            return {**op, "done": True}
        if not fut.done():
            return {"name": name, "metadata": {}, "done": False}
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None:
            return {"name": name, "metadata": {}, "done": True,
                    "error": {"error_code": "INTERNAL_ERROR", "message": str(exc) or type(exc).__name__}}
        return {**op, "done": True, "response": fut.result()}


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("an operation failed: %s", fut.exception())


RUNTIME = web.AppKey("runtime", Runtime)
OPERATIONS = web.AppKey("operations", Operations)
# Per-request storage; web.RequestKey exists from aiohttp 3.12 (plain strings warn on newer ones).
IDENTITY: Any = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "lakebase.identity"


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def caller(request: web.Request) -> Identity:
    ident: Identity = request[IDENTITY]
    return ident




# ---- authorization marks -----------------------------------------------------------------------
PERMISSION_ATTR = "_lakebase_permission"


def requires(permission: str, action: str) -> Callable[[Handler], Handler]:
    """Declare the project permission a changing route needs; ``action`` names it in the error."""
    def mark(handler: Handler) -> Handler:
        setattr(handler, PERMISSION_ATTR, (permission, action))
        return handler
    return mark
