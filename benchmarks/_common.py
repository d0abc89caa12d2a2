"""Helpers shared by the benchmarks: an emulator in its own process, results as JSON and markdown."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@contextmanager
def emulator_process(data_dir: Path | None = None, *args: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """`lakebase emulator start` in a subprocess (so it does not share the benchmark's GIL)."""
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lakebase-bench-")
        data_dir = Path(tmp.name)
    for name in ("user.env", "app.env"):
        (data_dir / name).unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "PG"))}
    proc = subprocess.Popen([sys.executable, "-m", "lakebase", "emulator", "start", "--data-dir", str(data_dir),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (data_dir / "app.env").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"emulator failed: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("emulator not ready in 60 s")
            time.sleep(0.05)
        yield data_dir, read_env(data_dir / "user.env")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if tmp is not None:
            tmp.cleanup()


def owner_token(env: dict[str, str]) -> str:
    from databricks.sdk import WorkspaceClient

    w = WorkspaceClient(host=env["DATABRICKS_HOST"], token=env["DATABRICKS_TOKEN"], auth_type="pat")
    return w.postgres.generate_database_credential(endpoint=env["ENDPOINT_NAME"]).token


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_results(name: str, data: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
            **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
