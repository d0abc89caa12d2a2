"""``lakebase.testing``: the pytest plugin (``pip install "lakebase[testing]"``; entry point ``pytest11``).

Fixtures (nothing starts unless a test uses one)::

    lakebase_emulator        session   an emulator (child process) in a temporary directory, one per
                                       pytest-xdist worker; or the running one in --lakebase-emulator DIR
                                       / $LAKEBASE_EMULATOR_DIR
    lakebase_env             function  the environment of the project owner: lakebase.connect(),
                                       ConnectionPool(), create_engine() ... with no arguments reach it
    lakebase_app_env         function  the same as the app's service principal (OAuth M2M), its role
                                       created and granted as the tutorial does
    lakebase_faults          function  restart(), suspend(), credential_outage(), expire_tokens(),
                                       configure(...) of the emulator behind the test, undone after it
    lakebase_transaction     function  a psycopg connection inside a transaction rolled back after the test
    lakebase_branch          function  a fresh branch of the main branch (lakebase_env points at it),
    lakebase_module_branch   module    deleted after the test / the module

With ``--lakebase-workspace`` or ``LAKEBASE_TEST_PROJECT`` (``projects/<id>`` or ``<id>``) the branch
fixtures and ``lakebase_env`` use that project of a real workspace (the Databricks SDK's unified auth
from the environment) and make every branch with a TTL (``LAKEBASE_TEST_BRANCH_TTL`` seconds, default
3600) as a backstop should a run be killed before its teardown; the fixtures that need the emulator
(``lakebase_emulator``, ``lakebase_faults``, ``lakebase_app_env``) skip there.

This module is the plugin's entry point rather than ``lakebase/testing.py`` itself because importing
the ``lakebase`` package loads psycopg and the Databricks SDK (seconds): every pytest run in an
environment that has the extra loads the plugin, and must not pay for that. ``lakebase.testing`` is
this same module object (``import lakebase.testing``, ``-p lakebase.testing`` work, but import the package;
the entry point does not); at import it needs pytest and the standard library only, everything else is
imported by the fixture that uses it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from lakebase.emulator import EmulatorProcess

__all__ = [
    "Branch",
    "Faults",
    "Target",
    "clear_env",
    "lakebase_app_env",
    "lakebase_branch",
    "lakebase_emulator",
    "lakebase_env",
    "lakebase_faults",
    "lakebase_module_branch",
    "lakebase_transaction",
]

EMULATOR_DIR_VAR = "LAKEBASE_EMULATOR_DIR"
TEST_PROJECT_VAR = "LAKEBASE_TEST_PROJECT"
BRANCH_TTL_VAR = "LAKEBASE_TEST_BRANCH_TTL"
DEFAULT_BRANCH_TTL = 3600.0
DEFAULT_DATABASE = "databricks_postgres"

# What clear_env removes: every setting the library, libpq and the Databricks SDK read.
ENV_PREFIXES = ("DATABRICKS_", "PG", "LAKEBASE_")
ENV_NAMES = ("ENDPOINT_NAME",)
# What names the target (rather than how to log in): replaced on a real workspace.
TARGET_NAMES = ("ENDPOINT_NAME", "PGENDPOINT", "LAKEBASE_ENDPOINT", "LAKEBASE_INSTANCE_NAME", "PGHOST",
                "PGHOSTADDR")
NO_CONFIG_FILE = "/nonexistent/lakebase-testing/databrickscfg"
# Variables whose values are secrets (DATABRICKS_TOKEN, DATABRICKS_CLIENT_SECRET, PGPASSWORD, ...).
SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD")


class SecretValue(str):
    """A secret's value, itself everywhere (os.environ, subprocess, comparisons) but in its repr: a
    failing assertion on the fixture's dict, or ``--showlocals``, must not print a real workspace's PAT."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'[REDACTED]'"


