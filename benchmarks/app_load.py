"""HTTP load on the Flask notes app (lakebase) and on the tutorial's app, under token rotation and a restart.

    .venv/bin/python -m benchmarks.app_load [--seconds 60] [--clients 8]

Both apps run under gunicorn with the same settings (2 workers x 4 threads, gthread) as the app's
service principal (OAuth M2M, the emulator's app.env), side by side (both loaded at the same time,
so that the shared machine's drift hits both alike; ``--sequential``: one after the other) against
one emulator in its own process, with database credentials that live 10 s (``token_ttl_seconds=10``)
and one compute restart halfway through the run (each run, with ``--sequential``). Concurrent clients
send 90% page reads (``GET /``) and 10% writes (``POST /api/notes``; through
``lakebase.run_transaction`` in the lakebase app). Reported per app: requests served, non-2xx (goal:
zero for reads), p50/p99 latency, credential API calls and logins (emulator stats; side by side, the
two apps' total). Results: results/app_load.json, .md and .png (latency over time, faults marked).
This is not a test: nothing asserts on the numbers.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from lakebase.emulator import EmulatorProcess
from lakebase.emulator.supervise import clean_environment, free_port, start_gunicorn, stop_process_group, wait_http_ok

from ._common import RESULTS, write_results

HERE = Path(__file__).resolve().parent
FLASK_APP = HERE.parent / "apps" / "notes-flask"
WORKERS, THREADS = 2, 4
TOKEN_TTL = 10.0
WRITE_SHARE = 0.10


@dataclass
class Sample:
    t: float  # seconds since the load started
    ms: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    op: str


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)
    mints: list[float] = field(default_factory=list)  # when the emulator issued credentials (load clock)
    restart_at: float | None = None
    seconds: float = 0.0
    credentials: int = 0
    logins: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float | None = None  # the app's processes (gunicorn master and workers) during the load


# ---- the apps ------------------------------------------------------------------------------------------
# The same gunicorn settings for both: workers, threads, gthread, an access log line per request (to
# /dev/null), and pools of the same size (the tutorial's max_size=10).
ACCESS_LOG = ("--access-logfile", "/dev/null")
POOL_MAX_SIZE = 10


def start_lakebase_app(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_gunicorn(FLASK_APP, {**env, "GUNICORN_THREADS": str(THREADS),
                                      "NOTES_POOL_MAX_SIZE": str(POOL_MAX_SIZE)}, port, WORKERS, log,
                          extra_args=ACCESS_LOG)


def start_baseline_app(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "gthread",
             "--threads", str(THREADS), "--bind", f"127.0.0.1:{port}", "--timeout", "60", *ACCESS_LOG,
             "baseline_tutorial_app:app"],
            cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


def group_cpu_seconds(pgid: int) -> float | None:
    """User + system CPU time of the live processes of process group ``pgid`` (Linux /proc; else None)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[2]) == pgid:  # fields[0] is the state (3rd field of stat): pgrp is the 5th
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# ---- load ----------------------------------------------------------------------------------------------
def client_loop(url: str, started: float, until: float, out: list[Sample], errors: dict[str, int],
                lock: threading.Lock, seed: int) -> None:
    rng = random.Random(seed)
    local: list[Sample] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            write = rng.random() < WRITE_SHARE
            t0 = time.monotonic()
            status = 0
            try:
                if write:
                    resp = http.post("/api/notes", json={"content": f"load {uuid.uuid4().hex[:10]}"})
                else:
                    resp = http.get("/")
                status = resp.status_code
            except httpx.HTTPError as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            t1 = time.monotonic()
            local.append(Sample(t0 - started, (t1 - t0) * 1000, status, "write" if write else "read"))
    with lock:
        out.extend(local)


def monitor(emu: EmulatorProcess, started: float, stop: threading.Event, phases: list[Phase]) -> None:
    last = int(emu.stats()["credentials_issued"])
    while not stop.wait(0.25):
        issued = int(emu.stats()["credentials_issued"])
        for phase in phases:
            phase.mints.extend([time.monotonic() - started] * (issued - last))
        last = issued


def run_phase(name: str, emu: EmulatorProcess, app_env: dict[str, str], seconds: float, clients: int,
              workdir: Path) -> Phase:
    return run_phases([name], emu, app_env, seconds, clients, workdir)[0]


