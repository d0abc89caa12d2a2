"""The emulator's workspace REST API against the real, unmodified ``databricks-sdk`` (and raw HTTP).

The session's emulator (``EmulatorProcess`` from conftest) serves these tests from its own process;
they see it only from outside: through the SDK, raw HTTP, its admin API and real Postgres logins.
They add only uniquely named identities, roles and endpoints and delete the endpoints they create;
conftest undoes config changes and credential outages. The middleware's last-resort error handling
is tested in-process, around a runtime whose database calls fail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import jwt
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from databricks.sdk import WorkspaceClient
from databricks.sdk.clock import Clock
from databricks.sdk.config import Config
from databricks.sdk.errors import (
    AlreadyExists,
    BadRequest,
    InvalidParameterValue,
    NotFound,
    NotImplemented,
    PermissionDenied,
    RequestLimitExceeded,
    ResourceConflict,
    TemporarilyUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from databricks.sdk.service.database import DatabaseInstance
from databricks.sdk.service.postgres import (
    Branch,
    BranchSpec,
    Database,
    DatabaseDatabaseSpec,
    Endpoint,
    EndpointSpec,
    EndpointStatusState,
    EndpointType,
    Role,
    RoleAttributes,
    RoleAuthMethod,
    RoleIdentityType,
    RoleMembershipRole,
    RoleRoleSpec,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from lakebase.emulator import EmulatorProcess, api
from lakebase.emulator.faults import ApiHang, ConfigError, CredentialOutage, EmulatorConfig, Stats
from lakebase.emulator.state import INSTANCE_NAME, Workspace
from lakebase.emulator.tokens import DATABASE_AUDIENCE, TokenAuthority

from .conftest import owner_connect
from .lakebase_support import wait_for

Emu = EmulatorProcess


@pytest.fixture
def emu(emulator: Emu) -> Emu:
    return emulator


@pytest.fixture(autouse=True)
def _isolated_sdk_env(clean_env: pytest.MonkeyPatch) -> None:
    """A developer's ~/.databrickscfg or DATABRICKS_* variables must not change what the SDK does."""


