"""The emulator's workspace REST API: the Databricks endpoints that the SDK and the library call.

The unmodified ``databricks-sdk`` works against it with a PAT or OAuth M2M (client credentials):

- ``/.well-known/databricks-config`` and ``/oidc/...``: host metadata, OIDC discovery, the token endpoint.
- ``/api/2.0/preview/scim/v2/Me``: ``w.current_user.me()``.
- ``/api/2.0/postgres/...``: Lakebase Autoscaling: credentials, projects, branches, endpoints, roles,
  databases and long-running operations (create/update/delete read-only endpoints, update the primary,
  create roles). Reads and credentials are open to every workspace identity; any other change needs the
  project owner's CAN_MANAGE (``requires`` / ``authorize``), else 403 PERMISSION_DENIED.
- ``/api/2.0/database/...``: Lakebase Provisioned: credentials and the one emulated instance.
- ``/emulator/...``: the admin API (stats, config, faults, identities, read-only endpoints), for the
  owner's PAT only.

Errors use Databricks' JSON shape ``{"error_code", "message"}`` and the status codes the SDK maps to
its exception classes. No token ever appears in a response message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

import psycopg
from aiohttp import BasicAuth, web
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import PoolTimeout

from .faults import ConfigError
from .runtime import SUPERUSER_GROUP, RoleAttributes, RoleInfo, Runtime
from .state import (
    CAN_MANAGE,
    CAN_USE,
    DEFAULT_BRANCH,
    INSTANCE_NAME,
    READ_ONLY,
    READ_WRITE,
    Endpoint,
    Identity,
)
from .tokens import WORKSPACE_AUDIENCE, InvalidToken, rfc3339

log = logging.getLogger("lakebase.emulator.api")

MAX_BODY_BYTES = 1 << 20
CREDENTIAL_TTL_RANGE = (300.0, 3600.0)
EXPIRE_TIME_GRACE = 5.0  # seconds of network latency forgiven on expire_time's lower bound
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_OPERATIONS = 1000

ID_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")  # project / branch / endpoint / database ids
ROLE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{2,61}[a-z0-9]")  # RFC 1123, 4-63 characters
ENDPOINT_NAME_RE = re.compile(r"projects/([^/]+)/branches/([^/]+)/endpoints/([^/]+)")
IDENTITY_TYPES = ("USER", "SERVICE_PRINCIPAL", "GROUP")
OAUTH, PASSWORD, NO_LOGIN = "LAKEBASE_OAUTH_V1", "PG_PASSWORD_SCRAM_SHA_256", "NO_LOGIN"
SUPERUSER_MEMBERSHIP = "DATABRICKS_SUPERUSER"

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


def _shown(value: Any, limit: int = 120) -> str:
    """A client-supplied value for an error message (never a token: callers pass ids and names)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---- small formats -----------------------------------------------------------------------------
def duration(seconds: float) -> str:
    """Protobuf JSON duration, as the SDK parses it: ``300s``, ``0.500s``."""
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d.ToJsonString()


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
    return f"projects/{rt.workspace.project_id}"


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


def branch_json(rt: Runtime) -> dict[str, Any]:
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


def role_json(rt: Runtime, row: RoleRow) -> dict[str, Any]:
    parent = branch_name(rt)
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


def database_json(rt: Runtime, name: str, owner: str, roles: dict[str, RoleRow]) -> dict[str, Any]:
    parent = branch_name(rt)
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


def scim_me_json(ident: Identity) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": ident.id,
        "userName": ident.name,
        "displayName": ident.display_name,
        "active": True,
    }
    if ident.type == "USER":
        data["emails"] = [{"value": ident.name, "type": "work", "primary": True}]
    else:
        data["applicationId"] = ident.name
    return data