def masked(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the values of its secret variables as :class:`SecretValue`."""
    return {k: SecretValue(v) if any(m in k.upper() for m in SECRET_MARKERS) else v for k, v in env.items()}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lakebase", "Lakebase (lakebase.testing)")
    group.addoption(
        "--lakebase-emulator", metavar="DIR", default=None,
        help=f"use the emulator already running with data directory DIR (`lakebase emulator start --data-dir "
             f"DIR`) instead of starting one per session (default: ${EMULATOR_DIR_VAR})")
    group.addoption(
        "--lakebase-workspace", action="store_true", default=False,
        help=f"run lakebase_env and the branch fixtures on branches of the real Lakebase project "
             f"${TEST_PROJECT_VAR}, with the environment's Databricks auth (implied when it is set)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--lakebase-workspace", False) and not os.environ.get(TEST_PROJECT_VAR, "").strip():
        raise pytest.UsageError(
            f"--lakebase-workspace needs the project to branch from: set {TEST_PROJECT_VAR}=projects/<project id> "
            f"(and the Databricks auth of the workspace, e.g. DATABRICKS_HOST and DATABRICKS_TOKEN)")


def clear_env(monkeypatch: pytest.MonkeyPatch, config_file: str | Path | None = NO_CONFIG_FILE) -> None:
    """Remove every ``DATABRICKS_*``, ``PG*``, ``LAKEBASE_*`` and ``ENDPOINT_NAME`` variable (undone by
    ``monkeypatch``) and point the SDK at ``config_file``, by default one that does not exist: a
    developer's ``~/.databrickscfg`` must not leak in (None: the SDK's default file)."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIXES) or key in ENV_NAMES:
            monkeypatch.delenv(key, raising=False)
    if config_file is not None:
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config_file))


# ---- where the tests run: the emulator, or a real workspace ------------------------------------------
@dataclass(frozen=True)
class Branch:
    """A branch made for a test (``name``: ``projects/<p>/branches/<b>``), with its read-write endpoint."""

    name: str
    endpoint_name: str
    host: str

    @property
    def branch_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass
class Target:
    """The workspace the fixtures use: the session's emulator (``emulator`` set), or a real one."""

    client: Any  # databricks.sdk.WorkspaceClient of the project owner / the environment's identity
    project: str  # projects/<id>
    emulator: EmulatorProcess | None = None
    branch_ttl: float | None = DEFAULT_BRANCH_TTL
    _source_branch: str | None = field(default=None, repr=False)
    granted: set[tuple[str, str]] = field(default_factory=set, repr=False)  # (endpoint, role) with a role

    @property
    def is_workspace(self) -> bool:
        return self.emulator is None

    def source_branch(self) -> str:
        """The project's default branch (``production`` unless changed)."""
        if self._source_branch is None:
            project = self.client.postgres.get_project(self.project)
            default = project.status.default_branch if project.status else None
            self._source_branch = default or f"{self.project}/branches/production"
        return self._source_branch

    def create_branch(self, prefix: str = "test") -> Branch:
        """A branch of the default branch, with a TTL, and its read-write endpoint (made when the
        service did not make one with the branch)."""
        from databricks.sdk.service.postgres import Branch as BranchResource
        from databricks.sdk.service.postgres import BranchSpec, Endpoint, EndpointSpec, EndpointType
        from google.protobuf.duration_pb2 import Duration

        branch_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        spec = BranchSpec(source_branch=self.source_branch())
        if self.branch_ttl:
            spec.ttl = Duration(seconds=int(self.branch_ttl))
        branch = self.client.postgres.create_branch(
            parent=self.project, branch=BranchResource(spec=spec), branch_id=branch_id).wait()
        name = branch.name or f"{self.project}/branches/{branch_id}"
        try:
            endpoint = self._read_write_endpoint(name)
            if endpoint is None:
                endpoint = self.client.postgres.create_endpoint(
                    parent=name, endpoint_id="primary",
                    endpoint=Endpoint(spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_WRITE))).wait()
            host = endpoint.status.hosts.host if endpoint.status and endpoint.status.hosts else None
            if not host:
                raise RuntimeError(f"the endpoint {endpoint.name} of the new branch {name} has no host yet")
        except BaseException:
            self.delete_branch(name)
            raise
        return Branch(name=name, endpoint_name=endpoint.name, host=host)

    def _read_write_endpoint(self, branch: str) -> Any:
        from databricks.sdk.service.postgres import EndpointType

        for endpoint in self.client.postgres.list_endpoints(parent=branch):
            kind = ((endpoint.status and endpoint.status.endpoint_type)
                    or (endpoint.spec and endpoint.spec.endpoint_type))
            if kind == EndpointType.ENDPOINT_TYPE_READ_WRITE:
                return endpoint
        return None

    def delete_branch(self, name: str) -> None:
        from databricks.sdk.errors import NotFound

        with contextlib.suppress(NotFound):  # gone already (its TTL, or the test deleted it)
            self.client.postgres.delete_branch(name).wait()

    def owner_env(self, branch: Branch | None) -> dict[str, str]:
        """The environment of the project owner, on ``branch`` or the default branch's endpoint."""
        if self.emulator is not None:
            env = dict(self.emulator.user_env)
        else:
            env = {k: v for k, v in os.environ.items()
                   if k.startswith(ENV_PREFIXES) and k not in TARGET_NAMES}
            env.setdefault("PGDATABASE", DEFAULT_DATABASE)
        if branch is not None:
            env.update(PGHOST=branch.host, ENDPOINT_NAME=branch.endpoint_name)
        return env


