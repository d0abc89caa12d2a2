"""Branches in the emulator: create -> done, first connect, delete, and the three together.

An emulator child process (``EmulatorProcess``) in a temporary directory; its default database gets a
small table (1000 rows). Each round, through the real SDK as the project owner:
``w.postgres.create_branch(...).wait()`` (create -> done: the copy of the source cluster), then the
first connection to the branch's endpoint (mint a token, connect with psycopg through the TLS proxy,
``SELECT count(*)``: this starts the branch's cluster), then ``delete_branch(...).wait()`` with the
connection still open (its session ends, the cluster stops, its storage is freed).

    python -m benchmarks.emulator_branches [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from typing import Any

from ._common import write_results


def run(rounds: int) -> dict[str, Any]:
    import psycopg
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.postgres import Branch, BranchSpec

    from lakebase.emulator import EmulatorProcess

    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(tmp) as emu:
        w = WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat")
        project = emu.endpoint_name.split("/branches/")[0]

        def connect(endpoint: str) -> psycopg.Connection[Any]:
            host = w.postgres.get_endpoint(endpoint).status.hosts.host
            token = w.postgres.generate_database_credential(endpoint=endpoint).token
            return psycopg.connect(host=host, hostaddr="127.0.0.1", port=emu.pg_port, user=emu.owner.name,
                                   password=token, dbname="databricks_postgres", sslmode="require")

        with connect(emu.endpoint_name) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g")
            conn.commit()
        create, first_connect, delete, total = [], [], [], []
        for _ in range(rounds):
            branch_id = "bench-" + uuid.uuid4().hex[:8]
            t0 = time.perf_counter()
            branch = w.postgres.create_branch(parent=project, branch=Branch(spec=BranchSpec(no_expiry=True)),
                                              branch_id=branch_id).wait()
            t1 = time.perf_counter()
            conn = connect(f"{branch.name}/endpoints/primary")
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (1000,)
            t2 = time.perf_counter()
            w.postgres.delete_branch(branch.name).wait()
            t3 = time.perf_counter()
            conn.close()
            create.append(t1 - t0)
            first_connect.append(t2 - t1)
            delete.append(t3 - t2)
            total.append(t3 - t0)
    return {"rounds": rounds, "create_to_done_s": create, "first_connect_s": first_connect,
            "delete_s": delete, "create_connect_delete_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    data = run(args.rounds)

    def row(label: str, key: str) -> str:
        values = data[key]
        return (f"| {label} | {statistics.median(values) * 1000:.0f} ms | {min(values) * 1000:.0f} ms | "
                f"{max(values) * 1000:.0f} ms |")

    table = "\n".join([
        f"| branch of a small database ({data['rounds']} rounds) | median | min | max |",
        "|---|---|---|---|",
        row("create_branch -> .wait() done", "create_to_done_s"),
        row("first connect (lookup, token, TLS login, starts the cluster)", "first_connect_s"),
        row("delete_branch -> .wait() done (a session open)", "delete_s"),
        row("create + first connect + delete", "create_connect_delete_s"),
    ])
    data["median_ms"] = {key: round(statistics.median(data[key]) * 1000, 1)
                         for key in ("create_to_done_s", "first_connect_s", "delete_s", "create_connect_delete_s")}
    write_results("emulator_branches", data, table)


if __name__ == "__main__":
    main()
