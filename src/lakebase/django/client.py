"""``manage.py dbshell``: the system psql with a fresh token, as ``lakebase psql`` runs it.

The token never appears in psql's arguments (the process list) or in the environment of the calling
shell: psql reads it from a private ``PGPASSFILE`` (0600 in a 0700 directory) that is kept fresh while
psql runs (so ``\\c`` and reconnects work for longer than a token lives) and deleted afterwards. psql and
what it starts (``\\!`` commands, the pager) get no workspace credentials.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from django.db.backends.postgresql.client import DatabaseClient as PostgresClient


class DatabaseClient(PostgresClient):
    def runshell(self, parameters: list[str]) -> None:
        from ..cli import PassfileRefresher, find_psql, libpq_environment, psql_environment

        connector = self.connection.lakebase_connector()
        env = libpq_environment(connector)
        args = [find_psql(), *parameters]
        sigint_handler = signal.getsignal(signal.SIGINT)
        with PassfileRefresher(connector, env) as refresher:
            child_env = psql_environment(env)
            child_env["PGPASSFILE"] = str(refresher.path)
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to psql (cancels a query)
                subprocess.run(args, env=child_env, check=True)
            finally:
                signal.signal(signal.SIGINT, sigint_handler)

    @classmethod
    def settings_to_cmd_args_env(cls, settings_dict: dict[str, Any], parameters: list[str]) -> Any:
        raise NotImplementedError("lakebase.django runs psql through runshell() (a fresh token in a private "
                                  "passfile), not from the settings")
