"""Settings of the notes app (Django): one database, Lakebase, through the ``lakebase.django`` backend.

Where to connect comes from the environment Databricks Apps inject (``PGHOST``, ``PGPORT``, ``PGDATABASE``,
``PGUSER``, ``PGSSLMODE``, ``DATABRICKS_*``) plus ``ENDPOINT_NAME`` from ``app.yaml``: nothing about the
database is written here but how to pool. No sessions, no auth, no admin: the app needs none, and every
extra app would be more tables for the app's role to create.
"""

import os
import secrets
from pathlib import Path

import lakebase.django

BASE_DIR = Path(__file__).resolve().parent


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# CSRF tokens are not signed with it and there are no sessions: a per-process key is enough unless set.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50)
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = _list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver,.databricksapps.com")
# Databricks Apps terminate TLS in front of the app and say so in X-Forwarded-Proto; Django's CSRF check
# compares the browser's Origin (https://...) with the request's scheme.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = _list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "notes_django.views.csrf_failure"

INSTALLED_APPS = ["notes_django"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "notes_django.views.SecurityHeaders",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "notes_django.views.DatabaseErrors",
]
ROOT_URLCONF = "notes_django.urls"
WSGI_APPLICATION = "notes_django.wsgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]

# Django's native pool (psycopg_pool) per gunicorn worker, shared by its threads: connections go back to it
# after each request, and every new one logs in with a fresh token from the process's credential cache.
# conn_health_checks=False: the pool's default check (lakebase's check_liveness) already replaces a session
# the server ended (restart, scale to zero) without a round trip; True would add a SELECT 1 per checkout.
DATABASES = {
    "default": lakebase.django.database_config(conn_health_checks=False, pool={
        "min_size": 1,
        "max_size": int(os.environ.get("NOTES_POOL_MAX_SIZE", "8")),
        "timeout": float(os.environ.get("NOTES_POOL_TIMEOUT", "15")),
    }),
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"  # the tutorial's SERIAL id

USE_TZ = True
TIME_ZONE = "UTC"
USE_I18N = False
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO").upper()},
    # psycopg_pool logs every checkout and return at INFO ("connection requested", "returning connection"):
    # several lines per request, each also scrubbed of secrets by lakebase's log redaction.
    "loggers": {"django.request": {"level": "ERROR"}, "psycopg.pool": {"level": "WARNING"}},
}
