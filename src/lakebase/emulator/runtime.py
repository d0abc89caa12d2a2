"""The emulator's shared model: state, faults and every SQL statement the emulator runs.

``Runtime`` lives on the emulator's event loop. The proxy (``proxy.py``) and the REST API
(``api/``) both talk to it; it knows neither of them: the sessions it ends go through
``SessionControl``, the one thing it needs of the proxy. ``core.Emulator`` wires them together.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .branches import BranchClusters
from .extensions import SUPERUSER_GROUP
from .faults import ApiHang, ConfigError, CredentialOutage, EmulatorConfig, Stats
from .native_login import NativeLogin, RolePassword, make_verifier, new_password
from .postgres import SUPERUSER, PostgresServer
from .replica import DROP_SLOT_SQL, SLOT, Replica
from .state import (
    DEFAULT_BRANCH,
    DEFAULT_DATABASE,
    IDLE,
    PRIMARY_ENDPOINT,
    READ_ONLY,
    READ_WRITE,
    Branch,
    Endpoint,
    Identity,
    Workspace,
)
from .tls import ensure_certificates, server_context
from .tokens import DATABASE_AUDIENCE, Claims, TokenAuthority

log = logging.getLogger("lakebase.emulator")

EXTENSION_SOURCE = Path(__file__).with_name("pg_extension")
ROLE_ID_SETTING = "databricks_auth.role_id"  # a role-level setting: the role_id chosen at creation
TERMINATE_WAIT_MS = 5000  # how long ending a session may wait for its backend to exit and its client to be told
BRANCH_EXPIRY_INTERVAL = 0.25  # seconds between looks for expired branches


@dataclass(frozen=True)
class RoleInfo:
    name: str
    can_login: bool
    identity_type: str | None  # USER / SERVICE_PRINCIPAL / GROUP when registered for OAuth
    superuser_member: bool = False


@dataclass(frozen=True)
class RoleAttributes:
    """What the roles API shows of a role beyond ``RoleInfo``."""

    createdb: bool = False
    createrole: bool = False
    bypassrls: bool = False
    role_id: str | None = None  # the role_id chosen at creation (ROLE_ID_SETTING), if any


class SessionControl(Protocol):
    """What the runtime needs of the proxy: ending the sessions of an endpoint (all: ``None``)."""

    async def terminate_sessions(self, endpoint: Endpoint | None, reason: str) -> int: ...


class Runtime:
    """State and operations shared by the proxy and the REST API; used on the event loop only."""

    def __init__(self, data_dir: Path, config: EmulatorConfig) -> None:
        self.data_dir = data_dir
        self.config = config
        self.stats = Stats()
        self.outage = CredentialOutage()
        self.api_hang = ApiHang()
        self.workspace = Workspace.load_or_create(data_dir / "workspace.json")
        self.native = NativeLogin.load(data_dir / "native-login.json")
        self.api_url = ""  # set once the API listens
        self.pg_port = 0  # the proxy's port
        self.tokens = TokenAuthority(
            data_dir / "signing-key.pem", issuer=f"lakebase-emulator/{self.workspace.workspace_id}",
            revocations_path=data_dir / "revocations.json",
        )
        self.ca_path, cert, key = ensure_certificates(data_dir)
        self.ssl_context = server_context(cert, key)
        self.pg = PostgresServer(
            data_dir / "pgdata",
            EXTENSION_SOURCE,
            settings={
                "max_connections": "220",
                "fsync": "off",  # a local emulator: speed over crash safety (clean stops persist all)
                "listen_addresses": "",
                "log_min_messages": "warning",
                "shared_preload_libraries": "pg_stat_statements",  # as on Lakebase: its views work once created
            },
        )
        # The hot standby behind read-only endpoints: made when one first needs it (ensure_replica).
        self.replica: Replica | None = None
        self.replica_pgdata = data_dir / "pgdata-replica"
        # The clusters of the other branches (branches.py), started when their endpoints get a login.
        self.branches = BranchClusters(data_dir / "branches", self.pg)
        self.branches.sweep(set(self.workspace.branches))
        self.proxy: SessionControl | None = None  # the proxy, set by Emulator once it listens
        self._admin: Any = None
        self._role_cache: dict[tuple[str, str], tuple[float, RoleInfo]] = {}  # by (branch, role)
        self._restart_until = 0.0
        # Bumped by every restart and suspend: a login that was past its wait when one happened is
        # ended as soon as it is handed off (it would otherwise escape the fault).
        self.fault_generation = 0

    # ---- files the server reads --------------------------------------------------------------
    def write_server_files(self) -> None:
        """Once the server's data directory exists: the identities databricks_create_role accepts."""
        # Where earlier versions kept them (world-readable, the file named by a session setting).
        (self.data_dir / "identities.json").unlink(missing_ok=True)
        shutil.rmtree(self.data_dir / "pg_extension", ignore_errors=True)
        self.write_identities_file()

    def write_identities_file(self) -> None:
        content = self.workspace.identities_file_content()
        self.pg.write_identities(content)
        self.branches.write_identities(content)

    # ---- admin SQL (superuser over the Unix socket) --------------------------------------------
    async def open_admin(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        self._admin = AsyncConnectionPool(
            kwargs={**self.pg.connect_kwargs(), "autocommit": True, "application_name": "lakebase-emulator"},
            min_size=1, max_size=4, open=False, check=AsyncConnectionPool.check_connection,
        )
        await self._admin.open(wait=True, timeout=30)

    async def close_admin(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def admin_query(
        self, sql: str, params: tuple[Any, ...] = (), dbname: str = "postgres",
        server: PostgresServer | None = None,
    ) -> list[tuple[Any, ...]]:
        """As the superuser on the primary (pooled), or on ``server`` (the replica) when given."""
        server = server or self.pg
        if dbname == "postgres" and server is self.pg:
            async with self._admin.connection() as conn:
                cur = await conn.execute(sql, params)
                return await cur.fetchall() if cur.description else []
        import psycopg

        async with await psycopg.AsyncConnection.connect(
            **server.connect_kwargs(dbname=dbname), autocommit=True  # type: ignore[arg-type]
        ) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def bootstrap(self) -> None:
        """Idempotent: the owner group, the owner's role and the default database exist."""
        owner = self.workspace.owner.name
        await self.admin_query(
            f"""DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SUPERUSER_GROUP}') THEN
                    CREATE ROLE {SUPERUSER_GROUP} NOLOGIN CREATEDB CREATEROLE BYPASSRLS;
                    GRANT pg_read_all_data, pg_write_all_data, pg_monitor, pg_signal_backend
                        TO {SUPERUSER_GROUP} WITH ADMIN OPTION;
                END IF;
            END $$"""
        )
        if not await self.role_info(owner, cached=False):
            await self.admin_query(f'CREATE ROLE "{owner}" LOGIN CREATEDB CREATEROLE INHERIT')
            await self.admin_query(f'GRANT {SUPERUSER_GROUP} TO "{owner}" WITH ADMIN OPTION')
            await self.admin_query(f"ALTER ROLE \"{owner}\" SET databricks_auth.identity_type = 'USER'")
        rows = await self.admin_query("SELECT 1 FROM pg_database WHERE datname = %s", (DEFAULT_DATABASE,))
        if not rows:
            await self.admin_query(f"CREATE DATABASE {DEFAULT_DATABASE} OWNER {SUPERUSER_GROUP}")
            await self.admin_query(f"GRANT ALL ON DATABASE {DEFAULT_DATABASE} TO {SUPERUSER_GROUP}")
        await self.update_extension()

    async def update_extension(self) -> None:
        """Bring databricks_auth up to date wherever it is installed (a data directory made by an
        earlier version keeps the extension version it had until told otherwise)."""
        databases = await self.admin_query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")
        for (dbname,) in databases:
            outdated = await self.admin_query(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'databricks_auth' "
                "AND installed_version <> default_version", dbname=dbname)
            if outdated:
                await self.admin_query("ALTER EXTENSION databricks_auth UPDATE", dbname=dbname)
                log.info("updated the databricks_auth extension in database %s", dbname)

    # ---- the read replica ----------------------------------------------------------------------
    def ensure_replica(self) -> asyncio.Future[None]:
        """Start the hot standby in the background (once); ``backend()`` waits for it."""
        if self.replica is None:
            self.replica = Replica(self.pg, self.replica_pgdata)
        return self.replica.start()

    async def backend(self, endpoint: Endpoint) -> PostgresServer:
        """The server an endpoint's sessions run on: the primary, the replica for read-only ones, or the
        cluster of the endpoint's branch (started on its first login)."""
        if endpoint.branch_id != DEFAULT_BRANCH:
            return await self.branches.ready(endpoint.branch_id)
        if not endpoint.read_only:
            return self.pg
        self.ensure_replica()
        assert self.replica is not None
        return await self.replica.ready()

    async def discard_replica(self) -> None:
        """At start with no read-only endpoint: drop the standby's slot (it would hold WAL forever)
        and its data directory."""
        await self.admin_query(DROP_SLOT_SQL, (SLOT,))
        if self.replica_pgdata.exists():
            shutil.rmtree(self.replica_pgdata, ignore_errors=True)
            log.info("removed the read replica in %s: no read-only endpoint uses it", self.replica_pgdata)

    # ---- roles and databases (Postgres is the source of truth) -----------------------------------
    _ROLE_SQL = """
        SELECT r.rolname, r.rolcanlogin,
               (SELECT substr(c, length('databricks_auth.identity_type=') + 1)
                  FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setrole = r.oid AND s.setdatabase = 0
                   AND c LIKE 'databricks_auth.identity_type=%%' LIMIT 1),
               pg_has_role(r.oid, '""" + SUPERUSER_GROUP + """', 'MEMBER')
          FROM pg_roles r"""

    async def role_info(self, role: str, cached: bool = True, endpoint: Endpoint | None = None) -> RoleInfo | None:
        """The role on the branch of ``endpoint`` (default: the default branch)."""
        branch = DEFAULT_BRANCH if endpoint is None else endpoint.branch_id
        server = await self.branch_server(branch)
        now = time.monotonic()
        hit = self._role_cache.get((branch, role))
        if cached and hit and now - hit[0] < 2.0:
            return hit[1]
        rows = await self.admin_query(self._ROLE_SQL + " WHERE r.rolname = %s", (role,), server=server)
        if not rows:
            self._role_cache.pop((branch, role), None)
            return None
        name, can_login, itype, member = rows[0]
        info = RoleInfo(name, bool(can_login), itype, bool(member))
        if itype:
            self._role_cache[(branch, role)] = (now, info)
        return info

    async def list_roles(self, server: PostgresServer | None = None) -> list[RoleInfo]:
        rows = await self.admin_query(
            self._ROLE_SQL + " WHERE r.rolname !~ '^pg_' AND r.rolname <> %s ORDER BY r.rolname", (SUPERUSER,),
            server=server,
        )
        return [RoleInfo(n, bool(c), t, bool(m)) for n, c, t, m in rows]

    _ROLE_EXTRAS_SQL = """
        SELECT r.rolname, r.rolcreatedb, r.rolcreaterole, r.rolbypassrls,
               (SELECT substr(c, length('""" + ROLE_ID_SETTING + """=') + 1)
                  FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setrole = r.oid AND s.setdatabase = 0
                   AND c LIKE '""" + ROLE_ID_SETTING + """=%%' LIMIT 1)
          FROM pg_roles r"""

    async def role_attributes(self, server: PostgresServer | None = None) -> dict[str, RoleAttributes]:
        """Every role's attributes, by role name."""
        rows = await self.admin_query(self._ROLE_EXTRAS_SQL, server=server)
        return {
            name: RoleAttributes(bool(createdb), bool(createrole), bool(bypassrls), role_id)
            for name, createdb, createrole, bypassrls, role_id in rows
        }

    async def set_role_id(self, role: str, role_id: str) -> None:
        """Keep the role_id the roles API was asked for (when it is not the one derived from the name)."""
        from psycopg import sql

        await self.admin_query(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(role), sql.SQL(ROLE_ID_SETTING), sql.Literal(role_id)
            ).as_string()
        )

    async def list_databases(self, server: PostgresServer | None = None) -> list[tuple[str, str]]:
        """(name, owner) of the user databases."""
        return [
            (n, o)
            for n, o in await self.admin_query(
                "SELECT d.datname, pg_get_userbyid(d.datdba) FROM pg_database d "
                "WHERE NOT d.datistemplate AND d.datname <> 'postgres' ORDER BY 1", server=server
            )
        ]

    async def create_role(self, identity: str, identity_type: str, *, createdb: bool = False,
                          createrole: bool = False, bypassrls: bool = False,
                          superuser_member: bool = False, auth_method: str = "LAKEBASE_OAUTH_V1") -> RoleInfo:
        """What the roles API does; raises ValueError with a user-facing message on bad input."""
        import psycopg
        from psycopg import sql

        if await self.role_info(identity, cached=False):
            raise FileExistsError(f'role "{identity}" already exists')
        attrs = ["LOGIN" if auth_method != "NO_LOGIN" else "NOLOGIN", "INHERIT"]
        attrs += ["CREATEDB" if createdb else "NOCREATEDB", "CREATEROLE" if createrole else "NOCREATEROLE"]
        attrs += ["BYPASSRLS"] if bypassrls else []
        create = sql.SQL("CREATE ROLE {} " + " ".join(attrs)).format(sql.Identifier(identity))
        password = new_password() if auth_method == "PG_PASSWORD_SCRAM_SHA_256" else None
        if password is not None:  # only the verifier reaches Postgres (and could reach its log)
            create = sql.SQL("{} PASSWORD {}").format(create, sql.Literal(make_verifier(password)))
        try:
            await self.admin_query(create.as_string())
        except psycopg.Error as exc:  # a reserved name (pg_...) and the like; the statement is not shown
            raise ValueError(f"Postgres refused to create role {identity!r}: {exc.diag.message_primary}") from None
        if password is not None:
            self.native.remember(identity, password)
        if auth_method == "LAKEBASE_OAUTH_V1":
            await self.admin_query(
                sql.SQL("ALTER ROLE {} SET databricks_auth.identity_type = {}").format(
                    sql.Identifier(identity), sql.Literal(identity_type.upper())
                ).as_string()
            )
        if superuser_member:
            await self.admin_query(sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(SUPERUSER_GROUP), sql.Identifier(identity)).as_string())
        info = await self.role_info(identity, cached=False)
        assert info is not None
        return info

    async def role_password(self, role: str, endpoint: Endpoint | None = None) -> RolePassword | None:
        """The role's login flag, password verifier and VALID UNTIL, from ``pg_authid`` on the branch of
        ``endpoint`` (default: the default branch); None: no such role."""
        branch = DEFAULT_BRANCH if endpoint is None else endpoint.branch_id
        server = await self.branch_server(branch)
        rows = await self.admin_query(
            "SELECT rolcanlogin, rolpassword, rolvaliduntil::text, rolvaliduntil <= now() FROM pg_authid "
            "WHERE rolname = %s", (role,), server=server)  # as text: VALID UNTIL 'infinity' is no Python datetime
        if not rows:
            return None
        can_login, verifier, valid_until, expired = rows[0]
        return RolePassword(bool(can_login), verifier, valid_until, bool(expired))

    # ---- sessions -------------------------------------------------------------------------------
    async def terminate_backends(self, server: PostgresServer, pids: list[int]) -> None:
        """``pg_terminate_backend`` on ``server``, waiting (up to TERMINATE_WAIT_MS) for each backend to
        exit, so that when a fault returns its sessions are over, not merely signalled."""
        await self.admin_query("SELECT pg_terminate_backend(p, %s) FROM unnest(%s::int[]) p",
                               (TERMINATE_WAIT_MS, pids), server=server)

    async def terminate_sessions(self, endpoint: Endpoint | None, reason: str) -> int:
        """End the proxy's sessions to ``endpoint`` (all: ``None``); none exist before the proxy does."""
        if self.proxy is None:
            return 0
        return await self.proxy.terminate_sessions(endpoint, reason)

    # ---- identities and endpoints --------------------------------------------------------------
    def add_identity(self, name: str, type_: str, display_name: str | None = None) -> Identity:
        """Add a workspace identity (idempotent); databricks_create_role accepts it from then on."""
        ident = self.workspace.add_identity(name, type_, display_name)
        self.workspace.save()
        self.write_identities_file()
        return ident

    def add_read_only_endpoint(self, endpoint_id: str) -> Endpoint:
        ws = self.workspace
        if endpoint_id not in ws.endpoints:
            ws.add_endpoint(endpoint_id, READ_ONLY)
            ws.save()
        self.ensure_replica()
        return ws.endpoints[endpoint_id]

    # ---- branches ------------------------------------------------------------------------------
    async def branch_server(self, branch_id: str) -> PostgresServer:
        """The (started) server of a branch: the primary for the default branch."""
        return self.pg if branch_id == DEFAULT_BRANCH else await self.branches.ready(branch_id)

    async def create_branch(self, branch: Branch) -> Branch:
        """Copy the source branch into the (registered, INIT) ``branch`` and give it its read-write
        endpoint ``primary``; on failure the branch is unregistered again."""
        ws = self.workspace
        try:
            source = await self.branch_server(branch.source_branch)
            branch.source_branch_lsn = await self.branches.copy(branch.branch_id, source)
        except BaseException:
            if ws.branches.get(branch.branch_id) is branch:
                del ws.branches[branch.branch_id]
            raise
        if ws.branches.get(branch.branch_id) is not branch:  # deleted while being copied
            await self.branches.remove(branch.branch_id)
            raise RuntimeError(f"branch '{branch.name}' was deleted while it was being created")
        branch.state = "READY"
        ws.add_endpoint(PRIMARY_ENDPOINT, READ_WRITE, branch.branch_id)
        ws.save()
        return branch

    async def delete_branch(self, branch: Branch, reason: str = "branch deleted") -> None:
        """Unregister the branch and its endpoints, end their sessions, stop its cluster and free
        its storage."""
        ws = self.workspace
        ws.branches.pop(branch.branch_id, None)
        endpoints = ws.branch_endpoints(branch.branch_id)
        for ep in endpoints:
            ws.remove_endpoint(ep)
        ws.save()
        for ep in endpoints:
            await self.terminate_sessions(ep, reason)
        for key in [k for k in self._role_cache if k[0] == branch.branch_id]:
            del self._role_cache[key]
        await self.branches.remove(branch.branch_id)

    async def expire_branches_forever(self) -> None:
        """Delete each branch when its expire_time (from ``ttl`` or ``expire_time``) has come."""
        while True:
            await asyncio.sleep(BRANCH_EXPIRY_INTERVAL)
            now = time.time()
            for branch in list(self.workspace.branches.values()):
                if branch.state == "READY" and branch.expire_time is not None and branch.expire_time <= now:
                    try:
                        await self.delete_branch(branch, "branch expired")
                        log.info("branch %s expired and was deleted", branch.name)
                    except Exception:
                        log.exception("deleting the expired branch %s failed", branch.name)

    # ---- credentials ---------------------------------------------------------------------------
    def issue_credential(self, identity: Identity, ttl_seconds: float | None = None) -> tuple[str, Claims]:
        lifetime = self.config.token_ttl_seconds
        if ttl_seconds is not None:
            lifetime = min(lifetime, ttl_seconds)
        token, claims = self.tokens.issue(identity.name, DATABASE_AUDIENCE, lifetime)
        self.stats.credentials_issued += 1
        return token, claims

    # ---- faults --------------------------------------------------------------------------------
    def configure(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.config.update(values)

    def expire_tokens(self) -> None:
        self.tokens.revoke_issued_before(DATABASE_AUDIENCE)

    def start_outage(self, seconds: float, status: int = 503) -> None:
        self.outage.start(seconds, status)

    def start_api_hang(self, seconds: float) -> None:
        self.api_hang.start(seconds)

    def reported_expiry(self, claims: Claims) -> float:
        """The ``expire_time`` the credential APIs report: the real one plus the configured skew."""
        return claims.expires_at + self.config.expire_time_skew_seconds

    @property
    def restarting(self) -> float:
        """Seconds left in a restart (logins wait them out)."""
        return max(0.0, self._restart_until - time.monotonic())

    async def restart(self) -> int:
        """Every session ends with 57P01; new logins wait ``restart_seconds``. Returns sessions ended."""
        self._restart_until = time.monotonic() + self.config.restart_seconds
        self.stats.restarts += 1
        self.fault_generation += 1
        return await self.terminate_sessions(None, "restart")

    async def suspend(self, endpoint: Endpoint | None = None) -> int:
        """Scale to zero: the endpoint goes IDLE, its sessions end with 57P01; the next login wakes it.
        Raises ConfigError for an endpoint with ``no_suspension`` set."""
        ep = endpoint or self.workspace.primary
        if ep.no_suspension:
            raise ConfigError(f"endpoint '{ep.name}' has no_suspension set (through update_endpoint), so it "
                              "never scales to zero and the suspend fault is refused; set "
                              "spec.suspend_timeout_duration or spec.no_suspension=false first")
        ep.state = IDLE
        self.fault_generation += 1
        return await self.terminate_sessions(ep, "suspend")

    def stats_dict(self) -> dict[str, Any]:
        data = self.stats.as_dict()
        data["endpoints"] = {ep.name: ep.state for ep in self.workspace.endpoints.values()}
        data["credential_outage_seconds_left"] = round(self.outage.remaining(), 3)
        data["api_hang_seconds_left"] = round(self.api_hang.remaining(), 3)
        data["api_requests_hanging"] = self.api_hang.waiting
        return data


