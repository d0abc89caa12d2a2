"""Child processes of the emulator, the demo, the tests and the benchmarks, supervised.

::

    env = clean_environment(emu.app_env)          # no Lakebase/Databricks/libpq settings of ours leak in
    proc = start_gunicorn(app_dir, env, free_port(), 2, log_path)
    wait_http_ok(url + "/healthz", 60, alive=lambda: proc.poll() is None)
    stop_process_group(proc)                      # SIGTERM the group, then SIGKILL what is left

A child started with :func:`parent_death_signal` as its ``preexec_fn`` is signalled when its parent
dies (Linux), so a killed emulator or demo leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:  # pragma: no cover - runs in the child
    """In a child, between fork and exec: get ``signum`` when the parent dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):  # no prctl: not Linux
        pass


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets :func:`set_parent_death_signal` (None where there is no prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    return functools.partial(set_parent_death_signal, signum)


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any Lakebase/Databricks/libpq settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABRICKS_", "PG", "LAKEBASE_")) and k != "ENDPOINT_NAME"}
    env.update(extra or {})
    return env


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_gunicorn(app_dir: Path, env: dict[str, str], port: int, workers: int, log_path: Path,
                   host: str = "127.0.0.1", extra_args: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """gunicorn serving ``app:app`` of ``app_dir`` in its own session (its own process group)."""
    from .files import open_private_log

    log = open_private_log(log_path)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--bind", f"{host}:{port}",
             "--workers", str(workers), *extra_args, "app:app"],
            cwd=app_dir, env={**env, "DATABRICKS_APP_PORT": str(port)}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, preexec_fn=parent_death_signal(signal.SIGTERM),
        )
    finally:
        log.close()


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``proc`` (a session leader), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Workers that outlived their master, or a master that would not stop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_http_ok(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> dict[str, Any] | None:
    """Poll ``url`` until it answers 200 (its JSON, or {}); None if ``alive()`` turns false or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    try:
                        return dict(json.loads(resp.read() or b"{}"))
                    except ValueError:
                        return {}
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.2)
    return None
