"""``lakebase doctor``: check, step by step, that this environment can reach Lakebase, and say how to fix what cannot.

The checks run in order, each needing the ones before it (a failure skips those after it):

==============  ===============================================================================
configuration   the environment names an endpoint (or instance) and a workspace identity
endpoint        the workspace API answers, knows the endpoint, and tells its host and state
dns             the Postgres host resolves
tcp             something listens on host:port
tls             the server speaks TLS (as Lakebase requires) and, with verify-*, its certificate verifies
token           a database credential can be minted for this identity
login           Postgres accepts the token for PGUSER (this wakes a scaled-to-zero endpoint)
privileges      the role may use the schema (and its tables)
==============  ===============================================================================

:func:`run` returns :class:`Check` results; ``lakebase doctor`` prints them (``--json`` too) and
exits non-zero when one failed. Nothing here prints a token.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import diagnosis
from ._redact import redact

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

CHECKS = ("configuration", "endpoint", "dns", "tcp", "tls", "token", "login", "privileges")

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclass
class Check:
    """One check's outcome: ``status`` is ok, warn, fail or skip; ``fix`` says what to do."""

    name: str
    status: str
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "summary": self.summary, "fix": self.fix,
                "details": self.details, "seconds": round(self.seconds, 3)}


class _Failed(Exception):
    def __init__(self, summary: str, fix: str | None = None, **details: Any) -> None:
        super().__init__(summary)
        self.summary, self.fix, self.details = summary, fix, details


@dataclass
class _Context:
    timeout: float
    schema: str
    tables: tuple[str, ...]
    settings: Any = None
    workspace_client: Any = None
    connector: Any = None
    auth: str = ""
    identity: str | None = None  # who the workspace says we are
    api_host: str | None = None
    state_before: str | None = None
    host: str = ""
    port: int = 0
    addresses: list[str] = field(default_factory=list)
    hostaddr: str | None = None
    conn: Any = None


def run(*, timeout: float = 10.0, schema: str = "public", tables: Iterable[str] = (),
        on_start: Callable[[str], None] | None = None) -> list[Check]:
    """Run every check against the environment of this process; see the module doc."""
    from . import connector as _connector

    _connector.reset()  # nothing cached from earlier calls: check the environment as it is now
    ctx = _Context(timeout=timeout, schema=schema, tables=tuple(tables))
    steps: list[tuple[str, Callable[[_Context], tuple[str, str, dict[str, Any]]]]] = [
        ("configuration", _configuration), ("endpoint", _endpoint), ("dns", _dns), ("tcp", _tcp),
        ("tls", _tls), ("token", _token), ("login", _login), ("privileges", _privileges),
    ]
    results: list[Check] = []
    failed = False
    try:
        for name, step in steps:
            if failed:
                results.append(Check(name, SKIP, "skipped: an earlier check failed"))
                continue
            if on_start is not None:
                on_start(name)
            started = time.monotonic()
            try:
                status, summary, details = step(ctx)
                fix = details.pop("fix", None)
                results.append(Check(name, status, summary, fix, details, time.monotonic() - started))
            except _Failed as exc:
                failed = True
                results.append(Check(name, FAIL, redact(exc.summary), redact(exc.fix) if exc.fix else None,
                                     exc.details, time.monotonic() - started))
            except Exception as exc:  # a bug or an unforeseen error: still one clear line
                failed = True
                results.append(Check(name, FAIL, f"unexpected error: {type(exc).__name__}: {redact(str(exc))}",
                                     "run `lakebase doctor --verbose` for the logs, and report this as a bug",
                                     {}, time.monotonic() - started))
    finally:
        if ctx.conn is not None:
            ctx.conn.close()
        _connector.reset()
    return results


def ok(results: list[Check]) -> bool:
    return all(c.status != FAIL for c in results)


