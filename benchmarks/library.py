"""The client library against hand-written baselines, side by side in one run.

    .venv/bin/python -m benchmarks.library            # about 5 minutes
    .venv/bin/python -m benchmarks.library --quick    # a smoke run (~40 s; its numbers mean nothing)

One emulator in its own process (``EmulatorProcess``, configured over its admin API), the project
owner's identity (a PAT), settings built explicitly (``Settings(env={}, ...)``) with every
``DATABRICKS_*``/``PG*``/``LAKEBASE_*`` variable removed from this process's environment first.

1. Credential API calls over a churning pool: psycopg_pool ``max_lifetime=1`` (psycopg_pool takes
   0-5% off each connection's lifetime as jitter and enforces no minimum), 8 connections, 8 threads
   doing ``SELECT 1`` through the pool for 60 s. ``lakebase.ConnectionPool`` vs the tutorial's
   pattern (``OAuthConnection.connect`` mints a credential for every physical connection). Calls
   and logins are the emulator's counters (``credentials_issued``, ``logins_succeeded``) over the
   whole run, pool opening included. lakebase runs twice: with the emulator's default one-hour
   tokens, and with ``token_ttl_seconds=10`` (a refresh every 5 s at half-life).
2. New-connection latency, warm credential cache: ``lakebase.connect()`` vs ``psycopg.connect()``
   with the same token as a static password, alternating one connect each, median.
3. Pooled ``SELECT 1`` throughput: ``lakebase.ConnectionPool`` vs ``psycopg_pool.ConnectionPool``
   with the static token, same size and threads; short runs alternate, and the reported ratio is the
   median over adjacent (lakebase, raw) pairs. Three times: each library's defaults (lakebase's
   ``check_liveness``, no round trip; psycopg_pool: no check), both without a pre-use check, and both
   with ``check=ConnectionPool.check_connection`` (a round trip). And the cost of one checkout and
   return with no query (one thread, one connection), where the pools' own overhead is all there is
   (``--throughput-only`` runs this part alone: ``results/library_throughput.*``).
4. Event-loop lag while tokens rotate (``token_ttl_seconds=4``): a probe task sleeps 1 ms in a loop
   and records the overshoot while tasks connect (``lakebase.connect_async``), run ``SELECT 1`` and
   close, over and over. lakebase (``ahead``: background refresh; ``lazy``: refresh on demand in a
   worker thread) vs the connection-patterns page's pattern (a ``current_token`` refreshed at
   half-life by an asyncio task calling the SDK synchronously, injected at connect) and a static
   token (no refresh at all: the floor). Segments alternate round-robin.

Not a test: nothing asserts on the numbers. Results: ``results/library.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from databricks.sdk import WorkspaceClient

import lakebase
from lakebase import connector as lakebase_connector
from lakebase.emulator import EmulatorProcess

from ._common import write_results

NO_CONFIG_FILE = "/nonexistent/lakebase-bench/databrickscfg"
ENV_PREFIXES = ("DATABRICKS_", "PG", "LAKEBASE_")
ENV_NAMES = ("ENDPOINT_NAME",)

CHURN_LIFETIME = 1.0
CHURN_THREADS = 8
CHURN_POOL = 8
SHORT_TTL = 10.0
ASYNC_TTL = 4.0
THROUGHPUT_POOL = 4
THROUGHPUT_THREADS = 8


@dataclass
class Bench:
    emu: EmulatorProcess
    settings: lakebase.Settings
    raw: dict[str, Any]  # libpq parameters without the password
    static_token: str  # minted once, with the emulator's default one-hour lifetime

    def client(self) -> WorkspaceClient:
        return WorkspaceClient(host=self.emu.api_url, token=self.emu.owner.pat, auth_type="pat",
                               config_file=NO_CONFIG_FILE)

    def conninfo(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.raw.items())

    def counters(self) -> tuple[int, int]:
        stats = self.emu.stats()
        return int(stats["credentials_issued"]), int(stats["logins_succeeded"])


def scrub_environment() -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIXES) or key in ENV_NAMES:
            del os.environ[key]
    os.environ["DATABRICKS_CONFIG_FILE"] = NO_CONFIG_FILE


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


# ---- 1. credential calls over a churning pool -------------------------------------------------------
def tutorial_connection_class(w: WorkspaceClient, endpoint_name: str) -> type[psycopg.Connection[Any]]:
    """The tutorial's app.py: a fresh OAuth token for each connection."""

    class OAuthConnection(psycopg.Connection):  # type: ignore[type-arg]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            credential = w.postgres.generate_database_credential(endpoint=endpoint_name)
            kwargs["password"] = credential.token
            return super().connect(conninfo, **kwargs)

    return OAuthConnection


