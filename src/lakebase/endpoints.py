"""Where to connect: host and user from the settings or the workspace API; DNS fallback.

* Host: an explicit ``host=`` wins; else with ``read_only`` the endpoint's ``status.hosts.read_only_host``
  (Provisioned: ``read_only_dns``); else ``PGHOST``; else the endpoint's ``status.hosts.host``
  (Provisioned: ``read_write_dns``).
* User: ``PGUSER`` (or ``user=``), else ``DATABRICKS_CLIENT_ID``, else ``w.current_user.me().user_name``.
* DNS: :func:`hostaddr_for` returns an address to pass as ``hostaddr`` next to ``host`` (which stays
  for TLS SNI) when the system resolver cannot resolve a name: ``*.localhost`` is loopback
  (RFC 6761, as the local emulator's endpoints use), and other names are asked of the DNS servers
  in ``/etc/resolv.conf`` directly with dnspython (Python's resolver fails on long names on macOS).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import _sdk
from .errors import ResolutionError
from .settings import Settings

log = logging.getLogger("lakebase.endpoints")


@dataclass(frozen=True)
class Target:
    """A resolved connection target (no secrets)."""

    host: str
    port: int
    database: str
    user: str
    sslmode: str
    sslrootcert: str | None
    application_name: str
    name: str  # the endpoint or instance name

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


Apis = Callable[[], _sdk.BoundedApis]


def resolve_target(settings: Settings, apis: Apis) -> Target:
    """Look up what the settings leave open (blocking: SDK calls). ``apis()`` is only called when the
    workspace API is needed (no PGHOST, no PGUSER)."""
    return Target(
        host=resolve_host(settings, apis),
        port=settings.port,
        database=settings.database,
        user=resolve_user(settings, apis),
        sslmode=settings.sslmode,
        sslrootcert=settings.sslrootcert,
        application_name=settings.application_name,
        name=settings.target_name,
    )


def resolve_host(settings: Settings, apis: Apis) -> str:
    explicit = settings.host is not None and settings.source("host").startswith("argument")
    if settings.host is not None and (explicit or not settings.read_only):
        return settings.host
    what = "read-only host" if settings.read_only else "host"
    try:
        api = apis()
        if settings.product == "autoscaling":
            endpoint = api.call(api.postgres.get_endpoint, settings.target_name)
            hosts = getattr(getattr(endpoint, "status", None), "hosts", None)
            host = getattr(hosts, "read_only_host" if settings.read_only else "host", None)
        else:
            instance = api.call(api.database.get_database_instance, settings.target_name)
            host = getattr(instance, "read_only_dns" if settings.read_only else "read_write_dns", None)
    except Exception as exc:
        hint = "set PGHOST to the endpoint's host, or " + (_sdk.error_hint(exc) or "check the workspace")
        raise ResolutionError(
            f"Could not look up the {what} of {settings.product} {settings.target_name!r}: "
            f"{_sdk.describe_error(exc)}. Hint: {hint}",
            cause=_sdk.root_cause(exc),
        ) from exc
    if not host:
        hint = ("add a read replica (an ENDPOINT_TYPE_READ_ONLY endpoint) to the branch, or pass host="
                if settings.read_only else "wait for the endpoint to be ready, or set PGHOST")
        raise ResolutionError(f"{settings.product.capitalize()} {settings.target_name!r} has no {what} "
                              f"(yet). Hint: {hint}")
    return str(host)


def resolve_user(settings: Settings, apis: Apis) -> str:
    if settings.user:
        return settings.user
    try:
        api = apis()
        client_id = getattr(api.workspace_client.config, "client_id", None)
        if client_id:  # a service principal configured in a profile or in code
            return str(client_id)
        me = api.call(api.current_user.me)
    except Exception as exc:
        raise ResolutionError(
            f"Could not find out the Postgres user: PGUSER is not set and asking the workspace who we are "
            f"failed ({_sdk.describe_error(exc)}). Hint: set PGUSER to your email (a user) or to the service "
            "principal's client id",
            cause=_sdk.root_cause(exc),
        ) from exc
    if not getattr(me, "user_name", None):
        raise ResolutionError("The workspace returned no user name for the current identity. "
                              "Hint: set PGUSER")
    return str(me.user_name)


# ---- the endpoint of a host (PGHOST without ENDPOINT_NAME) -------------------------------------------
# (workspace host, identity) -> {host: (product, endpoint or instance name)}: filled by one listing of
# the workspace; a host found once keeps its endpoint (a miss lists again: the endpoint may be new).
_host_index: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
_host_index_lock = threading.Lock()


def _host_key(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _list_hosts(api: _sdk.BoundedApis) -> tuple[dict[str, tuple[str, str]], int]:
    """Every host of the workspace's endpoints (and Provisioned instances): {host: (product, name)}, and
    how many endpoints and instances were seen. An endpoint's own host wins over the read-only host
    its read-write sibling also shows."""
    postgres = api.postgres
    endpoints = []
    for project in api.call(lambda: list(postgres.list_projects())):
        for branch in api.call(lambda p=project.name: list(postgres.list_branches(parent=p))):
            endpoints += api.call(lambda b=branch.name: list(postgres.list_endpoints(parent=b)))
    index: dict[str, tuple[str, str]] = {}
    for attr in ("host", "read_only_host"):
        for endpoint in endpoints:
            host = getattr(getattr(getattr(endpoint, "status", None), "hosts", None), attr, None)
            if host and endpoint.name:
                index.setdefault(_host_key(host), ("autoscaling", endpoint.name))
    seen = len(endpoints)
    try:
        instances = api.call(lambda: list(api.database.list_database_instances()))
    except Exception as exc:  # Provisioned is optional: a workspace without it still has endpoints
        log.debug("not looking at Lakebase Provisioned instances: %s", _sdk.describe_error(exc))
        instances = []
    for instance in instances:
        for attr in ("read_write_dns", "read_only_dns"):
            host = getattr(instance, attr, None)
            if host and instance.name:
                index.setdefault(_host_key(host), ("provisioned", instance.name))
    return index, seen + len(instances)


def find_endpoint(settings: Settings, apis: Apis) -> Settings:
    """``settings`` naming the endpoint (or Provisioned instance) whose host is ``settings.host``: for a
    host copied from the UI without ENDPOINT_NAME. Lists the workspace's projects, branches and
    endpoints once per workspace identity (blocking: SDK calls); unchanged settings if they name one."""
    if not settings.find_endpoint:
        return settings
    host = settings.host or ""
    where = _where(settings.source("host"))
    try:
        api = apis()
        key = _sdk.identity_key(api.workspace_client)
        with _host_index_lock:
            found = _host_index.get(key, {}).get(_host_key(host))
        seen = None
        if found is None:
            index, seen = _list_hosts(api)
            with _host_index_lock:
                _host_index.setdefault(key, {}).update(index)
            found = index.get(_host_key(host))
    except Exception as exc:
        hint = "set ENDPOINT_NAME=projects/<project>/branches/<branch>/endpoints/<endpoint>, or " + (
            _sdk.error_hint(exc) or "check the workspace")
        raise ResolutionError(
            f"Could not find the Lakebase endpoint of {where}={host} (no ENDPOINT_NAME is set): listing the "
            f"workspace's endpoints failed: {_sdk.describe_error(exc)}. Hint: {hint}",
            cause=_sdk.root_cause(exc),
        ) from exc
    if found is None:
        raise ResolutionError(
            f"No Lakebase endpoint of the workspace {key[0]} has the host {host!r} ({where}; looked at "
            f"{seen} endpoints and instances this identity can see). Hint: set {where} to the host shown "
            "in the endpoint's Connect dialog, or set ENDPOINT_NAME=projects/<project>/branches/<branch>/"
            "endpoints/<endpoint> (`databricks postgres list-endpoints projects/<project>/branches/<branch>` "
            "shows the names)")
    product, name = found
    log.info("%s=%s is the host of %s %s", where, host, product, name)
    found_settings = settings.replace(**{"endpoint" if product == "autoscaling" else "instance_name": name})
    sources = dict(found_settings.sources)
    sources["endpoint" if product == "autoscaling" else "instance_name"] = f"found by {where}"
    object.__setattr__(found_settings, "sources", sources)
    return found_settings


def _where(source: str) -> str:
    return source.removeprefix("environment variable ").removeprefix("argument ")


# ---- DNS -----------------------------------------------------------------------------------------
_DNS_TTL = 60.0
_dns_cache: dict[str, tuple[float, str | None]] = {}
_dns_lock = threading.Lock()


def _is_ip(host: str) -> bool:
    if ":" not in host and not host[:1].isdigit():  # a host name: skip the exception path (hot on connect)
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def cached_hostaddr(host: str) -> tuple[bool, str | None]:
    """(known, hostaddr) without any I/O: lets async callers skip a thread when the answer is cached."""
    name = host.lower().rstrip(".")
    if _is_ip(host) or "," in host or host.startswith("/"):
        return True, None
    if name.endswith(".localhost"):
        return True, "127.0.0.1"
    hit = _dns_cache.get(name)
    if hit is not None and hit[0] > time.monotonic():
        return True, hit[1]
    return False, None


def hostaddr_for(host: str, port: int = 5432) -> str | None:
    """An address for ``hostaddr`` when the system resolver cannot resolve ``host``; else None.

    None also when nothing resolves it: the driver then reports the name error itself.
    """
    known, addr = cached_hostaddr(host)
    if known:
        return addr
    name = host.lower().rstrip(".")
    addr = None
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        if not (isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN):
            try:
                addr = query_dns(name)
            except DnsFallbackUnavailable as missing:
                log.warning("the system resolver could not resolve %s (%s); %s", host, exc, missing)
            if addr is not None:
                log.info("the system resolver could not resolve %s (%s); using %s from DNS as hostaddr",
                         host, exc, addr)
    with _dns_lock:
        _dns_cache[name] = (time.monotonic() + _DNS_TTL, addr)
    return addr


class DnsFallbackUnavailable(ImportError):
    """dnspython, which the DNS fallback uses, is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "lakebase's DNS fallback (for names the system resolver fails on, such as long endpoint hostnames "
            "on macOS) needs dnspython, which is not installed. Fix: pip install dnspython "
            "(or pip install 'lakebase[psycopg]', which includes it)")


