"""Read-only endpoints run on a hot standby of the primary: observed through the proxy with psycopg."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from lakebase.emulator import EmulatorProcess as Emulator

from .conftest import owner_connect
from .lakebase_support import pat_client, wait_for
from .test_emulator_lifecycle import postgres_pids, wait_gone
from .test_emulator_proxy import user_token

REPLICA = "replica-standby-test"


@pytest.fixture(scope="module")
def replica(emulator: Emulator) -> Iterator[str]:
    """A read-only endpoint, made with the real databricks-sdk as a user would."""
    from databricks.sdk.service.postgres import Endpoint, EndpointSpec, EndpointType

    w = pat_client(emulator)
    parent = emulator.endpoint_name.rsplit("/endpoints/", 1)[0]
    w.postgres.create_endpoint(parent=parent, endpoint_id=REPLICA, endpoint=Endpoint(
        spec=EndpointSpec(endpoint_type=EndpointType.ENDPOINT_TYPE_READ_ONLY))).wait()
    try:
        yield REPLICA
    finally:
        w.postgres.delete_endpoint(f"{parent}/endpoints/{REPLICA}").wait()


def replica_connect(emu: Emulator, **kwargs: Any) -> psycopg.Connection:
    return owner_connect(emu, host=f"{REPLICA}.localhost", hostaddr="127.0.0.1", **kwargs)  # chosen by SNI


def visible(conn: psycopg.Connection, sql: str, expected: object) -> bool:
    conn.rollback()  # a new snapshot each poll
    return conn.execute(sql).fetchone() == expected  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def table(emulator: Emulator, replica: str) -> str:
    """A table with one row, written on the primary and replicated."""
    name = "ro_" + uuid.uuid4().hex[:8]
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO {name} VALUES (1, 'from the primary')")
    with replica_connect(emulator) as conn:
        wait_for(lambda: visible(conn, f"SELECT count(*) FROM pg_class WHERE relname = '{name}'", (1,)),
                 what="the table on the replica")
    return name


def test_sessions_run_on_a_standby(emulator: Emulator, replica: str) -> None:
    with replica_connect(emulator) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with owner_connect(emulator, options=f"endpoint={replica}") as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with owner_connect(emulator) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)


@pytest.mark.parametrize("setting", ["SET default_transaction_read_only = off",
                                     "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"])
@pytest.mark.parametrize("write", ["INSERT INTO {t} VALUES (2, 'written on the replica')",
                                   "UPDATE {t} SET v = 'changed on the replica'",
                                   "DELETE FROM {t}",
                                   "CREATE TABLE {t}_copy (x int)"])
def test_writes_fail_with_25006_whatever_the_session_sets(emulator: Emulator, table: str, setting: str,
                                                          write: str) -> None:
    with replica_connect(emulator, autocommit=True) as conn:
        conn.execute(setting)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        with pytest.raises(errors.ReadOnlySqlTransaction) as info:
            conn.execute(write.format(t=table))
        assert info.value.sqlstate == "25006"
    with owner_connect(emulator) as conn:  # nothing reached the primary
        assert conn.execute(f"SELECT id, v FROM {table}").fetchall() == [(1, "from the primary")]


def test_a_read_write_transaction_is_refused(emulator: Emulator, table: str) -> None:
    with replica_connect(emulator) as conn:
        with pytest.raises(psycopg.Error, match="read-write mode during recovery"):
            conn.execute("SET TRANSACTION READ WRITE")


def test_reads_see_the_primarys_committed_data(emulator: Emulator, table: str) -> None:
    with replica_connect(emulator) as reader, owner_connect(emulator) as writer:
        writer.execute(f"INSERT INTO {table} VALUES (10, 'uncommitted')")
        assert reader.execute(f"SELECT count(*) FROM {table} WHERE id = 10").fetchone() == (0,)
        writer.rollback()
        with writer.transaction():
            writer.execute(f"INSERT INTO {table} VALUES (11, 'committed')")
        wait_for(lambda: visible(reader, f"SELECT v FROM {table} WHERE id = 11", ("committed",)),
                 what="the committed row on the replica")
        assert reader.execute(f"SELECT count(*) FROM {table} WHERE id = 10").fetchone() == (0,)
        writer.execute(f"DELETE FROM {table} WHERE id = 11")
        writer.commit()


def test_a_role_made_with_databricks_create_role_logs_in_on_the_replica(emulator: Emulator, replica: str) -> None:
    user = emulator.add_user(f"replica.{uuid.uuid4().hex[:6]}@example.com")
    with owner_connect(emulator, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS databricks_auth")
        conn.execute("SELECT databricks_create_role(%s, 'USER')", (user.name,))
    token = user_token(emulator, user.pat)

    def login() -> bool:
        try:
            with replica_connect(emulator, user=user.name, password=token) as conn:
                return conn.execute("SELECT current_user").fetchone() == (user.name,)
        except psycopg.OperationalError as exc:  # the role not replayed yet
            assert f'role "{user.name}" does not exist' in str(exc)
            return False

    wait_for(login, what="a login of the new role on the replica")


def test_faults_limits_and_stats_apply_to_replica_sessions(emulator: Emulator, replica: str) -> None:
    emulator.configure(restart_seconds=0.2, wake_delay_seconds=0.1)
    before = emulator.stats()
    conn = replica_connect(emulator)
    assert emulator.stats()["logins_succeeded"] == before["logins_succeeded"] + 1
    emulator.restart()
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()

    conn = replica_connect(emulator)
    assert emulator.suspend(replica) == 1
    assert emulator.endpoint_state(replica) == "IDLE"
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()

    with replica_connect(emulator) as conn:  # wakes it; cancel reaches the replica's backend
        assert emulator.endpoint_state(replica) == "ACTIVE"
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()

    conn = replica_connect(emulator)
    ended = emulator.stats()["sessions_terminated"]
    emulator.configure(idle_timeout_seconds=0.3)
    wait_for(lambda: emulator.stats()["sessions_terminated"] > ended, what="the idle timeout")
    with pytest.raises(errors.AdminShutdown):
        conn.execute("SELECT 1")
    conn.close()


# ---- lifecycle -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_replica_persists_across_restarts_and_dies_with_the_emulator(tmp_path: Path) -> None:
    emu = Emulator(tmp_path / "emu").start()
    try:
        emu.add_read_only_endpoint(REPLICA)
        with owner_connect(emu, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('on both')")
        with replica_connect(emu) as conn:
            wait_for(lambda: visible(conn, "SELECT count(*) FROM pg_class WHERE relname = 'kept'", (1,)),
                     what="the table on the replica")
        pids = postgres_pids(emu.data_dir)
        assert any(os.readlink(f"/proc/{p}/cwd") == str(emu.data_dir / "pgdata-replica") for p in pids)
    finally:
        emu.stop()
    assert wait_gone(pids), "a postgres outlived the emulator"
    assert not (emu.data_dir / "pgdata-replica" / "postmaster.pid").exists()

    emu.start()  # resumed: the same standby, its data there, streaming again
    try:
        with owner_connect(emu, autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES ('after the restart')")
        with replica_connect(emu) as conn:
            wait_for(lambda: visible(conn, "SELECT count(*) FROM kept", (2,)), what="the new row on the replica")
            with pytest.raises(errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO kept VALUES ('no')")
        pids = postgres_pids(emu.data_dir)
        assert emu.pid is not None
        os.kill(emu.pid, signal.SIGKILL)  # no clean stop: the parent-death signal takes both down
    finally:
        emu.stop()
    assert wait_gone(pids), "a postgres kept running after the emulator was killed"

    emu.start()  # after the kill: resumed again; then its endpoint goes, and on the next start the standby
    try:
        with replica_connect(emu) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (2,)
        pat_client(emu).postgres.delete_endpoint(
            emu.endpoint_name.replace("/endpoints/primary", f"/endpoints/{REPLICA}")).wait()
    finally:
        emu.stop()
    emu.start()
    try:
        assert not (emu.data_dir / "pgdata-replica").exists()
        with owner_connect(emu) as conn:  # and its slot, which would keep WAL for it forever
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    finally:
        emu.stop()
