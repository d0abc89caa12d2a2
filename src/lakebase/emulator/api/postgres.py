"""Lakebase Autoscaling (``/api/2.0/postgres/...``): database credentials, projects, branches,
endpoints, roles, databases and long-running operations."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
import time
from datetime import UTC
from typing import Any

from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ..postgres import PostgresServer
from ..runtime import SUPERUSER_GROUP, RoleAttributes, RoleInfo, Runtime
from ..state import CAN_MANAGE, CAN_USE, DEFAULT_BRANCH, READ_ONLY, READ_WRITE, Branch, Endpoint
from ..tokens import rfc3339
from .http import (
    OPERATIONS,
    ApiError,
    already_exists,
    bad_request,
    caller,
    duration,
    field,
    not_found,
    page,
    read_json,
    requires,
    runtime,
    shown,
)

log = logging.getLogger("lakebase.emulator.api")

PG = "/api/2.0/postgres"
BRANCH = PG + "/projects/{project}/branches/{branch}"
CREDENTIAL_TTL_RANGE = (300.0, 3600.0)
EXPIRE_TIME_GRACE = 5.0  # seconds of network latency forgiven on expire_time's lower bound
ID_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # project / branch / endpoint / database ids
ROLE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,61}[a-z0-9]")  # RFC 1123, 4-63 characters
ENDPOINT_NAME_RE = re.compile(r"projects/([^/]+)/branches/([^/]+)/endpoints/([^/]+)")
BRANCH_NAME_RE = re.compile(r"projects/([^/]+)/branches/([^/]+)")
MAX_BRANCH_LIFETIME = 30 * 86400.0  # Lakebase's longest branch expiration: 30 days
IDENTITY_TYPES = ("USER", "SERVICE_PRINCIPAL", "GROUP")
OAUTH, PASSWORD, NO_LOGIN = "LAKEBASE_OAUTH_V1", "PG_PASSWORD_SCRAM_SHA_256", "NO_LOGIN"
SUPERUSER_MEMBERSHIP = "DATABRICKS_SUPERUSER"

routes = web.RouteTableDef()


# ---- ids ---------------------------------------------------------------------------------------
def derived_id(name: str, pattern: re.Pattern[str], prefix: str) -> str:
    """A stable resource id for a Postgres name that is not a valid id itself (emails, underscores):
    ``developer@example.com`` -> ``developer-example-com-1a2b3c4d``."""
    if pattern.fullmatch(name):
        return name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"{prefix}-{slug}".rstrip("-")
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{slug[:63 - 9].rstrip('-')}-{digest}"


def role_id_for(name: str) -> str:
    return derived_id(name, ROLE_ID_RE, "role")


def database_id_for(name: str) -> str:
    return derived_id(name, ID_RE, "db")



# ---- resources to JSON -------------------------------------------------------------------------
def project_name(rt: Runtime) -> str:
    return rt.workspace.project_name


def branch_name(rt: Runtime, branch: str = DEFAULT_BRANCH) -> str:
    return f"{project_name(rt)}/branches/{branch}"


def pg_major_version(rt: Runtime) -> int:
    try:
        return int((rt.pg.pgdata / "PG_VERSION").read_text().strip())
    except (OSError, ValueError, AttributeError):
        return 18


def suspend_fields(rt: Runtime, ep: Endpoint | None = None) -> dict[str, Any]:
    """What the emulator does: ``no_suspension`` only when set through the API (the suspend fault is
    then refused); else the idle timeout in force, the endpoint's own or the emulator-wide
    ``suspend_after_idle_seconds``; neither field when there is none (only the suspend fault suspends)."""
    if ep is not None and ep.no_suspension:
        return {"no_suspension": True}
    default = rt.config.suspend_after_idle_seconds
    seconds = default if ep is None else ep.suspend_after(default)
    return {} if seconds is None else {"suspend_timeout_duration": duration(seconds)}


def project_json(rt: Runtime) -> dict[str, Any]:
    ws = rt.workspace
    primary = ws.primary
    defaults = {
        "autoscaling_limit_min_cu": primary.autoscaling_limit_min_cu,
        "autoscaling_limit_max_cu": primary.autoscaling_limit_max_cu,
        **suspend_fields(rt),
    }
    version = pg_major_version(rt)
    last_active = max(ep.last_active_time for ep in ws.endpoints.values())
    return {
        "name": project_name(rt),
        "project_id": ws.project_id,
        "uid": ws.project_uid,
        "create_time": rfc3339(ws.create_time),
        "update_time": rfc3339(ws.create_time),
        "spec": {"display_name": ws.project_id, "pg_version": version},
        "status": {
            "project_id": ws.project_id,
            "display_name": ws.project_id,
            "pg_version": version,
            "owner": ws.owner.name,
            "default_branch": branch_name(rt),
            "enable_pg_native_login": False,
            "default_endpoint_settings": defaults,
            "compute_last_active_time": rfc3339(last_active),
        },
    }


def branch_json(rt: Runtime, branch: Branch | None = None) -> dict[str, Any]:
    """The default branch (``branch`` None) or another one."""
    if branch is not None:
        return other_branch_json(rt, branch)
    ws = rt.workspace
    created = rfc3339(ws.create_time)
    return {
        "name": branch_name(rt),
        "parent": project_name(rt),
        "branch_id": DEFAULT_BRANCH,
        "uid": "br-" + hashlib.sha256(ws.project_uid.encode()).hexdigest()[:12],
        "create_time": created,
        "update_time": created,
        "spec": {"no_expiry": True},
        "status": {
            "branch_id": DEFAULT_BRANCH,
            "current_state": "READY",
            "default": True,
            "is_protected": False,
            "state_change_time": created,
        },
    }


def other_branch_json(rt: Runtime, branch: Branch) -> dict[str, Any]:
    created = rfc3339(branch.create_time)
    source = branch_name(rt, branch.source_branch)
    lineage: dict[str, Any] = {"source_branch": source}
    if branch.source_branch_lsn:
        lineage["source_branch_lsn"] = branch.source_branch_lsn
        lineage["source_branch_time"] = created  # the copy is of the source as it was at creation
    expiry: dict[str, Any] = ({"no_expiry": True} if branch.expire_time is None
                              else {"expire_time": rfc3339(branch.expire_time)})
    status: dict[str, Any] = {
        "branch_id": branch.branch_id,
        "current_state": branch.state,
        "default": False,
        "is_protected": branch.is_protected,
        "state_change_time": created,
        **lineage,
    }
    if branch.expire_time is not None:
        status["expire_time"] = rfc3339(branch.expire_time)
    return {
        "name": branch.name,
        "parent": project_name(rt),
        "branch_id": branch.branch_id,
        "uid": branch.uid,
        "create_time": created,
        "update_time": created,
        "spec": {**lineage, **expiry, "is_protected": branch.is_protected},
        "status": status,
    }


def branch_endpoints(rt: Runtime, branch: str) -> list[Endpoint]:
    eps = [ep for ep in rt.workspace.endpoints.values() if ep.branch_id == branch]
    return sorted(eps, key=lambda ep: (ep.create_time, ep.endpoint_id))


def endpoint_json(rt: Runtime, ep: Endpoint) -> dict[str, Any]:
    siblings = branch_endpoints(rt, ep.branch_id)
    read_only = ep if ep.read_only else next((e for e in siblings if e.read_only), None)
    hosts = {"host": ep.host}
    if read_only is not None:
        hosts["read_only_host"] = read_only.host
    settings = {
        "autoscaling_limit_min_cu": ep.autoscaling_limit_min_cu,
        "autoscaling_limit_max_cu": ep.autoscaling_limit_max_cu,
        **suspend_fields(rt, ep),
        "disabled": False,
    }
    return {
        "name": ep.name,
        "parent": ep.parent,
        "endpoint_id": ep.endpoint_id,
        "uid": ep.uid,
        "create_time": rfc3339(ep.create_time),
        "update_time": rfc3339(ep.create_time),
        "spec": {"endpoint_type": ep.endpoint_type, **settings},
        "status": {
            "endpoint_id": ep.endpoint_id,
            "endpoint_type": ep.endpoint_type,
            "current_state": ep.state,
            **{k: v for k, v in settings.items() if k != "no_suspension"},  # not in the status schema
            "hosts": hosts,
            "last_active_time": rfc3339(ep.last_active_time),
        },
    }


class RoleRow:
    """A Postgres role as the roles API shows it."""

    def __init__(self, info: RoleInfo, attributes: RoleAttributes) -> None:
        self.info = info
        self.attributes = {"createdb": attributes.createdb, "createrole": attributes.createrole,
                           "bypassrls": attributes.bypassrls}
        self.role_id = attributes.role_id or role_id_for(info.name)

    @property
    def auth_method(self) -> str:
        if self.info.identity_type:
            return OAUTH
        return PASSWORD if self.info.can_login else NO_LOGIN


def role_json(rt: Runtime, row: RoleRow, branch: str = DEFAULT_BRANCH) -> dict[str, Any]:
    parent = branch_name(rt, branch)
    fields: dict[str, Any] = {
        "postgres_role": row.info.name,
        "auth_method": row.auth_method,
        "attributes": row.attributes,
    }
    if row.info.identity_type:
        fields["identity_type"] = row.info.identity_type
    if row.info.superuser_member and row.info.name != SUPERUSER_GROUP:
        fields["membership_roles"] = [SUPERUSER_MEMBERSHIP]
    created = rfc3339(rt.workspace.create_time)  # Postgres keeps no creation time for roles
    return {
        "name": f"{parent}/roles/{row.role_id}",
        "parent": parent,
        "role_id": row.role_id,
        "create_time": created,
        "update_time": created,
        "spec": dict(fields),
        "status": {**fields, "role_id": row.role_id},
    }


def database_json(rt: Runtime, name: str, owner: str, roles: dict[str, RoleRow],
                  branch: str = DEFAULT_BRANCH) -> dict[str, Any]:
    parent = branch_name(rt, branch)
    database_id = database_id_for(name)
    owner_row = roles.get(owner)
    owner_name = f"{parent}/roles/{owner_row.role_id if owner_row else role_id_for(owner)}"
    created = rfc3339(rt.workspace.create_time)
    return {
        "name": f"{parent}/databases/{database_id}",
        "parent": parent,
        "database_id": database_id,
        "create_time": created,
        "update_time": created,
        "spec": {"postgres_database": name, "role": owner_name},
        "status": {"database_id": database_id, "postgres_database": name, "role": owner_name},
    }




# ---- lookups -----------------------------------------------------------------------------------
def check_project(rt: Runtime, project: str) -> None:
    if project != rt.workspace.project_id:
        raise not_found(f"project 'projects/{project}' does not exist (the emulator has "
                        f"'{project_name(rt)}')")


def check_branch(rt: Runtime, request: web.Request) -> str:
    project, branch = request.match_info["project"], request.match_info["branch"]
    check_project(rt, project)
    if branch != DEFAULT_BRANCH and branch not in rt.workspace.branches:
        raise not_found(f"branch 'projects/{project}/branches/{branch}' does not exist")
    return branch


async def branch_server(rt: Runtime, branch: str) -> PostgresServer | None:
    """The server whose roles and databases are the branch's (None: the primary's), started if need be."""
    if branch == DEFAULT_BRANCH:
        return None
    if rt.workspace.branches[branch].state != "READY":
        raise ApiError(400, "INVALID_STATE", f"branch '{branch_name(rt, branch)}' is still being created; "
                       "wait for its create operation to finish")
    return await rt.branch_server(branch)


def find_endpoint(rt: Runtime, project: str, branch: str, endpoint_id: str) -> Endpoint | None:
    key = endpoint_id if branch == DEFAULT_BRANCH else f"{branch}/{endpoint_id}"
    ep = rt.workspace.endpoints.get(key)
    if ep is None or ep.project_id != project or ep.branch_id != branch:
        return None
    return ep


def endpoint_from_request(rt: Runtime, request: web.Request) -> Endpoint:
    branch = check_branch(rt, request)
    endpoint_id = request.match_info["endpoint"]
    ep = find_endpoint(rt, rt.workspace.project_id, branch, endpoint_id)
    if ep is None:
        raise not_found(f"endpoint '{branch_name(rt, branch)}/endpoints/{endpoint_id}' does not exist")
    return ep


async def role_rows(rt: Runtime, server: PostgresServer | None = None) -> list[RoleRow]:
    """The branch's roles (on ``server``; default: the primary), ordered by Postgres name."""
    infos = await rt.list_roles(server)
    attributes = await rt.role_attributes(server)
    return [RoleRow(info, attributes.get(info.name, RoleAttributes())) for info in infos]