# ---- app state: keys, operations ---------------------------------------------------------------
class Operations:
    """Long-running operations, in memory. Each is done from its first poll on: the POST answers
    ``done: false`` (the SDK's ``.wait()`` then polls once, without sleeping)."""

    def __init__(self) -> None:
        self._ops: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def start(self, parent: str, response: dict[str, Any]) -> dict[str, Any]:
        name = f"{parent}/operations/{uuid.uuid4().hex}"
        self._ops[name] = {"name": name, "metadata": {}, "response": response}
        while len(self._ops) > MAX_OPERATIONS:
            self._ops.popitem(last=False)
        return {"name": name, "done": False, "metadata": {}}

    def get(self, name: str) -> dict[str, Any] | None:
        op = self._ops.get(name)
        return None if op is None else {**op, "done": True}


RUNTIME = web.AppKey("runtime", Runtime)
OPERATIONS = web.AppKey("operations", Operations)
# Per-request storage; web.RequestKey exists from aiohttp 3.12 (plain strings warn on newer ones).
IDENTITY: Any = web.RequestKey("identity", Identity) if hasattr(web, "RequestKey") else "lakebase.identity"


def runtime(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def caller(request: web.Request) -> Identity:
    ident: Identity = request[IDENTITY]
    return ident


# ---- authentication ----------------------------------------------------------------------------
def bearer_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def authenticate(rt: Runtime, request: web.Request) -> tuple[Identity, bool]:
    """The calling identity and whether it used a PAT; raises 401 ApiError (never echoing the token)."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "UNAUTHENTICATED", "Credential was not sent: send 'Authorization: Bearer "
                       "<token>' with a personal access token or an OAuth access token")
    ident = rt.workspace.identity_by_pat(token)
    if ident is not None:
        return ident, True
    if token.count(".") != 2:
        raise ApiError(401, "UNAUTHENTICATED", "Invalid access token: neither a personal access token "
                       "of this workspace nor an OAuth access token")
    try:
        claims = rt.tokens.verify(token, WORKSPACE_AUDIENCE)
    except InvalidToken as exc:
        raise ApiError(401, "UNAUTHENTICATED", f"Invalid access token: {exc.reason}") from None
    ident = rt.workspace.identities.get(claims.subject)
    if ident is None:
        raise ApiError(401, "UNAUTHENTICATED", "Invalid access token: its identity is not in the workspace")
    return ident, False


# ---- authorization -----------------------------------------------------------------------------
# Reads (GET, HEAD) are open to every workspace identity. Every other method under /api/ needs a
# permission on the project: what its handler declares with @requires, CAN_MANAGE when it declares
# nothing (so a new or unemulated change is denied to non-owners, as on Databricks, before anything
# else is looked at).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PERMISSION_ATTR = "_lakebase_permission"


def requires(permission: str, action: str) -> Callable[[Handler], Handler]:
    """Declare the project permission a changing route needs; ``action`` names it in the error."""
    def mark(handler: Handler) -> Handler:
        setattr(handler, PERMISSION_ATTR, (permission, action))
        return handler
    return mark


def authorize(rt: Runtime, request: web.Request, ident: Identity) -> None:
    """403 PERMISSION_DENIED unless ``ident`` holds the permission the request's route needs."""
    if request.method in SAFE_METHODS:
        return
    needed, action = getattr(request.match_info.handler, PERMISSION_ATTR,
                             (CAN_MANAGE, f"{request.method} {request.path}"))
    held = rt.workspace.permission(ident)
    if needed == CAN_USE or held == CAN_MANAGE:
        return
    owner = rt.workspace.owner.name
    raise ApiError(403, "PERMISSION_DENIED",
                   f"{ident.type.lower().replace('_', ' ')} '{ident.name}' does not have {needed} permission on "
                   f"project '{project_name(rt)}', which is needed to {action}; it has {held} (read and "
                   f"generate database credentials). Make the change as the project owner ('{owner}', "
                   "DATABRICKS_TOKEN in user.env)")


def check_admin(rt: Runtime, request: web.Request) -> None:
    ident, via_pat = authenticate(rt, request)
    if ident.name != rt.workspace.owner.name or not via_pat:
        raise ApiError(403, "PERMISSION_DENIED", "the emulator's admin API accepts only the workspace "
                       "owner's personal access token (DATABRICKS_TOKEN in user.env)")
    request[IDENTITY] = ident


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
        raise bad_request(f"{label} must be {expected}, got {_shown(value)}")
    return value


def page(request: web.Request, items: list[dict[str, Any]], collection: str, scope: str) -> dict[str, Any]:
    """``page_size`` / ``page_token`` paging; the token is opaque and tied to ``scope``."""
    raw_size = request.query.get("page_size", "")
    try:
        size = int(raw_size) if raw_size else 0
    except ValueError:
        raise bad_request(f"page_size must be an integer, got {_shown(raw_size)}") from None
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


# ---- lookups -----------------------------------------------------------------------------------
def check_project(rt: Runtime, project: str) -> None:
    if project != rt.workspace.project_id:
        raise not_found(f"project 'projects/{project}' does not exist (the emulator has "
                        f"'{project_name(rt)}')")


def check_branch(rt: Runtime, request: web.Request) -> str:
    project, branch = request.match_info["project"], request.match_info["branch"]
    check_project(rt, project)
    if branch != DEFAULT_BRANCH:
        raise not_found(f"branch 'projects/{project}/branches/{branch}' does not exist (the emulator has "
                        f"'{branch_name(rt)}')")
    return branch


def find_endpoint(rt: Runtime, project: str, branch: str, endpoint_id: str) -> Endpoint | None:
    ep = rt.workspace.endpoints.get(endpoint_id)
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


async def role_rows(rt: Runtime) -> list[RoleRow]:
    """The branch's roles, ordered by Postgres name."""
    infos = await rt.list_roles()
    attributes = await rt.role_attributes()
    return [RoleRow(info, attributes.get(info.name, RoleAttributes())) for info in infos]


# ---- handlers: discovery and OAuth ---------------------------------------------------------------
def base_url(request: web.Request) -> str:
    return str(request.url.origin())


async def databricks_config(request: web.Request) -> web.Response:
    rt = runtime(request)
    return web.json_response({
        "oidc_endpoint": f"{base_url(request)}/oidc",
        "workspace_id": str(rt.workspace.workspace_id),
    })


async def oidc_discovery(request: web.Request) -> web.Response:
    base = f"{base_url(request)}/oidc"
    return web.json_response({
        "issuer": base,
        "authorization_endpoint": f"{base}/v1/authorize",
        "token_endpoint": f"{base}/v1/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
        "scopes_supported": ["all-apis", "offline_access"],
    })


def oauth_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="lakebase-emulator"'
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers=headers)


