"""notes-django's settings with Django's stock PostgreSQL backend and a static token (benchmarks only).

The same app, pool and options as ``notes_django.settings``; the database entry is what a team writes
without lakebase: host, user and a password minted once at start (``NOTES_BENCH_TOKEN``), which stops
working for new connections when it expires (an hour on Lakebase)."""

import os

from notes_django.settings import *  # noqa: F403
from notes_django.settings import DATABASES

DATABASES = {
    "default": {
        **DATABASES["default"],
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PGDATABASE", "databricks_postgres"),
        "USER": os.environ["PGUSER"],
        "HOST": os.environ["PGHOST"],
        "PORT": os.environ["PGPORT"],
        "PASSWORD": os.environ["NOTES_BENCH_TOKEN"],
        "OPTIONS": {**DATABASES["default"]["OPTIONS"], "sslmode": "require"},
    },
}