# ---- helpers -----------------------------------------------------------------------------------
class FakeClock(Clock):
    """The SDK's retry loop on virtual time: sleeps return at once and are recorded."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pat_client(emu: Emu, token: str | None = None, **config: Any) -> WorkspaceClient:
    return WorkspaceClient(config=Config(host=emu.api_url, token=token or emu.owner.pat, **config))


def m2m_client(emu: Emu, client_id: str | None = None, client_secret: str | None = None,
               **config: Any) -> WorkspaceClient:
    return WorkspaceClient(config=Config(host=emu.api_url, client_id=client_id or emu.app.name,
                                         client_secret=client_secret or emu.app.client_secret, **config))


def http(emu: Emu, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=emu.api_url, headers=headers, timeout=30)


def owner_http(emu: Emu) -> httpx.Client:
    return http(emu, emu.owner.pat)


def app_access_token(emu: Emu) -> str:
    resp = httpx.post(f"{emu.api_url}/oidc/v1/token", auth=(emu.app.name, emu.app.client_secret or ""),
                      data={"grant_type": "client_credentials", "scope": "all-apis"})
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def claims_of(token: str | None) -> dict[str, Any]:
    assert token
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def workspace_id(emu: Emu) -> str:
    wid: str = httpx.get(f"{emu.api_url}/.well-known/databricks-config").json()["workspace_id"]
    return wid


def project(emu: Emu) -> str:
    return "/".join(emu.endpoint_name.split("/")[:2])


def branch(emu: Emu) -> str:
    return "/".join(emu.endpoint_name.split("/")[:4])


def login(emu: Emu, user: str, token: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host="localhost", port=emu.pg_port, user=user, dbname="databricks_postgres",
                           sslmode="require", password=token, connect_timeout=10, autocommit=True, **kwargs)


def read_only_spec(min_cu: float | None = None, max_cu: float | None = None) -> Endpoint:
    return Endpoint(spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_ONLY,
                                      autoscaling_limit_min_cu=min_cu, autoscaling_limit_max_cu=max_cu))


# ---- discovery and authentication ---------------------------------------------------------------
def test_host_metadata_and_oidc_discovery_need_no_auth(emu: Emu) -> None:
    with http(emu) as client:
        resp = client.get("/.well-known/databricks-config")
        meta = resp.json()
        assert meta["oidc_endpoint"] == f"{emu.api_url}/oidc"
        assert meta["workspace_id"].isdigit() and resp.headers["X-Databricks-Org-Id"] == meta["workspace_id"]
        oidc = client.get("/oidc/.well-known/oauth-authorization-server").json()
        assert oidc["token_endpoint"] == f"{emu.api_url}/oidc/v1/token"
        assert oidc["authorization_endpoint"].startswith(emu.api_url)
        assert client.get("/oidc/.well-known/openid-configuration").json() == oidc


def test_pat_client_me(emu: Emu) -> None:
    w = pat_client(emu)
    me = w.current_user.me()
    assert me.user_name == emu.owner.name
    assert me.id and me.active is True
    assert me.emails and me.emails[0].value == emu.owner.name
    assert w.config.auth_type == "pat"
    assert w.get_workspace_id() == int(workspace_id(emu))


def test_m2m_client_me(emu: Emu) -> None:
    w = m2m_client(emu)
    me = w.current_user.me()
    assert me.user_name == emu.app.name
    assert me.display_name == emu.app.display_name
    assert w.config.auth_type == "oauth-m2m"
    assert w.config.workspace_id == workspace_id(emu)


def test_token_endpoint_accepts_form_credentials_and_rejects_bad_clients(emu: Emu) -> None:
    url = f"{emu.api_url}/oidc/v1/token"
    ok = httpx.post(url, data={"grant_type": "client_credentials", "client_id": emu.app.name,
                               "client_secret": emu.app.client_secret})
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "all-apis"
    assert claims_of(body["access_token"])["sub"] == emu.app.name

    bad = httpx.post(url, auth=(emu.app.name, "dose-wrong"), data={"grant_type": "client_credentials"})
    assert bad.status_code == 401
    assert bad.headers["Content-Type"].startswith("application/json")
    assert bad.json()["error"] == "invalid_client"
    assert "dose-wrong" not in bad.text

    missing = httpx.post(url, data={"grant_type": "client_credentials"})
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_client"

    grant = httpx.post(url, auth=(emu.app.name, emu.app.client_secret or ""), data={"grant_type": "password"})
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"


def test_m2m_client_with_a_wrong_secret_fails_clearly(emu: Emu) -> None:
    with pytest.raises(Exception, match="invalid_client"):
        m2m_client(emu, client_secret="dose-wrong").current_user.me()


def test_missing_or_invalid_credentials_are_unauthenticated(emu: Emu) -> None:
    with http(emu) as client:
        resp = client.get("/api/2.0/preview/scim/v2/Me")
    assert resp.status_code == 401
    assert resp.json()["error_code"] == "UNAUTHENTICATED"

    with pytest.raises(Unauthenticated):
        pat_client(emu, token="dapi" + "0" * 32).current_user.me()

    # A database credential is not a workspace access token.
    cred = pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name)
    assert cred.token
    with http(emu, cred.token) as client:
        resp = client.get("/api/2.0/preview/scim/v2/Me")
    assert resp.status_code == 401
    assert "another purpose" in resp.json()["message"]
    assert cred.token not in resp.text

    # Unknown routes need credentials first, then say which API is missing.
    with http(emu) as client:
        assert client.get("/api/2.0/clusters/list").status_code == 401
    with owner_http(emu) as client:
        resp = client.get("/api/2.0/clusters/list")
    assert resp.status_code == 404
    assert resp.json()["error_code"] == "ENDPOINT_NOT_FOUND"


# ---- credentials -------------------------------------------------------------------------------
def test_generate_database_credential_default_lifetime(emu: Emu) -> None:
    before = datetime.now(UTC)
    cred = pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name)
    assert cred.token and cred.expire_time is not None
    expires = cred.expire_time.ToDatetime(tzinfo=UTC)
    assert before + timedelta(seconds=3590) <= expires <= datetime.now(UTC) + timedelta(seconds=3600)
    claims = claims_of(cred.token)
    assert claims["sub"] == emu.owner.name and claims["aud"] == DATABASE_AUDIENCE
    assert abs(claims["exp"] - expires.timestamp()) < 1e-3
    with login(emu, emu.owner.name, cred.token) as conn:  # it is a working database password
        assert conn.execute("SELECT current_user").fetchone() == (emu.owner.name,)


def test_generate_database_credential_for_the_app_with_ttl(emu: Emu) -> None:
    ttl = Duration()
    ttl.FromSeconds(600)
    before = time.time()
    cred = m2m_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name, ttl=ttl)
    claims = claims_of(cred.token)
    assert claims["sub"] == emu.app.name
    assert before + 600 <= claims["exp"] <= time.time() + 600


def test_generate_database_credential_with_expire_time(emu: Emu) -> None:
    wanted = Timestamp()
    wanted.FromDatetime(datetime.now(UTC) + timedelta(minutes=20))
    w = pat_client(emu)
    cred = w.postgres.generate_database_credential(endpoint=emu.endpoint_name, expire_time=wanted)
    assert cred.expire_time is not None
    got = cred.expire_time.ToDatetime(tzinfo=UTC)
    assert abs((got - wanted.ToDatetime(tzinfo=UTC)).total_seconds()) < 1


def test_token_ttl_setting_caps_the_lifetime(emu: Emu) -> None:
    emu.configure(token_ttl_seconds=30)
    before = time.time()
    cred = pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name)
    assert before + 30 <= claims_of(cred.token)["exp"] <= time.time() + 30


@pytest.mark.parametrize("seconds", [60, 299, 3601, 86400])
def test_ttl_out_of_range_is_invalid(emu: Emu, seconds: int) -> None:
    ttl = Duration()
    ttl.FromSeconds(seconds)
    with pytest.raises(InvalidParameterValue, match="ttl must be between 300s and 3600s"):
        pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name, ttl=ttl)


def test_expire_time_out_of_range_is_invalid(emu: Emu) -> None:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(hours=2))
    with pytest.raises(BadRequest, match="expire_time"):
        pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name, expire_time=ts)


def test_unknown_or_malformed_endpoint(emu: Emu) -> None:
    w = pat_client(emu)
    with pytest.raises(NotFound):
        w.postgres.generate_database_credential(endpoint=f"{branch(emu)}/endpoints/nope")
    with pytest.raises(NotFound):
        w.postgres.generate_database_credential(endpoint="projects/other/branches/production/endpoints/primary")
    with pytest.raises(InvalidParameterValue, match="resource name"):
        w.postgres.generate_database_credential(endpoint="primary")


def test_credential_outage_503(emu: Emu) -> None:
    emu.credential_outage(30, 503)
    rejected = emu.stats()["credential_requests_rejected"]
    with owner_http(emu) as client:
        resp = client.post("/api/2.0/postgres/credentials", json={"endpoint": emu.endpoint_name})
    assert resp.status_code == 503
    assert resp.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"

    clock = FakeClock()
    w = pat_client(emu, retry_timeout_seconds=5, clock=clock)
    with pytest.raises(TimeoutError) as info:
        w.postgres.generate_database_credential(endpoint=emu.endpoint_name)
    assert isinstance(info.value.__cause__, TemporarilyUnavailable)
    assert len(clock.sleeps) >= 1  # the SDK retried
    # One rejection for the raw call and one per SDK attempt (each attempt but the last slept first).
    assert emu.stats()["credential_requests_rejected"] == rejected + 1 + len(clock.sleeps)
    # Other calls keep working during a credential outage.
    assert w.current_user.me().user_name == emu.owner.name


def test_credential_outage_429_with_retry_after(emu: Emu) -> None:
    emu.credential_outage(30, 429)
    with owner_http(emu) as client:
        resp = client.post("/api/2.0/database/credentials",
                           json={"instance_names": [INSTANCE_NAME], "request_id": str(uuid.uuid4())})
    assert resp.status_code == 429
    assert resp.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert 1 <= int(resp.headers["Retry-After"]) <= 30

    clock = FakeClock()
    w = pat_client(emu, retry_timeout_seconds=5, clock=clock)
    with pytest.raises(TimeoutError) as info:
        w.postgres.generate_database_credential(endpoint=emu.endpoint_name)
    assert isinstance(info.value.__cause__, RequestLimitExceeded)
    assert isinstance(info.value.__cause__, TooManyRequests)
    assert clock.sleeps[0] >= 28  # the SDK honoured Retry-After


def test_sdk_rides_out_a_short_outage(emu: Emu) -> None:
    emu.credential_outage(0.5, 429)
    cred = pat_client(emu, retry_timeout_seconds=30).postgres.generate_database_credential(
        endpoint=emu.endpoint_name)
    assert claims_of(cred.token)["sub"] == emu.owner.name


def test_provisioned_credentials_and_instance(emu: Emu) -> None:
    w = pat_client(emu)
    cred = w.database.generate_database_credential(instance_names=[INSTANCE_NAME],
                                                   request_id=str(uuid.uuid4()))
    assert cred.token and cred.expiration_time
    expires = datetime.fromisoformat(cred.expiration_time.replace("Z", "+00:00"))
    assert abs(claims_of(cred.token)["exp"] - expires.timestamp()) < 1e-3

    instance = w.database.get_database_instance(INSTANCE_NAME)
    assert instance.state is not None and instance.state.value == "AVAILABLE"
    assert instance.read_write_dns == "localhost"
    assert instance.creator == emu.owner.name
    assert instance.capacity == "CU_1" and instance.pg_version
    assert [i.name for i in w.database.list_database_instances()] == [INSTANCE_NAME]

    with pytest.raises(NotFound):
        w.database.get_database_instance("other")
    with pytest.raises(NotFound):
        w.database.generate_database_credential(instance_names=["other"])
    with pytest.raises(BadRequest):
        w.database.generate_database_credential(instance_names=[])


# ---- Lakebase Autoscaling resources ---------------------------------------------------------------
def test_projects_and_branches(emu: Emu) -> None:
    w = m2m_client(emu)
    projects = list(w.postgres.list_projects())
    assert [p.name for p in projects] == [project(emu)]
    got = w.postgres.get_project(project(emu))
    assert got.uid and got.uid == projects[0].uid
    assert got.status is not None and got.status.owner == emu.owner.name
    assert got.status.default_branch == branch(emu)
    assert got.create_time is not None

    branches = list(w.postgres.list_branches(parent=project(emu)))
    assert [b.name for b in branches] == [branch(emu)]
    prod = w.postgres.get_branch(branch(emu))
    assert prod.status is not None and prod.status.default is True
    assert prod.status.current_state is not None and prod.status.current_state.value == "READY"

    with pytest.raises(NotFound):
        w.postgres.get_project("projects/other")
    with pytest.raises(NotFound):
        w.postgres.get_branch(f"{project(emu)}/branches/dev")


def test_endpoints_show_their_state(emu: Emu) -> None:
    w = pat_client(emu)
    assert emu.endpoint_name in [e.name for e in w.postgres.list_endpoints(parent=branch(emu))]
    primary = w.postgres.get_endpoint(emu.endpoint_name)
    assert primary.spec is not None and primary.spec.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_WRITE
    assert primary.status is not None and primary.status.hosts is not None
    assert primary.status.hosts.host == "localhost"
    assert primary.status.last_active_time is not None

    emu.suspend()
    idle = w.postgres.get_endpoint(emu.endpoint_name)
    assert idle.status is not None and idle.status.current_state == EndpointStatusState.IDLE
    with owner_connect(emu):  # a login wakes it
        pass
    awake = w.postgres.get_endpoint(emu.endpoint_name)
    assert awake.status is not None and awake.status.current_state == EndpointStatusState.ACTIVE

    with pytest.raises(NotFound):
        w.postgres.get_endpoint(f"{branch(emu)}/endpoints/nope")


def test_roles_and_databases(emu: Emu) -> None:
    w = pat_client(emu)
    roles = list(w.postgres.list_roles(parent=branch(emu)))
    by_pg = {r.status.postgres_role: r for r in roles if r.status}
    mine = by_pg[emu.owner.name]
    assert mine.status is not None
    assert mine.status.identity_type == RoleIdentityType.USER
    assert mine.status.auth_method == RoleAuthMethod.LAKEBASE_OAUTH_V1
    assert mine.status.membership_roles == [RoleMembershipRole.DATABRICKS_SUPERUSER]
    assert mine.role_id == api.role_id_for(emu.owner.name)  # the email, escaped
    assert mine.name == f"{branch(emu)}/roles/{mine.role_id}"
    assert w.postgres.get_role(mine.name).status == mine.status
    with pytest.raises(NotFound):
        w.postgres.get_role(f"{branch(emu)}/roles/nobody")

    databases = list(w.postgres.list_databases(parent=branch(emu)))
    default = [d for d in databases if d.status and d.status.postgres_database == "databricks_postgres"]
    assert len(default) == 1 and default[0].name
    db = w.postgres.get_database(default[0].name)
    assert db.status is not None and db.status.role and db.status.role.startswith(f"{branch(emu)}/roles/")
    with pytest.raises(NotFound):
        w.postgres.get_database(f"{branch(emu)}/databases/nope")


def test_paging(emu: Emu) -> None:
    w = pat_client(emu)
    all_roles = [r.name for r in w.postgres.list_roles(parent=branch(emu))]
    assert len(all_roles) >= 2
    assert [r.name for r in w.postgres.list_roles(parent=branch(emu), page_size=1)] == all_roles

    with owner_http(emu) as client:
        url = f"/api/2.0/postgres/{branch(emu)}/roles"
        first = client.get(url, params={"page_size": 1}).json()
        assert len(first["roles"]) == 1 and first["next_page_token"]
        second = client.get(url, params={"page_size": 1, "page_token": first["next_page_token"]}).json()
        assert second["roles"][0]["name"] == all_roles[1]
        for bad in ("garbage", "eyJzIjoieCIsIm8iOjF9"):  # the second is well-formed, for another list
            resp = client.get(url, params={"page_token": bad})
            assert resp.status_code == 400, bad
            assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert client.get(url, params={"page_size": -1}).status_code == 400
        assert client.get(url, params={"page_size": "ten"}).status_code == 400
        projects = client.get("/api/2.0/postgres/projects", params={"page_size": 1}).json()
        assert len(projects["projects"]) == 1 and "next_page_token" not in projects


# ---- long-running operations ---------------------------------------------------------------------
def test_create_and_delete_a_read_only_endpoint(emu: Emu) -> None:
    w = pat_client(emu)
    endpoint_id = unique("replica")
    op = w.postgres.create_endpoint(parent=branch(emu), endpoint_id=endpoint_id,
                                    endpoint=read_only_spec(0.5, 2))
    assert op.name().startswith(f"{branch(emu)}/operations/")
    ep = op.wait()
    try:
        assert ep.name == f"{branch(emu)}/endpoints/{endpoint_id}"
        assert ep.spec is not None and ep.spec.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_ONLY
        assert ep.spec.autoscaling_limit_max_cu == 2
        assert ep.status is not None and ep.status.hosts is not None
        assert ep.status.hosts.host == ep.status.hosts.read_only_host == f"{endpoint_id}.localhost"

        listed = list(w.postgres.list_endpoints(parent=branch(emu)))
        assert ep.name in [e.name for e in listed]
        read_only_hosts = {e.status.hosts.host for e in listed if e.status and e.status.hosts
                           and e.status.endpoint_type == EndpointType.ENDPOINT_TYPE_READ_ONLY}
        primary = w.postgres.get_endpoint(emu.endpoint_name)
        assert primary.status is not None and primary.status.hosts is not None
        assert primary.status.hosts.read_only_host in read_only_hosts
        assert w.database.get_database_instance(INSTANCE_NAME).read_only_dns in read_only_hosts
        # A token for any endpoint of the workspace can be minted.
        assert w.postgres.generate_database_credential(endpoint=ep.name).token

        with pytest.raises(AlreadyExists):
            w.postgres.create_endpoint(parent=branch(emu), endpoint_id=endpoint_id, endpoint=read_only_spec())

        # A session on the new endpoint (chosen by SNI), which deleting it ends.
        conn = owner_connect(emu, host=f"{endpoint_id}.localhost", hostaddr="127.0.0.1", autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        w.postgres.delete_endpoint(f"{branch(emu)}/endpoints/{endpoint_id}").wait()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(NotFound):
        w.postgres.get_endpoint(ep.name)
    assert ep.name not in [e.name for e in w.postgres.list_endpoints(parent=branch(emu))]


def test_endpoint_creation_rules(emu: Emu) -> None:
    w = pat_client(emu)
    before = [e.name for e in w.postgres.list_endpoints(parent=branch(emu))]
    with pytest.raises(ResourceConflict, match="read-write"):
        w.postgres.create_endpoint(
            parent=branch(emu), endpoint_id=unique("second-primary"),
            endpoint=Endpoint(spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE)))
    with pytest.raises(BadRequest, match="endpoint_id"):
        w.postgres.create_endpoint(parent=branch(emu), endpoint_id="Bad_Id", endpoint=read_only_spec())
    with pytest.raises(BadRequest, match="autoscaling_limit_min_cu"):
        w.postgres.create_endpoint(parent=branch(emu), endpoint_id=unique("replica"),
                                   endpoint=read_only_spec(4, 2))
    with pytest.raises(BadRequest, match="read-write endpoint"):
        w.postgres.delete_endpoint(emu.endpoint_name)
    with pytest.raises(NotFound):
        w.postgres.create_endpoint(parent=f"{project(emu)}/branches/dev", endpoint_id=unique("replica"),
                                   endpoint=read_only_spec())
    with pytest.raises(NotFound):
        w.postgres.delete_endpoint(f"{branch(emu)}/endpoints/nope")
    assert [e.name for e in w.postgres.list_endpoints(parent=branch(emu))] == before


def test_created_roles_can_log_in(emu: Emu) -> None:
    w = pat_client(emu)
    alice = emu.add_user(f"{unique('alice')}@example.com")
    assert alice.pat
    role = w.postgres.create_role(
        parent=branch(emu),
        role=Role(spec=RoleRoleSpec(postgres_role=alice.name, identity_type=RoleIdentityType.USER)),
    ).wait()
    assert role.status is not None
    assert role.status.postgres_role == alice.name
    assert role.status.auth_method == RoleAuthMethod.LAKEBASE_OAUTH_V1
    assert role.status.identity_type == RoleIdentityType.USER
    assert role.role_id == api.role_id_for(alice.name)
    assert role.name and w.postgres.get_role(role.name).status == role.status
    token = pat_client(emu, token=alice.pat).postgres.generate_database_credential(endpoint=emu.endpoint_name)
    with login(emu, alice.name, token.token or "") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (alice.name,)

    sp = emu.add_service_principal("api-test")
    role_id = unique("sp-role")
    sp_role = w.postgres.create_role(
        parent=branch(emu), role_id=role_id,
        role=Role(spec=RoleRoleSpec(postgres_role=sp.name, identity_type=RoleIdentityType.SERVICE_PRINCIPAL,
                                    membership_roles=[RoleMembershipRole.DATABRICKS_SUPERUSER])),
    ).wait()
    assert sp_role.name == f"{branch(emu)}/roles/{role_id}"
    assert sp_role.status is not None
    assert sp_role.status.membership_roles == [RoleMembershipRole.DATABRICKS_SUPERUSER]
    assert w.postgres.get_role(f"{branch(emu)}/roles/{role_id}").status == sp_role.status
    sp_token = m2m_client(emu, sp.name, sp.client_secret).postgres.generate_database_credential(
        endpoint=emu.endpoint_name)
    with login(emu, sp.name, sp_token.token or "") as conn:
        member = "SELECT pg_has_role(current_user, 'databricks_superuser', 'MEMBER')"
        assert conn.execute(member).fetchone() == (True,)

    group = emu.add_group(unique("analysts"))
    nologin = w.postgres.create_role(
        parent=branch(emu),
        role=Role(spec=RoleRoleSpec(postgres_role=group.name, identity_type=RoleIdentityType.GROUP,
                                    auth_method=RoleAuthMethod.NO_LOGIN)),
    ).wait()
    assert nologin.status is not None and nologin.status.auth_method == RoleAuthMethod.NO_LOGIN

    with pytest.raises(ResourceConflict):
        w.postgres.create_role(
            parent=branch(emu),
            role=Role(spec=RoleRoleSpec(postgres_role=alice.name, identity_type=RoleIdentityType.USER)))
    with pytest.raises(ResourceConflict):  # the role id is taken
        w.postgres.create_role(
            parent=branch(emu), role_id=role_id,
            role=Role(spec=RoleRoleSpec(postgres_role=unique("other"), auth_method=RoleAuthMethod.NO_LOGIN)))


def test_role_creation_rules(emu: Emu) -> None:
    w = pat_client(emu)

    def create(spec: RoleRoleSpec, role_id: str | None = None) -> Any:
        return w.postgres.create_role(parent=branch(emu), role=Role(spec=spec), role_id=role_id)

    with pytest.raises(BadRequest, match="not found in the workspace"):
        create(RoleRoleSpec(postgres_role="nobody@example.com", identity_type=RoleIdentityType.USER))
    with pytest.raises(BadRequest, match="is a USER, not a SERVICE_PRINCIPAL"):
        create(RoleRoleSpec(postgres_role=emu.owner.name, identity_type=RoleIdentityType.SERVICE_PRINCIPAL))
    with pytest.raises(BadRequest, match="is for roles without a Databricks identity"):
        create(RoleRoleSpec(postgres_role=emu.owner.name, identity_type=RoleIdentityType.USER,
                            auth_method=RoleAuthMethod.PG_PASSWORD_SCRAM_SHA_256))
    with pytest.raises(BadRequest, match='role name "pg_pw" is reserved'):
        create(RoleRoleSpec(postgres_role="pg_pw"))  # a plain role is a password role by default
    with pytest.raises(BadRequest, match="postgres_role is required"):
        create(RoleRoleSpec(identity_type=RoleIdentityType.USER))
    with pytest.raises(BadRequest, match="role_id"):
        create(RoleRoleSpec(postgres_role="x", auth_method=RoleAuthMethod.NO_LOGIN), role_id="X!")
    with pytest.raises(ResourceConflict):  # the owner's role exists from the start
        create(RoleRoleSpec(postgres_role=emu.owner.name, identity_type=RoleIdentityType.USER))
    # A plain NO_LOGIN role (e.g. to own objects) needs no workspace identity.
    owner_role = create(RoleRoleSpec(postgres_role=unique("owner"),
                                     auth_method=RoleAuthMethod.NO_LOGIN)).wait()
    assert owner_role.status is not None and owner_role.status.identity_type is None


def test_unknown_operation(emu: Emu) -> None:
    with pytest.raises(NotFound):
        pat_client(emu).postgres.get_operation(f"{branch(emu)}/operations/{uuid.uuid4().hex}")


# ---- authorization: the project owner's CAN_MANAGE -----------------------------------------------
def endpoint_names(emu: Emu) -> list[str]:
    return sorted(e.name or "" for e in pat_client(emu).postgres.list_endpoints(parent=branch(emu)))


def role_names(emu: Emu) -> list[str]:
    return sorted(r.status.postgres_role or "" for r in pat_client(emu).postgres.list_roles(parent=branch(emu))
                  if r.status)


def suspension_of(ep: Endpoint) -> tuple[bool | None, str | None]:
    assert ep.spec is not None and ep.status is not None
    spec = (ep.spec.no_suspension, ep.spec.suspend_timeout_duration.ToJsonString()
            if ep.spec.suspend_timeout_duration else None)
    status = ep.status.suspend_timeout_duration.ToJsonString() if ep.status.suspend_timeout_duration else None
    assert spec[1] == status
    return spec


def suspend_spec(timeout: str | None = None, no_suspension: bool | None = None) -> Endpoint:
    duration = None
    if timeout is not None:
        duration = Duration()
        duration.FromJsonString(timeout)
    return Endpoint(spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_ONLY,
                                      suspend_timeout_duration=duration, no_suspension=no_suspension))


def mask(*paths: str) -> FieldMask:
    return FieldMask(paths=list(paths))


def test_only_the_project_owner_changes_the_project(emu: Emu) -> None:
    """With app.env alone, the app's service principal reads and mints credentials but changes nothing."""
    owner, app = pat_client(emu), m2m_client(emu)
    replica = unique("replica")
    owner.postgres.create_endpoint(parent=branch(emu), endpoint_id=replica, endpoint=read_only_spec()).wait()
    replica_name = f"{branch(emu)}/endpoints/{replica}"
    try:
        endpoints, roles = endpoint_names(emu), role_names(emu)
        sneaky = emu.add_service_principal("sneaky")
        bob = emu.add_user(f"{unique('bob')}@example.com")
        superuser = Role(spec=RoleRoleSpec(
            postgres_role=sneaky.name, identity_type=RoleIdentityType.SERVICE_PRINCIPAL,
            membership_roles=[RoleMembershipRole.DATABRICKS_SUPERUSER],
            attributes=RoleAttributes(createrole=True, bypassrls=True)))
        changes: list[tuple[str, Any]] = [
            ("create an endpoint", lambda w: w.postgres.create_endpoint(
                parent=branch(emu), endpoint_id=unique("rogue"), endpoint=read_only_spec())),
            ("delete an endpoint", lambda w: w.postgres.delete_endpoint(replica_name)),
            ("update an endpoint", lambda w: w.postgres.update_endpoint(
                replica_name, suspend_spec(no_suspension=True), mask("spec.no_suspension"))),
            ("create a role", lambda w: w.postgres.create_role(parent=branch(emu), role=superuser)),
            ("POST", lambda w: w.postgres.create_database(parent=branch(emu), database=Database(
                spec=DatabaseDatabaseSpec(postgres_database="rogue", role=emu.owner.name)))),
            ("DELETE", lambda w: w.postgres.delete_role(f"{branch(emu)}/roles/{api.role_id_for(emu.owner.name)}")),
            ("create a branch", lambda w: w.postgres.create_branch(parent=project(emu), branch_id="rogue",
                                                        branch=Branch(spec=BranchSpec(no_expiry=True)))),
            ("delete a branch", lambda w: w.postgres.delete_branch(f"{project(emu)}/branches/production")),
            ("DELETE", lambda w: w.postgres.delete_project(project(emu))),
            ("POST", lambda w: w.database.create_database_instance(DatabaseInstance(name="rogue"))),
            ("DELETE", lambda w: w.database.delete_database_instance(INSTANCE_NAME)),
        ]
        for who, client in (("service principal", app), ("user", pat_client(emu, token=bob.pat))):
            for action, change in changes:
                with pytest.raises(PermissionDenied, match=f"^{who} '.+' does not have CAN_MANAGE permission on "
                                                           f"project '{project(emu)}', which is needed to {action}"):
                    change(client)
        # Nothing changed.
        assert endpoint_names(emu) == endpoints and role_names(emu) == roles
        assert "rogue" not in [b.branch_id for b in owner.postgres.list_branches(parent=project(emu))]
        assert suspension_of(owner.postgres.get_endpoint(replica_name)) == (None, None)
        assert owner.database.get_database_instance(INSTANCE_NAME).state is not None

        # The error body is Databricks': 403 {"error_code": "PERMISSION_DENIED", "message"} naming who and why.
        with http(emu, app_access_token(emu)) as client:
            resp = client.delete(f"/api/2.0/postgres/{replica_name}")
        assert resp.status_code == 403
        body = resp.json()
        assert set(body) == {"error_code", "message"} and body["error_code"] == "PERMISSION_DENIED"
        assert f"service principal '{emu.app.name}'" in body["message"] and emu.owner.name in body["message"]

        # Reads and credentials stay open to every workspace identity.
        assert sorted(e.name or "" for e in app.postgres.list_endpoints(parent=branch(emu))) == endpoints
        assert app.postgres.get_project(project(emu)).name == project(emu)
        assert app.postgres.list_roles(parent=branch(emu))
        assert app.postgres.generate_database_credential(endpoint=replica_name).token
        assert app.database.generate_database_credential(instance_names=[INSTANCE_NAME],
                                                         request_id=str(uuid.uuid4())).token
        # The owner may; what is not emulated then says so.
        with pytest.raises(NotImplemented):
            owner.database.delete_database_instance(INSTANCE_NAME)
    finally:
        owner.postgres.delete_endpoint(replica_name).wait()
    assert replica_name not in endpoint_names(emu)


