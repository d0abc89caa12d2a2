"""Signed, expiring tokens: database credentials and workspace OAuth access tokens.

Both are JWTs signed with an Ed25519 key kept in the data directory, so tokens survive an emulator
restart and a token from another emulator (another key) is rejected. Revocations (the expire-tokens
fault) are kept in the data directory too, so a restart does not bring revoked tokens back. Expiry is checked to the
microsecond against the float ``exp`` claim: a token is valid strictly before its ``expire_time``.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .files import write_private

DATABASE_AUDIENCE = "lakebase-postgres"
WORKSPACE_AUDIENCE = "databricks-workspace"


class InvalidToken(Exception):
    """The token cannot be used; ``reason`` says why (never contains the token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    subject: str
    audience: str
    issued_at: float
    expires_at: float
    token_id: str

    @property
    def expire_time(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, tz=UTC)


def rfc3339(ts: float) -> str:
    """``2026-11-21T09:11:21.669877Z``: the shape the Lakebase API returns."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _load_or_create_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 key; delete it to have a new one made")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)
    return key


class TokenAuthority:
    """Issues and verifies the emulator's JWTs."""

    def __init__(self, key_path: Path, issuer: str, revocations_path: Path | None = None) -> None:
        self._key = _load_or_create_key(key_path)
        self._public = self._key.public_key()
        self.issuer = issuer
        # Tokens of an audience issued before this instant are rejected (the expire-tokens fault).
        self._revocations_path = revocations_path
        self._revoked_before: dict[str, float] = self._load_revocations()

    def _load_revocations(self) -> dict[str, float]:
        path = self._revocations_path
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            return {str(audience): float(when) for audience, when in data.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is damaged ({type(exc).__name__}); delete it to forget the revocations "
                             "made by expire-tokens") from None

    def issue(self, subject: str, audience: str, ttl_seconds: float) -> tuple[str, Claims]:
        now = time.time()
        claims = Claims(
            subject=subject,
            audience=audience,
            issued_at=now,
            expires_at=now + ttl_seconds,
            token_id=uuid.uuid4().hex,
        )
        payload = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.token_id,
            # Real tokens are long; keep ours a similar size so buffers and logs are exercised alike.
            "nonce": secrets.token_urlsafe(24),
        }
        token = jwt.encode(payload, self._key, algorithm="EdDSA")
        return token, claims

    def verify(self, token: str, audience: str, now: float | None = None) -> Claims:
        if not token or token.count(".") != 2:
            raise InvalidToken("the password is not a Databricks OAuth token (not a JWT)")
        try:
            payload = jwt.decode(
                token,
                self._public,
                algorithms=["EdDSA"],
                audience=audience,
                issuer=self.issuer,
                options={"verify_exp": False, "verify_iat": False, "require": ["sub", "exp", "iat"]},
            )
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token was issued for another purpose (wrong audience)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token was issued by another workspace") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify (issued by another workspace?)") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is malformed ({type(exc).__name__})") from None
        now = time.time() if now is None else now
        claims = Claims(
            subject=str(payload["sub"]),
            audience=audience,
            issued_at=float(payload["iat"]),
            expires_at=float(payload["exp"]),
            token_id=str(payload.get("jti", "")),
        )
        if now >= claims.expires_at:
            raise InvalidToken(f"the token expired at {rfc3339(claims.expires_at)}")
        if claims.issued_at < self._revoked_before.get(audience, 0.0):
            raise InvalidToken("the token was expired early by the emulator's expire-tokens fault")
        return claims

    def revoke_issued_before(self, audience: str, when: float | None = None) -> None:
        self._revoked_before[audience] = time.time() if when is None else when
        if self._revocations_path is not None:
            write_private(self._revocations_path, json.dumps(self._revoked_before))
