"""The emulated workspace: identities, the Lakebase project and its endpoints, persisted in DIR.

``workspace.json`` keeps what must survive a restart (identities and their secrets, endpoints).
Roles and databases are not kept here: Postgres itself is their source of truth.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import write_private

DEFAULT_PROJECT = "emulator"
DEFAULT_BRANCH = "production"
PRIMARY_ENDPOINT = "primary"
DEFAULT_DATABASE = "databricks_postgres"
OWNER_EMAIL = "developer@example.com"
APP_NAME = "notes-app"
INSTANCE_NAME = "emulator-instance"

READ_WRITE = "ENDPOINT_TYPE_READ_WRITE"
READ_ONLY = "ENDPOINT_TYPE_READ_ONLY"

# Runtime states of an endpoint (status.current_state).
ACTIVE = "ACTIVE"
IDLE = "IDLE"
INIT = "INIT"

# Project permission levels (as on Databricks): the owner manages the project (creates, updates and
# deletes its branches, endpoints, roles and databases); every other workspace identity may use it
# (read it and generate database credentials).
CAN_MANAGE = "CAN_MANAGE"
CAN_USE = "CAN_USE"


@dataclass
class Identity:
    """A workspace identity: a user (email), a service principal (application id) or a group."""

    name: str
    type: str  # USER | SERVICE_PRINCIPAL | GROUP
    id: str
    display_name: str
    pat: str | None = None
    client_secret: str | None = None

    def __repr__(self) -> str:  # never show secrets
        return f"Identity(name={self.name!r}, type={self.type!r})"


@dataclass
class Endpoint:
    endpoint_id: str
    branch_id: str
    project_id: str
    endpoint_type: str
    uid: str
    create_time: float
    autoscaling_limit_min_cu: float = 0.5
    autoscaling_limit_max_cu: float = 1.0
    # Set through the API (update_endpoint); neither set: the emulator's suspend_after_idle_seconds.
    suspend_timeout_seconds: float | None = None
    no_suspension: bool = False
    # Runtime only (not persisted): kept up to date by the proxy.
    state: str = field(default=ACTIVE, compare=False)
    last_active_time: float = field(default_factory=time.time, compare=False)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}/branches/{self.branch_id}/endpoints/{self.endpoint_id}"

    @property
    def parent(self) -> str:
        return f"projects/{self.project_id}/branches/{self.branch_id}"

    @property
    def read_only(self) -> bool:
        return self.endpoint_type == READ_ONLY

    @property
    def host(self) -> str:
        """The hostname clients use; the primary is plain ``localhost`` so libpq resolves it anywhere.
        Others on the default branch are ``<endpoint_id>.localhost``, those of other branches
        ``<uid>.localhost`` (``ep-...``, unique as Lakebase's hostnames; loopback by RFC 6761; select
        by SNI)."""
        if self.branch_id != DEFAULT_BRANCH:
            return f"{self.uid}.localhost"
        if self.endpoint_id == PRIMARY_ENDPOINT:
            return "localhost"
        return f"{self.endpoint_id}.localhost"

    @property
    def key(self) -> str:
        """Its key in ``Workspace.endpoints``: the endpoint id on the default branch (as before
        branches existed), ``<branch_id>/<endpoint_id>`` elsewhere (every branch has a ``primary``)."""
        return self.endpoint_id if self.branch_id == DEFAULT_BRANCH else f"{self.branch_id}/{self.endpoint_id}"

    def suspend_after(self, default: float | None) -> float | None:
        """Seconds without sessions after which this endpoint suspends (None: never), given the
        emulator-wide ``suspend_after_idle_seconds``."""
        if self.no_suspension:
            return None
        return default if self.suspend_timeout_seconds is None else self.suspend_timeout_seconds

    def persistent(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state")
        data.pop("last_active_time")
        return data


@dataclass
class Branch:
    """A branch other than the default one: a copy of its source branch's databases (its own Postgres
    cluster, ``branches.py``) with its own read-write endpoint."""

    branch_id: str
    project_id: str
    uid: str
    create_time: float
    source_branch: str  # the source's branch id
    source_branch_lsn: str = ""  # where the copy was taken (set when the copy is done)
    expire_time: float | None = None  # None: no expiry
    is_protected: bool = False
    # Runtime only (not persisted): INIT until the copy is done, then READY.
    state: str = field(default="INIT", compare=False)

    @property
    def name(self) -> str:
        return f"projects/{self.project_id}/branches/{self.branch_id}"

    def persistent(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("state")
        return data


def _new_pat() -> str:
    return "dapi" + secrets.token_hex(16)


@dataclass
class Workspace:
    path: Path
    workspace_id: int
    project_id: str
    project_uid: str
    create_time: float
    identities: dict[str, Identity]
    endpoints: dict[str, Endpoint]  # by Endpoint.key
    branches: dict[str, Branch] = field(default_factory=dict)  # by branch id; not the default branch

    # ---- persistence -------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, path: Path) -> Workspace:
        if path.exists():
            try:
                data = json.loads(path.read_text())
                ws = cls(
                    path=path,
                    workspace_id=int(data["workspace_id"]),
                    project_id=data["project_id"],
                    project_uid=data["project_uid"],
                    create_time=float(data["create_time"]),
                    identities={i["name"]: Identity(**i) for i in data["identities"]},
                    endpoints={ep.key: ep for ep in (Endpoint(**e) for e in data["endpoints"])},
                    branches={b["branch_id"]: Branch(**b, state="READY") for b in data.get("branches", [])},
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path} is damaged ({exc!r}); move it away to start a fresh workspace "
                    "(the Postgres data in the same directory is kept)"
                ) from exc
            return ws
        now = time.time()
        ws = cls(
            path=path,
            workspace_id=secrets.randbelow(9 * 10**15) + 10**15,
            project_id=DEFAULT_PROJECT,
            project_uid=str(uuid.uuid4()),
            create_time=now,
            identities={},
            endpoints={},
        )
        ws.add_identity(OWNER_EMAIL, "USER", display_name="Local Developer")
        ws.add_identity(str(uuid.uuid4()), "SERVICE_PRINCIPAL", display_name=APP_NAME)
        ws.add_endpoint(PRIMARY_ENDPOINT, READ_WRITE)
        ws.save()
        return ws

    def save(self) -> None:
        data = {
            "workspace_id": self.workspace_id,
            "project_id": self.project_id,
            "project_uid": self.project_uid,
            "create_time": self.create_time,
            "identities": [asdict(i) for i in self.identities.values()],
            "endpoints": [e.persistent() for e in self.endpoints.values()],
            "branches": [b.persistent() for b in self.branches.values() if b.state == "READY"],
        }
        write_private(self.path, json.dumps(data, indent=2))

    # ---- identities --------------------------------------------------------------------------
    def add_identity(self, name: str, type_: str, display_name: str | None = None) -> Identity:
        type_ = type_.upper()
        if type_ not in ("USER", "SERVICE_PRINCIPAL", "GROUP"):
            raise ValueError(f"identity type must be USER, SERVICE_PRINCIPAL or GROUP, got {type_!r}")
        if name in self.identities:
            return self.identities[name]
        ident = Identity(
            name=name,
            type=type_,
            id=str(secrets.randbelow(9 * 10**15) + 10**15),
            display_name=display_name or name,
            pat=_new_pat() if type_ == "USER" else None,
            client_secret=("dose" + secrets.token_hex(20)) if type_ == "SERVICE_PRINCIPAL" else None,
        )
        self.identities[name] = ident
        return ident

    @property
    def owner(self) -> Identity:
        return next(i for i in self.identities.values() if i.type == "USER")

    @property
    def app(self) -> Identity:
        return next(i for i in self.identities.values() if i.type == "SERVICE_PRINCIPAL")

    def permission(self, ident: Identity) -> str:
        """The identity's permission on the project: the owner's CAN_MANAGE, everyone else's CAN_USE."""
        return CAN_MANAGE if ident.name == self.owner.name else CAN_USE

    def identity_by_pat(self, token: str) -> Identity | None:
        for ident in self.identities.values():
            if ident.pat is not None and secrets.compare_digest(ident.pat, token):
                return ident
        return None

    def identity_by_client(self, client_id: str, client_secret: str) -> Identity | None:
        ident = self.identities.get(client_id)
        if ident is None or ident.client_secret is None:
            return None
        return ident if secrets.compare_digest(ident.client_secret, client_secret) else None

    def identities_file_content(self) -> str:
        """What the databricks_auth extension reads to know the workspace's identities."""
        return json.dumps({i.name: i.type for i in self.identities.values()})

    # ---- endpoints ---------------------------------------------------------------------------
    def add_endpoint(self, endpoint_id: str, endpoint_type: str, branch_id: str = DEFAULT_BRANCH) -> Endpoint:
        ep = Endpoint(
            endpoint_id=endpoint_id,
            branch_id=branch_id,
            project_id=self.project_id,
            endpoint_type=endpoint_type,
            uid="ep-" + secrets.token_hex(6),
            create_time=time.time(),
        )
        self.endpoints[ep.key] = ep
        return ep

    def remove_endpoint(self, ep: Endpoint) -> None:
        self.endpoints.pop(ep.key, None)

    def branch_endpoints(self, branch_id: str) -> list[Endpoint]:
        return [ep for ep in self.endpoints.values() if ep.branch_id == branch_id]

    @property
    def project_name(self) -> str:
        return f"projects/{self.project_id}"

    @property
    def primary(self) -> Endpoint:
        return self.endpoints[PRIMARY_ENDPOINT]

    def find_endpoint(self, key: str) -> Endpoint | None:
        """By endpoint id, full resource name, uid or host (as sent in TLS SNI)."""
        key = key.strip().lower()
        # The default branch's first: a bare "primary" is its primary (every branch has one).
        for ep in sorted(self.endpoints.values(), key=lambda e: e.branch_id != DEFAULT_BRANCH):
            if key in (ep.endpoint_id, ep.name, ep.uid, ep.host):
                return ep
        if key.endswith(".localhost"):
            return self.find_endpoint(key[: -len(".localhost")].split(".")[0])
        return None