def test_update_endpoint_suspension(emu: Emu) -> None:
    """``update_endpoint`` with an update mask sets the endpoint's own suspension; the JSON reports what the
    emulator does; the suspend fault refuses a no_suspension endpoint."""
    w = pat_client(emu)
    # Nothing set anywhere: no idle suspension, and the endpoint does not claim no_suspension (the suspend
    # fault suspends it).
    assert suspension_of(w.postgres.get_endpoint(emu.endpoint_name)) == (None, None)
    emu.configure(suspend_after_idle_seconds=600)
    assert suspension_of(w.postgres.get_endpoint(emu.endpoint_name)) == (None, "600s")
    project_defaults = w.postgres.get_project(project(emu)).status
    assert project_defaults is not None and project_defaults.default_endpoint_settings is not None
    assert project_defaults.default_endpoint_settings.suspend_timeout_duration is not None

    replica = unique("replica")
    name = f"{branch(emu)}/endpoints/{replica}"
    w.postgres.create_endpoint(parent=branch(emu), endpoint_id=replica, endpoint=read_only_spec()).wait()
    try:
        never = w.postgres.update_endpoint(name, suspend_spec(no_suspension=True), mask("spec.no_suspension")).wait()
        assert suspension_of(never) == (True, None)
        assert suspension_of(w.postgres.get_endpoint(name)) == (True, None)
        with pytest.raises(ConfigError, match="no_suspension"):
            emu.suspend(name)
        assert emu.endpoint_state(name) == "ACTIVE"

        timed = w.postgres.update_endpoint(name, suspend_spec("120s"), mask("spec.suspend_timeout_duration")).wait()
        assert suspension_of(timed) == (None, "120s")
        emu.suspend(name)
        assert emu.endpoint_state(name) == "IDLE"
        # Cleared: back to the emulator's default.
        cleared = w.postgres.update_endpoint(name, suspend_spec(), mask("spec.suspend_timeout_duration")).wait()
        assert suspension_of(cleared) == (None, "600s")
        limits = w.postgres.update_endpoint(name, read_only_spec(1, 4), mask(
            "spec.autoscaling_limit_min_cu", "spec.autoscaling_limit_max_cu")).wait()
        assert limits.spec is not None and (limits.spec.autoscaling_limit_min_cu,
                                            limits.spec.autoscaling_limit_max_cu) == (1, 4)

        for spec, paths, message in [
            (suspend_spec("30s"), ["spec.suspend_timeout_duration"], "between 60s and 604800s"),
            (suspend_spec("120s", True), ["spec.suspend_timeout_duration", "spec.no_suspension"],
             "mutually exclusive"),
            (suspend_spec(), ["spec.disabled"], "cannot update: spec.disabled"),
            (read_only_spec(4, 2), ["spec.autoscaling_limit_min_cu", "spec.autoscaling_limit_max_cu"],
             "must not exceed"),
        ]:
            with pytest.raises(BadRequest, match=message):
                w.postgres.update_endpoint(name, spec, mask(*paths))
        with owner_http(emu) as client:
            resp = client.patch(f"/api/2.0/postgres/{name}", json={})
            assert resp.status_code == 400 and "update_mask" in resp.json()["message"]
        assert suspension_of(w.postgres.get_endpoint(name)) == (None, "600s")
    finally:
        w.postgres.delete_endpoint(name).wait()