def _workspace_target() -> Target:
    from databricks.sdk import WorkspaceClient

    project = os.environ[TEST_PROJECT_VAR].strip().strip("/")
    if not project.startswith("projects/"):
        project = f"projects/{project}"
    ttl = float(os.environ.get(BRANCH_TTL_VAR) or DEFAULT_BRANCH_TTL)
    return Target(client=WorkspaceClient(), project=project, branch_ttl=ttl)


def _emulator_target(emulator: EmulatorProcess) -> Target:
    from databricks.sdk import WorkspaceClient

    client = WorkspaceClient(host=emulator.api_url, token=emulator.owner.pat, auth_type="pat",
                             config_file=NO_CONFIG_FILE)
    project = emulator.endpoint_name.split("/branches/", 1)[0]
    return Target(client=client, project=project, emulator=emulator)


def _workspace_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--lakebase-workspace", False) or os.environ.get(TEST_PROJECT_VAR, "").strip())


def _needs_emulator(config: pytest.Config, what: str) -> None:
    if _workspace_mode(config):
        pytest.skip(f"{what} needs the Lakebase emulator; this run uses the real project ${TEST_PROJECT_VAR}")


# ---- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lakebase_emulator(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    """The session's emulator: ``--lakebase-emulator DIR`` / ``$LAKEBASE_EMULATOR_DIR`` (a running one,
    left running), else a child process in a temporary directory of this session (of this xdist worker:
    its own ports), stopped at the end of the session."""
    _needs_emulator(request.config, "lakebase_emulator")
    from lakebase.emulator import EmulatorProcess

    directory = request.config.getoption("--lakebase-emulator") or os.environ.get(EMULATOR_DIR_VAR, "").strip()
    if directory:
        yield EmulatorProcess.attach(directory)
        return
    emulator = EmulatorProcess(tmp_path_factory.mktemp("lakebase-emulator"))
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def _lakebase_target(request: pytest.FixtureRequest) -> Target:
    if _workspace_mode(request.config):
        return _workspace_target()
    return _emulator_target(request.getfixturevalue("lakebase_emulator"))


def _branch(target: Target, prefix: str) -> Iterator[Branch]:
    branch = target.create_branch(prefix)
    try:
        yield branch
    finally:
        target.delete_branch(branch.name)


@pytest.fixture
def _lakebase_test_branch(_lakebase_target: Target) -> Iterator[Branch]:
    yield from _branch(_lakebase_target, "test")


@pytest.fixture(scope="module")
def lakebase_module_branch(_lakebase_target: Target) -> Iterator[Branch]:
    """A fresh branch of the main branch for this module, deleted after it; ``lakebase_env`` (request it
    too) points at it."""
    yield from _branch(_lakebase_target, "module")


@pytest.fixture(scope="session")
def _lakebase_session_branch(_lakebase_target: Target) -> Iterator[Branch]:
    """On a real workspace, what ``lakebase_env`` uses when the test has no branch of its own: never
    the project's main branch."""
    yield from _branch(_lakebase_target, "session")


