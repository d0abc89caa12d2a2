"""Running ``lakebase proxy``: logging, the listeners, the health server, signals, the drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any

from .. import _redact
from ..connector import get_connector
from ..errors import ConfigurationError
from ..settings import Settings
from .config import EndpointOption, ProxyConfig, check_address, choose_ports, endpoint_settings
from .server import Proxy

log = logging.getLogger("lakebase.proxy")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        _redact.scrub_record(record)
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "lakebase", None)
        if isinstance(fields, dict):
            data.update({k: v for k, v in fields.items() if k not in data})
        if record.exc_info:
            data["exception"] = _redact.redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


def configure_logging(json_logs: bool, quiet: bool) -> None:
    _redact.install()
    _redact.protect_logger("lakebase")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_redact.RedactingFilter())
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("lakebase", "databricks"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.getLogger("databricks").setLevel(logging.WARNING)


def build(config: ProxyConfig) -> Proxy:
    """The proxy for ``config``: its settings and connectors (no network yet; raises ConfigurationError)."""
    if check_address(config.address, config.allow_remote):
        log.warning("lakebase proxy listens on %s, which is not a loopback address: ANYONE WHO CAN REACH THIS "
                    "PORT USES THE DATABASE AS THIS IDENTITY, WITHOUT A PASSWORD (--allow-remote)", config.address)
    options = config.endpoints or (EndpointOption(None),)
    base = config.settings
    if base is None:
        try:
            base = Settings()
        except ConfigurationError:
            if any(o.name is None for o in options):
                raise
    listeners = []
    for option, (port, explicit) in zip(options, choose_ports(config), strict=True):
        settings = endpoint_settings(base, option).replace(token_refresh="ahead")  # a long-running process
        if config.login_deadline is not None:
            settings = settings.replace(connect_deadline=config.login_deadline)
        listeners.append((get_connector(settings), port, explicit))
    return Proxy(config, listeners)


async def serve(config: ProxyConfig, ready: Any = None) -> int:
    """Run until SIGTERM/SIGINT or POST /quitquitquit; drain; return the exit status (0)."""
    proxy = build(config)
    loop = asyncio.get_running_loop()
    quit_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, quit_event.set)
    health = None
    if config.http_port is not None:
        from .health import HealthServer

        health = HealthServer(proxy, loop, config.address if config.allow_remote else "127.0.0.1",
                              config.http_port, quit_event.set)
        health.start()
        log.info("health checks and metrics on http://%s:%d (/startup /liveness /readiness /metrics)",
                 health.httpd.server_address[0], health.port, extra={"lakebase": {
                     "event": "proxy.http", "http_port": health.port}})
    try:
        await proxy.start()
        with contextlib.suppress(Exception):  # a first login now: ready sooner, and a bad setup said early
            await asyncio.wait_for(_first_logins(proxy), 30)
        if ready is not None:
            ready(proxy)
        await quit_event.wait()
        await proxy.drain(config.max_sigterm_delay)
    finally:
        if health is not None:
            health.close()
    return 0


async def _first_logins(proxy: Proxy) -> None:
    for listener in proxy.listeners:
        try:
            await proxy.probe(listener)
        except Exception as exc:
            log.warning("%s: the first login failed: %s (clients will be retried as they connect)",
                        listener.name, exc)


def run(config: ProxyConfig) -> int:
    configure_logging(config.json_logs, config.quiet)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config))
    return uvloop.run(serve(config))