# ---- handlers: credentials ---------------------------------------------------------------------
def check_outage(rt: Runtime) -> None:
    """During a credential outage: 503, or 429 with Retry-After (whole seconds left, at least 1)."""
    if not rt.outage.active:
        return
    rt.stats.credential_requests_rejected += 1
    if rt.outage.status == 429:
        left = max(1, math.ceil(rt.outage.remaining()))
        raise ApiError(429, "REQUEST_LIMIT_EXCEEDED",
                       "Too many credential requests; retry after the time in the Retry-After header",
                       {"Retry-After": str(left)})
    raise ApiError(503, "TEMPORARILY_UNAVAILABLE", "The credential service is temporarily unavailable; "
                   "please try again later")


def check_claims(body: dict[str, Any]) -> None:
    claims = field(body, "claims", list)
    for claim in claims or []:
        if not isinstance(claim, dict):
            raise bad_request(f"claims must be a list of objects, got an element {shown(claim)}")


def requested_lifetime(body: dict[str, Any]) -> float | None:
    """Seconds asked for by ``ttl`` or ``expire_time`` (None: the default lifetime)."""
    ttl = field(body, "ttl", str)
    expire_time = field(body, "expire_time", str)
    low, high = CREDENTIAL_TTL_RANGE
    if ttl is not None and expire_time is not None:
        raise bad_request("set at most one of ttl and expire_time")
    if ttl is not None:
        d = Duration()
        try:
            d.FromJsonString(ttl)
        except ValueError:
            raise bad_request(f"ttl must be a duration such as \"900s\", got {shown(ttl)}") from None
        seconds = d.ToTimedelta().total_seconds()
        if not low <= seconds <= high:
            raise bad_request(f"ttl must be between {low:.0f}s and {high:.0f}s, got {ttl}")
        return seconds
    if expire_time is not None:
        ts = Timestamp()
        try:
            ts.FromJsonString(expire_time)
        except ValueError:
            raise bad_request(f"expire_time must be an RFC 3339 timestamp such as \"2030-01-01T00:00:00Z\", "
                              f"got {shown(expire_time)}") from None
        seconds = ts.ToDatetime(tzinfo=UTC).timestamp() - time.time()
        if not low - EXPIRE_TIME_GRACE <= seconds <= high:
            raise bad_request(f"expire_time must be between {low / 60:.0f} minutes and {high / 60:.0f} "
                              f"minutes from now, got {expire_time}")
        return max(seconds, 1.0)
    return None


