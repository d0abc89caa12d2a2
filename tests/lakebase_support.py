"""Helpers for the client-library tests (test_settings, test_credentials, test_psycopg, ...)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from databricks.sdk import WorkspaceClient

from lakebase import _sdk, connector
from lakebase.credentials import CredentialCache, EndpointTokenSource, Lazy, RefreshAhead
from lakebase.emulator import Emulator

NO_CONFIG_FILE = "/nonexistent/lakebase-tests/databrickscfg"


def pat_client(emu: Emulator) -> WorkspaceClient:
    """The project owner on a laptop: a PAT."""
    return WorkspaceClient(host=emu.api_url, token=emu.owner.pat, auth_type="pat", config_file=NO_CONFIG_FILE)


def m2m_client(emu: Emulator, client_id: str | None = None,
               client_secret: str | None = None) -> WorkspaceClient:
    """A Databricks App's service principal: OAuth M2M."""
    app = emu.app
    return WorkspaceClient(host=emu.api_url, client_id=client_id or app.name,
                           client_secret=client_secret or app.client_secret, auth_type="oauth-m2m",
                           config_file=NO_CONFIG_FILE)


def fresh_cache(emu: Emulator, client: WorkspaceClient | None = None, strategy: str = "ahead",
                api_timeout: float = 1.0) -> CredentialCache:
    """A cold credential cache of its own (not the process-wide one)."""
    apis = _sdk.BoundedApis(client or pat_client(emu), api_timeout)
    cache = CredentialCache(EndpointTokenSource(apis, emu.endpoint_name),
                            Lazy() if strategy == "lazy" else RefreshAhead(), identity="test")
    _made.append(cache)
    return cache


_made: list[CredentialCache] = []


def issued(emu: Emulator) -> int:
    return int(emu.stats()["credentials_issued"])


def end_outage(emu: Emulator) -> None:
    emu.credential_outage(0)


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: str | None = None) -> Any:
    """Poll until ``condition()`` is truthy (returns it); fail after ``timeout`` (a hang guard, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what or condition} not met within {timeout}s")
        time.sleep(interval)


def isolated_registries() -> Iterator[None]:
    """For an autouse fixture: no shared connector, credential cache or default client leaks between
    tests."""
    connector.reset()
    yield
    connector.reset()
    while _made:
        _made.pop().close()


class Records(logging.Handler):
    """Every record, formatted as a handler would (message, traceback, stack)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.texts)
