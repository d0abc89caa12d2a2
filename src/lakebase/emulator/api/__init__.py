"""The emulator's workspace REST API: the Databricks endpoints that the SDK and the library call.

The unmodified ``databricks-sdk`` works against it with a PAT or OAuth M2M (client credentials). One
route table per concern, put together here with the middleware (authentication, authorization,
faults, errors):

- ``oauth``: ``/.well-known/databricks-config``, ``/oidc/...`` (discovery, the token endpoint) and
  ``/api/2.0/preview/scim/v2/Me`` (``w.current_user.me()``).
- ``postgres``: ``/api/2.0/postgres/...``, Lakebase Autoscaling: credentials, projects, branches,
  endpoints, roles, databases and long-running operations (create/update/delete read-only endpoints,
  update the primary, create roles, the project's native login switch, reveal a role's password).
  Reads and credentials are open to every workspace identity; any
  other change needs the project owner's CAN_MANAGE (``auth``: ``requires`` / ``authorize``), else 403
  PERMISSION_DENIED.
- ``database``: ``/api/2.0/database/...``, Lakebase Provisioned: credentials and the one emulated instance.
- ``admin``: ``/emulator/...``, the admin API (stats, config, faults, identities, read-only endpoints),
  for the owner's PAT only.
- ``http``: what they share: Databricks' error JSON ``{"error_code", "message"}`` with the status codes
  the SDK maps to its exception classes, request bodies, paging, operations.

No token ever appears in a response message or a log line.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg
from aiohttp import web
from psycopg_pool import PoolTimeout

from ..runtime import Runtime
from . import admin, database, oauth, postgres
from .auth import authenticate, authorize, check_admin
from .http import (
    IDENTITY,
    MAX_BODY_BYTES,
    OPERATIONS,
    RUNTIME,
    ApiError,
    Handler,
    Operations,
    error_response,
    http_error,
    runtime,
)
from .postgres import ID_RE, ROLE_ID_RE, database_id_for, role_id_for

__all__ = ["ID_RE", "ROLE_ID_RE", "build_app", "database_id_for", "role_id_for", "start_api"]

log = logging.getLogger("lakebase.emulator.api")
ROUTE_TABLES = (oauth.routes, postgres.routes, database.routes, admin.routes)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rt = runtime(request)
    rt.stats.api_requests += 1
    if rt.config.latency_ms > 0:
        await asyncio.sleep(rt.config.latency_ms / 1000)
    if rt.api_hang.remaining() and (request.path.startswith("/api/") or request.path == "/oidc/v1/token"):
        await rt.api_hang.hold()
    try:
        if request.path.startswith("/api/"):
            request[IDENTITY] = authenticate(rt, request)[0]
            authorize(rt, request, request[IDENTITY])
        elif request.path.startswith("/emulator/"):
            check_admin(rt, request)
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        response = http_error(request, exc)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        log.warning("%s %s: the database is unavailable (%s)", request.method, request.path,
                    type(exc).__name__)
        response = error_response(503, "TEMPORARILY_UNAVAILABLE", "The database is temporarily unavailable")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_response(500, "INTERNAL_ERROR",
                                  "internal error in the Lakebase emulator; see its log")
    response.headers["X-Databricks-Org-Id"] = str(rt.workspace.workspace_id)
    log.debug("%s %s -> %s", request.method, request.path, response.status)
    return response




def build_app(rt: Runtime) -> web.Application:
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    app[RUNTIME] = rt
    app[OPERATIONS] = Operations()
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app


async def start_api(rt: Runtime, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the API on ``host:port`` (0: a free port).

    Returns the runner (``await runner.cleanup()`` stops it) and the bound port."""
    runner = web.AppRunner(build_app(rt), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    log.info("workspace API listening on http://%s:%s", host, bound)
    return runner, int(bound)
