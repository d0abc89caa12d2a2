"""The wire parser on its own: property-based tests that it never fails in an unplanned way."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakebase import _wire as wire

keys = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), min_size=1,
               max_size=20)
values = st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF, exclude_categories=("Cs",)), max_size=40)


def _body(packet: bytes) -> bytes:
    length = wire.startup_length(packet[:4])
    assert length == len(packet)
    return packet[4:]


@given(st.dictionaries(keys, values, max_size=8), values)
def test_startup_message_round_trips(params: dict[str, str], user: str) -> None:
    params = {**params, "user": user or "u"}
    packet = wire.startup_message(wire.PROTOCOL_3_0, params)
    if len(packet) > wire.MAX_STARTUP_PACKET:
        with pytest.raises(wire.ProtocolError):
            wire.startup_length(packet[:4])
        return
    parsed = wire.parse_startup(_body(packet))
    assert parsed.kind == "startup"
    assert parsed.params == params


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_startup_bytes_parse_or_raise_protocol_error(data: bytes) -> None:
    try:
        packet = wire.parse_startup(data)
    except wire.ProtocolError as exc:
        assert str(exc)  # a message the client can read
    else:
        assert packet.kind in ("ssl", "gss", "cancel", "startup")


@given(st.binary(min_size=4, max_size=4))
def test_any_length_word_is_validated(header: bytes) -> None:
    (n,) = struct.unpack("!I", header)
    if 8 <= n <= wire.MAX_STARTUP_PACKET:
        assert wire.startup_length(header) == n
    else:
        with pytest.raises(wire.ProtocolError, match="invalid length"):
            wire.startup_length(header)


@given(st.binary(min_size=5, max_size=5))
def test_message_headers(header: bytes) -> None:
    try:
        mtype, length = wire.parse_message_header(header)
    except wire.ProtocolError:
        return
    assert mtype == header[:1] and 0 <= length <= wire.MAX_AUTH_MESSAGE


@given(st.binary(max_size=100))
def test_password_messages(payload: bytes) -> None:
    try:
        password = wire.parse_password(payload)
    except wire.ProtocolError:
        return
    assert password.encode() + b"\0" == payload


@given(st.lists(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)
                .map(lambda s: s.replace(" ", "_")), max_size=6))
def test_options_round_trip(args: list[str]) -> None:
    assert wire.split_options(wire.join_options(args)) == args


def test_endpoint_option_is_taken_out() -> None:
    endpoint, rest = wire.take_endpoint_option("-c search_path=app endpoint=ro1 -c statement_timeout=5s")
    assert endpoint == "ro1"
    assert wire.split_options(rest) == ["-c", "search_path=app", "-c", "statement_timeout=5s"]
    assert wire.take_endpoint_option("") == (None, "")


def test_special_requests() -> None:
    assert wire.parse_startup(struct.pack("!I", wire.SSL_REQUEST)).kind == "ssl"
    assert wire.parse_startup(struct.pack("!I", wire.GSSENC_REQUEST)).kind == "gss"
    cancel = wire.parse_startup(struct.pack("!Ii", wire.CANCEL_REQUEST, 1234) + b"k" * 32)
    assert (cancel.kind, cancel.cancel_pid, cancel.cancel_key) == ("cancel", 1234, b"k" * 32)
    with pytest.raises(wire.ProtocolError, match=r"unsupported frontend protocol 2\.0"):
        wire.parse_startup(struct.pack("!I", 2 << 16) + b"user\0x\0\0")
    with pytest.raises(wire.ProtocolError, match="no PostgreSQL user name"):
        wire.parse_startup(struct.pack("!I", wire.PROTOCOL_3_0) + b"database\0x\0\0")


def test_error_response_fields() -> None:
    msg = wire.error_response("28P01", "bad", detail="why", hint="fix")
    assert msg[:1] == b"E"
    fields = wire.parse_error_fields(msg[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "bad", "D": "why", "H": "fix"}