def test_the_idle_timer_follows_each_endpoints_setting(emu: Emu) -> None:
    w = pat_client(emu)
    ids = [unique("never"), unique("slow"), unique("default")]  # created in this order: idle longest first
    names = [f"{branch(emu)}/endpoints/{i}" for i in ids]
    for endpoint_id in ids:
        w.postgres.create_endpoint(parent=branch(emu), endpoint_id=endpoint_id, endpoint=read_only_spec()).wait()
    try:
        w.postgres.update_endpoint(names[0], suspend_spec(no_suspension=True), mask("spec.no_suspension")).wait()
        w.postgres.update_endpoint(names[1], suspend_spec("3600s"), mask("spec.suspend_timeout_duration")).wait()
        emu.configure(suspend_after_idle_seconds=0.2)
        wait_for(lambda: emu.endpoint_state(names[2]) == "IDLE", what="the default endpoint suspends")
        # The other two were idle longer and the same reaper pass saw them: their own settings held.
        assert [emu.endpoint_state(n) for n in names[:2]] == ["ACTIVE", "ACTIVE"]
    finally:
        for n in names:
            w.postgres.delete_endpoint(n).wait()


# ---- the admin API -------------------------------------------------------------------------------
def test_admin_api_is_for_the_owner_pat_only(emu: Emu) -> None:
    with http(emu) as client:
        assert client.get("/emulator/stats").status_code == 401
    with http(emu, app_access_token(emu)) as client:
        resp = client.get("/emulator/stats")
        assert resp.status_code == 403
        assert resp.json()["error_code"] == "PERMISSION_DENIED"
    bob = emu.add_user(f"{unique('bob')}@example.com")
    with http(emu, bob.pat) as client:
        assert client.post("/emulator/faults/restart").status_code == 403
        assert client.get("/api/2.0/preview/scim/v2/Me").json()["userName"] == bob.name


