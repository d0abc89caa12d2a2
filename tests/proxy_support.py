"""``lakebase proxy`` as a child process, for tests/test_local_proxy*.py and benchmarks/local_proxy.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

WORKSPACE_PREFIXES = ("DATABRICKS_", "PG", "LAKEBASE_", "ENDPOINT_NAME")


class ProxyProcess:
    """``lakebase proxy --json-logs ARGS`` with the emulator's developer environment; ports read from its log."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.args = ["--json-logs", *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(WORKSPACE_PREFIXES)}
        self.env.update(env)
        self.env.setdefault("DATABRICKS_CONFIG_FILE", "/nonexistent/lakebase-tests/databrickscfg")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}  # endpoint name -> port
        self.sockets: dict[str, str] = {}  # endpoint name -> Unix socket path
        self.http_port: int | None = None

    def start(self, timeout: float = 60.0, expect: int = 1) -> ProxyProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lakebase", "proxy", *self.args], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while len(self.ports) < expect:
            for record in self.records():
                if record.get("event") == "proxy.listening":
                    self.ports[record["endpoint"]] = int(record["port"])
                    if record.get("socket"):
                        self.sockets[record["endpoint"]] = record["socket"]
                elif record.get("event") == "proxy.http":
                    self.http_port = int(record["http_port"])
            if self.proc.poll() is not None:
                raise RuntimeError(f"lakebase proxy exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"lakebase proxy did not listen within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def http(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", method=method,
                                     data=b"" if method == "POST" else None, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.http("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
