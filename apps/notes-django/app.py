"""``app:app`` for gunicorn, as in the other notes apps (``gunicorn --config gunicorn.conf.py app:app``);
the same as ``notes_django.wsgi:application``."""

from notes_django.wsgi import application as app

__all__ = ["app"]