def test_admin_stats_and_config(emu: Emu) -> None:
    with owner_http(emu) as client:
        stats = client.get("/emulator/stats").json()
        assert stats["api_requests"] >= 1
        assert emu.endpoint_name in stats["endpoints"]
        again = client.get("/emulator/stats").json()
        assert again["api_requests"] > stats["api_requests"]

        config = client.get("/emulator/config").json()
        assert set(config) == set(EmulatorConfig().as_dict())
        updated = client.post("/emulator/config", json={"token_ttl_seconds": 5, "latency_ms": 20})
        assert updated.status_code == 200
        assert updated.json() == {**config, "token_ttl_seconds": 5, "latency_ms": 20}
        started = time.monotonic()
        client.get("/emulator/config")
        assert time.monotonic() - started >= 0.02  # the configured latency is added

        for bad in ({"no_such_knob": 1}, {"latency_ms": -1}, {"token_ttl_seconds": "5"}, [1]):
            resp = client.post("/emulator/config", json=bad)
            assert resp.status_code == 400, bad
            assert resp.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "MALFORMED_REQUEST")
        assert client.get("/emulator/config").json()["token_ttl_seconds"] == 5


def test_admin_faults(emu: Emu) -> None:
    emu.configure(restart_seconds=0)
    with owner_http(emu) as client:
        restarts = emu.stats()["restarts"]
        with owner_connect(emu, autocommit=True) as conn:
            resp = client.post("/emulator/faults/restart")
            assert resp.status_code == 200 and resp.json()["sessions_terminated"] >= 1
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert emu.stats()["restarts"] == restarts + 1

        with owner_connect(emu, autocommit=True):
            resp = client.post("/emulator/faults/suspend")
            assert resp.status_code == 200
            body = resp.json()
            assert body == {"endpoint": emu.endpoint_name, "state": "IDLE", "sessions_terminated": 1}
        assert emu.endpoint_state() == "IDLE"
        resp = client.post("/emulator/faults/suspend", json={"endpoint": emu.endpoint_name})
        assert resp.status_code == 200 and resp.json()["sessions_terminated"] == 0
        assert client.post("/emulator/faults/suspend", json={"endpoint": "nope"}).status_code == 404
        with owner_connect(emu):
            assert emu.endpoint_state() == "ACTIVE"

        resp = client.post("/emulator/faults/credential-outage", json={"seconds": 30, "status": 429})
        assert resp.status_code == 200 and emu.stats()["credential_outage_seconds_left"] > 0
        for bad in ({"seconds": 30, "status": 500}, {"seconds": -1}, {}, {"seconds": "30"}):
            assert client.post("/emulator/faults/credential-outage", json=bad).status_code == 400, bad
        assert client.post("/emulator/faults/credential-outage", json={"seconds": 0}).status_code == 200
        assert emu.stats()["credential_outage_seconds_left"] == 0

        token = pat_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name).token
        assert token
        assert client.post("/emulator/faults/expire-tokens").status_code == 200
        with pytest.raises(psycopg.OperationalError, match="Failed to decode token"):
            login(emu, emu.owner.name, token)
        # Workspace access still works: only database credentials were expired.
        assert m2m_client(emu).current_user.me().user_name == emu.app.name