async def oidc_token(request: web.Request) -> web.Response:
    rt = runtime(request)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return oauth_error(400, "invalid_request", too_large().message)
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return oauth_error(401, "invalid_client", "the Authorization header is not valid HTTP Basic auth")
        client_id, client_secret = auth.login, auth.password
    if not (isinstance(client_id, str) and isinstance(client_secret, str) and client_id and client_secret):
        return oauth_error(401, "invalid_client", "Client authentication failed: send the client id and "
                           "secret with HTTP Basic auth (or as client_id / client_secret form fields)")
    ident = rt.workspace.identity_by_client(client_id, client_secret)
    if ident is None:
        return oauth_error(401, "invalid_client",
                           "Client authentication failed: unknown client id or wrong secret")
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        return oauth_error(400, "unsupported_grant_type",
                           f"grant_type must be client_credentials, got {_shown(grant_type)}")
    scope = form.get("scope")
    ttl = int(rt.config.oauth_token_ttl_seconds)
    token, _claims = rt.tokens.issue(ident.name, WORKSPACE_AUDIENCE, ttl)
    return web.json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": ttl,
         "scope": scope if isinstance(scope, str) and scope else "all-apis"},
        headers={"Cache-Control": "no-store"},
    )


async def scim_me(request: web.Request) -> web.Response:
    return web.json_response(scim_me_json(caller(request)))


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
            raise bad_request(f"claims must be a list of objects, got an element {_shown(claim)}")


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
            raise bad_request(f"ttl must be a duration such as \"900s\", got {_shown(ttl)}") from None
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
                              f"got {_shown(expire_time)}") from None
        seconds = ts.ToDatetime(tzinfo=UTC).timestamp() - time.time()
        if not low - EXPIRE_TIME_GRACE <= seconds <= high:
            raise bad_request(f"expire_time must be between {low / 60:.0f} minutes and {high / 60:.0f} "
                              f"minutes from now, got {expire_time}")
        return max(seconds, 1.0)
    return None