@routes.post(PG + "/credentials")
@requires(CAN_USE, "generate a database credential")
async def postgres_credential(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_outage(rt)
    body = await read_json(request)
    name = field(body, "endpoint", str, required=True)
    match = ENDPOINT_NAME_RE.fullmatch(name)
    if match is None:
        raise bad_request("endpoint must be an endpoint resource name, projects/{project_id}/branches/"
                          f"{{branch_id}}/endpoints/{{endpoint_id}}, got {shown(name)}")
    if find_endpoint(rt, *match.groups()) is None:
        raise not_found(f"endpoint '{name}' does not exist")
    lifetime = requested_lifetime(body)
    check_claims(body)
    token, claims = rt.issue_credential(caller(request), lifetime)
    return web.json_response({"token": token, "expire_time": rfc3339(rt.reported_expiry(claims))})




# ---- handlers: Lakebase Autoscaling resources ------------------------------------------------------
@routes.get(PG + "/projects")
async def list_projects(request: web.Request) -> web.Response:
    return web.json_response(page(request, [project_json(runtime(request))], "projects", "projects"))


@routes.get(PG + "/projects/{project}")
async def get_project(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_project(rt, request.match_info["project"])
    return web.json_response(project_json(rt))


@routes.get(PG + "/projects/{project}/branches")
async def list_branches(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_project(rt, request.match_info["project"])
    others = sorted(rt.workspace.branches.values(), key=lambda b: (b.create_time, b.branch_id))
    items = [branch_json(rt)] + [branch_json(rt, b) for b in others]
    return web.json_response(page(request, items, "branches", f"{project_name(rt)}/branches"))


@routes.get(BRANCH)
async def get_branch(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    return web.json_response(branch_json(rt, rt.workspace.branches.get(branch)))


def branch_expiry(spec: dict[str, Any], now: float) -> float | None:
    """The expire_time ``spec`` asks for (None: no expiry); exactly one of ttl, expire_time and
    no_expiry (true) must be set, as on Lakebase."""
    ttl = field(spec, "ttl", str, label="spec.ttl")
    expire_time = field(spec, "expire_time", str, label="spec.expire_time")
    no_expiry = field(spec, "no_expiry", bool, label="spec.no_expiry")
    given = [name for name, value in (("ttl", ttl), ("expire_time", expire_time), ("no_expiry", no_expiry))
             if value is not None]
    if len(given) != 1:
        raise bad_request("set exactly one of spec.ttl, spec.expire_time and spec.no_expiry (no_expiry: true "
                          f"for a branch that never expires); got {', '.join(given) or 'none'}")
    days = MAX_BRANCH_LIFETIME / 86400
    if no_expiry is not None:
        if not no_expiry:
            raise bad_request("spec.no_expiry may only be true; to make the branch expire, set spec.ttl or "
                              "spec.expire_time instead")
        return None
    if ttl is not None:
        d = Duration()
        try:
            d.FromJsonString(ttl)
        except ValueError:
            raise bad_request(f"spec.ttl must be a duration such as \"3600s\", got {shown(ttl)}") from None
        seconds = d.ToTimedelta().total_seconds()
        if not 0 < seconds <= MAX_BRANCH_LIFETIME:
            raise bad_request(f"spec.ttl must be positive and at most {days:.0f} days, got {ttl}")
        return now + seconds
    ts = Timestamp()
    try:
        ts.FromJsonString(str(expire_time))
    except ValueError:
        raise bad_request(f"spec.expire_time must be an RFC 3339 timestamp such as \"2030-01-01T00:00:00Z\", "
                          f"got {shown(expire_time)}") from None
    at = ts.ToDatetime(tzinfo=UTC).timestamp()
    if not now < at <= now + MAX_BRANCH_LIFETIME:
        raise bad_request(f"spec.expire_time must be in the future and at most {days:.0f} days from now, "
                          f"got {expire_time}")
    return at


@routes.post(PG + "/projects/{project}/branches")
@requires(CAN_MANAGE, "create a branch")
async def create_branch(request: web.Request) -> web.Response:
    """``w.postgres.create_branch``: a copy of the source branch (default: the default branch) as it is
    now, with its own read-write endpoint ``primary``. The operation is done when the copy is."""
    rt = runtime(request)
    ws = rt.workspace
    project = request.match_info["project"]
    check_project(rt, project)
    branch_id = request.query.get("branch_id", "")
    if not ID_RE.fullmatch(branch_id):
        raise bad_request("branch_id (a query parameter) must be 1-63 characters: a lowercase letter, then "
                          f"lowercase letters, digits and hyphens; got {shown(branch_id)}")
    if request.query.get("replace_existing", "").lower() == "true":
        raise ApiError(501, "NOT_IMPLEMENTED", "replace_existing is not supported by the Lakebase emulator")
    spec = field(await read_json(request), "spec", dict, required=True)
    if branch_id == DEFAULT_BRANCH or branch_id in ws.branches:
        raise already_exists(f"branch '{branch_name(rt, branch_id)}' already exists")
    for key in ("source_branch_lsn", "source_branch_time", "source_snapshot"):
        if spec.get(key) is not None:
            raise ApiError(501, "NOT_IMPLEMENTED", f"spec.{key} is not emulated: the Lakebase emulator branches "
                           "from the source branch's current state only; leave it out")
    source_name = field(spec, "source_branch", str, label="spec.source_branch") or branch_name(rt)
    match = BRANCH_NAME_RE.fullmatch(source_name)
    if match is None:
        raise bad_request("spec.source_branch must be a branch resource name, projects/{project_id}/branches/"
                          f"{{branch_id}}, got {shown(source_name)}")
    source_project, source = match.groups()
    if source_project != project or (source != DEFAULT_BRANCH and source not in ws.branches):
        raise not_found(f"branch '{source_name}' does not exist")
    if source != DEFAULT_BRANCH and ws.branches[source].state != "READY":
        raise ApiError(400, "INVALID_STATE", f"branch '{source_name}' is still being created; wait for its "
                       "create operation to finish before branching from it")
    now = time.time()
    expire_time = branch_expiry(spec, now)
    is_protected = bool(field(spec, "is_protected", bool, label="spec.is_protected"))
    if is_protected and expire_time is not None:
        raise bad_request("a protected branch (spec.is_protected) cannot expire: set spec.no_expiry instead of "
                          "spec.ttl or spec.expire_time")
    branch = Branch(branch_id=branch_id, project_id=ws.project_id, uid="br-" + secrets.token_hex(6),
                    create_time=now, source_branch=source, expire_time=expire_time, is_protected=is_protected)
    ws.branches[branch_id] = branch  # INIT until the copy is done

    async def make() -> dict[str, Any]:
        return branch_json(rt, await rt.create_branch(branch))

    log.info("creating branch %s from %s", branch.name, source_name)
    operation = request.app[OPERATIONS].start(project_name(rt), pending=asyncio.ensure_future(make()))
    return web.json_response(operation)


@routes.delete(BRANCH)
@requires(CAN_MANAGE, "delete a branch")
async def delete_branch(request: web.Request) -> web.Response:
    """``w.postgres.delete_branch``: its sessions end (57P01), its cluster stops and its storage is freed
    before the operation is answered. The emulator keeps no soft-deleted branches (``purge`` is moot)."""
    rt = runtime(request)
    branch_id = check_branch(rt, request)
    name = branch_name(rt, branch_id)
    if branch_id == DEFAULT_BRANCH:
        raise ApiError(400, "INVALID_STATE", f"branch '{name}' is the project's default branch and cannot be "
                       "deleted")
    branch = rt.workspace.branches[branch_id]
    if branch.is_protected:
        raise ApiError(400, "INVALID_STATE", f"branch '{name}' is protected and cannot be deleted; clear "
                       "spec.is_protected first")
    await rt.delete_branch(branch)
    log.info("deleted branch %s", name)
    return web.json_response(request.app[OPERATIONS].start(project_name(rt), {}))


@routes.get(BRANCH + "/endpoints")
async def list_endpoints(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    items = [endpoint_json(rt, ep) for ep in branch_endpoints(rt, branch)]
    return web.json_response(page(request, items, "endpoints", f"{branch_name(rt, branch)}/endpoints"))


@routes.get(BRANCH + "/endpoints/{endpoint}")
async def get_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    return web.json_response(endpoint_json(rt, endpoint_from_request(rt, request)))


def compute_units(spec: dict[str, Any], name: str, default: float) -> float:
    value = field(spec, name, (int, float), label=f"spec.{name}")
    if value is None:
        return default
    if not 0.5 <= value <= 32:
        raise bad_request(f"spec.{name} must be between 0.5 and 32 CU, got {shown(value)}")
    return float(value)


@routes.post(BRANCH + "/endpoints")
@requires(CAN_MANAGE, "create an endpoint")
async def create_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    ws = rt.workspace
    branch = check_branch(rt, request)
    endpoint_id = request.query.get("endpoint_id", "")
    if not ID_RE.fullmatch(endpoint_id):
        raise bad_request("endpoint_id (a query parameter) must be 1-63 characters: a lowercase letter, then "
                          f"lowercase letters, digits and hyphens; got {shown(endpoint_id)}")
    body = await read_json(request)
    spec = field(body, "spec", dict, required=True)
    endpoint_type = field(spec, "endpoint_type", str, required=True, label="spec.endpoint_type")
    if endpoint_type not in (READ_ONLY, READ_WRITE):
        raise bad_request(f"spec.endpoint_type must be {READ_ONLY} or {READ_WRITE}, "
                          f"got {shown(endpoint_type)}")
    if endpoint_type == READ_WRITE:
        raise already_exists(f"branch '{branch_name(rt, branch)}' already has its read-write endpoint "
                             f"(a branch has exactly one); create an {READ_ONLY} endpoint instead")
    if find_endpoint(rt, ws.project_id, branch, endpoint_id) is not None:
        raise already_exists(f"endpoint '{branch_name(rt, branch)}/endpoints/{endpoint_id}' already exists")
    if branch != DEFAULT_BRANCH:
        raise ApiError(501, "NOT_IMPLEMENTED", f"read-only endpoints are emulated on the default branch only "
                       f"('{branch_name(rt)}'), not on '{branch_name(rt, branch)}'")
    low = compute_units(spec, "autoscaling_limit_min_cu", ws.primary.autoscaling_limit_min_cu)
    high = compute_units(spec, "autoscaling_limit_max_cu", max(low, ws.primary.autoscaling_limit_max_cu))
    if low > high:
        raise bad_request(f"spec.autoscaling_limit_min_cu ({low:g}) must not exceed "
                          f"spec.autoscaling_limit_max_cu ({high:g})")
    ep = ws.add_endpoint(endpoint_id, READ_ONLY, branch)
    ep.autoscaling_limit_min_cu, ep.autoscaling_limit_max_cu = low, high
    ws.save()
    rt.ensure_replica()  # the hot standby its sessions run on
    log.info("created read-only endpoint %s", ep.name)
    operation = request.app[OPERATIONS].start(branch_name(rt, branch), endpoint_json(rt, ep))
    return web.json_response(operation)


@routes.delete(BRANCH + "/endpoints/{endpoint}")
@requires(CAN_MANAGE, "delete an endpoint")
async def delete_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    ep = endpoint_from_request(rt, request)
    if not ep.read_only:
        raise bad_request(f"'{ep.name}' is the branch's read-write endpoint; the emulator only deletes "
                          "read-only endpoints")
    rt.workspace.remove_endpoint(ep)
    rt.workspace.save()
    await rt.terminate_sessions(ep, "delete")
    log.info("deleted read-only endpoint %s", ep.name)
    operation = request.app[OPERATIONS].start(ep.parent, {})
    return web.json_response(operation)


UPDATABLE_ENDPOINT_FIELDS = ("spec.autoscaling_limit_min_cu", "spec.autoscaling_limit_max_cu",
                             "spec.suspend_timeout_duration", "spec.no_suspension")
SUSPEND_TIMEOUT_RANGE = (60.0, 604800.0)  # Databricks': 1 minute to 1 week


def update_mask(request: web.Request, allowed: tuple[str, ...]) -> set[str]:
    """The ``update_mask`` query parameter's paths, in snake case (the SDK sends a protobuf FieldMask's
    JSON form, ``spec.suspendTimeoutDuration``)."""
    raw = request.query.get("update_mask", "")
    paths = {re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), p.strip()) for p in raw.split(",") if p.strip()}
    if not paths:
        raise bad_request(f"update_mask (a query parameter) is required: the fields to change, one or more of "
                          f"{', '.join(allowed)}")
    unknown = paths - set(allowed)
    if unknown:
        raise bad_request(f"update_mask has fields the Lakebase emulator cannot update: "
                          f"{', '.join(sorted(unknown))}; it updates {', '.join(allowed)}")
    return paths


def suspend_timeout(spec: dict[str, Any]) -> float | None:
    value = field(spec, "suspend_timeout_duration", str, label="spec.suspend_timeout_duration")
    if value is None:
        return None
    d = Duration()
    try:
        d.FromJsonString(value)
    except ValueError:
        raise bad_request(f"spec.suspend_timeout_duration must be a duration such as \"300s\", "
                          f"got {shown(value)}") from None
    seconds = d.ToTimedelta().total_seconds()
    low, high = SUSPEND_TIMEOUT_RANGE
    if not low <= seconds <= high:
        raise bad_request(f"spec.suspend_timeout_duration must be between {low:.0f}s and {high:.0f}s, "
                          f"got {value}")
    return seconds


@routes.patch(BRANCH + "/endpoints/{endpoint}")
@requires(CAN_MANAGE, "update an endpoint")
async def update_endpoint(request: web.Request) -> web.Response:
    """``w.postgres.update_endpoint``: autoscaling limits and suspension, the fields in ``update_mask``.
    A masked field absent from the body is cleared (suspension: back to the emulator's default)."""
    rt = runtime(request)
    ep = endpoint_from_request(rt, request)
    paths = update_mask(request, UPDATABLE_ENDPOINT_FIELDS)
    spec = field(await read_json(request), "spec", dict) or {}
    low, high = ep.autoscaling_limit_min_cu, ep.autoscaling_limit_max_cu
    for name in ("autoscaling_limit_min_cu", "autoscaling_limit_max_cu"):
        if f"spec.{name}" in paths:
            if spec.get(name) is None:
                raise bad_request(f"spec.{name} is in update_mask but not in the body")
            if name.endswith("min_cu"):
                low = compute_units(spec, name, low)
            else:
                high = compute_units(spec, name, high)
    if low > high:
        raise bad_request(f"spec.autoscaling_limit_min_cu ({low:g}) must not exceed "
                          f"spec.autoscaling_limit_max_cu ({high:g})")
    timeout, never = ep.suspend_timeout_seconds, ep.no_suspension
    if "spec.suspend_timeout_duration" in paths:
        timeout = suspend_timeout(spec)
        never = never and timeout is None
    if "spec.no_suspension" in paths:
        never = bool(field(spec, "no_suspension", bool, label="spec.no_suspension"))
        if never and "spec.suspend_timeout_duration" in paths and timeout is not None:
            raise bad_request("spec.no_suspension and spec.suspend_timeout_duration are mutually exclusive: "
                              "set one of them")
        timeout = None if never else timeout
    ep.autoscaling_limit_min_cu, ep.autoscaling_limit_max_cu = low, high
    ep.suspend_timeout_seconds, ep.no_suspension = timeout, never
    rt.workspace.save()
    log.info("updated endpoint %s: %s", ep.name, ", ".join(sorted(paths)))
    operation = request.app[OPERATIONS].start(ep.parent, endpoint_json(rt, ep))
    return web.json_response(operation)


@routes.get(BRANCH + "/roles")
async def list_roles(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    items = [role_json(rt, row, branch) for row in await role_rows(rt, await branch_server(rt, branch))]
    return web.json_response(page(request, items, "roles", f"{branch_name(rt, branch)}/roles"))


@routes.get(BRANCH + "/roles/{role}")
async def get_role(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    role_id = request.match_info["role"]
    for row in await role_rows(rt, await branch_server(rt, branch)):
        if row.role_id == role_id:
            return web.json_response(role_json(rt, row, branch))
    raise not_found(f"role '{branch_name(rt, branch)}/roles/{role_id}' does not exist")


def role_spec(rt: Runtime, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a create-role body; returns the keyword arguments of ``Runtime.create_role``."""
    spec = field(body, "spec", dict, required=True)
    postgres_role = field(spec, "postgres_role", str, required=True, label="spec.postgres_role")
    if not 0 < len(postgres_role.encode()) <= 63:
        raise bad_request("spec.postgres_role must be 1-63 bytes long")
    identity_type = field(spec, "identity_type", str, label="spec.identity_type")
    if identity_type is not None and identity_type not in IDENTITY_TYPES:
        raise bad_request(f"spec.identity_type must be one of {', '.join(IDENTITY_TYPES)}, "
                          f"got {shown(identity_type)}")
    auth_method = field(spec, "auth_method", str, label="spec.auth_method")
    auth_method = auth_method or (OAUTH if identity_type else PASSWORD)
    if auth_method not in (OAUTH, PASSWORD, NO_LOGIN):
        raise bad_request(f"spec.auth_method must be one of {OAUTH}, {PASSWORD}, {NO_LOGIN}, "
                          f"got {shown(auth_method)}")
    if auth_method == PASSWORD:
        raise bad_request(f"native Postgres password roles ({PASSWORD}) are not emulated: create an "
                          "OAuth role for a workspace identity (spec.identity_type USER, SERVICE_PRINCIPAL "
                          f"or GROUP) or a {NO_LOGIN} role")
    if auth_method == OAUTH and identity_type is None:
        raise bad_request(f"auth_method {OAUTH} needs spec.identity_type (USER, SERVICE_PRINCIPAL or GROUP)")
    if identity_type is not None:
        ident = rt.workspace.identities.get(postgres_role)
        if ident is None:
            raise bad_request(f"identity {shown(postgres_role)} of type {identity_type} was not found in "
                              "the workspace: use a user's email, a service principal's application id or a "
                              "group name")
        if ident.type != identity_type:
            raise bad_request(f"identity {shown(postgres_role)} is a {ident.type}, not a {identity_type}")
    memberships = field(spec, "membership_roles", list, label="spec.membership_roles") or []
    for member in memberships:
        if member != SUPERUSER_MEMBERSHIP:
            raise bad_request(f"spec.membership_roles may only contain {SUPERUSER_MEMBERSHIP}, "
                              f"got {shown(member)}")
    attributes = field(spec, "attributes", dict, label="spec.attributes") or {}
    flags = {key: bool(field(attributes, key, bool, label=f"spec.attributes.{key}"))
             for key in ("createdb", "createrole", "bypassrls")}
    unknown = set(attributes) - set(flags)
    if unknown:
        raise bad_request(f"spec.attributes has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    return {"identity": postgres_role, "identity_type": identity_type or "", "auth_method": auth_method,
            "superuser_member": SUPERUSER_MEMBERSHIP in memberships, **flags}


@routes.post(BRANCH + "/roles")
@requires(CAN_MANAGE, "create a role")
async def create_role(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    if branch != DEFAULT_BRANCH:
        raise ApiError(501, "NOT_IMPLEMENTED", f"the roles API creates roles on the default branch only "
                       f"('{branch_name(rt)}'); on '{branch_name(rt, branch)}' use SQL: "
                       "SELECT databricks_create_role(...)")
    role_id = request.query.get("role_id") or None
    if role_id is not None and not ROLE_ID_RE.fullmatch(role_id):
        raise bad_request("role_id (a query parameter) must be 4-63 characters: lowercase letters, digits "
                          f"and hyphens, starting and ending with a letter or digit; got {shown(role_id)}")
    if request.query.get("replace_existing", "").lower() == "true":
        raise ApiError(501, "NOT_IMPLEMENTED", "replace_existing is not supported by the Lakebase emulator")
    kwargs = role_spec(rt, await read_json(request))
    name = kwargs.pop("identity")
    identity_type = kwargs.pop("identity_type")
    rows = await role_rows(rt)
    wanted_id = role_id or role_id_for(name)
    if any(row.role_id == wanted_id for row in rows):
        raise already_exists(f"role '{branch_name(rt, branch)}/roles/{wanted_id}' already exists")
    try:
        await rt.create_role(name, identity_type, **kwargs)
    except FileExistsError as exc:
        raise already_exists(str(exc)) from None
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if wanted_id != role_id_for(name):
        await rt.set_role_id(name, wanted_id)
    row = next(r for r in await role_rows(rt) if r.info.name == name)
    log.info("created role %s", row.role_id)
    operation = request.app[OPERATIONS].start(branch_name(rt, branch), role_json(rt, row))
    return web.json_response(operation)


@routes.get(BRANCH + "/databases")
async def list_databases(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    server = await branch_server(rt, branch)
    roles = {row.info.name: row for row in await role_rows(rt, server)}
    items = [database_json(rt, name, owner, roles, branch) for name, owner in await rt.list_databases(server)]
    return web.json_response(page(request, items, "databases", f"{branch_name(rt, branch)}/databases"))


@routes.get(BRANCH + "/databases/{database}")
async def get_database(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    database_id = request.match_info["database"]
    server = await branch_server(rt, branch)
    for name, owner in await rt.list_databases(server):
        if database_id_for(name) == database_id:
            roles = {row.info.name: row for row in await role_rows(rt, server)}
            return web.json_response(database_json(rt, name, owner, roles, branch))
    raise not_found(f"database '{branch_name(rt, branch)}/databases/{database_id}' does not exist")


@routes.get(BRANCH + "/operations/{operation}")
async def get_operation(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    name = f"{branch_name(rt, branch)}/operations/{request.match_info['operation']}"
    return await operation_response(request, name)


@routes.get(PG + "/projects/{project}/operations/{operation}")
async def get_project_operation(request: web.Request) -> web.Response:
    """The operations of branch creation and deletion."""
    rt = runtime(request)
    check_project(rt, request.match_info["project"])
    return await operation_response(request, f"{project_name(rt)}/operations/{request.match_info['operation']}")


async def operation_response(request: web.Request, name: str) -> web.Response:
    operations = request.app[OPERATIONS]
    await operations.settle(name)
    operation = operations.get(name)
    if operation is None:
        raise not_found(f"operation '{name}' does not exist")
    return web.json_response(operation)
