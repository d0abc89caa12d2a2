"""Request throughput of notes-django on lakebase.django vs the same app on Django's stock backend.

    .venv/bin/python -m benchmarks.django_app_load [--rounds 3] [--seconds 5] [--clients 8]

Both run under gunicorn with the same settings (2 workers x 4 threads, gthread, Django's native pool of
up to 8, an access log line per request to /dev/null) as the app's service principal, against one
emulator in its own process. The only difference is the ``default`` database: ``lakebase.django`` (a
token from lakebase's cache for each new connection, the connect retry, check_liveness) or
``django.db.backends.postgresql`` with a token minted once at start as its PASSWORD
(benchmarks/django_stock_settings.py). Rounds alternate between the two (so that the shared machine's
drift hits both alike); each round, concurrent clients send 90% page reads (``GET /``) and 10% writes
(``POST /api/notes``; both apps run them through ``lakebase.django.run_transaction``). Reported:
requests per second per round, the median, and the ratio lakebase / stock (goal >= 0.97); and requests
per CPU-second of each app's gunicorn processes (their ratio: the backend's cost, less exposed to the
shared machine's other load).
Results: results/django_app_load.json and .md. This is not a test: nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from lakebase.emulator import EmulatorProcess
from lakebase.emulator.supervise import clean_environment, free_port, start_gunicorn, stop_process_group, wait_http_ok

from ._common import write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DJANGO_APP = ROOT / "apps" / "notes-django"
WORKERS, THREADS = 2, 4
WRITE_SHARE = 0.10


def start(name: str, env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    extra = {"GUNICORN_THREADS": str(THREADS), "NOTES_POOL_MAX_SIZE": "8",
             "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    if name == "stock":
        extra["DJANGO_SETTINGS_MODULE"] = "benchmarks.django_stock_settings"
    return start_gunicorn(DJANGO_APP, {**env, **extra}, port, WORKERS, log,
                          extra_args=("--access-logfile", "/dev/null"))


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of the processes in process group ``pgid`` (gunicorn's master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the command: state, ppid, pgrp, ...; utime and stime are 12 and 13
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def load(url: str, seconds: float, clients: int, pgid: int | None = None) -> dict[str, Any]:
    counts = {"requests": 0, "errors": 0}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while time.monotonic() < stop:
                try:
                    if rng.random() < WRITE_SHARE:
                        ok = http.post("/api/notes", json={"content": f"bench {rng.random()}"}).status_code == 201
                    else:
                        ok = http.get("/").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    counts["requests"] += 1
                    counts["errors"] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    cpu = group_cpu_seconds(pgid) if pgid else 0.0
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu = (group_cpu_seconds(pgid) - cpu) if pgid else 0.0
    return {**counts, "rps": round(counts["requests"] / elapsed, 1), "app_cpu_seconds": round(cpu, 2),
            "cpu_ms_per_request": round(1000 * cpu / counts["requests"], 2) if counts["requests"] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per app, alternating (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per round (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lakebase-django-load-") as tmp:
        workdir = Path(tmp)
        with EmulatorProcess(workdir / "emulator") as emu:
            owner = clean_environment({**emu.user_env, "DATABRICKS_CONFIG_FILE": str(workdir / "nocfg")})
            subprocess.run([sys.executable, "-m", "lakebase", "init-schema", "--app-client-id", emu.app.name],
                           env=owner, check=True, capture_output=True)
            app_env = clean_environment({**emu.app_env, "DATABRICKS_CONFIG_FILE": str(workdir / "nocfg")})
            from databricks.sdk import WorkspaceClient

            static = WorkspaceClient(host=app_env["DATABRICKS_HOST"], client_id=app_env["DATABRICKS_CLIENT_ID"],
                                     client_secret=app_env["DATABRICKS_CLIENT_SECRET"], auth_type="oauth-m2m",
                                     config_file=str(workdir / "nocfg"))
            token = static.postgres.generate_database_credential(endpoint=app_env["ENDPOINT_NAME"]).token
            procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
            try:
                for name in ("lakebase", "stock"):
                    port = free_port()
                    env = {**app_env, "NOTES_BENCH_TOKEN": token} if name == "stock" else app_env
                    proc = start(name, env, port, workdir / f"{name}.log")
                    url = f"http://127.0.0.1:{port}"
                    if wait_http_ok(url + "/", 120, alive=lambda p=proc: p.poll() is None) is None:
                        raise SystemExit(f"{name} did not start:\n" + (workdir / f"{name}.log").read_text()[-3000:])
                    procs[name] = (proc, url)
                for _, url in procs.values():  # warm up: every worker's pool and page cache
                    load(url, 2, args.clients)
                rounds: dict[str, list[dict[str, Any]]] = {"lakebase": [], "stock": []}
                for i in range(args.rounds):
                    for name in (("lakebase", "stock") if i % 2 == 0 else ("stock", "lakebase")):
                        result = load(procs[name][1], args.seconds, args.clients, procs[name][0].pid)
                        rounds[name].append(result)
                        print(f"round {i + 1} {name}: {result}", file=sys.stderr)
            finally:
                for proc, _ in procs.values():
                    stop_process_group(proc)
    median = {name: statistics.median(r["rps"] for r in results) for name, results in rounds.items()}
    ratio = round(median["lakebase"] / median["stock"], 3)
    # Requests per CPU-second of the app's own processes: what the backend costs, less exposed to the
    # other load on a shared machine than wall-clock throughput.
    per_cpu = {name: round(sum(r["requests"] for r in results) / sum(r["app_cpu_seconds"] for r in results), 1)
               for name, results in rounds.items()}
    cpu_ratio = round(per_cpu["lakebase"] / per_cpu["stock"], 3)
    rows = ["| backend | req/s per round | median req/s | ratio | requests per app CPU-second | ratio | errors |",
            "|---|---|---|---|---|---|---|"]
    for name, results in rounds.items():
        lb = name == "lakebase"
        rows.append(f"| {'lakebase.django' if lb else 'stock postgresql, static token'} | "
                    f"{', '.join(str(r['rps']) for r in results)} | {median[name]} | {ratio if lb else 1.0} | "
                    f"{per_cpu[name]} | {cpu_ratio if lb else 1.0} | {sum(r['errors'] for r in results)} |")
    write_results("django_app_load", {"rounds": rounds, "median_rps": median, "ratio": ratio,
                                      "requests_per_cpu_second": per_cpu, "cpu_ratio": cpu_ratio,
                                      "seconds": args.seconds, "clients": args.clients,
                                      "workers": WORKERS, "threads": THREADS}, "\n".join(rows))


if __name__ == "__main__":
    main()
