"""Discovery, the OAuth token endpoint (client credentials) and SCIM ``Me``: what the SDK's auth needs."""

from __future__ import annotations

from typing import Any

from aiohttp import BasicAuth, web

from ..state import Identity
from ..tokens import WORKSPACE_AUDIENCE
from .http import caller, runtime, shown, too_large

routes = web.RouteTableDef()


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




def base_url(request: web.Request) -> str:
    return str(request.url.origin())


@routes.get("/.well-known/databricks-config")
async def databricks_config(request: web.Request) -> web.Response:
    rt = runtime(request)
    return web.json_response({
        "oidc_endpoint": f"{base_url(request)}/oidc",
        "workspace_id": str(rt.workspace.workspace_id),
    })


@routes.get("/oidc/.well-known/oauth-authorization-server")
@routes.get("/oidc/.well-known/openid-configuration")
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


@routes.post("/oidc/v1/token")
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
                           f"grant_type must be client_credentials, got {shown(grant_type)}")
    scope = form.get("scope")
    ttl = int(rt.config.oauth_token_ttl_seconds)
    token, _claims = rt.tokens.issue(ident.name, WORKSPACE_AUDIENCE, ttl)
    return web.json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": ttl,
         "scope": scope if isinstance(scope, str) and scope else "all-apis"},
        headers={"Cache-Control": "no-store"},
    )


@routes.get("/api/2.0/preview/scim/v2/Me")
async def scim_me(request: web.Request) -> web.Response:
    return web.json_response(scim_me_json(caller(request)))
