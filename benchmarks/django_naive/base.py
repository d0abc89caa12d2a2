"""The obvious hand-written Lakebase backend (for the benchmarks only): Django's PostgreSQL backend whose
``get_connection_params`` mints a token through the Databricks SDK. One credential call per physical
connection; and Django's native pool, built once from ``get_connection_params()``, keeps the first token
for every connection it ever opens."""

from __future__ import annotations

import os
from typing import Any

from databricks.sdk import WorkspaceClient
from django.db.backends.postgresql import base as postgresql

_client: WorkspaceClient | None = None


class DatabaseWrapper(postgresql.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        global _client
        params: dict[str, Any] = super().get_connection_params()
        if _client is None:
            _client = WorkspaceClient()
        params["password"] = _client.postgres.generate_database_credential(endpoint=os.environ["ENDPOINT_NAME"]).token
        return params