def run_phases(names: list[str], emu: EmulatorProcess, app_env: dict[str, str], seconds: float, clients: int,
               workdir: Path) -> list[Phase]:
    """Load the apps ``names`` at the same time (``clients`` clients each) for ``seconds``, with one
    compute restart halfway through. With more than one app, the emulator's counters (credential
    calls, logins) are the apps' total."""
    phases = [Phase(name) for name in names]
    procs: list[subprocess.Popen[bytes]] = []
    before = emu.stats()
    stop = threading.Event()
    try:
        urls = []
        for name in names:
            port = free_port()
            log = workdir / f"{name}.log"
            start = start_lakebase_app if name == "lakebase" else start_baseline_app
            proc = start(app_env, port, log)
            procs.append(proc)
            url = f"http://127.0.0.1:{port}"
            if wait_http_ok(url + "/", 60, alive=lambda proc=proc: proc.poll() is None) is None:  # type: ignore[misc]
                raise SystemExit(f"{name} app did not start; see {log}:\n{log.read_text(errors='replace')[-2000:]}")
            urls.append(url)
        lock = threading.Lock()
        cpu_before = [group_cpu_seconds(proc.pid) for proc in procs]
        started = time.monotonic()
        until = started + seconds
        watcher = threading.Thread(target=monitor, args=(emu, started, stop, phases), daemon=True)
        watcher.start()
        threads = [threading.Thread(target=client_loop, args=(url, started, until, phase.samples, phase.errors,
                                                               lock, i * 1000 + c), daemon=True)
                   for i, (url, phase) in enumerate(zip(urls, phases, strict=True)) for c in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        restart_at = time.monotonic() - started
        emu.restart()
        for t in threads:
            t.join(seconds + 60)
        elapsed = time.monotonic() - started
        for phase, proc, before_cpu in zip(phases, procs, cpu_before, strict=True):
            after_cpu = group_cpu_seconds(proc.pid)
            if before_cpu is not None and after_cpu is not None:
                phase.cpu_seconds = after_cpu - before_cpu
        stop.set()
        watcher.join(5)
    finally:
        stop.set()
        for proc in procs:
            stop_process_group(proc)
    after = emu.stats()
    for phase in phases:
        phase.restart_at = restart_at
        phase.seconds = elapsed
        phase.credentials = int(after["credentials_issued"]) - int(before["credentials_issued"])
        phase.logins = int(after["logins_succeeded"]) - int(before["logins_succeeded"])
        phase.samples.sort(key=lambda s: s.t)
    return phases


# ---- reporting -----------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(phase: Phase) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": round(phase.seconds, 1), "requests": len(phase.samples),
                           "credential_api_calls": phase.credentials, "logins": phase.logins,
                           "restart_at_s": round(phase.restart_at or 0, 1), "client_errors": phase.errors,
                           "app_cpu_seconds": _r(phase.cpu_seconds),
                           "app_cpu_ms_per_request": _r(1000 * phase.cpu_seconds / len(phase.samples), 2)
                           if phase.cpu_seconds is not None and phase.samples else None}
    for op in ("read", "write", "all"):
        sel = [s for s in phase.samples if op == "all" or s.op == op]
        ok = [s.ms for s in sel if 200 <= s.status < 300]
        bad = [s for s in sel if not 200 <= s.status < 300]
        statuses: dict[str, int] = {}
        for s in bad:
            statuses[str(s.status or "no answer")] = statuses.get(str(s.status or "no answer"), 0) + 1
        out[op] = {"requests": len(sel), "ok": len(ok), "non_2xx": len(bad), "non_2xx_by_status": statuses,
                   "p50_ms": _r(pct([s.ms for s in sel], 50)), "p99_ms": _r(pct([s.ms for s in sel], 99)),
                   "max_ms": _r(max((s.ms for s in sel), default=None))}
    window = [s for s in phase.samples if phase.restart_at is not None
              and phase.restart_at <= s.t <= phase.restart_at + 5]
    out["restart_window_5s"] = {"requests": len(window),
                                "non_2xx": sum(1 for s in window if not 200 <= s.status < 300),
                                "max_ms": _r(max((s.ms for s in window), default=None))}
    return out


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def table(results: dict[str, dict[str, Any]], side_by_side: bool = False) -> str:
    lb, base = results["lakebase"], results["tutorial"]
    both = " (both apps together)" if side_by_side else ""
    rows = [
        ("requests served (2xx)", lambda r: f"{r['all']['ok']}"),
        ("requests/s", lambda r: f"{r['all']['requests'] / r['seconds']:.0f}"),
        ("non-2xx reads", lambda r: _bad(r["read"])),
        ("non-2xx writes", lambda r: _bad(r["write"])),
        ("p50 / p99 read latency", lambda r: f"{r['read']['p50_ms']} / {r['read']['p99_ms']} ms"),
        ("p50 / p99 write latency", lambda r: f"{r['write']['p50_ms']} / {r['write']['p99_ms']} ms"),
        ("app CPU per request (gunicorn master + workers)", lambda r: f"{r['app_cpu_ms_per_request']} ms"),
        ("non-2xx in the 5 s after the restart", lambda r: f"{r['restart_window_5s']['non_2xx']}"),
        (f"credential API calls{both}", lambda r: f"{r['credential_api_calls']}"),
        (f"Postgres logins{both}", lambda r: f"{r['logins']}"),
    ]
    lines = ["| measure | lakebase (`apps/notes-flask`) | tutorial pattern (`baseline_tutorial_app.py`) |",
             "|---|---|---|"]
    lines += [f"| {label} | {fn(lb)} | {fn(base)} |" for label, fn in rows]
    lb_rps, base_rps = lb["all"]["ok"] / lb["seconds"], base["all"]["ok"] / base["seconds"]
    lines.append(f"| requests/s (2xx), lakebase / tutorial | {lb_rps / base_rps:.3f} | (goal >= 0.95) |")
    return "\n".join(lines)


