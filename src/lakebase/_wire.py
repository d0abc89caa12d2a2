"""The parts of the PostgreSQL v3 wire protocol the proxy needs: pure functions, no I/O.

Everything that parses untrusted bytes lives here so that it can be fuzzed on its own
(tests/test_emulator_wire.py). Parsers raise ``ProtocolError`` with a message fit for the client.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2

MAX_STARTUP_PACKET = 10000  # as PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_AUTH_MESSAGE = 65536
MAX_CANCEL_KEY = 256


class ProtocolError(Exception):
    """Bytes that do not follow the protocol; the message is safe to show to the client."""


@dataclass
class StartupPacket:
    kind: str  # "ssl" | "gss" | "cancel" | "startup"
    version: int = 0
    params: dict[str, str] = field(default_factory=dict)
    cancel_pid: int = 0
    cancel_key: bytes = b""


def startup_length(header: bytes) -> int:
    """The total length announced by a startup packet's first four bytes, validated."""
    if len(header) != 4:
        raise ProtocolError("incomplete startup packet")
    (length,) = struct.unpack("!I", header)
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolError(f"invalid length of startup packet ({length} bytes)")
    return length


def parse_startup(body: bytes) -> StartupPacket:
    """Parse what follows the length word of an untyped startup-phase packet."""
    if len(body) < 4:
        raise ProtocolError("incomplete startup packet")
    (code,) = struct.unpack("!I", body[:4])
    rest = body[4:]
    if code == SSL_REQUEST:
        if rest:
            raise ProtocolError("invalid length of SSL request")
        return StartupPacket("ssl")
    if code == GSSENC_REQUEST:
        if rest:
            raise ProtocolError("invalid length of GSSAPI encryption request")
        return StartupPacket("gss")
    if code == CANCEL_REQUEST:
        if len(rest) < 8 or len(rest) > 4 + MAX_CANCEL_KEY:
            raise ProtocolError("invalid length of cancel request")
        (pid,) = struct.unpack("!i", rest[:4])
        return StartupPacket("cancel", cancel_pid=pid, cancel_key=bytes(rest[4:]))
    major = code >> 16
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{code & 0xFFFF}: server supports 3.0 to 3.2"
        )
    return StartupPacket("startup", version=code, params=_parse_params(rest))


