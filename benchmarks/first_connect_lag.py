"""Event-loop stall during a process's first async connect (fresh interpreter each time).

A ticker task sleeps 1 ms in a loop and records the largest overshoot while the first
``await lakebase.connect_async()``, ``await lakebase.asyncpg.connect()`` or first connect of
``lakebase.sqlalchemy.create_async_engine()`` runs, in a process that has imported only lakebase (and
the driver) at the top, as an app does. The first connect builds the workspace client (imports of the
Databricks SDK), mints a token and resolves the endpoint: none of it may hold the loop.

    python -m benchmarks.first_connect_lag [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

CHILD = r"""
import asyncio, json, sys, time
variant = sys.argv[1]
import lakebase
if variant == "asyncpg":
    import lakebase.asyncpg
elif variant == "sqlalchemy":
    import lakebase.sqlalchemy

async def main():
    loop = asyncio.get_running_loop()
    gaps = []
    done = False

    async def ticker():
        while not done:
            t = loop.time()
            await asyncio.sleep(0.001)
            gaps.append(loop.time() - t - 0.001)

    if variant == "sqlalchemy":
        engine = lakebase.sqlalchemy.create_async_engine()  # as an app does at start; no connection yet
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker runs steadily before the connect starts
    before = len(gaps)
    started = time.perf_counter()
    if variant == "psycopg":
        conn = await lakebase.connect_async()
        await conn.execute("select 1")
        await conn.close()
    elif variant == "asyncpg":
        conn = await lakebase.asyncpg.connect()
        await conn.fetchval("select 1")
        await conn.close()
    else:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("select 1")
        await engine.dispose()
    elapsed = time.perf_counter() - started
    done = True
    await task
    during = gaps[before:]
    print(json.dumps({"max_ms": max(during) * 1e3, "connect_ms": elapsed * 1e3, "ticks": len(during)}))

asyncio.run(main())
"""


def run(env: dict[str, str], variant: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, variant], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="psycopg,asyncpg,sqlalchemy")
    args = parser.parse_args()
    from lakebase.emulator import EmulatorProcess
    from lakebase.emulator.supervise import clean_environment

    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(tmp) as emu:
        env = clean_environment({**emu.user_env, "DATABRICKS_CONFIG_FILE": "/nonexistent/databrickscfg",
                                 "PYTHONPATH": os.pathsep.join(sys.path)})
        results: dict[str, Any] = {}
        for variant in args.variants.split(","):
            rows = [run(env, variant) for _ in range(args.rounds)]
            results[variant] = {
                "max_stall_ms": [round(r["max_ms"], 1) for r in rows],
                "median_max_stall_ms": round(statistics.median(r["max_ms"] for r in rows), 1),
                "median_connect_ms": round(statistics.median(r["connect_ms"] for r in rows), 1),
            }
            print(variant, json.dumps(results[variant]), flush=True)


if __name__ == "__main__":
    main()
