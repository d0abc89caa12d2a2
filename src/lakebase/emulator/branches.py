"""Branches other than the default one: each a real copy of its source branch's Postgres cluster.

Lakebase makes a branch by copy-on-write at a point of its parent's history; the emulator makes it a
separate PostgreSQL cluster, copied from the source branch's running cluster with ``pg_basebackup``
(a fast checkpoint, the WAL of the copy's own span streamed alongside, no slot, nothing synced: the
copy of a small project takes a few hundred ms). The copy is never a standby: started, it replays
the WAL it came with and comes up as a primary of its own, with every database, role, grant and
setting the source had when the copy began. ``CREATE DATABASE ... TEMPLATE`` would be no faster and
is not faithful (it fails while the source has sessions, renames the database and copies no roles).

A branch's cluster starts when its endpoint first gets a login (like a wake-up from scale to zero),
so creating a branch costs only the copy; it stops with the emulator and is started again on demand
after the next start. Deleting a branch stops its cluster (its sessions end with 57P01) and removes its
data directory. Everything lives in ``DIR/branches/<branch_id>/`` (0700: the data directory and its
log); the server's socket and configuration go into a runtime directory of its own like the primary's
(``postgres.py``), which the sweep of dead emulators' runtime directories covers.

Every blocking step runs on one worker thread that lives until ``close()``: a parent-death signal is
tied to the thread that started the process, so branch clusters, like the primary, die with the
emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .files import write_private
from .postgres import IDENTITIES_FILE, SUPERUSER, PostgresError, PostgresServer, bin_path

log = logging.getLogger("lakebase.emulator.branches")

COPY_TIMEOUT = 120.0


class BranchClusters:
    """The clusters of the non-default branches; ``source`` is the default branch's (the primary)."""

    def __init__(self, root: Path, primary: PostgresServer) -> None:
        self.root = root  # DIR/branches
        self.primary = primary
        self._servers: dict[str, PostgresServer] = {}
        self._starting: dict[str, asyncio.Future[PostgresServer]] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lakebase-branches")

    def directory(self, branch_id: str) -> Path:
        return self.root / branch_id

    def pgdata(self, branch_id: str) -> Path:
        return self.directory(branch_id) / "pgdata"

    def running(self, branch_id: str) -> PostgresServer | None:
        """The branch's server if it is started (or starting), else None."""
        return self._servers.get(branch_id)

    def _server(self, branch_id: str) -> PostgresServer:
        server = self._servers.get(branch_id)
        if server is None:
            pgdata = self.pgdata(branch_id)
            server = PostgresServer(pgdata, self.primary.socket_dir / "extension", dict(self.primary.settings))
            server.log_path = pgdata.parent / "postgres.log"
            self._servers[branch_id] = server
        return server

    async def _run(self, fn: object, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]

    # ---- copy ---------------------------------------------------------------------------------
    async def copy(self, branch_id: str, source: PostgresServer) -> str:
        """Make the branch's data directory, a copy of ``source`` now (its databases, roles, grants,
        settings and the workspace's identities file); returns the LSN the copy was taken at."""
        return str(await self._run(self._copy, branch_id, source))

    def _copy(self, branch_id: str, source: PostgresServer) -> str:
        self.root.mkdir(mode=0o700, exist_ok=True)
        directory = self.directory(branch_id)
        shutil.rmtree(directory, ignore_errors=True)  # a copy that did not finish, or a deleted branch's
        directory.mkdir(mode=0o700)
        server = self._server(branch_id)
        pgdata = server.pgdata
        pgdata.mkdir(mode=0o700)
        owner = server._owner()
        if owner is not None:
            os.chown(pgdata, *owner)
        try:
            with server._server_paths() as (data, _, fds):  # no permission on the parents needed
                cmd = [
                    str(bin_path("pg_basebackup")), "-h", str(source.socket_dir), "-p", str(source.port),
                    "-U", SUPERUSER, "-D", data, "--checkpoint=fast", "--wal-method=stream",
                    "--no-sync", "--no-manifest", "--label", f"lakebase branch {branch_id}",
                ]
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=COPY_TIMEOUT,
                                        pass_fds=fds, **server._as_user())
        except subprocess.TimeoutExpired:
            self._forget(branch_id)
            raise PostgresError(f"copying the source branch into {pgdata} did not finish in "
                                f"{COPY_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            self._forget(branch_id)
            raise PostgresError(f"pg_basebackup into {pgdata} failed:\n{result.stderr.strip()}")
        lsn = _backup_start_lsn(pgdata)
        log.info("made branch %s in %s (a copy at LSN %s)", branch_id, pgdata, lsn)
        return lsn

    def _forget(self, branch_id: str) -> None:
        server = self._servers.pop(branch_id, None)
        if server is not None:
            server.close()
        shutil.rmtree(self.directory(branch_id), ignore_errors=True)

    # ---- start, stop ---------------------------------------------------------------------------
    async def ready(self, branch_id: str) -> PostgresServer:
        """The branch's server, started (once; concurrent callers wait for the same start)."""
        server = self._servers.get(branch_id)
        if server is not None and server.running():
            return server
        fut = self._starting.get(branch_id)
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            loop = asyncio.get_running_loop()
            fut = self._starting[branch_id] = loop.run_in_executor(self._executor, self._start, branch_id)
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._starting.get(branch_id) is fut:
                del self._starting[branch_id]

    def _start(self, branch_id: str) -> PostgresServer:
        server = self._server(branch_id)
        if not server.running():
            if not server.initialized():
                raise PostgresError(f"branch {branch_id} has no data directory in {server.pgdata}")
            server.start()
            log.info("started branch %s", branch_id)
        return server

    async def stop(self, branch_id: str) -> None:
        """Stop the branch's server (fast shutdown: its sessions end with 57P01), if it runs."""
        if branch_id in self._servers:
            await self._run(self._stop, branch_id)

    def _stop(self, branch_id: str) -> None:
        server = self._servers.pop(branch_id, None)
        if server is not None:
            server.close()

    async def remove(self, branch_id: str) -> None:
        """Stop the branch's server and free its storage."""
        await self._run(self._forget, branch_id)

    def write_identities(self, identities: str) -> None:
        """The workspace's identities changed: every branch's databricks_create_role sees them too."""
        if not self.root.is_dir():
            return
        owner = self.primary._owner()
        for directory in self.root.iterdir():
            pgdata = directory / "pgdata"
            if (pgdata / "PG_VERSION").exists():
                with contextlib.suppress(OSError):
                    write_private(pgdata / IDENTITIES_FILE, identities, owner)

    async def close(self) -> None:
        """Stop every branch's server and the worker thread (with the emulator)."""
        def stop_all() -> None:
            for branch_id in list(self._servers):
                with contextlib.suppress(Exception):
                    self._stop(branch_id)

        with contextlib.suppress(Exception):
            await self._run(stop_all)
        self._executor.shutdown(wait=True)


def _backup_start_lsn(pgdata: Path) -> str:
    """The LSN the copy starts from (``START WAL LOCATION`` in the backup_label pg_basebackup wrote)."""
    try:
        for line in (pgdata / "backup_label").read_text().splitlines():
            if line.startswith("START WAL LOCATION:"):
                return line.split(":", 1)[1].split()[0]
    except OSError:
        pass
    return ""