def test_admin_identities_and_endpoints(emu: Emu) -> None:
    with owner_http(emu) as client:
        sp = client.post("/emulator/identities",
                         json={"type": "service_principal", "display_name": "x"}).json()
        assert sp["type"] == "SERVICE_PRINCIPAL" and uuid.UUID(sp["name"]) and sp["client_secret"]
        assert sp["pat"] is None
        assert m2m_client(emu, sp["name"], sp["client_secret"]).current_user.me().user_name == sp["name"]
        for bad in ({"type": "ROBOT", "name": "r"}, {"type": "USER"}, {"type": "USER", "name": "x" * 64}):
            assert client.post("/emulator/identities", json=bad).status_code == 400, bad
        resp = client.post("/emulator/identities", json={"type": "GROUP", "name": emu.owner.name})
        assert resp.status_code == 409

        endpoint_id = unique("admin-replica")
        for _ in range(2):  # idempotent
            resp = client.post("/emulator/endpoints", json={"endpoint_id": endpoint_id})
            assert resp.status_code == 200
            assert resp.json()["status"]["hosts"]["host"] == f"{endpoint_id}.localhost"
        assert client.post("/emulator/endpoints", json={"endpoint_id": "primary"}).status_code == 409
        assert client.post("/emulator/endpoints", json={"endpoint_id": "No"}).status_code == 400
    pat_client(emu).postgres.delete_endpoint(f"{branch(emu)}/endpoints/{endpoint_id}").wait()


