"""Counters and structured log events; OpenTelemetry metrics when ``opentelemetry-api`` is installed.

Every event is one log record on a ``lakebase.*`` logger whose message reads well on its own and
whose ``record.lakebase`` attribute holds the same facts as a dict (``{"event": "credential.refreshed",
"expires_in": 3599.2, ...}``) for JSON formatters. Counters are plain ints (``stats()``), mirrored
to OpenTelemetry counters named ``lakebase.<name>`` (e.g. ``lakebase.credential.mints``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

_otel_metrics: Any
try:  # optional
    from opentelemetry import metrics as _otel_metrics
except ImportError:  # pragma: no cover - depends on the environment
    _otel_metrics = None

_instruments: dict[str, Any] = {}
_instruments_lock = threading.Lock()


def _otel_add(name: str, amount: int, attributes: dict[str, str]) -> None:
    if _otel_metrics is None:
        return
    counter = _instruments.get(name)
    if counter is None:
        with _instruments_lock:
            counter = _instruments.get(name)
            if counter is None:
                meter = _otel_metrics.get_meter("lakebase")
                counter = meter.create_counter(f"lakebase.{name}", unit="1")
                _instruments[name] = counter
    try:
        counter.add(amount, attributes)
    except Exception:  # pragma: no cover - a broken metrics SDK must never break a connection
        pass


class Counters:
    """Thread-safe named counters; ``attributes`` label the OpenTelemetry data points."""

    def __init__(self, prefix: str, **attributes: str) -> None:
        self._prefix = prefix
        self._attributes = attributes
        self._values: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount
        _otel_add(f"{self._prefix}.{name}", amount, self._attributes)

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held) and zeroed counts."""
        self._lock = threading.Lock()
        self._values = {}


def event(logger: logging.Logger, level: int, name: str, message: str, **fields: Any) -> None:
    """Log ``message`` with the structured ``fields`` attached as ``record.lakebase``."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"lakebase": {"event": name, "pid": os.getpid(), **fields}})


def _after_fork_in_child() -> None:
    global _instruments_lock
    _instruments_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
