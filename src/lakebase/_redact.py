"""Keeping secrets out of logs, reprs and messages.

Two layers, both driven by :func:`redact`:

* Known secrets: every token this process mints is registered (:func:`register_secret`) and any
  occurrence, including a truncated one (the SDK's debug log keeps the first 96 bytes), is masked.
* Shapes: JWTs (``eyJ...``), Databricks PATs and OAuth secrets (``dapi...``, ``dose...``),
  ``"token": "..."``-style JSON fields, ``password=...`` in conninfo strings and URLs, and
  ``Authorization`` header values. This catches the credential response the SDK logs at DEBUG
  *before* the library has seen (and registered) the new token.

:func:`install` puts a record factory in front of :mod:`logging` (chained, so other factories keep
working) that scrubs every record of the ``databricks``, ``psycopg``, ``lakebase``, ``urllib3``,
``requests``, ``sqlalchemy`` and ``asyncpg`` logger trees at creation time, whatever handlers the
application configures later; and a filter on the loggers that emit request bodies, as a second line
should another library replace the record factory.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

MASK = "[REDACTED]"

PROTECTED_LOGGERS: tuple[str, ...] = (
    "databricks", "psycopg", "lakebase", "urllib3", "requests", "sqlalchemy", "asyncpg",
)
_FILTERED_LOGGERS = ("databricks.sdk", "psycopg", "psycopg.pool", "lakebase", "asyncpg", "sqlalchemy.engine")

# Chars a token (JWT, PAT, base64/url-safe) is made of: a match is extended over them.
_TOKEN_CHARS = r"A-Za-z0-9_\-.~+/="
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # "token": "...", "access_token": "...", ... (JSON, Python reprs)
    (re.compile(r"""(["']?(?:access_|refresh_|id_)?token["']?\s*[:=]\s*["'])[^"']*(["'])""", re.I),
     rf"\1{MASK}\2"),
    (re.compile(r"""(["']?(?:password|passwd|client_secret|secret)["']?\s*[:=]\s*["'])[^"']*(["'])""", re.I),
     rf"\1{MASK}\2"),
    # conninfo / key=value: password=xyz, password='x y'
    (re.compile(r"""\b(password|passwd|client_secret|token)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"&,;)]+)""",
                re.I), rf"\1\2{MASK}"),
    # URL userinfo: postgresql://user:secret@host
    (re.compile(r"(://[^:/@\s]+:)[^@\s/]+@"), rf"\1{MASK}@"),
    # Authorization: Bearer xyz / Basic xyz, and bare bearer tokens
    (re.compile(r"""(\bauthorization["']?\s*[:=]\s*["']?(?:(?:Bearer|Basic)\s+)?)["""
                + _TOKEN_CHARS + "]+", re.I), rf"\1{MASK}"),
    (re.compile(r"\b(Bearer\s+)[" + _TOKEN_CHARS + r"]{16,}", re.I), rf"\1{MASK}"),
    # JWTs, complete or truncated
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){0,2}"), MASK),
    # Databricks PATs and OAuth client secrets
    (re.compile(r"\b(dapi|dkea|dose)[0-9a-f]{16,}(?:-\d+)?", re.I), rf"\1{MASK}"),
]
# Cheap pre-check: a message without any of these needs no regex work.
_TRIGGERS = ("token", "password", "passwd", "secret", "eyj", "bearer", "authorization",
             "dapi", "dose", "dkea", "://")

_KNOWN_MAX = 64  # tokens rotate: remembering the last few dozen covers every token still in use
_PREFIX = 12  # a secret shown truncated to this many chars or more is still masked
_known: OrderedDict[str, None] = OrderedDict()
_known_lock = threading.Lock()
_known_re: re.Pattern[str] | None = None


def register_secret(secret: str | None) -> None:
    """Mask ``secret`` (and any truncation of it to 12+ chars) wherever :func:`redact` looks."""
    global _known_re
    if not secret or len(secret) < _PREFIX:
        return
    with _known_lock:
        _known[secret] = None
        _known.move_to_end(secret)
        while len(_known) > _KNOWN_MAX:
            _known.popitem(last=False)
        prefixes = sorted({re.escape(s[:_PREFIX]) for s in _known}, key=len, reverse=True)
        _known_re = re.compile("(?:" + "|".join(prefixes) + ")[" + _TOKEN_CHARS + "]*")


def redact(text: str) -> str:
    """``text`` with every known secret and every secret-shaped substring masked."""
    if not text:
        return text
    known = _known_re
    if known is not None:
        text = known.sub(MASK, text)
    lowered = text.lower()
    if not any(t in lowered for t in _TRIGGERS):
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def safe_conninfo(params: Mapping[str, Any]) -> str:
    """A conninfo string for humans: ``host=... port=... password=[REDACTED]``."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        shown = MASK if key in ("password", "passfile") else str(value)
        if shown == "" or any(c in shown for c in " '\\"):
            shown = "'" + shown.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={shown}")
    return " ".join(parts)


# ---- logging ----------------------------------------------------------------------------------
_SCRUBBED = "_lakebase_scrubbed"


def scrub_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message (with args merged), its traceback and stack text."""
    if getattr(record, _SCRUBBED, False):
        return
    setattr(record, _SCRUBBED, True)
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: let logging report it as usual
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            record.exc_text = cleaned
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that masks secrets in every record it sees (and never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


def _is_protected(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _protected)


_protected: set[str] = set(PROTECTED_LOGGERS)
_install_lock = threading.Lock()
_installed_factory: Any = None
_filter = RedactingFilter()


def protect_logger(name: str) -> None:
    """Also scrub the records of logger ``name`` and its children (for other drivers' loggers)."""
    _protected.add(name)
    install()


def install() -> None:
    """Idempotently install the record factory and the logger filters (see the module doc)."""
    global _installed_factory
    with _install_lock:
        current = logging.getLogRecordFactory()
        if current is not _installed_factory:
            previous = current

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                if _is_protected(record.name):
                    scrub_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _installed_factory = factory
        for name in _FILTERED_LOGGERS:
            logger = logging.getLogger(name)
            if _filter not in logger.filters:
                logger.addFilter(_filter)


def _after_fork_in_child() -> None:
    # A lock held by another thread of the parent at fork time would stay locked forever.
    global _known_lock, _install_lock
    _known_lock = threading.Lock()
    _install_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