# ---- robustness ----------------------------------------------------------------------------------
def test_malformed_bodies(emu: Emu) -> None:
    url = "/api/2.0/postgres/credentials"
    with owner_http(emu) as client:
        cases: list[tuple[bytes, str]] = [
            (b"{not json", "not valid JSON"),
            (b"[1, 2]", "JSON object"),
            (b'{"endpoint": NaN}', "not valid JSON"),
            (b"\xff\xfe\x00", "not valid JSON"),
            (b"[" * 100_000, "not valid JSON"),
            (b'{"pad": "' + b"x" * (2 << 20) + b'"}', "larger than"),
        ]
        for raw, message in cases:
            resp = client.post(url, content=raw, headers={"Content-Type": "application/json"})
            assert resp.status_code == 400, raw[:20]
            assert message in resp.json()["message"], raw[:20]
        typed: list[tuple[dict[str, Any], str]] = [
            ({}, "endpoint is required"),
            ({"endpoint": 5}, "endpoint must be a string"),
            ({"endpoint": emu.endpoint_name, "ttl": 900}, "ttl must be a string"),
            ({"endpoint": emu.endpoint_name, "ttl": "15m"}, "ttl must be a duration"),
            ({"endpoint": emu.endpoint_name, "expire_time": "tomorrow"}, "expire_time must be an RFC 3339"),
            ({"endpoint": emu.endpoint_name, "ttl": "900s", "expire_time": "2030-01-01T00:00:00Z"},
             "at most one"),
            ({"endpoint": emu.endpoint_name, "claims": "all"}, "claims must be a list"),
        ]
        for body, message in typed:
            resp = client.post(url, json=body)
            assert resp.status_code == 400, body
            assert resp.json()["error_code"] == "INVALID_PARAMETER_VALUE"
            assert message in resp.json()["message"], body
        resp = client.post(f"/api/2.0/postgres/{branch(emu)}/endpoints?endpoint_id=r2", json={"spec": "x"})
        assert resp.status_code == 400 and "spec must be an object" in resp.json()["message"]
        # The server is still fine.
        assert client.get("/api/2.0/preview/scim/v2/Me").status_code == 200


