"""The DNS fallback: RFC 6761 loopback names, and asking a DNS server directly (a real UDP server on
the loopback interface stands in for the one in /etc/resolv.conf)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from lakebase.endpoints import _parse_a_records, cached_hostaddr, hostaddr_for, query_dns

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


@pytest.fixture
def dns_server() -> Iterator[tuple[int, dict[str, list[str]]]]:
    zone: dict[str, list[str]] = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            labels, offset = [], 12
            while data[offset]:
                labels.append(data[offset + 1:offset + 1 + data[offset]].decode())
                offset += 1 + data[offset]
            name = ".".join(labels)
            if name in zone:
                sock.sendto(answer(data, zone[name], cname="real." + name.split(".", 1)[1]), peer)
            else:
                sock.sendto(answer(data, [], rcode=3), peer)  # NXDOMAIN

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], zone
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_localhost_subdomains_are_loopback_without_any_lookup() -> None:
    assert cached_hostaddr("replica-1.localhost") == (True, "127.0.0.1")
    assert cached_hostaddr("Replica-1.LOCALHOST.") == (True, "127.0.0.1")
    assert hostaddr_for("replica-1.localhost") == "127.0.0.1"


def test_names_the_system_resolves_need_no_hostaddr() -> None:
    assert hostaddr_for("localhost") is None
    assert cached_hostaddr("localhost") == (True, None)  # remembered for a while
    assert cached_hostaddr("10.1.2.3") == (True, None)
    assert cached_hostaddr("::1") == (True, None)


def test_a_long_name_is_asked_of_the_dns_server_directly(dns_server: tuple[int, dict[str, list[str]]]) -> None:
    port, zone = dns_server
    zone[LONG_NAME] = ["10.20.30.40", "10.20.30.41"]
    assert query_dns(LONG_NAME, servers=["127.0.0.1"], port=port) == "10.20.30.40"
    assert query_dns("unknown.example", servers=["127.0.0.1"], port=port) is None


def test_an_unreachable_dns_server_gives_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert query_dns("x.example", servers=["127.0.0.1"], port=port, timeout=0.2) is None


def test_response_parsing_checks_the_query_id() -> None:
    query = struct.pack(">HHHHHH", 4242, 0x0100, 1, 0, 0, 0) + _encode("a.example") + struct.pack(">HH", 1, 1)
    response = answer(query, ["192.0.2.1"], cname="b.example")
    assert _parse_a_records(response, 4242) == ["192.0.2.1"]
    assert _parse_a_records(response, 4243) == []
    assert query_dns("label-too-long-" + "x" * 60 + ".example", servers=[]) is None
