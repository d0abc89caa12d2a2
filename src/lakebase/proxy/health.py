"""``--http-port``: health checks and Prometheus metrics, as Cloud SQL Auth Proxy's users expect.

* ``GET /startup``: 200 once every listener is up (the first logins may still be ahead);
* ``GET /liveness``: 200 while the proxy's event loop answers (a stuck proxy should be restarted);
* ``GET /readiness``: 200 when every endpoint has a valid token and its latest upstream login succeeded
  (a probe logs in only when none has yet, or the latest failed: frequent probes do not keep a
  scale-to-zero compute awake) and fewer connections than ``--max-connections`` are open; 503 with the
  reasons;
* ``GET /metrics``: Prometheus text format (prometheus-client);
* ``POST /quitquitquit``: shut down as on SIGTERM (for sidecars whose main container is done).

Web pages are refused (403): a request with an ``Origin`` header (a browser's cross-site POST needs no
CORS preflight, so any page could otherwise stop the proxy) or a cross-site ``Sec-Fetch-Site`` (an
``<img>`` GET of /readiness would log in upstream, waking the compute), and, on loopback, one whose ``Host`` is no
loopback name (DNS rebinding: a page whose own host name now resolves to 127.0.0.1). Probes, curl and
Prometheus send neither.

Served by the standard library's threading HTTP server on its own thread; it asks the proxy's event
loop for what it needs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .._extras import requires_extra

with requires_extra("proxy", __name__):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import is_loopback
from .server import Proxy

log = logging.getLogger("lakebase.proxy")

HTTP_TIMEOUT = 5.0  # seconds a client of the HTTP server may take to send its request


class ProxyCollector:
    """Reads the proxy's counters at scrape time (the byte counts cost nothing on the hot path)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint"]
        open_ = GaugeMetricFamily("lakebase_proxy_connections_open", "Client connections open (incl. logging in)",
                                  labels=labels)
        total = CounterMetricFamily("lakebase_proxy_connections", "Client sessions established", labels=labels)
        refused = CounterMetricFamily("lakebase_proxy_connections_refused",
                                      "Client connections refused by --max-connections", labels=labels)
        sent = CounterMetricFamily("lakebase_proxy_bytes", "Bytes forwarded",
                                   labels=["endpoint", "direction"])
        login = CounterMetricFamily("lakebase_proxy_login_errors", "Upstream logins that failed",
                                    labels=["endpoint", "reason"])
        token = CounterMetricFamily("lakebase_proxy_token_errors", "Logins that failed for want of a token",
                                    labels=labels)
        protocol = CounterMetricFamily("lakebase_proxy_protocol_errors", "Clients that sent invalid packets",
                                       labels=labels)
        cancels = CounterMetricFamily("lakebase_proxy_cancels_forwarded", "Cancel requests forwarded",
                                      labels=labels)
        age = GaugeMetricFamily("lakebase_proxy_token_age_seconds", "Age of the token in use", labels=labels)
        expires = GaugeMetricFamily("lakebase_proxy_token_expires_in_seconds", "Seconds until the token expires",
                                    labels=labels)
        now = time.monotonic()
        for li in self.proxy.listeners:
            s, name = li.stats, li.name
            open_.add_metric([name], s.connections_open)
            total.add_metric([name], s.connections_total)
            refused.add_metric([name], s.refused_max_connections)
            sent.add_metric([name, "to_server"], s.bytes_to_server)
            sent.add_metric([name, "to_client"], s.bytes_to_client)
            for reason, count in list(s.login_errors.items()):
                login.add_metric([name, reason], count)
            token.add_metric([name], s.token_errors)
            protocol.add_metric([name], s.protocol_errors)
            cancels.add_metric([name], s.cancels_forwarded)
            cred = li.connector.credentials.credential if li.connector.prepared else None
            if cred is not None:
                age.add_metric([name], now - cred.obtained)
                expires.add_metric([name], cred.expires_in())
        yield from (open_, total, refused, sent, login, token, protocol, cancels, age, expires)


class HealthServer:
    """The HTTP server of ``--http-port`` (see the module doc)."""

    def __init__(self, proxy: Proxy, loop: asyncio.AbstractEventLoop, address: str, port: int,
                 quit: Callable[[], None]) -> None:
        self.proxy, self.loop, self.quit = proxy, loop, quit
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ProxyCollector(proxy))
        health = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "lakebase-proxy"
            timeout = HTTP_TIMEOUT  # each connection has a thread: one that sends nothing is dropped

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

            def do_GET(self) -> None:
                if health.admit(self):
                    health.handle_get(self)

            def do_POST(self) -> None:
                if health.admit(self):
                    health.handle_post(self)

        self.loopback = is_loopback(address)  # then only loopback Host names are answered
        self.httpd = ThreadingHTTPServer((address, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="lakebase-proxy-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _on_loop(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def admit(self, req: BaseHTTPRequestHandler) -> bool:
        """False (having answered 403) for a request from a web page; see the module doc."""
        why = None
        if req.headers.get("Origin") is not None:
            why = "a request from a web page (it has an Origin header)"
        elif req.headers.get("Sec-Fetch-Site", "none").lower() not in ("none", "same-origin"):
            why = "a request from another web site (Sec-Fetch-Site)"  # an <img src>: a GET with no Origin
        elif self.loopback and not _loopback_host(req.headers.get("Host")):
            why = f"a request for host {req.headers.get('Host')!r}, which is not a loopback name (DNS rebinding?)"
        if why is None:
            return True
        log.warning("http: refused %s %s: %s", req.command, req.path.split("?", 1)[0], why)
        _json(req, 403, {"error": f"lakebase proxy refuses {why}; use http://127.0.0.1:{self.port} from "
                                  "a probe, curl or Prometheus"})
        return False

    def handle_get(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics":
            _reply(req, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/startup":
            ok = self.proxy.started
            _json(req, 200 if ok else 503, {"ok": ok})
        elif path == "/liveness":
            try:
                self._on_loop(asyncio.sleep(0), 5)
            except Exception:
                _json(req, 503, {"ok": False, "problems": ["the event loop does not answer"]})
                return
            _json(req, 200, {"ok": True})
        elif path == "/readiness":
            try:
                ok, problems = self._on_loop(self.proxy.readiness(), 10)
            except Exception as exc:
                ok, problems = False, [f"readiness check failed: {type(exc).__name__}"]
            _json(req, 200 if ok else 503, {"ok": ok, "problems": problems})
        else:
            _json(req, 404, {"error": f"no {path}; try /startup, /liveness, /readiness, /metrics"})

    def handle_post(self, req: BaseHTTPRequestHandler) -> None:
        if req.path.split("?", 1)[0] == "/quitquitquit":
            _json(req, 200, {"ok": True, "shutting_down": True})
            self.loop.call_soon_threadsafe(self.quit)
        else:
            _json(req, 404, {"error": "POST /quitquitquit only"})


def _loopback_host(host: str | None) -> bool:
    """Whether a Host header names a loopback address (an absent one, HTTP/1.0, does too)."""
    if host is None:
        return True
    name = host.strip()
    if name.startswith("["):  # [::1]:port
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return is_loopback(name.lower().rstrip("."))


def _reply(req: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    req.send_response(status)
    req.send_header("Content-Type", content_type)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


def _json(req: BaseHTTPRequestHandler, status: int, data: Any) -> None:
    _reply(req, status, json.dumps(data).encode() + b"\n", "application/json")
