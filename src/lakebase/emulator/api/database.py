"""Lakebase Provisioned (``/api/2.0/database/...``): database credentials and the one emulated
instance, backed by the same Postgres as the Autoscaling project."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ..runtime import Runtime
from ..state import CAN_USE, DEFAULT_BRANCH, INSTANCE_NAME
from ..tokens import rfc3339
from .http import bad_request, caller, field, not_found, page, read_json, requires, runtime, shown
from .postgres import branch_endpoints, check_claims, check_outage, pg_major_version

routes = web.RouteTableDef()


def instance_json(rt: Runtime) -> dict[str, Any]:
    """The one Lakebase Provisioned instance, backed by the same Postgres as the project."""
    ws = rt.workspace
    read_only = next((e for e in branch_endpoints(rt, DEFAULT_BRANCH) if e.read_only), None)
    data: dict[str, Any] = {
        "name": INSTANCE_NAME,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lakebase-emulator/{ws.project_uid}/{INSTANCE_NAME}")),
        "state": "AVAILABLE",
        "read_write_dns": ws.primary.host,
        "pg_version": str(pg_major_version(rt)),
        "capacity": "CU_1",
        "effective_capacity": "CU_1",
        "creator": ws.owner.name,
        "creation_time": rfc3339(ws.create_time),
        "node_count": 1,
        "effective_node_count": 1,
        "stopped": False,
        "effective_stopped": False,
        "enable_readable_secondaries": read_only is not None,
        "effective_enable_readable_secondaries": read_only is not None,
        "enable_pg_native_login": False,
        "effective_enable_pg_native_login": False,
        "retention_window_in_days": 7,
        "effective_retention_window_in_days": 7,
    }
    if read_only is not None:
        data["read_only_dns"] = read_only.host
    return data




# ---- handlers ----------------------------------------------------------------------------------
@routes.post("/api/2.0/database/credentials")
@requires(CAN_USE, "generate a database credential")
async def database_credential(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_outage(rt)
    body = await read_json(request)
    names = field(body, "instance_names", list)
    field(body, "request_id", str)
    check_claims(body)
    if not names and not body.get("claims"):
        raise bad_request("at least one of instance_names or claims must be specified")
    for name in names or []:
        if not isinstance(name, str):
            raise bad_request(f"instance_names must be a list of strings, got an element {shown(name)}")
        if name != INSTANCE_NAME:
            raise not_found(f"database instance '{name}' does not exist (the emulator has '{INSTANCE_NAME}')")
    token, claims = rt.issue_credential(caller(request))
    return web.json_response({"token": token, "expiration_time": rfc3339(rt.reported_expiry(claims))})




@routes.get("/api/2.0/database/instances")
async def list_instances(request: web.Request) -> web.Response:
    items = [instance_json(runtime(request))]
    return web.json_response(page(request, items, "database_instances", "database_instances"))


@routes.get("/api/2.0/database/instances/{name}")
async def get_instance(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name != INSTANCE_NAME:
        raise not_found(f"database instance '{name}' does not exist (the emulator has '{INSTANCE_NAME}')")
    return web.json_response(instance_json(runtime(request)))
