"""Soak: units of work through token rotation, a restart, a credential outage, scale to zero and
token revocation, on three targets at once; every write counted.

    .venv/bin/python -m benchmarks.soak                 # about 70 s
    .venv/bin/python -m benchmarks.soak --seconds 20    # a shorter run

One emulator in its own process with 6 s tokens (``configure(token_ttl_seconds=6)``). Workers run
``lakebase.run_transaction`` / ``run_transaction_async`` in a loop, each unit inserting one row
with a key of its own: 3 threads on a ``lakebase.ConnectionPool``, 3 threads on a SQLAlchemy engine
(``lakebase.sqlalchemy.create_engine``), 3 tasks on an asyncpg pool
(``lakebase.asyncpg.create_pool``). Meanwhile the faults come in turn, twice: ``restart()``,
``credential_outage(4, 503)``, ``suspend()``, ``expire_tokens()``. At the end the table is read
back: a *lost* write is a unit that returned but whose row is missing, a *duplicated* one a key
with more than one row, a *phantom* a row of a unit that raised. Commit outcomes that had to be
looked up are counted from the library's log events (``transaction.commit_resolved``).

Then the cost of learning the transaction id before COMMIT, per driver, on one connection: a unit
(BEGIN, INSERT, COMMIT) without and with ``SELECT pg_current_xact_id_if_assigned()`` before COMMIT
(what the library does: one extra round trip), and for psycopg also the SELECT and the COMMIT in one
pipeline flight or in one simple query; alternating, median. Then read units (BEGIN, SELECT, COMMIT)
through ``run_transaction(_async)`` itself on a one-connection pool/engine: as a read-write unit (the
xid query) and with ``read_only=True`` (``BEGIN ... READ ONLY``, no xid query).

    .venv/bin/python -m benchmarks.soak --cost-only --rounds 1000   # only these (results/xid_cost.*)

Not a test: nothing asserts on the numbers. Results: ``results/soak.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

import lakebase
import lakebase.asyncpg
from lakebase.emulator import EmulatorProcess
from lakebase.sqlalchemy import create_engine

from ._common import write_results

ENV_PREFIXES = ("DATABRICKS_", "PG", "LAKEBASE_")
XID = "SELECT pg_current_xact_id_if_assigned()::text"
FAULTS = ("restart", "credential_outage", "suspend", "expire_tokens")


class Events(logging.Handler):
    """Counts the library's structured log events (``record.lakebase["event"]``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()
        self.resolved: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "lakebase", None)
        if isinstance(fields, dict):
            self.counts[fields.get("event", "?")] += 1
            if fields.get("event") == "transaction.commit_resolved":
                self.resolved[str(fields.get("status"))] += 1


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: dict[str, list[str]] = {}
        self.failed: dict[str, Counter[str]] = {}
        self.latency: dict[str, list[float]] = {}

    def record(self, target: str, key: str, started: float, error: BaseException | None) -> None:
        with self.lock:
            if error is None:
                self.ok.setdefault(target, []).append(key)
                self.latency.setdefault(target, []).append(time.perf_counter() - started)
            else:
                self.failed.setdefault(target, Counter())[f"{type(error).__name__}: {str(error)[:160]}"] += 1


def sync_worker(target: Any, name: str, table: str, stop: threading.Event, tally: Tally) -> None:
    def unit(conn: Any, key: str) -> None:
        if isinstance(conn, psycopg.Connection):
            conn.execute(f"INSERT INTO {table} (k, target) VALUES (%s, %s)", (key, name))
        else:
            conn.execute(text(f"INSERT INTO {table} (k, target) VALUES (:k, :t)"), {"k": key, "t": name})

    while not stop.is_set():
        key = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            lakebase.run_transaction(target, lambda conn, key=key: unit(conn, key))  # type: ignore[misc]
        except Exception as exc:
            tally.record(name, key, started, exc)
        else:
            tally.record(name, key, started, None)


async def asyncpg_workers(table: str, tasks: int, stop: threading.Event, tally: Tally) -> None:
    async with lakebase.asyncpg.create_pool(min_size=1, max_size=tasks) as pool:
        async def worker() -> None:
            while not stop.is_set():
                key = uuid.uuid4().hex
                started = time.perf_counter()
                try:
                    await lakebase.run_transaction_async(pool, lambda conn, key=key: conn.execute(  # type: ignore[misc]
                        f"INSERT INTO {table} (k, target) VALUES ($1, $2)", key, "asyncpg pool"))
                except Exception as exc:
                    tally.record("asyncpg pool", key, started, exc)
                else:
                    tally.record("asyncpg pool", key, started, None)

        await asyncio.gather(*(worker() for _ in range(tasks)))


def inject(emu: EmulatorProcess, fault: str) -> None:
    if fault == "restart":
        emu.restart()
    elif fault == "credential_outage":
        emu.credential_outage(4, 503)
    elif fault == "suspend":
        emu.suspend()
    else:
        emu.expire_tokens()


