"""What isolation per test costs with the pytest plugin: a branch per test vs a rolled-back transaction.

1. Per-test isolated branch, as ``lakebase_branch`` does it: create a branch of the main branch through
   the SDK (a long-running operation, waited for), first ``lakebase.connect()`` to it and ``SELECT 1``
   (the branch's Postgres starts on that first login), delete it (waited for). ``--branches`` rounds.
2. A 100-test example suite (each test creates a table, inserts and counts rows) run by pytest in a
   child process against one emulator (``--lakebase-emulator``), once with ``lakebase_branch`` and once
   with ``lakebase_transaction``; and with ``lakebase_env`` and no isolation, for what pytest, the
   imports and the tests themselves cost. Variants alternate over ``--rounds``.

    python -m benchmarks.testing_isolation [--branches 20] [--tests 100] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import write_results

SUITE_HEAD = '''
import lakebase
import pytest


@pytest.fixture
def db(request):
    if VARIANT == "transaction":
        conn = request.getfixturevalue("lakebase_transaction")
        yield conn
        return
    request.getfixturevalue("lakebase_branch" if VARIANT == "branch" else "lakebase_env")
    with lakebase.connect() as conn:
        yield conn
        conn.rollback()
        if VARIANT == "env":  # no isolation: clean up by hand
            conn.execute("DROP TABLE IF EXISTS items")
            conn.commit()


@pytest.mark.parametrize("n", range(TESTS))
def test_items(db, n):
    db.execute("CREATE TABLE items (id serial PRIMARY KEY, n int)")
    db.execute("INSERT INTO items (n) SELECT generate_series(1, %s)", (n + 1,))
    assert db.execute("SELECT count(*) FROM items").fetchone()[0] == n + 1
'''


def branch_round(target: Any) -> dict[str, float]:
    """As the fixtures do it: the branch, then the environment pointed at it, then a zero-argument connect."""
    import lakebase

    t0 = time.perf_counter()
    branch = target.create_branch("bench")
    t1 = time.perf_counter()
    try:
        os.environ.update(target.owner_env(branch))
        with lakebase.connect() as conn:
            conn.execute("SELECT 1")
        t2 = time.perf_counter()
    finally:
        target.delete_branch(branch.name)
    t3 = time.perf_counter()
    return {"create": t1 - t0, "first_connect": t2 - t1, "delete": t3 - t2, "total": t3 - t0}


def run_suite(variant: str, tests: int, emulator_dir: Path, work: Path) -> float:
    path = work / f"test_{variant}.py"
    path.write_text(f"VARIANT = {variant!r}\nTESTS = {tests}\n" + SUITE_HEAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "PG", "LAKEBASE_"))}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "lakebase.testing", "-p", "no:cacheprovider",
         "--lakebase-emulator", str(emulator_dir), "--rootdir", str(work), str(path)],
        cwd=work, env=env, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"the {variant} suite failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=20, help="rounds of create + first connect + delete")
    parser.add_argument("--tests", type=int, default=100, help="tests in the example suite")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each suite variant (alternating)")
    args = parser.parse_args()
    import _lakebase_pytest as plugin
    from lakebase.emulator import EmulatorProcess

    with tempfile.TemporaryDirectory(prefix="lakebase-bench-") as tmp, EmulatorProcess(Path(tmp) / "emu") as emu:
        target = plugin._emulator_target(emu)
        saved = dict(os.environ)
        os.environ.update({**emu.user_env, "DATABRICKS_CONFIG_FILE": plugin.NO_CONFIG_FILE})
        try:
            branch_round(target)  # warm-up: imports, the first token
            rounds = [branch_round(target) for _ in range(args.branches)]
        finally:
            os.environ.clear()
            os.environ.update(saved)
        phases = {k: round(statistics.median(r[k] for r in rounds) * 1e3, 1) for k in rounds[0]}
        print("branch per test, median ms:", phases, flush=True)
        work = Path(tmp) / "suite"
        work.mkdir()
        suites: dict[str, list[float]] = {"env": [], "transaction": [], "branch": []}
        for _ in range(args.rounds):
            for variant in suites:
                suites[variant].append(run_suite(variant, args.tests, emu.data_dir, work))
                print(variant, round(suites[variant][-1], 1), "s", flush=True)

    wall = {k: round(statistics.median(v), 1) for k, v in suites.items()}
    per_test = {k: round((wall[k] - wall["env"]) / args.tests * 1e3, 1) for k in ("transaction", "branch")}
    table = "\n".join([
        "| measure | median |",
        "|---|---|",
        f"| branch per test: create (SDK, waited) | {phases['create']:.0f} ms |",
        f"| branch per test: first connect + SELECT 1 | {phases['first_connect']:.0f} ms |",
        f"| branch per test: delete (waited) | {phases['delete']:.0f} ms |",
        f"| branch per test: total ({args.branches} rounds) | {phases['total']:.0f} ms |",
        f"| {args.tests}-test suite, `lakebase_env`, no isolation | {wall['env']:.1f} s |",
        f"| {args.tests}-test suite, `lakebase_transaction` | {wall['transaction']:.1f} s "
        f"(+{per_test['transaction']:.0f} ms/test) |",
        f"| {args.tests}-test suite, `lakebase_branch` | {wall['branch']:.1f} s (+{per_test['branch']:.0f} ms/test) |",
    ])
    write_results("testing_isolation", {
        "branch_rounds_ms": [{k: round(v * 1e3, 1) for k, v in r.items()} for r in rounds],
        "branch_median_ms": phases, "tests": args.tests, "suite_wall_s": suites, "suite_median_s": wall,
        "extra_ms_per_test_over_env": per_test,
    }, table)


if __name__ == "__main__":
    main()
