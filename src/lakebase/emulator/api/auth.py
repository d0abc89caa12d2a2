"""Who calls the workspace API (a PAT or an OAuth access token) and what they may change.

Reads (GET, HEAD) are open to every workspace identity. Every other method under /api/ needs a
permission on the project: what its handler declares with ``@requires``, CAN_MANAGE when it declares
nothing (so a new or unemulated change is denied to non-owners, as on Databricks, before anything
else is looked at). The admin API (``/emulator/...``) takes only the owner's PAT.
"""

from __future__ import annotations

from aiohttp import web

from ..runtime import Runtime
from ..state import CAN_MANAGE, CAN_USE, Identity
from ..tokens import WORKSPACE_AUDIENCE, InvalidToken
from .http import IDENTITY, PERMISSION_ATTR, ApiError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
                   f"project '{rt.workspace.project_name}', which is needed to {action}; it has {held} (read and "
                   f"generate database credentials). Make the change as the project owner ('{owner}', "
                   "DATABRICKS_TOKEN in user.env)")


def check_admin(rt: Runtime, request: web.Request) -> None:
    ident, via_pat = authenticate(rt, request)
    if ident.name != rt.workspace.owner.name or not via_pat:
        raise ApiError(403, "PERMISSION_DENIED", "the emulator's admin API accepts only the workspace "
                       "owner's personal access token (DATABRICKS_TOKEN in user.env)")
    request[IDENTITY] = ident