@requires(CAN_USE, "generate a database credential")
async def postgres_credential(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_outage(rt)
    body = await read_json(request)
    name = field(body, "endpoint", str, required=True)
    match = ENDPOINT_NAME_RE.fullmatch(name)
    if match is None:
        raise bad_request("endpoint must be an endpoint resource name, projects/{project_id}/branches/"
                          f"{{branch_id}}/endpoints/{{endpoint_id}}, got {_shown(name)}")
    if find_endpoint(rt, *match.groups()) is None:
        raise not_found(f"endpoint '{name}' does not exist")
    lifetime = requested_lifetime(body)
    check_claims(body)
    token, claims = rt.issue_credential(caller(request), lifetime)
    return web.json_response({"token": token, "expire_time": rfc3339(rt.reported_expiry(claims))})


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
            raise bad_request(f"instance_names must be a list of strings, got an element {_shown(name)}")
        if name != INSTANCE_NAME:
            raise not_found(f"database instance '{name}' does not exist (the emulator has '{INSTANCE_NAME}')")
    token, claims = rt.issue_credential(caller(request))
    return web.json_response({"token": token, "expiration_time": rfc3339(rt.reported_expiry(claims))})


# ---- handlers: Lakebase Provisioned instances ----------------------------------------------------
async def list_instances(request: web.Request) -> web.Response:
    items = [instance_json(runtime(request))]
    return web.json_response(page(request, items, "database_instances", "database_instances"))


async def get_instance(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name != INSTANCE_NAME:
        raise not_found(f"database instance '{name}' does not exist (the emulator has '{INSTANCE_NAME}')")
    return web.json_response(instance_json(runtime(request)))


# ---- handlers: Lakebase Autoscaling resources ------------------------------------------------------
async def list_projects(request: web.Request) -> web.Response:
    return web.json_response(page(request, [project_json(runtime(request))], "projects", "projects"))


async def get_project(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_project(rt, request.match_info["project"])
    return web.json_response(project_json(rt))


async def list_branches(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_project(rt, request.match_info["project"])
    return web.json_response(page(request, [branch_json(rt)], "branches", f"{project_name(rt)}/branches"))


async def get_branch(request: web.Request) -> web.Response:
    rt = runtime(request)
    check_branch(rt, request)
    return web.json_response(branch_json(rt))


async def list_endpoints(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    items = [endpoint_json(rt, ep) for ep in branch_endpoints(rt, branch)]
    return web.json_response(page(request, items, "endpoints", f"{branch_name(rt, branch)}/endpoints"))


async def get_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    return web.json_response(endpoint_json(rt, endpoint_from_request(rt, request)))


def compute_units(spec: dict[str, Any], name: str, default: float) -> float:
    value = field(spec, name, (int, float), label=f"spec.{name}")
    if value is None:
        return default
    if not 0.5 <= value <= 32:
        raise bad_request(f"spec.{name} must be between 0.5 and 32 CU, got {_shown(value)}")
    return float(value)


@requires(CAN_MANAGE, "create an endpoint")
async def create_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    ws = rt.workspace
    branch = check_branch(rt, request)
    endpoint_id = request.query.get("endpoint_id", "")
    if not ID_RE.fullmatch(endpoint_id):
        raise bad_request("endpoint_id (a query parameter) must be 1-63 characters: a lowercase letter, then "
                          f"lowercase letters, digits and hyphens; got {_shown(endpoint_id)}")
    body = await read_json(request)
    spec = field(body, "spec", dict, required=True)
    endpoint_type = field(spec, "endpoint_type", str, required=True, label="spec.endpoint_type")
    if endpoint_type not in (READ_ONLY, READ_WRITE):
        raise bad_request(f"spec.endpoint_type must be {READ_ONLY} or {READ_WRITE}, "
                          f"got {_shown(endpoint_type)}")
    if endpoint_type == READ_WRITE:
        raise already_exists(f"branch '{branch_name(rt, branch)}' already has its read-write endpoint "
                             f"(a branch has exactly one); create an {READ_ONLY} endpoint instead")
    if endpoint_id in ws.endpoints:
        raise already_exists(f"endpoint '{branch_name(rt, branch)}/endpoints/{endpoint_id}' already exists")
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


@requires(CAN_MANAGE, "delete an endpoint")
async def delete_endpoint(request: web.Request) -> web.Response:
    rt = runtime(request)
    ep = endpoint_from_request(rt, request)
    if not ep.read_only:
        raise bad_request(f"'{ep.name}' is the branch's read-write endpoint; the emulator only deletes "
                          "read-only endpoints")
    del rt.workspace.endpoints[ep.endpoint_id]
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
                          f"got {_shown(value)}") from None
    seconds = d.ToTimedelta().total_seconds()
    low, high = SUSPEND_TIMEOUT_RANGE
    if not low <= seconds <= high:
        raise bad_request(f"spec.suspend_timeout_duration must be between {low:.0f}s and {high:.0f}s, "
                          f"got {value}")
    return seconds


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


async def list_roles(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    items = [role_json(rt, row) for row in await role_rows(rt)]
    return web.json_response(page(request, items, "roles", f"{branch_name(rt, branch)}/roles"))


async def get_role(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    role_id = request.match_info["role"]
    for row in await role_rows(rt):
        if row.role_id == role_id:
            return web.json_response(role_json(rt, row))
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
                          f"got {_shown(identity_type)}")
    auth_method = field(spec, "auth_method", str, label="spec.auth_method")
    auth_method = auth_method or (OAUTH if identity_type else PASSWORD)
    if auth_method not in (OAUTH, PASSWORD, NO_LOGIN):
        raise bad_request(f"spec.auth_method must be one of {OAUTH}, {PASSWORD}, {NO_LOGIN}, "
                          f"got {_shown(auth_method)}")
    if auth_method == PASSWORD:
        raise bad_request(f"native Postgres password roles ({PASSWORD}) are not emulated: create an "
                          "OAuth role for a workspace identity (spec.identity_type USER, SERVICE_PRINCIPAL "
                          f"or GROUP) or a {NO_LOGIN} role")
    if auth_method == OAUTH and identity_type is None:
        raise bad_request(f"auth_method {OAUTH} needs spec.identity_type (USER, SERVICE_PRINCIPAL or GROUP)")
    if identity_type is not None:
        ident = rt.workspace.identities.get(postgres_role)
        if ident is None:
            raise bad_request(f"identity {_shown(postgres_role)} of type {identity_type} was not found in "
                              "the workspace: use a user's email, a service principal's application id or a "
                              "group name")
        if ident.type != identity_type:
            raise bad_request(f"identity {_shown(postgres_role)} is a {ident.type}, not a {identity_type}")
    memberships = field(spec, "membership_roles", list, label="spec.membership_roles") or []
    for member in memberships:
        if member != SUPERUSER_MEMBERSHIP:
            raise bad_request(f"spec.membership_roles may only contain {SUPERUSER_MEMBERSHIP}, "
                              f"got {_shown(member)}")
    attributes = field(spec, "attributes", dict, label="spec.attributes") or {}
    flags = {key: bool(field(attributes, key, bool, label=f"spec.attributes.{key}"))
             for key in ("createdb", "createrole", "bypassrls")}
    unknown = set(attributes) - set(flags)
    if unknown:
        raise bad_request(f"spec.attributes has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    return {"identity": postgres_role, "identity_type": identity_type or "", "auth_method": auth_method,
            "superuser_member": SUPERUSER_MEMBERSHIP in memberships, **flags}


@requires(CAN_MANAGE, "create a role")
async def create_role(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    role_id = request.query.get("role_id") or None
    if role_id is not None and not ROLE_ID_RE.fullmatch(role_id):
        raise bad_request("role_id (a query parameter) must be 4-63 characters: lowercase letters, digits "
                          f"and hyphens, starting and ending with a letter or digit; got {_shown(role_id)}")
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


async def list_databases(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    roles = {row.info.name: row for row in await role_rows(rt)}
    items = [database_json(rt, name, owner, roles) for name, owner in await rt.list_databases()]
    return web.json_response(page(request, items, "databases", f"{branch_name(rt, branch)}/databases"))


async def get_database(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    database_id = request.match_info["database"]
    for name, owner in await rt.list_databases():
        if database_id_for(name) == database_id:
            roles = {row.info.name: row for row in await role_rows(rt)}
            return web.json_response(database_json(rt, name, owner, roles))
    raise not_found(f"database '{branch_name(rt, branch)}/databases/{database_id}' does not exist")


async def get_operation(request: web.Request) -> web.Response:
    rt = runtime(request)
    branch = check_branch(rt, request)
    name = f"{branch_name(rt, branch)}/operations/{request.match_info['operation']}"
    operation = request.app[OPERATIONS].get(name)
    if operation is None:
        raise not_found(f"operation '{name}' does not exist")
    return web.json_response(operation)


# ---- handlers: the emulator's admin API --------------------------------------------------------
async def admin_stats(request: web.Request) -> web.Response:
    return web.json_response(runtime(request).stats_dict())


async def admin_get_config(request: web.Request) -> web.Response:
    return web.json_response(runtime(request).config.as_dict())


async def admin_set_config(request: web.Request) -> web.Response:
    body = await read_json(request)
    try:
        return web.json_response(runtime(request).configure(body))
    except ConfigError as exc:
        raise bad_request(str(exc)) from None


async def admin_restart(request: web.Request) -> web.Response:
    rt = runtime(request)
    ended = await rt.restart()
    return web.json_response({"sessions_terminated": ended, "restart_seconds": rt.config.restart_seconds})


async def admin_suspend(request: web.Request) -> web.Response:
    rt = runtime(request)
    body = await read_json(request)
    key = field(body, "endpoint", str)
    ep = rt.workspace.primary if key is None else rt.workspace.find_endpoint(key)
    if ep is None:
        raise not_found(f"endpoint {_shown(key)} does not exist")
    try:
        ended = await rt.suspend(ep)
    except ConfigError as exc:
        raise ApiError(400, "INVALID_STATE", str(exc)) from None
    return web.json_response({"endpoint": ep.name, "state": ep.state, "sessions_terminated": ended})


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


async def admin_api_hang(request: web.Request) -> web.Response:
    rt = runtime(request)
    seconds = field(await read_json(request), "seconds", (int, float), required=True)
    try:
        rt.start_api_hang(float(seconds))
    except ConfigError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response({"seconds": seconds})


async def admin_expire_tokens(request: web.Request) -> web.Response:
    runtime(request).expire_tokens()
    return web.json_response({"expired_before": rfc3339(time.time())})


async def admin_add_identity(request: web.Request) -> web.Response:
    """Body ``{"type": USER|SERVICE_PRINCIPAL|GROUP, "name"?, "display_name"?}``; a service principal's
    name (its application id) is generated when absent. Answers the identity with its PAT or secret."""
    rt = runtime(request)
    body = await read_json(request)
    type_ = field(body, "type", str, required=True).upper()
    if type_ not in IDENTITY_TYPES:
        raise bad_request(f"type must be one of {', '.join(IDENTITY_TYPES)}, got {_shown(type_)}")
    name = field(body, "name", str, required=type_ != "SERVICE_PRINCIPAL") or str(uuid.uuid4())
    display_name = field(body, "display_name", str)
    if not 0 < len(name.encode()) <= 63 or "\0" in name:
        raise bad_request("name must be 1-63 bytes (it becomes a Postgres role name)")
    existing = rt.workspace.identities.get(name)
    if existing is not None and existing.type != type_:
        raise already_exists(f"identity {_shown(name)} already exists as a {existing.type}")
    try:
        ident = rt.add_identity(name, type_, display_name)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response({"name": ident.name, "type": ident.type, "id": ident.id,
                              "display_name": ident.display_name, "pat": ident.pat,
                              "client_secret": ident.client_secret})


async def admin_add_endpoint(request: web.Request) -> web.Response:
    """Body ``{"endpoint_id"}``: a read-only endpoint on the default branch, at once (idempotent)."""
    rt = runtime(request)
    body = await read_json(request)
    endpoint_id = field(body, "endpoint_id", str, required=True)
    if not ID_RE.fullmatch(endpoint_id):
        raise bad_request("endpoint_id must be 1-63 characters: a lowercase letter, then lowercase letters, "
                          f"digits and hyphens; got {_shown(endpoint_id)}")
    existing = rt.workspace.endpoints.get(endpoint_id)
    if existing is not None and not existing.read_only:
        raise already_exists(f"endpoint '{existing.name}' exists and is not read-only")
    return web.json_response(endpoint_json(rt, rt.add_read_only_endpoint(endpoint_id)))


# ---- middleware and app ------------------------------------------------------------------------
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
    pg = "/api/2.0/postgres"
    branch = pg + "/projects/{project}/branches/{branch}"
    app.add_routes([
        web.get("/.well-known/databricks-config", databricks_config),
        web.get("/oidc/.well-known/oauth-authorization-server", oidc_discovery),
        web.get("/oidc/.well-known/openid-configuration", oidc_discovery),
        web.post("/oidc/v1/token", oidc_token),
        web.get("/api/2.0/preview/scim/v2/Me", scim_me),
        web.post(pg + "/credentials", postgres_credential),
        web.get(pg + "/projects", list_projects),
        web.get(pg + "/projects/{project}", get_project),
        web.get(pg + "/projects/{project}/branches", list_branches),
        web.get(branch, get_branch),
        web.get(branch + "/endpoints", list_endpoints),
        web.post(branch + "/endpoints", create_endpoint),
        web.get(branch + "/endpoints/{endpoint}", get_endpoint),
        web.delete(branch + "/endpoints/{endpoint}", delete_endpoint),
        web.patch(branch + "/endpoints/{endpoint}", update_endpoint),
        web.get(branch + "/roles", list_roles),
        web.post(branch + "/roles", create_role),
        web.get(branch + "/roles/{role}", get_role),
        web.get(branch + "/databases", list_databases),
        web.get(branch + "/databases/{database}", get_database),
        web.get(branch + "/operations/{operation}", get_operation),
        web.post("/api/2.0/database/credentials", database_credential),
        web.get("/api/2.0/database/instances", list_instances),
        web.get("/api/2.0/database/instances/{name}", get_instance),
        web.get("/emulator/stats", admin_stats),
        web.get("/emulator/config", admin_get_config),
        web.post("/emulator/config", admin_set_config),
        web.post("/emulator/faults/restart", admin_restart),
        web.post("/emulator/faults/suspend", admin_suspend),
        web.post("/emulator/faults/credential-outage", admin_credential_outage),
        web.post("/emulator/faults/expire-tokens", admin_expire_tokens),
        web.post("/emulator/faults/api-hang", admin_api_hang),
        web.post("/emulator/identities", admin_add_identity),
        web.post("/emulator/endpoints", admin_add_endpoint),
    ])
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