def _test_branch(request: pytest.FixtureRequest, target: Target) -> Branch | None:
    if "lakebase_branch" in request.fixturenames:
        return request.getfixturevalue("_lakebase_test_branch")
    if "lakebase_module_branch" in request.fixturenames:
        return request.getfixturevalue("lakebase_module_branch")
    if target.is_workspace:
        return request.getfixturevalue("_lakebase_session_branch")
    return None


@pytest.fixture
def lakebase_env(request: pytest.FixtureRequest, _lakebase_target: Target,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The project owner's environment (PAT) for this test: ``DATABRICKS_HOST``, ``DATABRICKS_TOKEN``,
    ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGSSLMODE``, ``ENDPOINT_NAME``, ...; on the test's branch if
    it uses one. Every other Lakebase, Databricks and libpq variable is removed; all is restored after
    the test. Returns the variables set. On a real workspace: the environment's Databricks auth and
    libpq options, pointed at the test's branch, else at a branch made for the session (never at the
    project's main branch)."""
    if "lakebase_app_env" in request.fixturenames:
        pytest.fail("a test can use lakebase_env or lakebase_app_env, not both: they set the same variables to "
                    "different identities", pytrace=False)
    env = _lakebase_target.owner_env(_test_branch(request, _lakebase_target))
    # On a real workspace the auth may come from a profile of ~/.databrickscfg: left as it is.
    clear_env(monkeypatch, None if _lakebase_target.is_workspace else NO_CONFIG_FILE)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return masked(env)


def _use_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The app's environment if the test asked for it, else the owner's."""
    name = "lakebase_app_env" if "lakebase_app_env" in request.fixturenames else "lakebase_env"
    return request.getfixturevalue(name)


@pytest.fixture
def lakebase_branch(request: pytest.FixtureRequest, _lakebase_test_branch: Branch) -> Branch:
    """A fresh branch of the main branch for this test (a real copy of its data), deleted after it;
    the environment (``lakebase_env``, or ``lakebase_app_env`` when the test uses it) points at it."""
    _use_env(request)
    return _lakebase_test_branch


# The tutorial's step 2 for the app's role (its table and sample notes left out): run by the project owner.
APP_ROLE_SQL = (
    "CREATE EXTENSION IF NOT EXISTS databricks_auth",
    "SELECT databricks_create_role({role_literal}, 'service_principal')",
    "GRANT CONNECT ON DATABASE {database} TO {role}",
    "GRANT CREATE, USAGE ON SCHEMA public TO {role}",
)


def create_app_role(conn: Any, role: str) -> bool:
    """The app's Postgres role as the tutorial makes it (``databricks_create_role``, CONNECT on the
    database, CREATE and USAGE on ``public``), unless it exists; True if made. ``conn``: the owner's."""
    from psycopg import sql

    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        return False
    database = conn.execute("SELECT current_database()").fetchone()[0]
    with conn.transaction():
        for statement in APP_ROLE_SQL:
            conn.execute(sql.SQL(statement).format(
                role_literal=sql.Literal(role), role=sql.Identifier(role), database=sql.Identifier(database)))
    return True