def _bad(op: dict[str, Any]) -> str:
    if not op["non_2xx"]:
        return f"0 of {op['requests']}"
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(op["non_2xx_by_status"].items()))
    return f"**{op['non_2xx']}** of {op['requests']} ({detail})"


def plot(phases: list[Phase], seconds: float, clients: int, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[dev]')", file=sys.stderr)
        return False
    fig, axes = plt.subplots(len(phases), 1, figsize=(11, 3.6 * len(phases)), sharex=True, sharey=True)
    titles = {"lakebase": "lakebase: apps/notes-flask (ConnectionPool + run_transaction)",
              "tutorial": "tutorial pattern: benchmarks/baseline_tutorial_app.py (a credential per connection)"}
    for ax, phase in zip(axes, phases, strict=True):
        for op, colour in (("read", "tab:blue"), ("write", "tab:green")):
            ok = [s for s in phase.samples if s.op == op and 200 <= s.status < 300]
            ax.scatter([s.t for s in ok], [s.ms for s in ok], s=2, alpha=0.35, color=colour, label=f"{op} 2xx",
                       rasterized=True)
        bad = [s for s in phase.samples if not 200 <= s.status < 300]
        if bad:
            ax.scatter([s.t for s in bad], [max(s.ms, 0.5) for s in bad], s=18, marker="x", color="red",
                       label=f"non-2xx ({len(bad)})")
        if phase.restart_at is not None:
            ax.axvline(phase.restart_at, color="black", linestyle="--", linewidth=1)
            ax.annotate("compute restart", (phase.restart_at, 1), xytext=(4, 4), textcoords="offset points",
                        xycoords=("data", "axes fraction"), fontsize=8, va="top")
        for i, t in enumerate(phase.mints):
            ax.axvline(t, ymin=0, ymax=0.05, color="tab:orange", linewidth=1.2,
                       label="credential minted" if i == 0 else None)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(titles.get(phase.name, phase.name), fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, markerscale=3)
    axes[-1].set_xlabel(f"seconds since the load started ({clients} clients; tokens live {TOKEN_TTL:g} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per app (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--only", choices=["lakebase", "tutorial"], help="run one app only (no results file)")
    parser.add_argument("--sequential", action="store_true",
                        help="load one app after the other (each its own restart; per-app credential counts) "
                             "instead of both at once")
    parser.add_argument("--keep", type=Path, help="keep the emulator data and the apps' logs in this directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lakebase-app-load-") as tmp:
        workdir = args.keep.resolve() if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with EmulatorProcess(workdir / "emulator", token_ttl=TOKEN_TTL) as emu:
            owner = clean_environment({**emu.user_env, "DATABRICKS_CONFIG_FILE": str(workdir / "nocfg")})
            subprocess.run([sys.executable, "-m", "lakebase", "init-schema", "--app-client-id", emu.app.name],
                           env=owner, check=True, capture_output=True)
            emu.configure(token_ttl_seconds=TOKEN_TTL)
            app_env = clean_environment({**emu.app_env, "DATABRICKS_CONFIG_FILE": str(workdir / "nocfg")})
            names = [args.only] if args.only else ["lakebase", "tutorial"]
            phases = []
            if args.sequential or args.only:
                for name in names:
                    print(f"{name}: {args.seconds:g} s of load with {args.clients} clients ...", file=sys.stderr)
                    phases.append(run_phase(name, emu, app_env, args.seconds, args.clients, workdir))
                    print(f"{name}: {summary(phases[-1])}", file=sys.stderr)
            else:
                print(f"{' and '.join(names)} side by side: {args.seconds:g} s of load with {args.clients} "
                      "clients each ...", file=sys.stderr)
                phases = run_phases(names, emu, app_env, args.seconds, args.clients, workdir)
                for phase in phases:
                    print(f"{phase.name}: {summary(phase)}", file=sys.stderr)
    results = {p.name: summary(p) for p in phases}
    if args.only:
        return
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / "app_load.png"
    plotted = plot(phases, args.seconds, args.clients, png)
    write_results("app_load", {"seconds": args.seconds, "clients": args.clients, "token_ttl_seconds": TOKEN_TTL,
                               "side_by_side": not args.sequential,
                               "gunicorn": {"workers": WORKERS, "threads": THREADS},
                               "write_share": WRITE_SHARE, "results": results,
                               "plot": png.name if plotted else None},
                  table(results, side_by_side=not args.sequential))


if __name__ == "__main__":
    main()
