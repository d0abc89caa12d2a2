"""The emulator's admin API (``/emulator/...``, the owner's PAT only): stats, config, faults,
identities and read-only endpoints. Each route is one method of ``EmulatorControl`` (``control.py``),
which ``EmulatorProcess`` calls over HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from aiohttp import web

from ..control import ADMIN_ROUTES
from ..faults import ConfigError
from ..tokens import rfc3339
from .http import ApiError, Handler, already_exists, bad_request, field, not_found, read_json, runtime, shown
from .postgres import ID_RE, IDENTITY_TYPES, endpoint_json

routes = web.RouteTableDef()


def admin_route(operation: str) -> Callable[[Handler], Handler]:
    """Serve ``operation`` of the control contract at its ``ADMIN_ROUTES`` method and path."""
    method, path = ADMIN_ROUTES[operation]
    mark: Callable[[Handler], Handler] = routes.get(path) if method == "GET" else routes.post(path)
    return mark


@admin_route("stats")
async def admin_stats(request: web.Request) -> web.Response:
    return web.json_response(runtime(request).stats_dict())


@admin_route("config")
async def admin_get_config(request: web.Request) -> web.Response:
    return web.json_response(runtime(request).config.as_dict())


@admin_route("configure")
async def admin_set_config(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        return web.json_response(runtime(request).configure(body))
    except ConfigError as exc:
        raise bad_request(str(exc)) from None


@admin_route("restart")
async def admin_restart(request: web.Request) -> web.Response:
    rt = runtime(request)
    ended = await rt.restart()
    return web.json_response({"sessions_terminated": ended, "restart_seconds": rt.config.restart_seconds})


@admin_route("suspend")
async def admin_suspend(request: web.Request) -> web.Response:
    rt = runtime(request)
    body = await read_json(request)
    key = field(body, "endpoint", str)
    ep = rt.workspace.primary if key is None else rt.workspace.find_endpoint(key)
    if ep is None:
        raise not_found(f"endpoint {shown(key)} does not exist")
    try:
        ended = await rt.suspend(ep)
    except ConfigError as exc:
        raise ApiError(400, "INVALID_STATE", str(exc)) from None
    return web.json_response({"endpoint": ep.name, "state": ep.state, "sessions_terminated": ended})


@admin_route("credential_outage")
async def admin_credential_outage(request: web.Request) -> web.Response:
    rt = runtime(request)
    body = await read_json(request)
    seconds = field(body, "seconds", (int, float), required=True)
    status = field(body, "status", int)
    status = 503 if status is None else status
    try:
        rt.start_outage(float(seconds), status)
    except ConfigError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response({"status": status, "seconds": seconds})


@admin_route("api_hang")
async def admin_api_hang(request: web.Request) -> web.Response:
    rt = runtime(request)
    seconds = field(await read_json(request), "seconds", (int, float), required=True)
    try:
        rt.start_api_hang(float(seconds))
    except ConfigError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response({"seconds": seconds})


@admin_route("expire_tokens")
async def admin_expire_tokens(request: web.Request) -> web.Response:
    runtime(request).expire_tokens()
    return web.json_response({"expired_before": rfc3339(time.time())})


@admin_route("add_identity")
async def admin_add_identity(request: web.Request) -> web.Response:
    """Body ``{"type": USER|SERVICE_PRINCIPAL|GROUP, "name"?, "display_name"?}``; a service principal's
    name (its application id) is generated when absent. Answers the identity with its PAT or secret."""
    rt = runtime(request)
    body = await read_json(request)
    type_ = field(body, "type", str, required=True).upper()
    if type_ not in IDENTITY_TYPES:
        raise bad_request(f"type must be one of {', '.join(IDENTITY_TYPES)}, got {shown(type_)}")
    name = field(body, "name", str, required=type_ != "SERVICE_PRINCIPAL") or str(uuid.uuid4())
    display_name = field(body, "display_name", str)
    if not 0 < len(name.encode()) <= 63 or "\0" in name:
        raise bad_request("name must be 1-63 bytes (it becomes a Postgres role name)")
    existing = rt.workspace.identities.get(name)
    if existing is not None and existing.type != type_:
        raise already_exists(f"identity {shown(name)} already exists as a {existing.type}")
    try:
        ident = rt.add_identity(name, type_, display_name)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response({"name": ident.name, "type": ident.type, "id": ident.id,
                              "display_name": ident.display_name, "pat": ident.pat,
                              "client_secret": ident.client_secret})


@admin_route("add_read_only_endpoint")
async def admin_add_endpoint(request: web.Request) -> web.Response:
    """Body ``{"endpoint_id"}``: a read-only endpoint on the default branch, at once (idempotent)."""
    rt = runtime(request)
    body = await read_json(request)
    endpoint_id = field(body, "endpoint_id", str, required=True)
    if not ID_RE.fullmatch(endpoint_id):
        raise bad_request("endpoint_id must be 1-63 characters: a lowercase letter, then lowercase letters, "
                          f"digits and hyphens; got {shown(endpoint_id)}")
    existing = rt.workspace.endpoints.get(endpoint_id)
    if existing is not None and not existing.read_only:
        raise already_exists(f"endpoint '{existing.name}' exists and is not read-only")
    return web.json_response(endpoint_json(rt, rt.add_read_only_endpoint(endpoint_id)))