# ---- the checks ----------------------------------------------------------------------------------
def _configuration(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    from . import _sdk
    from .connector import get_connector
    from .errors import ConfigurationError
    from .settings import Settings

    try:
        ctx.settings = Settings(api_timeout=ctx.timeout, connect_timeout=ctx.timeout,
                                connect_deadline=max(ctx.timeout * 3, 10.0))
    except ConfigurationError as exc:
        raise _Failed(_problem(exc), _product_mixup(exc, ctx.timeout) or exc.fix) from exc
    try:
        ctx.workspace_client = _sdk.default_workspace_client(ctx.timeout)
    except ConfigurationError as exc:
        unreachable = _unreachable_workspace()
        if unreachable:
            raise _Failed(*unreachable) from exc
        raise _Failed(_problem(exc), _auth_fix(str(exc)) or exc.fix) from exc
    cfg = ctx.workspace_client.config
    ctx.auth = str(getattr(cfg, "auth_type", "") or "unknown")
    ctx.connector = get_connector(ctx.settings, ctx.workspace_client)
    s = ctx.settings
    where = f"{s.source('endpoint').replace('environment variable ', '')}={s.target_name}"
    user = f"PGUSER={s.user}" if s.user else "user from the workspace (/Me)"
    host = f"PGHOST={s.host}" if s.host else "host from the endpoint"
    summary = (f"{where}; {user}; {host}:{s.port}; sslmode={s.sslmode}; "
               f"workspace {cfg.host} ({_auth_label(ctx.auth)})")
    return OK, summary, {"endpoint": s.target_name, "product": s.product, "user": s.user, "host": s.host,
                         "port": s.port, "database": s.database, "sslmode": s.sslmode,
                         "workspace": cfg.host, "auth": ctx.auth}


def _endpoint(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    from .errors import ResolutionError

    try:
        ctx.connector._find_endpoint()  # only PGHOST set: the endpoint that has that host, as the library does
    except ResolutionError as exc:
        problem, _, hint = str(exc).partition(" Hint: ")
        raise _Failed(problem, hint or None) from exc
    s = ctx.settings = ctx.connector.settings
    apis = ctx.connector.apis
    try:
        if s.product == "autoscaling":
            ep = apis.call(apis.postgres.get_endpoint, s.target_name)
            status = getattr(ep, "status", None)
            hosts = getattr(status, "hosts", None)
            host = getattr(hosts, "read_only_host" if s.read_only else "host", None)
            state = getattr(getattr(status, "current_state", None), "value", None) or str(
                getattr(status, "current_state", "") or "unknown")
        else:
            inst = apis.call(apis.database.get_database_instance, s.target_name)
            host = getattr(inst, "read_only_dns" if s.read_only else "read_write_dns", None)
            state = getattr(getattr(inst, "state", None), "value", None) or str(getattr(inst, "state", "unknown"))
    except Exception as exc:
        raise _Failed(*_api_failure(exc, f"looking up {s.product} {s.target_name!r}", s)) from exc
    ctx.api_host = str(host) if host else None
    ctx.state_before = state
    details: dict[str, Any] = {"state": state, "api_host": ctx.api_host}
    notes: list[str] = []
    status_ = OK
    # Who are we? Tokens are minted for this identity; PGUSER must be its role.
    client_id = getattr(ctx.workspace_client.config, "client_id", None)
    try:
        ctx.identity = str(client_id) if client_id else apis.call(apis.current_user.me).user_name
    except Exception as exc:
        raise _Failed(*_api_failure(exc, "asking the workspace who we are (/Me)", s)) from exc
    details["identity"] = ctx.identity
    if s.user and ctx.identity and s.user != ctx.identity:
        status_ = WARN
        notes.append(f"PGUSER={s.user} but tokens are minted for {ctx.identity}: the login will be refused")
        details["fix"] = f"set PGUSER={ctx.identity} (or unset it), or use the workspace credentials of {s.user}"
    try:
        target = ctx.connector.target()
    except Exception as exc:
        raise _Failed(f"could not resolve the connection target: {exc}",
                      "set PGHOST to the endpoint's host and PGUSER to your role") from exc
    ctx.host, ctx.port = target.host, target.port
    if s.host and ctx.api_host and s.host != ctx.api_host and not s.read_only:
        status_ = WARN
        notes.append(f"PGHOST={s.host} differs from the endpoint's host {ctx.api_host}")
        details.setdefault("fix", f"set PGHOST={ctx.api_host}, or unset PGHOST to use the endpoint's host")
    if not ctx.host:
        raise _Failed(f"{s.target_name} has no host yet (state {state})", "wait for the endpoint to be ready")
    state_note = {
        "IDLE": "IDLE (scaled to zero; the login below wakes it)",
        "ACTIVE": "ACTIVE", "INIT": "INIT (still being created)", "DEGRADED": "DEGRADED",
    }.get(state, state)
    summary = f"{s.target_name} is {state_note}; host {ctx.api_host or '?'}; identity {ctx.identity}"
    if notes:
        summary += "; " + "; ".join(notes)
    return status_, summary, details


def _dns(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    from .endpoints import hostaddr_for

    host = ctx.host
    addresses: list[str] = []
    error: BaseException | None = None
    try:
        infos = socket.getaddrinfo(host, ctx.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    except (OSError, UnicodeError) as exc:
        error = exc
    fallback = None
    if not addresses:
        fallback = hostaddr_for(host, ctx.port)
        if fallback:
            addresses = [fallback]
            ctx.hostaddr = fallback
    if not addresses:
        if ctx.api_host and ctx.api_host != host:
            fix = f"set PGHOST={ctx.api_host} (the endpoint's host), or unset PGHOST"
        elif importlib.util.find_spec("dns") is None:
            fix = ("install dnspython (pip install \"lakebase[psycopg]\"): when the system resolver fails (a known "
                   "macOS problem with Lakebase host names), lakebase asks DNS itself and passes hostaddr")
        else:
            fix = ("check PGHOST and your network/DNS (the host is shown in the Lakebase Connect dialog); "
                   "on a VPN or corporate DNS, make sure *.databricks.com names resolve")
        raise _Failed(f"{host} does not resolve ({error})", fix, host=host)
    ctx.addresses = addresses
    if fallback:
        return WARN, (f"{host} -> {fallback}, but not by the system resolver ({error}): lakebase connects anyway "
                      "(it asks DNS itself and passes hostaddr), other tools cannot"), {
            "host": host, "addresses": addresses, "system_resolver": str(error),
            "fix": ("a known macOS resolver problem with Lakebase host names (also some VPNs): nothing to do for "
                    "lakebase; for psql and other libpq tools use `lakebase psql`, or eval \"$(lakebase env)\" "
                    f"(exports PGHOSTADDR={fallback}); or flush the DNS cache (sudo dscacheutil -flushcache; "
                    "sudo killall -HUP mDNSResponder)")}
    return OK, f"{host} -> {', '.join(addresses)}", {"host": host, "addresses": addresses}


def _tcp(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    last: BaseException | None = None
    for addr in ctx.addresses:
        started = time.monotonic()
        try:
            with socket.create_connection((addr, ctx.port), timeout=ctx.timeout):
                ms = (time.monotonic() - started) * 1000
                return OK, f"{addr}:{ctx.port} accepts connections ({ms:.0f} ms)", {"address": addr}
        except OSError as exc:
            last = exc
    port_var = "PGPORT" if ctx.settings.source("port") != "default" else "the port (default 5432)"
    if isinstance(last, ConnectionRefusedError):
        fix = (f"check {port_var}: Lakebase listens on 5432; a local emulator's port is in its user.env/app.env "
               "(is `lakebase emulator start` running?)")
        raise _Failed(f"nothing listens on {ctx.host}:{ctx.port} (connection refused)", fix, port=ctx.port)
    if isinstance(last, (TimeoutError, socket.timeout)):
        raise _Failed(f"no answer from {ctx.host}:{ctx.port} within {ctx.timeout:g}s",
                      "a firewall or proxy may block outbound TCP to port 5432; check the network path, "
                      f"and {port_var}", port=ctx.port)
    raise _Failed(f"cannot connect to {ctx.host}:{ctx.port}: {last}",
                  f"check the network path to {ctx.host} and {port_var}", port=ctx.port)


def _tls(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    s = ctx.settings
    addr = ctx.addresses[0]
    context = ssl.create_default_context()
    if s.sslmode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = s.sslmode == "verify-full"
        if s.sslrootcert:
            try:
                context.load_verify_locations(cafile=s.sslrootcert)
            except (OSError, ssl.SSLError) as exc:
                raise _Failed(f"cannot read sslrootcert {s.sslrootcert}: {exc}",
                              "point PGSSLROOTCERT at the CA certificate file (PEM)") from exc
    with socket.create_connection((addr, ctx.port), timeout=ctx.timeout) as sock:
        sock.sendall(_SSL_REQUEST)
        answer = sock.recv(1)
        if answer != b"S":
            raise _Failed(f"{ctx.host}:{ctx.port} does not offer TLS (answered {answer!r} to the SSL request): "
                          "this is not a Lakebase endpoint",
                          "check PGHOST and PGPORT: Lakebase always speaks TLS")
        try:
            with context.wrap_socket(sock, server_hostname=ctx.host) as tls:
                version = tls.version()
                cert = tls.getpeercert(binary_form=False) if context.verify_mode != ssl.CERT_NONE else None
        except ssl.SSLCertVerificationError as exc:
            raise _Failed(f"the server's certificate does not verify ({exc.verify_message})",
                          "set PGSSLROOTCERT to the CA that signed it (for the emulator: DIR/ca.pem), or use "
                          "PGSSLMODE=require (encrypted, not verified)") from exc
        except (ssl.SSLError, OSError) as exc:
            raise _Failed(f"the TLS handshake with {ctx.host}:{ctx.port} failed: {exc}",
                          "check PGHOST/PGPORT and any TLS-intercepting proxy") from exc
    verified = {"require": "certificate not verified (sslmode=require)",
                "verify-ca": "certificate verified (verify-ca)",
                "verify-full": "certificate and host name verified (verify-full)"}[s.sslmode]
    subject = ""
    if cert:
        rdns: Any = cert.get("subject", ())
        subject = " ".join(f"{key}={value}" for rdn in rdns for key, value in rdn)
    return OK, f"{version}; {verified}" + (f"; {subject}" if subject else ""), {"version": version}


def _token(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    cache = ctx.connector.credentials
    try:
        cred = cache.refresh()
    except Exception as exc:
        raise _Failed(*_api_failure(exc, "minting a database credential", ctx.settings, token=True)) from exc
    left = cred.expires_in()
    summary = (f"minted for {ctx.identity or cache.identity} ({cred.fingerprint}), expires in "
               f"{_duration(left)} at {cred.expire_time.strftime('%H:%M:%S')} UTC")
    details: dict[str, Any] = {"fingerprint": cred.fingerprint, "expires_in": round(left, 1),
                               "expire_time": cred.expire_time.isoformat()}
    wrong = _workspace_token_as_password(ctx)
    if wrong:
        details["fix"] = _PGPASSWORD_FIX
        return WARN, f"{summary}; but PGPASSWORD holds {wrong}, which Postgres refuses as a password", details
    return OK, summary, details


def _login(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    import psycopg

    from .errors import ConnectionFailed, CredentialsUnavailable

    s = ctx.settings
    started = time.monotonic()
    try:
        from .psycopg import connect

        ctx.conn = connect(settings=s, workspace_client=ctx.workspace_client, autocommit=True,
                           application_name="lakebase-doctor")
    except CredentialsUnavailable as exc:
        raise _Failed(f"no database credential: {exc}", "see the token check") from exc
    except ConnectionFailed as exc:
        raise _Failed(*_login_failure(exc, ctx)) from exc
    except psycopg.Error as exc:
        raise _Failed(f"login failed: {redact(str(exc))}", None) from exc
    took = time.monotonic() - started
    row = ctx.conn.execute("SELECT current_user, current_database(), split_part(version(), ' ', 2)").fetchone()
    summary = f"logged in as {row[0]} to {row[1]} (PostgreSQL {row[2]}) in {took:.2f}s"
    details: dict[str, Any] = {"role": row[0], "database": row[1], "server_version": row[2],
                               "seconds": round(took, 3)}
    if ctx.state_before and ctx.state_before != "ACTIVE":
        state_after = _state(ctx)
        details["state_after"] = state_after
        if ctx.state_before == "IDLE":
            summary += (f"; the endpoint was IDLE (scaled to zero) and the login woke it "
                        f"(now {state_after or 'unknown'})")
            details["woke"] = True
    refused = _pgpassword_refused(ctx)
    if refused:
        details["fix"] = _PGPASSWORD_FIX
        return WARN, f"{summary}; but PGPASSWORD is refused by Postgres ({refused})", details
    return OK, summary, details


def _privileges(ctx: _Context) -> tuple[str, str, dict[str, Any]]:
    conn, schema = ctx.conn, ctx.schema
    role = conn.execute("SELECT current_user").fetchone()[0]
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists is None:
        raise _Failed(f"schema {schema!r} does not exist in this database",
                      f"create it as the owner (CREATE SCHEMA {schema}) or pass --schema")
    usage, create = conn.execute("SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE')",
                                 (schema, schema)).fetchone()
    grant_fix = (f'as the project owner: GRANT USAGE ON SCHEMA {schema} TO "{role}"; '
                 f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO "{role}"; '
                 f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO "{role}" '
                 f"(or: lakebase init-schema --app-client-id {role})")
    if not usage:
        raise _Failed(f"{role} has no USAGE on schema {schema}", grant_fix, usage=False, create=bool(create))
    rows = conn.execute(
        """SELECT c.relname,
                  has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),
                  has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1""", (schema,)).fetchall()
    tables = {name: [p for p, has in zip(("SELECT", "INSERT", "UPDATE", "DELETE"), flags, strict=True) if has]
              for name, *flags in rows}
    seqs = conn.execute(
        """SELECT s.relname, t.relname, has_sequence_privilege(s.oid, 'USAGE')
             FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace
             JOIN pg_depend d ON d.objid = s.oid AND d.deptype IN ('a', 'i')
             JOIN pg_class t ON t.oid = d.refobjid
            WHERE n.nspname = %s AND s.relkind = 'S' ORDER BY 1""", (schema,)).fetchall()
    details: dict[str, Any] = {"role": role, "usage": True, "create": bool(create), "tables": tables}
    problems: list[str] = []
    for wanted in ctx.tables:
        if wanted not in tables:
            raise _Failed(f"table {schema}.{wanted} does not exist (or {role} cannot see it)",
                          f"create it as the owner, e.g. `lakebase init-schema --app-client-id {role}` for "
                          "the notes table", **details)
        if len(tables[wanted]) < 4:
            missing = sorted({"SELECT", "INSERT", "UPDATE", "DELETE"} - set(tables[wanted]))
            raise _Failed(f"{role} lacks {', '.join(missing)} on {schema}.{wanted}",
                          f'as the project owner: GRANT {", ".join(missing)} ON TABLE {schema}.{wanted} '
                          f'TO "{role}"', **details)
    # Tables of other apps may rightly be out of reach; none at all usually means missing GRANTs.
    none = [t for t, privs in tables.items() if not privs]
    if tables and len(none) == len(tables):
        shown = ", ".join(sorted(tables)[:10]) + (", ..." if len(tables) > 10 else "")
        raise _Failed(f"{role} has no privilege on any of the {len(tables)} table(s) in schema {schema} "
                      f"({shown})", grant_fix, **details)
    for seq, table, has_usage in seqs:
        if not has_usage and "INSERT" in tables.get(table, []):
            problems.append(f"INSERT into {table} will fail: no USAGE on its sequence {seq}")
            details["fix"] = f'as the project owner: GRANT USAGE, SELECT ON SEQUENCE {schema}.{seq} TO "{role}"'
    usable = [f"{t} ({'/'.join(p)})" for t, p in tables.items() if p]
    if len(usable) > 6:
        usable = [*usable[:6], f"{len(usable) - 6} more"]
    summary = (f"{role}: USAGE{' and CREATE' if create else ''} on schema {schema}; "
               + (f"tables: {', '.join(usable)}" if usable else "no tables yet"))
    if none:
        summary += f"; {len(none)} other table(s) out of reach"
    if problems:
        details.setdefault("fix", grant_fix)
        return WARN, summary + "; " + "; ".join(problems), details
    return OK, summary, details


# ---- helpers --------------------------------------------------------------------------------------
def _problem(exc: BaseException) -> str:
    """A ConfigurationError's message without its trailing ``Fix: ...`` (shown on its own line)."""
    text = str(exc)
    return text.split(" Fix: ", 1)[0]


def _auth_label(auth_type: str) -> str:
    return {"pat": "PAT", "oauth-m2m": "OAuth M2M service principal", "databricks-cli": "databricks CLI login",
            "external-browser": "OAuth U2M (browser)", "runtime": "notebook runtime"}.get(auth_type, auth_type)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _state(ctx: _Context) -> str | None:
    try:
        apis = ctx.connector.apis
        ep = apis.call(apis.postgres.get_endpoint, ctx.settings.target_name)
        state = ep.status.current_state
        return str(getattr(state, "value", state))
    except Exception:
        return None


def _unreachable_workspace() -> tuple[str, str] | None:
    """(summary, fix) when DATABRICKS_HOST does not accept TCP connections; None if it does (or is unset)."""
    from urllib.parse import urlsplit

    host = os.environ.get("DATABRICKS_HOST", "").strip()
    if not host:
        return None
    parts = urlsplit(host if "://" in host else "https://" + host)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=5):
            return None
    except OSError as exc:
        return (f"cannot reach the workspace at DATABRICKS_HOST={host} ({exc.strerror or exc})",
                "check DATABRICKS_HOST and the network (for the local emulator: is `lakebase emulator start` "
                "running, and is this the DATABRICKS_HOST of its user.env/app.env?)")


def _auth_fix(text: str) -> str | None:
    """A fix for the SDK's authentication errors, recognised by their text."""
    low = text.lower()
    if "invalid_client" in low or "client authentication failed" in low:
        return ("DATABRICKS_CLIENT_ID / DATABRICKS_CLIENT_SECRET are wrong: copy them from the app's "
                "Environment tab (or create a new OAuth secret for the service principal)")
    if "more than one authorization method" in low:
        return ("set only one kind of workspace credentials: either DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID "
                "with DATABRICKS_CLIENT_SECRET, or DATABRICKS_CONFIG_PROFILE; unset the others")
    if "invalid access token" in low or "401" in low:
        return ("the workspace refused our credentials: DATABRICKS_TOKEN is wrong or expired (create a new "
                "PAT or run `databricks auth login`)")
    return None


def _api_failure(exc: BaseException, doing: str, settings: Any, token: bool = False) -> tuple[str, str]:
    """(summary, fix) for a failed workspace API call."""
    import requests

    from . import _sdk

    root = _sdk.root_cause(exc)
    status = _sdk.http_status(root)
    host = os.environ.get("DATABRICKS_HOST", "the workspace")
    what = f"{doing} failed: {_sdk.describe_error(root)}"
    if isinstance(root, (requests.ConnectionError, ConnectionError)) or (
            status is None and "connection" in str(root).lower()):
        return (f"cannot reach the workspace API at {host} ({doing}): {redact(str(root))[:200]}",
                "check DATABRICKS_HOST and the network (for the local emulator: is `lakebase emulator start` "
                "running, and is this its DATABRICKS_HOST?)")
    if status == 401:
        return (what, "the workspace refused our credentials: DATABRICKS_TOKEN is wrong or expired (create a new "
                      "PAT or run `databricks auth login`), or DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET are "
                      "wrong")
    if status == 403:
        return (what, "this identity may not use the Lakebase project: grant it CAN USE (or CAN MANAGE) on the "
                      "project, or in a Databricks App add the database as an app resource")
    if status == 404:
        return (what, f"no such {settings.product} {settings.target_name!r}: check ENDPOINT_NAME "
                      "(`databricks postgres list-endpoints projects/<project>/branches/<branch>` shows the names) "
                      "and DATABRICKS_HOST")
    if status in (429, 503, 500, 504) or _sdk.is_transient(exc):
        extra = (" Apps that already hold a token keep using it until it expires; new ones cannot start."
                 if token else "")
        if status == 429:
            return (what, "the workspace is throttling credential requests: wait and run `lakebase doctor` again; "
                          "look for a client that mints a token per connection (the tutorial's pattern does; "
                          f"lakebase shares one token per identity and process).{extra}")
        return (what, "the workspace API is temporarily unavailable: wait a minute and run "
                      f"`lakebase doctor` again; if it persists, check the Databricks status page.{extra}")
    if status == 400:
        return (what, "check ENDPOINT_NAME (projects/<project>/branches/<branch>/endpoints/<endpoint>)")
    return (what, _auth_fix(str(root)) or _sdk.error_hint(root)
            or "check the workspace configuration (DATABRICKS_HOST and credentials)")


def _login_failure(exc: Any, ctx: _Context) -> tuple[str, str]:
    from .schema import guess_identity_type

    s = ctx.settings
    user = s.user or ctx.identity or "<role>"
    cause = redact(" ".join(str(getattr(exc, "cause", None) or exc).split()))
    state = getattr(exc, "sqlstate", None)
    means = diagnosis.names(state, cause.lower())
    mismatch = bool(ctx.identity and s.user and ctx.identity != s.user)
    if diagnosis.ROLE_MISSING in means and mismatch:
        return (f'role "{user}" does not exist, and tokens are minted for {ctx.identity}, not {user}',
                f"set PGUSER={ctx.identity} (or unset it): the role must be the identity whose credentials "
                "the workspace client uses")
    if diagnosis.ROLE_MISSING in means:
        kind = guess_identity_type(user)
        return (f'role "{user}" does not exist in {s.database}',
                f"as the project owner, create it: `lakebase init-schema --app-client-id {user}` (the tutorial's "
                f"step 2), or in SQL: CREATE EXTENSION IF NOT EXISTS databricks_auth; "
                f"SELECT databricks_create_role('{user}', '{kind}'); then GRANT the privileges it needs")
    if diagnosis.DATABASE_MISSING in means:
        found = _databases(ctx)
        listed = f"; the databases are: {', '.join(found)}" if found else ""
        return (f"database {s.database!r} does not exist",
                f"check PGDATABASE (default databricks_postgres){listed}")
    if diagnosis.TOKEN_REFUSED in means:
        if _native_password_works(ctx):
            return (f"{user} is a native Postgres password role: PGPASSWORD logs in as {user}, for psql and "
                    "other tools, but lakebase connects with OAuth tokens only, which such a role does not take",
                    f"to check lakebase's own connections, set PGUSER={ctx.identity or '<your identity>'} (or unset "
                    "it): tokens are minted for that identity")
        if mismatch:
            fix = f"set PGUSER={ctx.identity}: tokens are minted for that identity, not for {s.user}"
        else:
            fix = (f"make sure role {user!r} was created with databricks_create_role (an OAuth role) and not with "
                   "CREATE ROLE, and that the token comes from the same workspace identity")
        return (f"the token was refused for {user}: {cause}", fix)
    if diagnosis.PERMISSION_DENIED in means:
        return (f"{user} may not connect to {s.database}: {cause}",
                f'as the project owner: GRANT CONNECT ON DATABASE {s.database} TO "{user}"')
    if diagnosis.TLS_REQUIRED in means:
        return (f"the server requires TLS: {cause}", "set PGSSLMODE=require")
    if "gave up" in str(exc) or diagnosis.TIMED_OUT in means:
        return (f"the endpoint did not accept a login in time: {cause}",
                "the compute may be starting or restarting: wait a moment and run `lakebase doctor` again; "
                "check the endpoint's state in the Lakebase UI")
    return (f"login failed: {cause}", str(getattr(exc, "args", [""])[0]).split("Hint: ", 1)[-1]
            if "Hint: " in str(exc) else "see the error above")


def _product_mixup(exc: Any, timeout: float) -> str | None:
    """A fix when an Autoscaling endpoint name was given as a Provisioned instance name, or the reverse."""
    from .settings import _ENDPOINT_RE, ENDPOINT_VARIABLES, INSTANCE_VARIABLE

    value = str(getattr(exc, "value", "") or "")
    setting = getattr(exc, "setting", None)
    if setting == INSTANCE_VARIABLE and _ENDPOINT_RE.match(value):
        return (f"{value} is a Lakebase Autoscaling endpoint name, not a Provisioned instance: set "
                f"ENDPOINT_NAME={value} and unset {INSTANCE_VARIABLE}")
    if setting in ENDPOINT_VARIABLES and value and "/" not in value and _is_instance(value, timeout):
        return (f"{value!r} is a Lakebase Provisioned instance, not an Autoscaling endpoint: set "
                f"{INSTANCE_VARIABLE}={value} and unset {setting}")
    return None


def _is_instance(name: str, timeout: float) -> bool:
    """Does the workspace have a Provisioned instance called ``name``? (False when it cannot tell.)"""
    from . import _sdk

    try:
        apis = _sdk.BoundedApis(_sdk.default_workspace_client(timeout), timeout)
        apis.call(apis.database.get_database_instance, name)
    except Exception:
        return False
    return True


_PAT_PREFIXES = ("dapi", "dkea", "dose")
_PGPASSWORD_FIX = ("unset PGPASSWORD: Postgres takes a database credential, which lakebase mints itself; for psql "
                   "and other libpq tools use `lakebase psql`, or PGPASSWORD=$(lakebase token) (valid for up to an "
                   "hour)")


def _workspace_token_as_password(ctx: _Context) -> str | None:
    """What PGPASSWORD holds when it is a workspace credential (a PAT, the workspace OAuth token), else None."""
    password = os.environ.get("PGPASSWORD", "").strip()
    if not password:
        return None
    if password.startswith(_PAT_PREFIXES) or password == os.environ.get("DATABRICKS_TOKEN", "").strip():
        return "a Databricks personal access token (PAT)"
    try:
        headers = ctx.workspace_client.config.authenticate()
    except Exception:
        return None
    bearer = str(headers.get("Authorization", "")).removeprefix("Bearer ").strip()
    if bearer and password == bearer:
        return "the workspace OAuth token (the one for the REST API)"
    return None


def _databases(ctx: _Context) -> list[str]:
    """The databases of the endpoint, seen through databricks_postgres (empty when that fails too)."""
    from .psycopg import connect

    try:
        with connect(settings=ctx.settings.replace(database="databricks_postgres"),
                     workspace_client=ctx.workspace_client, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                                "ORDER BY datname").fetchall()
    except Exception:
        return []
    return [str(row[0]) for row in rows]


def _native_password_works(ctx: _Context) -> bool:
    """Whether PGPASSWORD, when it is neither a token nor a PAT, logs in as PGUSER: a native Postgres
    password (for tools that cannot rotate tokens), which lakebase's connections do not use."""
    import psycopg

    from .endpoints import hostaddr_for
    from .psycopg import libpq_params

    password = os.environ.get("PGPASSWORD", "").strip()
    if not password or password.startswith(_PAT_PREFIXES) or password.count(".") == 2 or not ctx.settings.user:
        return False
    target = ctx.connector.target()
    try:
        psycopg.connect(**libpq_params(target, hostaddr_for(target.host, target.port)), password=password,
                        connect_timeout=max(2, int(ctx.timeout))).close()
    except psycopg.Error:
        return False
    return True


def _pgpassword_refused(ctx: _Context) -> str | None:
    """Why Postgres refuses PGPASSWORD (which libpq tools would use) when it is a JWT that is not a valid
    database credential, e.g. a workspace OAuth token from `databricks auth token`; else None."""
    import psycopg

    from .endpoints import hostaddr_for
    from .psycopg import libpq_params

    password = os.environ.get("PGPASSWORD", "").strip()
    if not password or password.startswith(_PAT_PREFIXES) or password.count(".") != 2:
        return None  # none, a PAT (said by the token check), or not a token at all
    target = ctx.connector.target()
    try:
        psycopg.connect(**libpq_params(target, hostaddr_for(target.host, target.port)), password=password,
                        connect_timeout=max(2, int(ctx.timeout))).close()
    except psycopg.Error as exc:
        text = str(exc).lower()
        if "password authentication failed" in text or "token" in text or getattr(exc, "sqlstate", "") == "28P01":
            return ("it is not a database credential for this role: a workspace OAuth token (as from "
                    "`databricks auth token`), another identity's token, or an expired one")
    return None