def query_dns(name: str, servers: list[str] | None = None, timeout: float = 2.0, port: int = 53) -> str | None:
    """Ask DNS servers for ``name``'s A record directly, bypassing the system resolver; None if none
    answers. ``servers`` default to those of ``/etc/resolv.conf``.

    dnspython does the asking: a random query id from a secure source, and a reply counts only if it
    comes from the server asked and answers this question (anything else is ignored, as a spoofed
    packet should be). Raises :class:`DnsFallbackUnavailable` when dnspython is not installed.
    """
    try:
        import dns.exception
        import dns.name
        import dns.resolver
    except ImportError as exc:
        raise DnsFallbackUnavailable() from exc
    try:
        qname = dns.name.from_text(name.rstrip(".") + ".")
        if servers is None:
            resolver = dns.resolver.Resolver()  # /etc/resolv.conf
        else:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = list(servers)
        resolver.port = port
        resolver.timeout = timeout
        resolver.lifetime = timeout * max(1, len(resolver.nameservers))
        answer = resolver.resolve(qname, "A", search=False, raise_on_no_answer=False)
    except (dns.exception.DNSException, OSError, ValueError):
        # no such name, no answer in time, no servers, a label over 63 characters ...
        return None
    addresses = [rdata.address for rdata in answer.rrset or ()]
    return str(addresses[0]) if addresses else None


def _after_fork_in_child() -> None:
    global _dns_lock, _host_index_lock
    _dns_lock = threading.Lock()
    _host_index_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = ["DnsFallbackUnavailable", "Target", "cached_hostaddr", "find_endpoint", "hostaddr_for", "query_dns",
           "resolve_host", "resolve_target", "resolve_user"]