@pytest.fixture
def lakebase_app_env(request: pytest.FixtureRequest, _lakebase_target: Target,
                     monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a deployed Databricks App (OAuth M2M: ``DATABRICKS_CLIENT_ID``,
    ``DATABRICKS_CLIENT_SECRET``, ``PGUSER`` the client id) on the test's endpoint. Its role is made
    first if missing, as the tutorial makes it: it may create tables in ``public``; tables the owner
    makes need a ``GRANT`` (or ``lakebase.grants.grant``)."""
    _needs_emulator(request.config, "lakebase_app_env (the emulator's app service principal)")
    emulator = _lakebase_target.emulator
    assert emulator is not None
    owner = _lakebase_target.owner_env(_test_branch(request, _lakebase_target))
    env = {**emulator.app_env, "PGHOST": owner["PGHOST"], "ENDPOINT_NAME": owner["ENDPOINT_NAME"]}
    key = (owner["ENDPOINT_NAME"], env["DATABRICKS_CLIENT_ID"])
    clear_env(monkeypatch)
    if key not in _lakebase_target.granted:
        with monkeypatch.context() as as_owner:
            for name, value in owner.items():
                as_owner.setenv(name, value)
            import lakebase

            with lakebase.connect(autocommit=True) as conn:
                create_app_role(conn, env["DATABRICKS_CLIENT_ID"])
        _lakebase_target.granted.add(key)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return masked(env)


class Faults:
    """The faults of the emulator behind the current test (``suspend()`` suspends the test's endpoint:
    its branch's when it has one). What a test changes is undone after it (config, outages, hangs).
    With one emulator shared by several xdist workers (``--lakebase-emulator``), a fault hits them all."""

    def __init__(self, emulator: EmulatorProcess, endpoint: str) -> None:
        self.emulator = emulator
        self.endpoint = endpoint

    def restart(self) -> int:
        """Postgres restarts: every session ends (57P01); returns how many."""
        return self.emulator.restart()

    def suspend(self, endpoint: str | None = None) -> int:
        """Scale to zero: the endpoint's sessions end (57P01), the next login waits for the wake-up."""
        return self.emulator.suspend(endpoint or self.endpoint)

    def credential_outage(self, seconds: float, status: int = 503) -> None:
        """The credential API answers ``status`` (503, or 429 with ``Retry-After``) for ``seconds``."""
        self.emulator.credential_outage(seconds, status)

    def api_hang(self, seconds: float) -> None:
        """The workspace API and OAuth token endpoint do not answer for ``seconds``."""
        self.emulator.api_hang(seconds)

    def expire_tokens(self) -> None:
        """Every database credential issued so far stops working."""
        self.emulator.expire_tokens()

    def configure(self, **values: Any) -> dict[str, Any]:
        """E.g. ``configure(token_ttl_seconds=5, wake_delay_seconds=1)``; see the emulator's settings."""
        return self.emulator.configure(**values)

    def stats(self) -> dict[str, Any]:
        return self.emulator.stats()


@pytest.fixture
def lakebase_faults(request: pytest.FixtureRequest, _lakebase_target: Target) -> Iterator[Faults]:
    """Faults of the emulator behind this test, undone after it (see :class:`Faults`)."""
    _needs_emulator(request.config, "lakebase_faults")
    emulator = _lakebase_target.emulator
    assert emulator is not None
    branch = _test_branch(request, _lakebase_target)
    before = emulator.config()
    try:
        yield Faults(emulator, branch.endpoint_name if branch else emulator.endpoint_name)
    finally:
        emulator.credential_outage(0)
        emulator.api_hang(0)
        emulator.configure(**before)


@pytest.fixture
def lakebase_transaction(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A psycopg connection (``lakebase.connect()``, as the project owner, or as the app with
    ``lakebase_app_env``) inside a transaction that is rolled back after the test: the fastest
    isolation. ``conn.commit()`` is refused inside it; savepoints (``conn.transaction()``) work."""
    _use_env(request)
    import lakebase

    conn = lakebase.connect()
    try:
        transaction = conn.transaction(force_rollback=True)
        transaction.__enter__()
        try:
            yield conn
        finally:
            if not conn.closed and not conn.broken:
                transaction.__exit__(None, None, None)
    finally:
        conn.close()