def churn(bench: Bench, variant: str, seconds: float) -> dict[str, Any]:
    lakebase_connector.reset()  # a cold credential cache, no refresh thread left from before
    sizes = {"min_size": CHURN_POOL, "max_size": CHURN_POOL, "max_lifetime": CHURN_LIFETIME}
    calls0, logins0 = bench.counters()
    started = time.monotonic()
    pool: psycopg_pool.ConnectionPool[Any]
    if variant == "tutorial":
        cls = tutorial_connection_class(bench.client(), bench.emu.endpoint_name)
        pool = psycopg_pool.ConnectionPool(bench.conninfo(), connection_class=cls, open=True, **sizes)
    else:
        pool = lakebase.ConnectionPool(settings=bench.settings, workspace_client=bench.client(), open=True,
                                       **sizes)
    units = [0] * CHURN_THREADS
    errors: list[str] = []
    try:
        pool.wait(30)
        until = time.monotonic() + seconds

        def work(i: int) -> None:
            n = 0
            try:
                while time.monotonic() < until:
                    with pool.connection(timeout=30) as conn:
                        conn.execute("SELECT 1")
                    n += 1
            except Exception as exc:  # reported, not raised: the counts still mean something
                errors.append(repr(exc))
            units[i] = n

        threads = [threading.Thread(target=work, args=(i,)) for i in range(CHURN_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        pool.close()
    elapsed = time.monotonic() - started
    lakebase_connector.reset()  # stops the refresh thread: nothing mints after this point
    pool_stats = pool.get_stats()
    lib_stats = pool.stats() if isinstance(pool, lakebase.ConnectionPool) else None
    calls1, logins1 = bench.counters()
    out: dict[str, Any] = {
        "variant": variant, "seconds": round(elapsed, 1), "units": sum(units),
        "credential_calls": calls1 - calls0, "logins": logins1 - logins0,
        "connections_opened": pool_stats.get("connections_num", 0) - pool_stats.get("connections_errors", 0),
        "pool_stats": pool_stats, "errors": errors[:5],
    }
    if lib_stats is not None:
        cred = lib_stats.get("credentials", {})
        out["cache"] = {k: cred.get(k) for k in ("mints", "background_refreshes", "waits", "failures")}
    return out


# ---- 2. new-connection latency --------------------------------------------------------------------
def connect_latency(bench: Bench, n: int) -> dict[str, Any]:
    lakebase_connector.reset()
    w = bench.client()
    lakebase.connect(settings=bench.settings, workspace_client=w).close()  # warm: token, target, DNS
    psycopg.connect(**bench.raw, password=bench.static_token).close()

    def lib() -> float:
        t = time.perf_counter()
        conn = lakebase.connect(settings=bench.settings, workspace_client=w)
        dt = time.perf_counter() - t
        conn.close()
        return dt

    def raw() -> float:
        t = time.perf_counter()
        conn = psycopg.connect(**bench.raw, password=bench.static_token)
        dt = time.perf_counter() - t
        conn.close()
        return dt

    calls0, _ = bench.counters()
    times: dict[str, list[float]] = {"lakebase": [], "raw": []}
    for i in range(n):
        order = (("lakebase", lib), ("raw", raw)) if i % 2 == 0 else (("raw", raw), ("lakebase", lib))
        for name, fn in order:
            times[name].append(fn())
    calls1, _ = bench.counters()
    lakebase_connector.reset()
    out: dict[str, Any] = {"connects_each": n, "credential_calls_during": calls1 - calls0}
    for name, values in times.items():
        out[name] = {"median_ms": round(statistics.median(values) * 1e3, 3),
                     "p90_ms": round(pct(values, 90) * 1e3, 3), "mean_ms": round(statistics.fmean(values) * 1e3, 3)}
    out["ratio_median"] = round(out["lakebase"]["median_ms"] / out["raw"]["median_ms"], 3)
    return out


# ---- 3. pooled throughput -------------------------------------------------------------------------------
def run_load(pool: psycopg_pool.ConnectionPool[Any], seconds: float, threads: int, warmup: float = 0.2) -> float:
    """SELECT 1 units of work per second through ``pool``, counted after a short warm-up."""
    counts = [0] * threads
    stop = threading.Event()

    def work(i: int) -> None:
        while not stop.is_set():
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            counts[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    time.sleep(warmup)
    n0, t0 = sum(counts), time.monotonic()
    time.sleep(seconds)
    n1, t1 = sum(counts), time.monotonic()
    stop.set()
    for t in workers:
        t.join()
    return (n1 - n0) / (t1 - t0)


PAIRS = {"defaults": ("lakebase, defaults", "raw, defaults"),
         "no check": ("lakebase, no check", "raw, no check"),
         "check": ("lakebase, check_connection", "raw, check_connection")}


def throughput(bench: Bench, rounds: int, seconds: float) -> dict[str, Any]:
    """All the pools stay open (idle ones cost nothing); short runs alternate, each lakebase run next
    to its raw twin (which goes first alternates), and the ratio of each adjacent pair is kept: on this
    shared machine throughput drifts by +-20% from one second to the next, a pair's ratio much less.
    Pairs: each library's defaults (lakebase: ``check_liveness``, no round trip; psycopg_pool: no
    check), no check on either, ``check_connection`` (a round trip) on both."""
    lakebase_connector.reset()
    w = bench.client()
    sizes = {"min_size": THROUGHPUT_POOL, "max_size": THROUGHPUT_POOL}
    check = psycopg_pool.ConnectionPool.check_connection

    def raw_pool(**options: Any) -> psycopg_pool.ConnectionPool[Any]:
        return psycopg_pool.ConnectionPool(bench.conninfo(), kwargs={"password": bench.static_token}, **sizes,
                                           **options)

    pools: dict[str, psycopg_pool.ConnectionPool[Any]] = {
        "lakebase, defaults": lakebase.ConnectionPool(settings=bench.settings, workspace_client=w, **sizes),
        "raw, defaults": raw_pool(),
        "lakebase, no check": lakebase.ConnectionPool(settings=bench.settings, workspace_client=w, check=None,
                                                      **sizes),
        "raw, no check": raw_pool(check=None),
        "lakebase, check_connection": lakebase.ConnectionPool(settings=bench.settings, workspace_client=w,
                                                              check=check, **sizes),
        "raw, check_connection": raw_pool(check=check),
    }
    tps: dict[str, list[float]] = {name: [] for name in pools}
    ratios: dict[str, list[float]] = {pair: [] for pair in PAIRS}
    try:
        for pool in pools.values():
            pool.wait(30)
        for r in range(rounds):
            for pair, (lib, raw) in (PAIRS.items() if r // 2 % 2 == 0 else reversed(PAIRS.items())):
                got = {}
                for name in ((lib, raw) if r % 2 == 0 else (raw, lib)):
                    got[name] = run_load(pools[name], seconds, THROUGHPUT_THREADS)
                    tps[name].append(got[name])
                ratios[pair].append(got[lib] / got[raw])
    finally:
        for pool in pools.values():
            pool.close()
        lakebase_connector.reset()
    med = {name: statistics.median(v) for name, v in tps.items()}
    out: dict[str, Any] = {
        "pool_size": THROUGHPUT_POOL, "threads": THROUGHPUT_THREADS, "rounds": rounds, "seconds": seconds,
        "tps": {k: [round(x) for x in v] for k, v in tps.items()},
        "median_tps": {k: round(v) for k, v in med.items()},
    }
    for pair, values in ratios.items():
        key = pair.replace(" ", "_")
        out[f"paired_ratios_{key}"] = [round(x, 3) for x in values]
        out[f"ratio_{key}"] = round(statistics.median(values), 3)
        out[f"ratio_{key}_p25_p75"] = [round(pct(values, 25), 3), round(pct(values, 75), 3)]
    return out


def checkout_cost(bench: Bench, batches: int, per_batch: int) -> dict[str, Any]:
    """What the lakebase pool adds to a checkout: ``with pool.connection(): pass`` (no query, one
    thread, one connection), batches alternating; microseconds per checkout and return."""
    lakebase_connector.reset()
    pools = {
        "lakebase": lakebase.ConnectionPool(settings=bench.settings, workspace_client=bench.client(), check=None,
                                            min_size=1, max_size=1),
        "raw": psycopg_pool.ConnectionPool(bench.conninfo(), kwargs={"password": bench.static_token},
                                           min_size=1, max_size=1),
        "lakebase_default": lakebase.ConnectionPool(settings=bench.settings, workspace_client=bench.client(),
                                                    min_size=1, max_size=1),
    }
    per: dict[str, list[float]] = {name: [] for name in pools}
    try:
        for pool in pools.values():
            pool.wait(30)
        for b in range(batches):
            for name in (list(pools) if b % 2 == 0 else list(reversed(pools))):
                pool = pools[name]
                t = time.perf_counter()
                for _ in range(per_batch):
                    with pool.connection():
                        pass
                per[name].append((time.perf_counter() - t) / per_batch * 1e6)
    finally:
        for pool in pools.values():
            pool.close()
        lakebase_connector.reset()
    return {"batches": batches, "per_batch": per_batch,
            **{f"{name}_us": round(statistics.median(v), 2) for name, v in per.items()}}


# ---- 4. event-loop lag during async refreshes ----------------------------------------------------------
ASYNC_VARIANTS = ("lakebase ahead", "lakebase lazy", "sync SDK on the loop", "static token")
CONNECTORS = 4
#: Added by the emulator to every REST API call (and every new login) in part 4: a workspace API call
#: takes tens to hundreds of milliseconds, not the local emulator's ~2 ms.
API_LATENCY_MS = 100.0


async def lag_segment(bench: Bench, variant: str, seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    connects = [0]
    stop = asyncio.Event()
    w = bench.client()
    settings = bench.settings.replace(token_refresh="lazy" if variant == "lakebase lazy" else "ahead")
    current_token: list[str | None] = [None]
    blocked: list[float] = []

    async def probe() -> None:
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - t - 0.001)

    async def refresher() -> None:
        # The connection-patterns page: "current_token  # Refreshed in background task" -- written the
        # obvious way, the SDK called directly from the task, on the event loop thread.
        while not stop.is_set():
            t = time.perf_counter()
            current_token[0] = w.postgres.generate_database_credential(endpoint=bench.emu.endpoint_name).token
            blocked.append(time.perf_counter() - t)
            try:
                await asyncio.wait_for(stop.wait(), ASYNC_TTL / 2)
            except TimeoutError:
                pass

    async def open_one() -> psycopg.AsyncConnection[Any]:
        if variant.startswith("lakebase"):
            return await lakebase.connect_async(settings=settings, workspace_client=w)
        if variant == "static token":
            return await psycopg.AsyncConnection.connect(**bench.raw, password=bench.static_token)
        while current_token[0] is None:
            await asyncio.sleep(0.01)
        return await psycopg.AsyncConnection.connect(**bench.raw, password=current_token[0])

    async def connector_task() -> None:
        while not stop.is_set():
            conn = await open_one()
            await conn.execute("SELECT 1")
            await conn.close()
            connects[0] += 1

    calls0, _ = await asyncio.to_thread(bench.counters)
    tasks = [asyncio.create_task(probe())]
    await asyncio.sleep(0.2)  # the probe runs alone first
    if variant == "sync SDK on the loop":
        tasks.append(asyncio.create_task(refresher()))
    tasks += [asyncio.create_task(connector_task()) for _ in range(CONNECTORS)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    calls1, _ = await asyncio.to_thread(bench.counters)
    await asyncio.to_thread(lakebase_connector.reset)  # stops the refresh thread before the next segment
    return {"lags": lags, "connects": connects[0], "refreshes": calls1 - calls0, "blocked": blocked}


def async_lag(bench: Bench, rounds: int, seconds: float) -> dict[str, Any]:
    bench.emu.configure(token_ttl_seconds=ASYNC_TTL, latency_ms=API_LATENCY_MS)
    lakebase_connector.reset()
    merged: dict[str, dict[str, Any]] = {v: {"lags": [], "connects": 0, "refreshes": 0, "seconds": 0.0,
                                             "blocked": []}
                                         for v in ASYNC_VARIANTS}

    async def run() -> None:
        for r in range(rounds):
            names = ASYNC_VARIANTS if r % 2 == 0 else tuple(reversed(ASYNC_VARIANTS))
            for name in names:
                seg = await lag_segment(bench, name, seconds)
                m = merged[name]
                m["lags"] += seg["lags"]
                m["connects"] += seg["connects"]
                m["refreshes"] += seg["refreshes"]
                m["seconds"] += seconds
                m["blocked"] += seg["blocked"]

    try:
        asyncio.run(run())
    finally:
        bench.emu.configure(token_ttl_seconds=3600, latency_ms=0)
    out: dict[str, Any] = {"token_ttl_seconds": ASYNC_TTL, "api_latency_ms": API_LATENCY_MS,
                           "rounds": rounds, "segment_seconds": seconds,
                           "connect_tasks": CONNECTORS, "variants": {}}
    for name, m in merged.items():
        lags = m["lags"]
        out["variants"][name] = {
            "samples": len(lags), "connects": m["connects"], "refreshes": m["refreshes"],
            "seconds": m["seconds"],
            "p50_ms": round(pct(lags, 50) * 1e3, 3), "p99_ms": round(pct(lags, 99) * 1e3, 3),
            "p999_ms": round(pct(lags, 99.9) * 1e3, 3), "max_ms": round(max(lags) * 1e3, 3),
            "over_5ms": sum(1 for x in lags if x > 0.005),
            "over_50ms": sum(1 for x in lags if x > 0.05),
            "stalled_share": round(sum(x for x in lags if x > 0.005) / m["seconds"], 5),
        }
        if m["blocked"]:
            out["variants"][name]["sync_mint_ms_median"] = round(statistics.median(m["blocked"]) * 1e3, 1)
    return out


# ---- report ------------------------------------------------------------------------------------------------
def throughput_rows(tp: dict[str, Any]) -> list[str]:
    labels = {"defaults": ("each library's defaults", "lakebase, defaults", "raw, defaults",
                           "lakebase: socket check; psycopg_pool: none"),
              "no check": ("no check on either", "lakebase, no check", "raw, no check", ""),
              "check": ("`check_connection` (a round trip) on both", "lakebase, check_connection",
                        "raw, check_connection", "")}
    rows = []
    for pair, (label, lib, raw, note) in labels.items():
        key = pair.replace(" ", "_")
        lo, hi = tp[f"ratio_{key}_p25_p75"]
        rows.append(f"| 3 | pooled SELECT 1/s, {label} ({tp['rounds']} pairs of {tp['seconds']:g} s runs"
                    f"{'; ' + note if note else ''}) | {tp['median_tps'][lib]} | {tp['median_tps'][raw]} "
                    f"(psycopg_pool) | {tp[f'ratio_{key}']:.3f} (p25-p75 {lo:.2f}-{hi:.2f}) | >= 0.97 |")
    return rows


def throughput_table(tp: dict[str, Any]) -> str:
    co = tp["checkout"]
    return "\n".join([
        "| # | measure | lakebase | baseline | ratio | goal |", "|---|---|---|---|---|---|", *throughput_rows(tp),
        f"| 3 | one checkout + return, no query, no check, 1 thread (median of {co['batches']} batches) | "
        f"{co['lakebase_us']:.2f} µs | {co['raw_us']:.2f} µs | {co['lakebase_us'] - co['raw_us']:+.2f} µs | |",
        f"| 3 | the same with lakebase's default check (`check_liveness`: one `poll()`) | "
        f"{co['lakebase_default_us']:.2f} µs | {co['raw_us']:.2f} µs (no check) | "
        f"{co['lakebase_default_us'] - co['raw_us']:+.2f} µs | |",
    ])


def table(r: dict[str, Any]) -> str:
    ch = r["churn"]
    lb, tut, lb10 = ch["lakebase"], ch["tutorial"], ch["lakebase_ttl10"]
    fewer = tut["credential_calls"] / max(1, lb["credential_calls"])
    lat = r["connect_latency"]
    tp = r["throughput"]
    co = tp["checkout"]
    al = r["async_lag"]["variants"]
    lines = [
        "| # | measure | lakebase | baseline | ratio | goal |",
        "|---|---|---|---|---|---|",
        f"| 1 | credential API calls, {lb['seconds']:.0f} s churn (max_lifetime {CHURN_LIFETIME:g} s, "
        f"{CHURN_THREADS} threads), 1 h tokens | {lb['credential_calls']} | {tut['credential_calls']} "
        f"(tutorial) | {fewer:.0f}x fewer | >= 50x fewer |",
        f"| 1 | connections opened (pool) / logins (emulator) | {lb['connections_opened']} / {lb['logins']} | "
        f"{tut['connections_opened']} / {tut['logins']} | | |",
        f"| 1 | units of work (`SELECT 1` through the pool) | {lb['units']} | {tut['units']} | "
        f"{lb['units'] / max(1, tut['units']):.2f} | |",
        f"| 1 | credential API calls, same churn, {SHORT_TTL:g} s tokens | {lb10['credential_calls']} "
        f"({lb10['connections_opened']} connections) | {tut['credential_calls']} (1 per connection) | "
        f"{tut['credential_calls'] / max(1, lb10['credential_calls']):.0f}x fewer | "
        f"(expected: 1 + 1 per {SHORT_TTL / 2:g} s) |",
        f"| 2 | new connection, warm cache, median ({lat['connects_each']} each, alternating) | "
        f"{lat['lakebase']['median_ms']:.2f} ms | {lat['raw']['median_ms']:.2f} ms (psycopg, static token) | "
        f"{lat['ratio_median']:.3f} | <= 1.05 |",
        *throughput_rows(tp),
        f"| 3 | one checkout + return, no query, 1 thread (median of {co['batches']} batches) | "
        f"{co['lakebase_us']:.2f} µs | {co['raw_us']:.2f} µs | {co['lakebase_us'] - co['raw_us']:+.2f} µs | |",
        f"| 3 | the same with lakebase's default check (`check_liveness`: one `poll()`) | "
        f"{co['lakebase_default_us']:.2f} µs | {co['raw_us']:.2f} µs (no check) | "
        f"{co['lakebase_default_us'] - co['raw_us']:+.2f} µs | |",
    ]
    lag = r["async_lag"]
    lines += [
        "",
        f"Part 4: event-loop lag (a 1 ms sleep's overshoot) while {lag['connect_tasks']} tasks connect, "
        f"`SELECT 1` and close in a loop; tokens live {lag['token_ttl_seconds']:g} s, the emulator adds "
        f"{lag['api_latency_ms']:g} ms to each API call and login; {lag['rounds']} x {lag['segment_seconds']:g} s "
        "per variant, alternating.",
        "",
        "| variant | mints | connects | lag p50 | p99 | max | lags > 5 ms | lags > 50 ms | "
        "time lost in lags > 5 ms | goal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ASYNC_VARIANTS:
        v = al[name]
        goal = "p99 < 5 ms" if name.startswith("lakebase") else ""
        label = {"lakebase ahead": "`lakebase.connect_async`, refresh `ahead` (default)",
                 "lakebase lazy": "`lakebase.connect_async`, refresh `lazy`",
                 "sync SDK on the loop": "baseline: an asyncio task refreshes `current_token` with the SDK "
                                         f"(each call blocks the loop, median {v.get('sync_mint_ms_median', 0)} ms)",
                 "static token": "reference: psycopg, static token (no refresh)"}[name]
        lines.append(f"| {label} | {v['refreshes']} | {v['connects']} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | "
                     f"{v['max_ms']:.1f} ms | {v['over_5ms']} of {v['samples']} | {v['over_50ms']} | "
                     f"{v['stalled_share']:.2%} | {goal} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short durations: a smoke run, numbers mean nothing")
    ap.add_argument("--throughput-only", action="store_true",
                    help="part 3 only (pooled throughput and checkout cost): results/library_throughput.*")
    ap.add_argument("--rounds", type=int, help="part 3: pairs of runs per variant (default 20, --quick 4)")
    args = ap.parse_args()
    q = args.quick
    churn_seconds = 5.0 if q else 60.0
    connects = 30 if q else 300
    tp_rounds, tp_seconds = (4, 0.5) if q else (20, 0.5)
    tp_rounds = args.rounds or tp_rounds
    lag_rounds, lag_seconds = (1, 3.0) if q else (2, 7.0)

    scrub_environment()
    results: dict[str, Any] = {"quick": q}
    with tempfile.TemporaryDirectory(prefix="lakebase-bench-library-") as tmp, EmulatorProcess(Path(tmp)) as emu:
        env = emu.user_env
        settings = lakebase.Settings(env={}, endpoint=env["ENDPOINT_NAME"], host=env["PGHOST"],
                                     port=env["PGPORT"], database=env["PGDATABASE"], user=env["PGUSER"],
                                     sslmode="require")
        raw = {"host": env["PGHOST"], "port": int(env["PGPORT"]), "dbname": env["PGDATABASE"],
               "user": env["PGUSER"], "sslmode": "require"}
        w = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat", config_file=NO_CONFIG_FILE)
        token = w.postgres.generate_database_credential(endpoint=emu.endpoint_name).token
        bench = Bench(emu, settings, raw, token)

        if args.throughput_only:
            print("3. pooled throughput ...", flush=True)
            results["throughput"] = throughput(bench, tp_rounds, tp_seconds)
            results["throughput"]["checkout"] = checkout_cost(bench, 4 if q else 40, 1000 if q else 5000)
            results["emulator_stats"] = emu.stats()
            write_results("library_throughput", results, throughput_table(results["throughput"]))
            return
        print("2. connect latency ...", flush=True)
        results["connect_latency"] = connect_latency(bench, connects)
        print("3. pooled throughput ...", flush=True)
        results["throughput"] = throughput(bench, tp_rounds, tp_seconds)
        results["throughput"]["checkout"] = checkout_cost(bench, 4 if q else 40, 1000 if q else 5000)
        print("1. churn: lakebase, 1 h tokens ...", flush=True)
        results["churn"] = {"lakebase": churn(bench, "lakebase", churn_seconds)}
        print("1. churn: tutorial pattern ...", flush=True)
        results["churn"]["tutorial"] = churn(bench, "tutorial", churn_seconds)
        print(f"1. churn: lakebase, {SHORT_TTL:g} s tokens ...", flush=True)
        emu.configure(token_ttl_seconds=SHORT_TTL)
        try:
            results["churn"]["lakebase_ttl10"] = churn(bench, "lakebase", churn_seconds)
        finally:
            emu.configure(token_ttl_seconds=3600)
        print("4. event-loop lag ...", flush=True)
        results["async_lag"] = async_lag(bench, lag_rounds, lag_seconds)
        results["emulator_stats"] = emu.stats()
    results["settings"] = {"churn_seconds": churn_seconds, "churn_max_lifetime": CHURN_LIFETIME,
                           "churn_pool_size": CHURN_POOL, "churn_threads": CHURN_THREADS, "short_ttl": SHORT_TTL}
    write_results("library_quick" if q else "library", results, table(results))


if __name__ == "__main__":
    main()