def soak(emu: EmulatorProcess, seconds: float, threads: int) -> dict[str, Any]:
    table = "soak_" + uuid.uuid4().hex[:8]
    with lakebase.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, k text NOT NULL, target text NOT NULL)")
    emu.configure(token_ttl_seconds=6)
    events = Events()
    logging.getLogger("lakebase").addHandler(events)
    logging.getLogger("lakebase").setLevel(logging.INFO)
    tally, stop = Tally(), threading.Event()
    pool = lakebase.ConnectionPool(min_size=1, max_size=threads, open=True)
    engine = create_engine(pool_size=threads)
    workers = [threading.Thread(target=sync_worker, args=(pool, "psycopg pool", table, stop, tally))
               for _ in range(threads)]
    workers += [threading.Thread(target=sync_worker, args=(engine, "SQLAlchemy engine", table, stop, tally))
                for _ in range(threads)]
    workers.append(threading.Thread(target=lambda: asyncio.run(asyncpg_workers(table, threads, stop, tally))))
    schedule = [f for _ in range(2) for f in FAULTS]
    gap = seconds / (len(schedule) + 1)
    injected: list[tuple[float, str]] = []
    start = time.monotonic()
    try:
        for w in workers:
            w.start()
        for i, fault in enumerate(schedule, 1):
            time.sleep(max(0.0, start + i * gap - time.monotonic()))
            injected.append((round(time.monotonic() - start, 1), fault))
            print(f"  {injected[-1][0]:5.1f} s  {fault}", flush=True)
            inject(emu, fault)
        time.sleep(max(0.0, start + seconds - time.monotonic()))
    finally:
        stop.set()
        for w in workers:
            w.join()
        pool.close()
        engine.dispose()
        logging.getLogger("lakebase").removeHandler(events)
    emu.credential_outage(0)
    with lakebase.connect() as conn:
        rows = conn.execute(f"SELECT k, target, count(*) FROM {table} GROUP BY k, target").fetchall()
    written = {k: n for k, _, n in rows}
    per_target: dict[str, Any] = {}
    for name in ("psycopg pool", "SQLAlchemy engine", "asyncpg pool"):
        ok = tally.ok.get(name, [])
        failed = tally.failed.get(name, Counter())
        lat = sorted(tally.latency.get(name, [0.0]))
        per_target[name] = {
            "succeeded": len(ok), "failed": sum(failed.values()), "failures": dict(failed.most_common(5)),
            "lost": sum(1 for k in ok if k not in written),
            "duplicated": sum(1 for k in ok if written.get(k, 0) > 1),
            "phantom": sum(n for k, t, n in rows if t == name and k not in set(ok)),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
            "max_ms": round(lat[-1] * 1000, 1),
        }
    return {"seconds": seconds, "workers_per_target": threads, "faults": injected, "targets": per_target,
            "events": dict(events.counts), "commit_outcomes_resolved": dict(events.resolved),
            "emulator": {k: v for k, v in emu.stats().items() if isinstance(v, int | float)}}


# ---- the cost of learning the xid ------------------------------------------------------------------
def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def xid_cost(rounds: int) -> dict[str, Any]:
    table = "xid_" + uuid.uuid4().hex[:8]
    with lakebase.connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (k int)")
    out: dict[str, Any] = {}

    conn = lakebase.connect()
    ins = f"INSERT INTO {table} VALUES (1)"

    def plain() -> None:
        conn.execute(ins)
        conn.commit()

    def separate() -> None:
        conn.execute(ins)
        conn.execute(XID).fetchone()
        conn.commit()

    def pipelined() -> None:
        conn.execute(ins)
        with conn.pipeline():
            cur = conn.execute(XID)
            conn.pgconn.send_flush_request()
            conn.commit()
        cur.fetchone()

    def one_query() -> None:  # simple query protocol: one round trip, both results at once
        conn.execute(ins)
        cur = conn.execute(XID + "; COMMIT")
        cur.fetchone()

    out["psycopg"] = _alternate({"no xid": plain, "xid, extra round trip": separate,
                                 "xid, pipelined with COMMIT": pipelined, "xid; COMMIT in one query": one_query},
                                rounds)
    conn.close()

    async def run_asyncpg() -> dict[str, Any]:
        aconn = await lakebase.asyncpg.connect()
        variants: dict[str, Any] = {}

        async def aplain() -> None:
            async with aconn.transaction():
                await aconn.execute(ins)

        async def aseparate() -> None:
            async with aconn.transaction():
                await aconn.execute(ins)
                await aconn.fetchval(XID)

        variants = {"no xid": aplain, "xid, extra round trip": aseparate}
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(rounds):
            for name, fn in variants.items():
                t = time.perf_counter()
                await fn()
                samples[name].append(time.perf_counter() - t)
        await aconn.close()
        return {k: _median_us(v) for k, v in samples.items()}

    out["asyncpg"] = asyncio.run(run_asyncpg())

    engine = create_engine(pool_size=1)
    with engine.connect() as sa:
        def saplain() -> None:
            with sa.begin():
                sa.execute(text(ins))

        def saseparate() -> None:
            with sa.begin():
                sa.execute(text(ins))
                sa.execute(text(XID)).scalar()

        out["SQLAlchemy (psycopg)"] = _alternate({"no xid": saplain, "xid, extra round trip": saseparate}, rounds)
    engine.dispose()
    with lakebase.connect(autocommit=True) as c:
        c.execute(f"DROP TABLE {table}")
    return out