def test_unsupported_method_and_route(emu: Emu) -> None:
    with owner_http(emu) as client:
        resp = client.put(f"/api/2.0/postgres/{emu.endpoint_name}", json={})
        assert resp.status_code == 501 and resp.json()["error_code"] == "NOT_IMPLEMENTED"
        resp = client.get("/nothing-here")
        assert resp.status_code == 404 and resp.json()["error_code"] == "ENDPOINT_NOT_FOUND"
        assert resp.headers["X-Databricks-Org-Id"] == workspace_id(emu)


def test_no_secret_reaches_the_emulator_log(emu: Emu) -> None:
    cred = m2m_client(emu).postgres.generate_database_credential(endpoint=emu.endpoint_name)
    fake_pat = "dapi" + uuid.uuid4().hex
    with http(emu, fake_pat) as client:
        assert client.get("/api/2.0/preview/scim/v2/Me").status_code == 401
    with http(emu, app_access_token(emu)) as client:
        assert client.get("/emulator/stats").status_code == 403
    text = (emu.data_dir / "emulator.log").read_text(errors="replace")
    for secret in (cred.token, fake_pat, emu.owner.pat, emu.app.client_secret):
        assert secret and secret not in text


# ---- in-process: the middleware's last resort -----------------------------------------------------
ROLES_URL = "/api/2.0/postgres/projects/emulator/branches/production/roles"


@pytest.fixture
async def failing_api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], SimpleNamespace]]:
    """The real app around a runtime without Postgres: every database call fails."""
    rt = SimpleNamespace(
        stats=Stats(), config=EmulatorConfig(), outage=CredentialOutage(), api_hang=ApiHang(), proxy=None,
        workspace=Workspace.load_or_create(tmp_path / "workspace.json"),
        tokens=TokenAuthority(tmp_path / "signing-key.pem", issuer="test"),
    )
    client: TestClient[Any, Any] = TestClient(TestServer(api.build_app(cast(Any, rt))))
    await client.start_server()
    try:
        yield client, rt
    finally:
        await client.close()


async def test_a_failing_handler_answers_500_without_details(
        failing_api: tuple[TestClient[Any, Any], SimpleNamespace], caplog: pytest.LogCaptureFixture) -> None:
    client, rt = failing_api

    async def boom(*_: Any) -> list[Any]:
        raise RuntimeError("secret internals")

    rt.list_roles = boom
    headers = {"Authorization": f"Bearer {rt.workspace.owner.pat}"}
    with caplog.at_level("ERROR", logger="lakebase.emulator.api"):
        resp = await client.get(ROLES_URL, headers=headers)
        text = await resp.text()
    assert resp.status == 500
    assert (await resp.json())["error_code"] == "INTERNAL_ERROR"
    assert "secret internals" not in text and "Traceback" not in text
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
    assert rt.stats.api_requests == 1

    # The server keeps serving.
    resp = await client.get("/api/2.0/preview/scim/v2/Me", headers=headers)
    assert resp.status == 200


async def test_an_unreachable_database_answers_503(
        failing_api: tuple[TestClient[Any, Any], SimpleNamespace]) -> None:
    client, rt = failing_api

    async def down(*_: Any) -> list[Any]:
        raise psycopg.OperationalError("connection refused")

    rt.list_roles = down
    headers = {"Authorization": f"Bearer {rt.workspace.owner.pat}"}
    resp = await client.get(ROLES_URL, headers=headers)
    assert resp.status == 503
    assert (await resp.json())["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_derived_ids() -> None:
    assert api.role_id_for("developer@example.com").startswith("developer-example-com-")
    assert api.role_id_for("notes-app") == "notes-app"
    uid = str(uuid.uuid4())
    assert api.role_id_for(uid) == uid  # a service principal's application id is already an id
    assert api.role_id_for("Bob") != api.role_id_for("bob")
    assert api.database_id_for("databricks_postgres").startswith("databricks-postgres-")
    assert api.database_id_for("1db").startswith("db-1db-")
    for name in ("a", "x" * 200, "@@@", "Ünïcode"):
        assert api.ROLE_ID_RE.fullmatch(api.role_id_for(name)), name
        assert api.ID_RE.fullmatch(api.database_id_for(name)), name
