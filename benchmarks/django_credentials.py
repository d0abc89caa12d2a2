"""Credential API calls of a Django app on Lakebase: lakebase.django vs the obvious hand-written backend.

    .venv/bin/python -m benchmarks.django_credentials [--seconds 8] [--threads 4] [--ttl 4]

One emulator (its own process) with database credentials that live ``--ttl`` seconds; Django configured
in this process with one database alias per variant, all as the app's service principal (OAuth M2M). Each
variant runs ``--seconds`` of requests in ``--threads`` threads (each request: Django's request_started,
``SELECT 1``, request_finished) with connection churn:

* ``lakebase.django`` with the native pool (connections recycled every 2 s: ``max_lifetime``), with
  persistent connections (``CONN_MAX_AGE=1``: a new connection per thread every second, health checks
  on) and with a connection per request (``CONN_MAX_AGE=0``);
* the obvious override (benchmarks/django_naive: ``get_connection_params`` mints a token with the SDK)
  with a connection per request, and with the native pool (which calls ``get_connection_params`` once).

Reported per variant: requests, failed requests, logins (new connections), credential API calls, and
those calls per token life (calls / (seconds / ttl)). Results: results/django_credentials.json and .md.
This is not a test: nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lakebase.emulator import EmulatorProcess
from lakebase.emulator.supervise import clean_environment

from ._common import write_results

HERE = Path(__file__).resolve().parent
DJANGO_APP = HERE.parent / "apps" / "notes-django"

VARIANTS = {
    "lakebase.django, native pool": "lb_pool",
    "lakebase.django, persistent (CONN_MAX_AGE=1)": "lb_persistent",
    "lakebase.django, per request (CONN_MAX_AGE=0)": "lb_direct",
    "get_connection_params override, per request": "naive_direct",
    "get_connection_params override, native pool": "naive_pool",
}


def configure(env: dict[str, str]) -> None:
    import django
    from django.conf import settings

    import lakebase.django

    pool = {"min_size": 1, "max_size": 4, "max_lifetime": 2.0, "timeout": 5}
    naive = {"ENGINE": "benchmarks.django_naive", "NAME": env.get("PGDATABASE", "databricks_postgres"),
             "USER": env["PGUSER"], "HOST": env["PGHOST"], "PORT": env["PGPORT"], "OPTIONS": {"sslmode": "require"}}
    settings.configure(
        INSTALLED_APPS=[], USE_TZ=True, LOGGING_CONFIG=None,
        DATABASES={
            "default": lakebase.django.database_config(),
            "lb_pool": lakebase.django.database_config(pool=pool),
            "lb_persistent": lakebase.django.database_config(conn_max_age=1, conn_health_checks=True),
            "lb_direct": lakebase.django.database_config(),
            "naive_direct": naive,
            "naive_pool": {**naive, "OPTIONS": {**naive["OPTIONS"], "pool": pool}},
        },
    )
    django.setup()


def run_variant(alias: str, emu: EmulatorProcess, seconds: float, threads: int) -> dict[str, Any]:
    from django.db import close_old_connections, connections

    from lakebase import connector

    connector.reset()  # a cold credential cache for each lakebase variant
    before = emu.stats()
    counts = {"requests": 0, "failed": 0}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work() -> None:
        while time.monotonic() < stop:
            ok = True
            try:
                close_old_connections()
                with connections[alias].cursor() as cur:
                    cur.execute("SELECT 1")
                close_old_connections()
            except Exception as exc:
                ok = False
                name = type(exc).__name__
                with lock:
                    errors[name] = errors.get(name, 0) + 1
                connections[alias].close()
                time.sleep(0.05)
            with lock:
                counts["requests"] += 1
                counts["failed"] += 0 if ok else 1
            time.sleep(0.01)
        connections.close_all()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if alias in connections[alias]._connection_pools:
        connections[alias].close_pool()
    after = emu.stats()
    return {**counts, "errors": errors,
            "logins": after["logins_succeeded"] - before["logins_succeeded"],
            "credential_calls": after["credentials_issued"] - before["credentials_issued"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per variant (default 8)")
    parser.add_argument("--threads", type=int, default=4, help="request threads (default 4)")
    parser.add_argument("--ttl", type=float, default=4.0, help="token life in seconds (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lakebase-django-credentials-") as tmp:
        with EmulatorProcess(Path(tmp) / "emulator") as emu:
            owner = clean_environment({**emu.user_env, "DATABRICKS_CONFIG_FILE": str(Path(tmp) / "nocfg")})
            import subprocess

            subprocess.run([sys.executable, "-m", "lakebase", "init-schema", "--app-client-id", emu.app.name],
                           env=owner, check=True, capture_output=True)
            emu.configure(token_ttl_seconds=args.ttl)
            env = clean_environment({**emu.app_env, "DATABRICKS_CONFIG_FILE": str(Path(tmp) / "nocfg")})
            os.environ.clear()
            os.environ.update(env)
            configure(env)
            results = {}
            for label, alias in VARIANTS.items():
                print(f"{label}: {args.seconds:g} s ...", file=sys.stderr)
                results[label] = run_variant(alias, emu, args.seconds, args.threads)
                results[label]["calls_per_token_life"] = round(
                    results[label]["credential_calls"] / (args.seconds / args.ttl), 2)
                print(f"  {results[label]}", file=sys.stderr)
    rows = ["| variant | requests | failed | logins | credential calls | calls per token life |",
            "|---|---|---|---|---|---|"]
    for label, r in results.items():
        kinds = ", ".join(f"{k} {v}" for k, v in r["errors"].items())
        failed = f"{r['failed']}" + (f" ({kinds})" if kinds else "")
        rows.append(f"| {label} | {r['requests']} | {failed} | {r['logins']} | {r['credential_calls']} | "
                    f"{r['calls_per_token_life']} |")
    write_results("django_credentials", {"seconds": args.seconds, "threads": args.threads, "token_ttl": args.ttl,
                                         "variants": results}, "\n".join(rows))


if __name__ == "__main__":
    main()
