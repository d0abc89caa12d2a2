"""``lakebase proxy`` overhead, side by side in one run: through the proxy vs directly with a token.

    .venv/bin/python -m benchmarks.local_proxy [--seconds 10] [--rounds 2]

Both paths end at the same emulator's TLS proxy. "direct": the client speaks TLS to it with a token as
the password (what an app using the library does); "proxy": the client speaks plain text to
``lakebase proxy`` on loopback with no password, which holds the TLS connection upstream.

1. ``SELECT 1`` throughput with pgbench at 8 clients (extended protocol), runs alternating direct/proxy.
2. Median round trip of ``SELECT 1`` with psycopg at 1 client: proxy minus direct.
3. New-connection latency: psycopg connect + first query + close, median: proxy / direct.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from tests.proxy_support import ProxyProcess

from lakebase.emulator import EmulatorProcess

from ._common import owner_token, write_results
from .emulator_proxy import latencies, pgbench

GOALS = {"throughput_ratio": 0.75, "added_round_trip_us": 60.0, "connect_ratio": 1.2}


def connect_times(params: dict[str, object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with psycopg.connect(**params, autocommit=True) as conn:  # type: ignore[arg-type]
            conn.execute("SELECT 1")
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="pgbench duration per run")
    ap.add_argument("--rounds", type=int, default=2, help="alternating direct/proxy pgbench rounds")
    ap.add_argument("--clients", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lakebase-bench-") as tmp, EmulatorProcess(Path(tmp) / "emu") as emu:
        env = emu.user_env
        token = owner_token(env)
        proxy = ProxyProcess(env, Path(tmp) / "proxy.log", "--port", "0").start()
        try:
            direct_env = {"PGHOST": env["PGHOST"], "PGPORT": env["PGPORT"], "PGUSER": env["PGUSER"],
                          "PGDATABASE": env["PGDATABASE"], "PGSSLMODE": "verify-full",
                          "PGSSLROOTCERT": env["PGSSLROOTCERT"]}
            proxy_env = {"PGHOST": "127.0.0.1", "PGPORT": str(proxy.port), "PGUSER": env["PGUSER"],
                         "PGDATABASE": env["PGDATABASE"], "PGSSLMODE": "disable"}
            tps: dict[str, list[float]] = {"direct": [], "proxy": []}
            for _ in range(args.rounds):
                tps["direct"].append(pgbench(direct_env, args.clients, args.seconds, token))
                tps["proxy"].append(pgbench(proxy_env, args.clients, args.seconds, None))
            dparams: dict[str, object] = {"host": env["PGHOST"], "port": int(env["PGPORT"]), "user": env["PGUSER"],
                                          "dbname": env["PGDATABASE"], "sslmode": "verify-full",
                                          "sslrootcert": env["PGSSLROOTCERT"], "password": token}
            pparams: dict[str, object] = {"host": "127.0.0.1", "port": proxy.port, "user": env["PGUSER"],
                                          "dbname": env["PGDATABASE"], "sslmode": "disable"}
            lat: dict[str, list[float]] = {"direct": [], "proxy": []}
            conn: dict[str, list[float]] = {"direct": [], "proxy": []}
            for _ in range(4):
                lat["direct"] += latencies(dparams, 1000)
                lat["proxy"] += latencies(pparams, 1000)
                conn["direct"] += connect_times(dparams, 25)
                conn["proxy"] += connect_times(pparams, 25)
        finally:
            proxy.stop()

    med = {k: statistics.median(v) for k, v in tps.items()}
    rt = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
    ct = {k: statistics.median(v) * 1e3 for k, v in conn.items()}
    ratio = med["proxy"] / med["direct"]
    added = rt["proxy"] - rt["direct"]
    cratio = ct["proxy"] / ct["direct"]
    result = {
        "pgbench_seconds": args.seconds, "clients": args.clients,
        "tps": {k: [round(x) for x in v] for k, v in tps.items()},
        "throughput_ratio": round(ratio, 3),
        "median_round_trip_us": {k: round(v, 1) for k, v in rt.items()},
        "added_median_round_trip_us": round(added, 1),
        "median_new_connection_ms": {k: round(v, 2) for k, v in ct.items()},
        "new_connection_ratio": round(cratio, 3),
        "goals": GOALS,
    }
    table = "\n".join([
        "| measure | direct (TLS + token) | through lakebase proxy | ratio / difference | goal |",
        "|---|---|---|---|---|",
        f"| SELECT 1 tps, {args.clients} clients (median of {args.rounds}) | {med['direct']:.0f} | "
        f"{med['proxy']:.0f} | {ratio:.2f} | >= {GOALS['throughput_ratio']} |",
        f"| median round trip, psycopg, 1 client | {rt['direct']:.1f} µs | {rt['proxy']:.1f} µs | "
        f"+{added:.0f} µs | < +{GOALS['added_round_trip_us']:.0f} µs |",
        f"| new connection (connect, SELECT 1, close), median | {ct['direct']:.2f} ms | {ct['proxy']:.2f} ms | "
        f"{cratio:.2f}x | <= {GOALS['connect_ratio']}x |",
    ])
    write_results("local_proxy", result, table)


if __name__ == "__main__":
    main()
