"""gunicorn settings for the Django notes app: the same file serves it locally and as a Databricks App.

Databricks Apps tell the app its port in DATABRICKS_APP_PORT; locally it defaults to 8000. Command-line
options (e.g. ``--bind 127.0.0.1:8000 --workers 4 --preload``) override these.
"""

import os

wsgi_app = "notes_django.wsgi:application"
bind = f"0.0.0.0:{os.environ.get('DATABRICKS_APP_PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"  # threads share Django's pool (and one token) per worker process
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 60
graceful_timeout = 15
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
control_socket_disable = True  # gunicorn >= 27: no shared ~/.gunicorn/gunicorn.ctl between instances


def post_worker_init(worker):
    """Open the worker's pool now (in the worker, after the fork): it connects in the background, so the
    first request does not wait for the workspace client, the first token and the first login."""
    from django.db import connections

    try:
        pool = connections["default"].pool
        if pool is not None:
            pool.open()
    except Exception as exc:  # a configuration error: requests (and /healthz) will report it
        worker.log.warning("could not open the database pool: %s", exc)


def worker_exit(server, worker):
    """Close the worker's pool (its connections end cleanly instead of being dropped)."""
    from django.db import connections

    connections["default"].close_pool()
