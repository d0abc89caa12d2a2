"""What ``lakebase proxy`` serves and how: endpoints, listeners, limits; validated before anything starts."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from ..settings import Settings

DEFAULT_PORT = 5432
MAX_PORT_SEARCH = 100  # how far past a taken default port to look for a free one


@dataclass(frozen=True)
class EndpointOption:
    """One ``--endpoint NAME[=PORT]``: NAME None is the environment's endpoint."""

    name: str | None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> EndpointOption:
        name, sep, port = text.partition("=")
        name = name.strip()
        if not name:
            raise ConfigurationError(f"--endpoint {text!r} names no endpoint", setting="endpoint",
                                     fix="use --endpoint projects/<p>/branches/<b>/endpoints/<e>[=PORT] "
                                         "or an endpoint id of the environment's branch")
        if not sep:
            return cls(name)
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not 0 <= number <= 65535:
            raise ConfigurationError(f"--endpoint {text!r}: the port must be a number from 0 to 65535",
                                     setting="endpoint", fix="use --endpoint NAME=PORT, e.g. NAME=5433")
        return cls(name, number)


@dataclass(frozen=True)
class ProxyConfig:
    endpoints: tuple[EndpointOption, ...] = ()
    address: str = "127.0.0.1"
    port: int | None = None  # None: 5432, or the next free port when taken
    unix_socket: str | None = None  # a directory: listen there (libpq's .s.PGSQL.<port>) instead of TCP
    http_port: int | None = None
    allow_remote: bool = False
    max_connections: int = 0  # 0: no limit
    max_sigterm_delay: float = 0.0
    json_logs: bool = False
    quiet: bool = False
    login_deadline: float | None = None  # None: the settings' connect_deadline
    settings: Settings | None = field(default=None, compare=False)  # the environment's (tests pass their own)


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_address(address: str, allow_remote: bool) -> bool:
    """True when ``address`` is not loopback (and ``allow_remote`` says so); raise when not allowed."""
    if is_loopback(address):
        return False
    if not allow_remote:
        raise ConfigurationError(
            f"refusing to listen on {address}, which is not a loopback address: whoever reaches the port "
            "would use the database as this identity without any password",
            setting="address", value=address,
            fix="listen on 127.0.0.1 (the default) or a --unix-socket directory, or pass --allow-remote if "
                "the network is really trusted")
    return True


def endpoint_settings(base: Settings | None, option: EndpointOption) -> Settings:
    """The settings of one served endpoint: the environment's, with another endpoint if named."""
    if option.name is None:
        if base is None:
            base = Settings()
        return base
    name = option.name
    if "/" not in name:
        if base is None or base.endpoint is None:
            raise ConfigurationError(
                f"--endpoint {name!r} is an endpoint id, but no ENDPOINT_NAME says which project and branch "
                "it belongs to", setting="endpoint", value=name,
                fix="give the full name: --endpoint projects/<project>/branches/<branch>/endpoints/<id>")
        name = base.endpoint.rsplit("/endpoints/", 1)[0] + "/endpoints/" + name
    if base is not None and base.endpoint == name:
        return base
    if base is None:
        return Settings(endpoint=name).replace(host=None, read_only=False)
    # The environment's host (PGHOST) belongs to its endpoint: this one's is looked up.
    return base.replace(endpoint=name, host=None, read_only=False, instance_name=None)


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def choose_ports(config: ProxyConfig) -> list[tuple[int, bool]]:
    """(port, explicitly asked for) per endpoint: ``--endpoint NAME=PORT`` wins; else ``--port`` for the
    first and one more for each next (as Cloud SQL Auth Proxy numbers its instances)."""
    options = config.endpoints or (EndpointOption(None),)
    chosen: list[tuple[int, bool]] = []
    base = config.port if config.port is not None else DEFAULT_PORT
    for i, option in enumerate(options):
        if option.port is not None:
            chosen.append((option.port, True))
        elif base == 0:
            chosen.append((0, config.port is not None))
        else:
            chosen.append((base + i, config.port is not None))
    return chosen
