"""Helpers shared by the benchmarks: a credential for the owner, results as JSON and markdown.

The emulator runs in its own process (``lakebase.emulator.EmulatorProcess``) so it does not share a
benchmark's GIL."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


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