def _parse_params(data: bytes) -> dict[str, str]:
    if not data or data[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    body = data[:-1]  # without the packet's terminator; every key and value ends with a NUL
    if body and body[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = body[:-1].split(b"\0") if body else []
    if len(parts) % 2:
        raise ProtocolError("invalid startup packet layout: a parameter has no value")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        try:
            key, value = parts[i].decode(), parts[i + 1].decode()
        except UnicodeDecodeError:
            raise ProtocolError("invalid startup packet: parameters must be UTF-8") from None
        if not key:
            raise ProtocolError("invalid startup packet layout: empty parameter name")
        params[key] = value
    if "user" not in params or not params["user"]:
        raise ProtocolError("no PostgreSQL user name specified in startup packet")
    return params


def parse_message_header(header: bytes, limit: int = MAX_AUTH_MESSAGE) -> tuple[bytes, int]:
    """(type byte, payload length) of a typed message; the length word includes itself."""
    if len(header) != 5:
        raise ProtocolError("incomplete message header")
    mtype = header[:1]
    (length,) = struct.unpack("!I", header[1:])
    if length < 4 or length - 4 > limit:
        raise ProtocolError(f"invalid message length {length}")
    return mtype, length - 4


def parse_password(payload: bytes) -> str:
    if not payload or payload[-1] != 0 or b"\0" in payload[:-1]:
        raise ProtocolError("invalid password packet")
    try:
        return payload[:-1].decode()
    except UnicodeDecodeError:
        raise ProtocolError("invalid password packet: not UTF-8") from None


def split_options(options: str) -> list[str]:
    """Split a startup ``options`` value as PostgreSQL does: on spaces, backslash escapes a space."""
    args: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in options:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                args.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        args.append("".join(current))
    return args


def join_options(args: list[str]) -> str:
    return " ".join(a.replace("\\", "\\\\").replace(" ", "\\ ") for a in args)


def take_endpoint_option(options: str) -> tuple[str | None, str]:
    """Neon-style ``options=endpoint=<id>``: return (endpoint or None, the remaining options)."""
    endpoint = None
    rest: list[str] = []
    for arg in split_options(options):
        if arg.startswith("endpoint="):
            endpoint = arg[len("endpoint="):]
        else:
            rest.append(arg)
    return endpoint, join_options(rest)


# ---- messages the proxy writes -----------------------------------------------------------------
def _msg(mtype: bytes, payload: bytes) -> bytes:
    return mtype + struct.pack("!I", len(payload) + 4) + payload


def error_response(code: str, message: str, *, detail: str | None = None, hint: str | None = None,
                   severity: str = "FATAL") -> bytes:
    fields = [b"S" + severity.encode(), b"V" + severity.encode(), b"C" + code.encode(),
              b"M" + message.encode()]
    if detail:
        fields.append(b"D" + detail.encode())
    if hint:
        fields.append(b"H" + hint.encode())
    return _msg(b"E", b"\0".join(fields) + b"\0\0")


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse payload, keyed by their one-letter codes."""
    out: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode(errors="replace")
    return out


def auth_cleartext_password() -> bytes:
    return _msg(b"R", struct.pack("!I", 3))


def startup_message(version: int, params: dict[str, str]) -> bytes:
    body = struct.pack("!I", version)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def cancel_request(pid: int, key: bytes) -> bytes:
    body = struct.pack("!Ii", CANCEL_REQUEST, pid) + key
    return struct.pack("!I", len(body) + 4) + body


def backend_key_data(pid: int, key: bytes) -> bytes:
    return _msg(b"K", struct.pack("!i", pid) + key)


def parse_backend_key_data(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 8:
        raise ProtocolError("invalid BackendKeyData")
    (pid,) = struct.unpack("!i", payload[:4])
    return pid, bytes(payload[4:])


# ---- the client side (lakebase proxy): logging in to a server ---------------------------------------
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
SSL_REQUEST_PACKET = struct.pack("!II", 8, SSL_REQUEST)
TERMINATE = b"X\0\0\0\4"


def parse_client_startup(body: bytes, default_user: str) -> StartupPacket:
    """:func:`parse_startup` for a proxy that logs in as one identity: a startup packet without a user
    name (or with an empty one) gets ``default_user``."""
    if len(body) >= 4 and struct.unpack("!I", body[:4])[0] >> 16 == 3:
        # A user given first: the client's own, if any, comes later in the packet and wins.
        body = body[:4] + b"user\0" + default_user.encode() + b"\0" + body[4:]
        packet = parse_startup(body)
        if not packet.params.get("user"):
            packet.params["user"] = default_user
        return packet
    return parse_startup(body)


def parse_authentication(payload: bytes) -> int:
    """The request code of an Authentication message (0: ok, 3: cleartext password, 10: SASL, ...)."""
    if len(payload) < 4:
        raise ProtocolError("invalid authentication request")
    (code,) = struct.unpack("!I", payload[:4])
    return int(code)


def password_message(password: str) -> bytes:
    """A PasswordMessage: the answer to AuthenticationCleartextPassword."""
    return _msg(b"p", password.encode() + b"\0")


def auth_ok() -> bytes:
    return _msg(b"R", struct.pack("!I", AUTH_OK))


def is_fatal_error(payload: bytes) -> bool:
    """Does this ErrorResponse end the session (severity FATAL or PANIC)?"""
    fields = parse_error_fields(payload)
    return fields.get("V", fields.get("S", "")) in ("FATAL", "PANIC")
