"""The DNS fallback: RFC 6761 loopback names, and asking a DNS server directly with dnspython (real UDP
servers on loopback addresses stand in for the one in /etc/resolv.conf, and for an attacker next to it)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import lakebase
from lakebase import ResolutionError, Settings, _sdk, connector, endpoints
from lakebase.emulator import Emulator
from lakebase.endpoints import cached_hostaddr, hostaddr_for, query_dns

from .lakebase_support import pat_client

LONG_NAME = ("ep-" + "a" * 60 + "." + "b" * 60 + ".database.us-west-2.cloud.databricks.com").lower()


def _encode(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def answer(query: bytes, addresses: list[str], cname: str | None = None, rcode: int = 0) -> bytes:
    """A DNS response to ``query``: optionally a CNAME (with name compression), then A records."""
    qid = struct.unpack(">H", query[:2])[0]
    question = query[12:]
    records = b""
    count = 0
    owner = b"\xc0\x0c"  # pointer to the question name
    if cname is not None:
        target = _encode(cname)
        records += owner + struct.pack(">HHIH", 5, 1, 60, len(target)) + target
        owner = struct.pack(">H", 0xC000 | (12 + len(question) + 12))  # pointer to the CNAME target
        count += 1
    for address in addresses:
        records += owner + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        count += 1
    header = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, count, 0, 0)
    return header + question + records


Reply = Callable[[socket.socket, bytes, tuple[str, int]], None]


def question_name(query: bytes) -> str:
    labels, offset = [], 12
    while query[offset]:
        labels.append(query[offset + 1:offset + 1 + query[offset]].decode())
        offset += 1 + query[offset]
    return ".".join(labels)


class DnsServer:
    """A UDP DNS server on ``address`` (a loopback address) whose reply to each query is ``reply(sock,
    query, peer)``: by default the zone's A records (behind a CNAME), or NXDOMAIN."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.zone: dict[str, list[str]] = {}
        self.reply: Reply = self.answer_from_zone
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.1)
        self.address, self.port = self.sock.getsockname()
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer_from_zone(self, sock: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
        name = question_name(query)
        if name in self.zone:
            sock.sendto(answer(query, self.zone[name], cname="real." + name.split(".", 1)[1]), peer)
        else:
            sock.sendto(answer(query, [], rcode=3), peer)  # NXDOMAIN

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            self.queries += 1
            self.reply(self.sock, data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer("127.0.0.2")
    try:
        yield server
    finally:
        server.close()


def test_localhost_subdomains_are_loopback_without_any_lookup() -> None:
    assert cached_hostaddr("replica-1.localhost") == (True, "127.0.0.1")
    assert cached_hostaddr("Replica-1.LOCALHOST.") == (True, "127.0.0.1")
    assert hostaddr_for("replica-1.localhost") == "127.0.0.1"


def test_names_the_system_resolves_need_no_hostaddr() -> None:
    assert hostaddr_for("localhost") is None
    assert cached_hostaddr("localhost") == (True, None)  # remembered for a while
    assert cached_hostaddr("10.1.2.3") == (True, None)
    assert cached_hostaddr("::1") == (True, None)


def test_a_long_name_is_asked_of_the_dns_server_directly(dns_server: DnsServer) -> None:
    dns_server.zone[LONG_NAME] = ["10.20.30.40", "10.20.30.41"]
    assert query_dns(LONG_NAME, servers=[dns_server.address], port=dns_server.port) == "10.20.30.40"
    assert query_dns("unknown.example", servers=[dns_server.address], port=dns_server.port) is None


def test_an_unreachable_dns_server_gives_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert query_dns("x.example", servers=["127.0.0.1"], port=port, timeout=0.2) is None
    assert query_dns("label-too-long-" + "x" * 60 + ".example", servers=[]) is None


def _forged(query: bytes, address: str, *, qid_delta: int = 0, name: str | None = None) -> bytes:
    """A reply to ``query`` claiming ``address``: for another query id or for another name if asked."""
    qid = (struct.unpack(">H", query[:2])[0] + qid_delta) % 65536
    if name is not None:
        query = query[:12] + _encode(name) + struct.pack(">HH", 1, 1)
    return struct.pack(">H", qid) + answer(query, [address])[2:]


@pytest.mark.parametrize("spoof", ["from another address, for another name", "with another query id",
                                   "from the server's address, for another name"])
def test_spoofed_replies_are_ignored(dns_server: DnsServer, spoof: str) -> None:
    """An attacker who sees the query (127.0.0.3 next to the server at 127.0.0.2) answers first; only the
    genuine reply that follows may count. The hand-written resolver this replaced took the first reply
    that parsed: from any address, for any question."""
    dns_server.zone[LONG_NAME] = ["10.20.30.40"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.3", 0))

        def reply(sock: socket.socket, query: bytes, peer: tuple[str, int]) -> None:
            if spoof == "from another address, for another name":
                attacker.sendto(_forged(query, "6.6.6.6", name="evil.example"), peer)
            elif spoof == "with another query id":
                sock.sendto(_forged(query, "6.6.6.6", qid_delta=1), peer)
            else:
                sock.sendto(_forged(query, "6.6.6.6", name="evil.example"), peer)
            dns_server.answer_from_zone(sock, query, peer)

        dns_server.reply = reply
        found = query_dns(LONG_NAME, servers=[dns_server.address], port=dns_server.port, timeout=2.0)
    assert found == "10.20.30.40"
    assert dns_server.queries == 1


def test_a_spoofed_reply_alone_gives_no_address(dns_server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.3", 0))
        dns_server.reply = lambda sock, query, peer: attacker.sendto(_forged(query, "6.6.6.6"), peer)
        assert query_dns(LONG_NAME, servers=[dns_server.address], port=dns_server.port, timeout=0.3) is None


def test_without_dnspython_the_fallback_says_what_to_install() -> None:
    """A name the system resolver refuses (a 64-character label) needs the fallback; with dnspython not
    importable the connection goes on (the driver reports the name) after a warning naming the fix."""
    code = ("import sys; sys.modules['dns'] = None\n"  # makes `import dns...` raise ImportError
            "from lakebase.endpoints import hostaddr_for\n"
            f"print(hostaddr_for({'ep-' + 'a' * 64 + '.example.com'!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
    assert "needs dnspython, which is not installed" in result.stderr
    assert "pip install dnspython" in result.stderr


# ---- the endpoint of a host (PGHOST without ENDPOINT_NAME), against the emulator ---------------------
@pytest.fixture
def host_only_env(user_env: dict[str, str], clean_env: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The owner on a laptop with the host copied from the UI and no ENDPOINT_NAME."""
    clean_env.delenv("ENDPOINT_NAME")
    connector.reset()
    endpoints._host_index.clear()
    yield user_env
    connector.reset()
    endpoints._host_index.clear()


class CountingApis(_sdk.BoundedApis):
    """The real workspace APIs, counting how often the Postgres API is asked for (one listing asks once
    per project, branch and endpoint list)."""

    uses = 0

    @property
    def postgres(self) -> Any:
        CountingApis.uses += 1
        return super().postgres


def test_pghost_alone_finds_its_endpoint(emulator: Emulator, host_only_env: dict[str, str]) -> None:
    assert host_only_env["PGHOST"] == "localhost"
    with lakebase.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (emulator.owner.name,)
    found = connector.get_connector()
    assert found.settings.endpoint == emulator.endpoint_name
    assert found.settings.source("endpoint") == "found by PGHOST"


def test_the_workspace_is_listed_once(emulator: Emulator, host_only_env: dict[str, str]) -> None:
    apis = CountingApis(pat_client(emulator), 5.0)
    CountingApis.uses = 0
    first = endpoints.find_endpoint(Settings(), lambda: apis)
    assert first.endpoint == emulator.endpoint_name and CountingApis.uses == 1
    again = endpoints.find_endpoint(Settings(database="other", application_name="x"), lambda: apis)
    assert again.endpoint == emulator.endpoint_name and CountingApis.uses == 1  # cached


def test_a_read_only_endpoint_s_host_finds_the_read_only_endpoint(emulator: Emulator, replica: str,
                                                                   host_only_env: dict[str, str],
                                                                   clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PGHOST", f"{replica}.localhost")
    with lakebase.connect() as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    parent = emulator.endpoint_name.rsplit("/endpoints/", 1)[0]
    assert connector.get_connector().settings.endpoint == f"{parent}/endpoints/{replica}"


def test_a_host_no_endpoint_has_is_a_clear_error(emulator: Emulator, host_only_env: dict[str, str],
                                                 clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PGHOST", "ep-nothing-here.localhost")
    with pytest.raises(ResolutionError) as info:
        lakebase.connect()
    text = str(info.value)
    assert "No Lakebase endpoint of the workspace" in text and "'ep-nothing-here.localhost'" in text
    assert "(PGHOST;" in text and "set ENDPOINT_NAME=projects/" in text and "Connect dialog" in text
