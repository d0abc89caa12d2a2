"""Django in the test process: configured once (settings cannot be configured twice in a process).

The settings are the notes-django app's own (apps/notes-django/notes_django/settings.py; its ``default``
database uses Django's native pool) plus one alias per other connection mode and a small-timeout pool,
all on the ``lakebase.django`` backend and all reading the environment when they connect (the tests set
it with the ``app_env``/``user_env`` fixtures).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .apps_support import APPS

DJANGO_DIR = APPS / "notes-django"

#: The connection modes, by alias: a connection per request, persistent connections with health checks,
#: Django's native pool (with a short pool timeout, for the tests that expect it to give up).
MODES = ("direct", "persistent", "pooled")


def setup_django() -> None:
    """Configure Django with the app's settings plus :data:`MODES` (once per process)."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    if str(DJANGO_DIR) not in sys.path:
        sys.path.insert(0, str(DJANGO_DIR))
    import lakebase.django

    app: Any = importlib.import_module("notes_django.settings")
    values = {k: getattr(app, k) for k in dir(app) if k.isupper()}
    values["DATABASES"] = {
        **app.DATABASES,
        "direct": lakebase.django.database_config(),
        "persistent": lakebase.django.database_config(conn_max_age=None, conn_health_checks=True),
        "pooled": lakebase.django.database_config(pool={"min_size": 1, "max_size": 4, "timeout": 3}),
    }
    values["LOGGING_CONFIG"] = None  # leave the test process's logging alone
    settings.configure(**values)
    django.setup()


def close_all() -> None:
    """Close every Django connection of this thread and every pool (between tests)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
    for alias in connections:
        connection = connections[alias]
        if alias in getattr(connection, "_connection_pools", {}):  # only pools that exist (.pool makes one)
            connection.close_pool()
