"""Native Postgres passwords, as Lakebase has them for tools that cannot rotate OAuth tokens.

* The project's switch ``spec.enable_pg_native_login`` (off by default), set by its owner through
  ``w.postgres.update_project``.
* Roles created through the roles API with ``auth_method`` ``PG_PASSWORD_SCRAM_SHA_256`` get a password
  made here; only its SCRAM-SHA-256 verifier goes to Postgres (``CREATE ROLE ... PASSWORD
  'SCRAM-SHA-256$...'``), so the plaintext is never in a statement Postgres could log. The password itself
  is kept (0600, ``native-login.json``) for ``w.postgres.reveal_role_password``.
* Roles created in SQL with ``LOGIN PASSWORD '...'`` have only their verifier, in ``pg_authid``.

At login the proxy asks every client for a cleartext password (that is how OAuth tokens travel, and what
Lakebase's proxy does). When it is not a valid token for the role and the switch is on, the proxy runs a
SCRAM-SHA-256 exchange between a SCRAM client holding that password and a SCRAM server holding the role's
verifier from ``pg_authid`` (``scramp``), as Neon's proxy, which Lakebase's is built on, checks a
cleartext password against a role's SCRAM secret. Postgres behind it still trusts the proxy (peer
authentication on its Unix socket). Limits: a client that insists on SCRAM with the server
(libpq ``require_auth=scram-sha-256`` or ``channel_binding=require``) refuses the cleartext request, as it
would against Lakebase; verifiers with fewer than 4096 iterations (``scram_iterations``) and passwords that
SASLprep rejects (Postgres then uses their raw bytes) are refused; MD5 and plaintext ``rolpassword``
values are not accepted (Lakebase roles use SCRAM-SHA-256 only).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from scramp import ScramClient, ScramException, ScramMechanism

from .files import write_private

MECHANISM = "SCRAM-SHA-256"
# Postgres's stored form: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64).
VERIFIER_RE = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")


def new_password() -> str:
    """A generated native password: 32 URL-safe characters (192 bits), nothing to quote in a conninfo."""
    return secrets.token_urlsafe(24)


def make_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores for ``password`` (a fresh salt, 4096 iterations)."""
    salt, stored_key, server_key, iterations = ScramMechanism(MECHANISM).make_auth_info(password)
    b64 = base64.b64encode
    return f"{MECHANISM}${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def password_matches(role: str, password: str, verifier: str) -> bool:
    """Whether ``password`` is the one ``verifier`` (a ``pg_authid.rolpassword``) was made from: a full
    SCRAM exchange, client side with the password, server side with the verifier's keys."""
    match = VERIFIER_RE.fullmatch(verifier)
    if match is None:
        return False
    iterations, salt, stored_key, server_key = match.groups()
    auth_info = (base64.b64decode(salt), base64.b64decode(stored_key), base64.b64decode(server_key),
                 int(iterations))
    try:
        server = ScramMechanism(MECHANISM).make_server(lambda _username: auth_info)
        client = ScramClient([MECHANISM], role or "-", password)
        server.set_client_first(client.get_client_first())
        client.set_server_first(server.get_server_first())
        server.set_client_final(client.get_client_final())
        client.set_server_final(server.get_server_final())
    except ScramException:
        return False
    return True


@dataclass(frozen=True)
class RolePassword:
    """A role's password as Postgres keeps it (``pg_authid``)."""

    can_login: bool
    verifier: str | None
    valid_until: str | None  # VALID UNTIL, as Postgres shows it
    expired: bool  # VALID UNTIL is past


@dataclass
class NativeLogin:
    """The project's native-login switch and the passwords the roles API made, in ``native-login.json``."""

    path: Path
    enabled: bool = False
    passwords: dict[str, str] = field(default_factory=dict, repr=False)  # role name -> password

    @classmethod
    def load(cls, path: Path) -> NativeLogin:
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            return cls(path, bool(data["enabled"]), {str(k): str(v) for k, v in data["passwords"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is damaged ({type(exc).__name__}); move it away to start with native "
                             "login off and no API-made passwords (roles keep theirs in Postgres)") from None

    def save(self) -> None:
        write_private(self.path, json.dumps({"enabled": self.enabled, "passwords": self.passwords}, indent=2))

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self.save()

    def remember(self, role: str, password: str) -> None:
        self.passwords[role] = password
        self.save()
