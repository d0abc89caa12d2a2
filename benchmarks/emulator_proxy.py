"""Proxy overhead and emulator start time, measured side by side in one run.

    .venv/bin/python -m benchmarks.emulator_proxy [--seconds 10]

1. Select-only throughput with pgbench at 1 and 8 clients (the system's pgbench: the wheel's libpq
   is built without SSL, so its pgbench cannot reach the TLS proxy; `apt-get install postgresql-client`):
   through the emulator's TLS proxy vs straight to the backend's Unix socket. Runs alternate
   (direct, proxy, direct, proxy ...) so that noise on this shared machine hits both alike.
2. Round-trip latency: psycopg `SELECT 1` loops, median per query, proxy minus direct.
3. Emulator start: first start on an empty directory, and restart on an existing one.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import psycopg

from lakebase.emulator import Emulator, EmulatorProcess

from ._common import owner_token, write_results

SCRIPT = "SELECT 1;\n"


def pgbench_path() -> str:
    path = shutil.which("pgbench")
    if path is None:
        raise SystemExit("pgbench with SSL support is needed: apt-get install postgresql-client")
    return path


def pgbench(conn: dict[str, str], clients: int, seconds: int, password: str | None) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(SCRIPT)
    env = {**os.environ, **conn}
    if password:
        env["PGPASSWORD"] = password
    proc = subprocess.run(
        [pgbench_path(), "-n", "-f", f.name, "-c", str(clients), "-j", str(clients), "-T", str(seconds),
         "-M", "extended"], env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip()}")
    out = proc.stdout
    os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def latencies(params: dict[str, object], n: int) -> list[float]:
    with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
        for _ in range(50):
            conn.execute("SELECT 1")
        out = []
        for _ in range(n):
            t = time.perf_counter()
            conn.execute("SELECT 1")
            out.append(time.perf_counter() - t)
    return out


def start_times(reps: int) -> tuple[list[float], list[float]]:
    first, again = [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="lakebase-bench-start-") as d:
            t = time.perf_counter()
            emu = Emulator(d).start()
            first.append(time.perf_counter() - t)
            emu.stop()
            t = time.perf_counter()
            emu = Emulator(d).start()
            again.append(time.perf_counter() - t)
            emu.stop()
    return first, again


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="pgbench duration per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating direct/proxy rounds per client count")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lakebase-bench-") as tmp, EmulatorProcess(tmp) as emu:
        data_dir, env = emu.data_dir, emu.user_env
        token = owner_token(env)
        # the backend socket of *this* emulator: its postgres.log names it
        log = (data_dir / "postgres.log").read_text()
        m = re.findall(r'listening on Unix socket "(.+)/\.s\.PGSQL\.5432"', log)
        assert m, "backend socket not found in postgres.log"
        sock_dir = m[-1]
        direct = {"PGHOST": sock_dir, "PGPORT": "5432", "PGUSER": env["PGUSER"], "PGDATABASE": env["PGDATABASE"],
                  "PGSSLMODE": "disable"}
        proxy = {"PGHOST": "127.0.0.1", "PGPORT": env["PGPORT"], "PGUSER": env["PGUSER"],
                 "PGDATABASE": env["PGDATABASE"], "PGSSLMODE": "require"}
        tps: dict[int, dict[str, list[float]]] = {}
        for clients in (1, 8):
            tps[clients] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                tps[clients]["direct"].append(pgbench(direct, clients, args.seconds, None))
                tps[clients]["proxy"].append(pgbench(proxy, clients, args.seconds, token))
        lat = {"direct": [], "proxy": []}  # type: dict[str, list[float]]
        dparams = {"host": sock_dir, "port": 5432, "user": env["PGUSER"], "dbname": env["PGDATABASE"]}
        pparams = {"host": "127.0.0.1", "port": int(env["PGPORT"]), "user": env["PGUSER"],
                   "dbname": env["PGDATABASE"], "sslmode": "require", "password": token}
        for _ in range(4):
            lat["direct"] += latencies(dparams, 1000)
            lat["proxy"] += latencies(pparams, 1000)

    first, again = start_times(3)
    result = {
        "pgbench_seconds": args.seconds,
        "tps": {str(c): {k: [round(x) for x in v] for k, v in d.items()} for c, d in tps.items()},
        "throughput_ratio": {str(c): round(statistics.median(d["proxy"]) / statistics.median(d["direct"]), 3)
                             for c, d in tps.items()},
        "median_round_trip_us": {k: round(statistics.median(v) * 1e6, 1) for k, v in lat.items()},
        "start_seconds": {"first": [round(x, 2) for x in first], "existing_dir": [round(x, 2) for x in again]},
    }
    added = result["median_round_trip_us"]["proxy"] - result["median_round_trip_us"]["direct"]
    result["added_median_round_trip_us"] = round(added, 1)
    r = result["throughput_ratio"]
    table = "\n".join([
        "| measure | direct (Unix socket) | through the TLS proxy | ratio / difference | goal |",
        "|---|---|---|---|---|",
        f"| SELECT 1 tps, 1 client (median of {args.rounds}) | {statistics.median(tps[1]['direct']):.0f} | "
        f"{statistics.median(tps[1]['proxy']):.0f} | {r['1']:.2f} | |",
        f"| SELECT 1 tps, 8 clients (median of {args.rounds}) | {statistics.median(tps[8]['direct']):.0f} | "
        f"{statistics.median(tps[8]['proxy']):.0f} | {r['8']:.2f} | >= 0.70 |",
        f"| median round trip, psycopg, 1 client | {result['median_round_trip_us']['direct']} µs | "
        f"{result['median_round_trip_us']['proxy']} µs | +{added:.0f} µs | < +100 µs |",
        f"| emulator first start (empty dir) | | | median {statistics.median(first):.2f} s | < 5 s |",
        f"| emulator restart (existing dir) | | | median {statistics.median(again):.2f} s | < 2 s |",
    ])
    write_results("emulator_proxy", result, table)


if __name__ == "__main__":
    main()