def read_cost(rounds: int) -> dict[str, Any]:
    """Median µs per read unit (BEGIN, SELECT 1 row, COMMIT) through run_transaction(_async) on one
    connection: read-write (the xid query before COMMIT) vs read_only=True."""
    query = "SELECT count(*) FROM pg_class WHERE oid = 1259"
    out: dict[str, Any] = {}

    def sync_variants(target: Any, read: Any) -> dict[str, float]:
        return _alternate({"read-write": lambda: lakebase.run_transaction(target, read),
                           "read_only=True": lambda: lakebase.run_transaction(target, read, read_only=True)},
                          rounds)

    with lakebase.ConnectionPool(min_size=1, max_size=1, open=True) as pool:
        out["psycopg pool"] = sync_variants(pool, lambda c: c.execute(query).fetchone())
    engine = create_engine(pool_size=1, max_overflow=0)
    out["SQLAlchemy engine (psycopg)"] = sync_variants(engine, lambda c: c.execute(text(query)).scalar())
    engine.dispose()

    async def run_async() -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with lakebase.asyncpg.create_pool(min_size=1, max_size=1) as apool:
            variants = {"read-write": {}, "read_only=True": {"read_only": True}}
            samples: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(rounds):
                for name, kwargs in variants.items():
                    t = time.perf_counter()
                    await lakebase.run_transaction_async(apool, lambda c: c.fetchval(query), **kwargs)
                    samples[name].append(time.perf_counter() - t)
            results["asyncpg pool"] = {k: _median_us(v) for k, v in samples.items()}
        return results

    out.update(asyncio.run(run_async()))
    return out


def cost_table(results: dict[str, Any]) -> str:
    lines = ["Cost of the xid before COMMIT (median µs per unit: BEGIN, INSERT, COMMIT; one connection):", "",
             "| driver | no xid | xid, extra round trip | xid, pipelined with COMMIT | xid; COMMIT in one query |",
             "|---|---|---|---|---|"]
    for driver, v in results["xid_cost"].items():
        lines.append(f"| {driver} | {v['no xid']} | {v['xid, extra round trip']} | "
                     f"{v.get('xid, pipelined with COMMIT', '')} | {v.get('xid; COMMIT in one query', '')} |")
    lines += ["", "Read units through run_transaction(_async) (median µs per unit: BEGIN, SELECT, COMMIT; "
              "a one-connection pool/engine):", "", "| target | read-write (xid query) | read_only=True |",
              "|---|---|---|"]
    for target, v in results["read_cost"].items():
        lines.append(f"| {target} | {v['read-write']} | {v['read_only=True']} |")
    return "\n".join(lines)


def _alternate(variants: dict[str, Any], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {k: _median_us(v) for k, v in samples.items()}


def table(results: dict[str, Any]) -> str:
    s = results["soak"]
    lines = [f"Soak, {s['seconds']:g} s, {s['workers_per_target']} workers per target, 6 s tokens; faults: "
             + ", ".join(f"{f} at {t:g} s" for t, f in s["faults"]), "",
             "| target | units succeeded | failed | lost writes | duplicated | phantom | p50 | p99 | max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, t in s["targets"].items():
        lines.append(f"| {name} | {t['succeeded']} | {t['failed']} | {t['lost']} | {t['duplicated']} | "
                     f"{t['phantom']} | {t['p50_ms']} ms | {t['p99_ms']} ms | {t['max_ms']} ms |")
    lines += ["", f"Commit outcomes looked up after a lost COMMIT: {s['commit_outcomes_resolved'] or 'none'}; "
              f"retries: {s['events'].get('transaction.retry', 0)}; "
              f"unknown outcomes: {s['events'].get('transaction.commit_unknown', 0)}", "",
              cost_table(results)]
    for name, t in s["targets"].items():
        if t["failures"]:
            lines.append(f"\n{name} failures: {t['failures']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=3, help="threads/tasks per target")
    ap.add_argument("--rounds", type=int, default=2000, help="units per variant in the xid cost measure")
    ap.add_argument("--cost-only", action="store_true", help="only the xid and read-only cost measures")
    args = ap.parse_args()
    for key in list(os.environ):
        if key.startswith(ENV_PREFIXES):
            del os.environ[key]
    os.environ["DATABRICKS_CONFIG_FILE"] = "/nonexistent/databrickscfg"
    with tempfile.TemporaryDirectory(prefix="lakebase-bench-soak-") as tmp, EmulatorProcess(Path(tmp)) as emu:
        os.environ.update(emu.user_env)
        print("xid cost ...", flush=True)
        results: dict[str, Any] = {"xid_cost": xid_cost(args.rounds), "read_cost": read_cost(args.rounds)}
        if args.cost_only:
            write_results("xid_cost", results, cost_table(results))
            return
        print("soak ...", flush=True)
        results["soak"] = soak(emu, args.seconds, args.workers)
    write_results("soak", results, table(results))


if __name__ == "__main__":
    main()
