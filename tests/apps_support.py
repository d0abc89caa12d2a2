"""Helpers for the reference-app tests (test_apps_flask, test_apps_fastapi, test_browser)."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "apps"
FLASK_DIR = APPS / "notes-flask"
FASTAPI_DIR = APPS / "notes-fastapi"
ARTIFACTS = Path(__file__).with_name("artifacts")

_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def load_module(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` (the apps live in directories that are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def csrf_from(html: str) -> str:
    match = _CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def owner_sql(emulator: Any, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    from .conftest import owner_connect

    with owner_connect(emulator, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def note_count(emulator: Any) -> int:
    return int(owner_sql(emulator, "SELECT count(*) FROM notes")[0][0])


def ensure_app_schema(emulator: Any, app_role: str) -> None:
    """The lakebase schema step on top of the tutorial's (adds the sequence grant INSERTs need)."""
    from lakebase.schema import init_schema

    from .conftest import owner_connect

    with owner_connect(emulator) as conn:
        init_schema(app_role, conn=conn)
        conn.commit()
