"""The ``lakebase`` command."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

try:
    import click
except ImportError:  # pragma: no cover - depends on the install
    sys.stderr.write("the lakebase command needs its extra: pip install 'lakebase[cli]'\n")
    raise SystemExit(2) from None

DEFAULT_DATA_DIR = ".lakebase/emulator"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lakebase")
def main() -> None:
    """Connect to Databricks Lakebase Postgres and keep connected; run a local Lakebase emulator."""


# ---- emulator -------------------------------------------------------------------------------------
@main.group()
def emulator() -> None:
    """A local Lakebase: real Postgres behind a TLS token-checking proxy and a Databricks-compatible API."""


def _wait_for_signal(stop: threading.Event) -> None:
    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, handler)
    while not stop.wait(0.5):
        pass


def start_emulator(data_dir: str, api_port: int, pg_port: int, token_ttl: float | None,
                   quiet: bool = False) -> Any:
    from .emulator import Emulator
    from .emulator.postgres import PostgresError

    t0 = time.monotonic()
    if not quiet:
        click.echo(f"starting the lakebase emulator in {Path(data_dir).resolve()} ...", err=True)
    try:
        emu = Emulator(data_dir, api_port=api_port, pg_port=pg_port, token_ttl=token_ttl).start()
    except OSError as exc:
        raise click.ClickException(
            f"could not start the emulator: {exc}. If a port is taken, pick another with --api-port/--pg-port "
            "(0 picks a free one)."
        ) from exc
    except PostgresError as exc:
        raise click.ClickException(f"Postgres did not start: {exc}") from exc
    if not quiet:
        click.echo(f"ready in {time.monotonic() - t0:.1f} s", err=True)
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
@click.option("--pg-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the Postgres TLS proxy (0: a free port).")
@click.option("--token-ttl", default=None, type=click.FloatRange(1, 86400),
              help="Cap on database credential lifetime in seconds (default 3600).")
def emulator_start(data_dir: str, api_port: int, pg_port: int, token_ttl: float | None) -> None:
    """Run the emulator in the foreground until Ctrl-C or SIGTERM.

    When ready it writes DIR/user.env (the project owner, with a PAT) and DIR/app.env (the app's
    service principal, OAuth M2M) and prints them.
    """
    emu = start_emulator(data_dir, api_port, pg_port, token_ttl)
    stop = threading.Event()
    try:
        print_emulator_env(emu)
        sys.stdout.flush()
        _wait_for_signal(stop)
    finally:
        click.echo("stopping the emulator ...", err=True)
        emu.stop()
        click.echo("stopped", err=True)


@main.command()
@click.option("--data-dir", default=".lakebase/demo", show_default=True, type=click.Path(file_okay=False))
def demo(data_dir: str) -> None:
    """Start the emulator and print how to connect (Ctrl-C stops it)."""
    emu = start_emulator(data_dir, 0, 0, None)
    stop = threading.Event()
    try:
        print_emulator_env(emu)
        click.echo("Connect with psql as the owner:")
        click.echo(f"  set -a; . {emu.data_dir / 'user.env'}; set +a; "
                   "PGPASSWORD=$(lakebase token) psql")
        sys.stdout.flush()
        _wait_for_signal(stop)
    finally:
        emu.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
