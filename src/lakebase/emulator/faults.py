"""Runtime knobs, fault state and counters shared by the REST API and the wire proxy."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A configuration value was rejected; the message names the key and the accepted range."""


@dataclass
class EmulatorConfig:
    """Knobs settable at start and at run time (``POST /emulator/config``).

    ``token_ttl_seconds`` caps the lifetime of every database credential (a request's ``ttl`` can only
    shorten it), so rotation can be exercised in seconds. ``latency_ms`` is added to every REST API
    call and every new Postgres login. ``suspend_after_idle_seconds`` None means never.
    ``expire_time_skew_seconds`` is added to the ``expire_time`` the credential APIs report (the
    token's real expiry is unchanged): -3600 is what a client whose clock is an hour fast sees.
    ``oauth_token_ttl_seconds`` is the lifetime of the OAuth access tokens the token endpoint issues
    (the SDK treats one of 40 s or less as expired: it then asks for a new one on every API call).
    """

    token_ttl_seconds: float = 3600.0
    wake_delay_seconds: float = 0.3
    suspend_after_idle_seconds: float | None = None
    idle_timeout_seconds: float = 86400.0
    max_lifetime_seconds: float = 259200.0
    latency_ms: float = 0.0
    restart_seconds: float = 1.0
    expire_time_skew_seconds: float = 0.0
    oauth_token_ttl_seconds: float = 3600.0

    _limits = {
        "token_ttl_seconds": (1.0, 86400.0),
        "wake_delay_seconds": (0.0, 60.0),
        "suspend_after_idle_seconds": (0.1, 86400.0 * 30),
        "idle_timeout_seconds": (0.1, 86400.0 * 30),
        "max_lifetime_seconds": (0.1, 86400.0 * 30),
        "latency_ms": (0.0, 10000.0),
        "restart_seconds": (0.0, 60.0),
        "expire_time_skew_seconds": (-86400.0, 86400.0),
        "oauth_token_ttl_seconds": (1.0, 86400.0),
    }

    def update(self, values: dict[str, Any]) -> dict[str, Any]:
        """Validate all values first, then apply them all: a bad key changes nothing."""
        if not isinstance(values, dict):
            raise ConfigError("the body must be a JSON object, e.g. {\"token_ttl_seconds\": 30}")
        known = {f.name for f in fields(self)}
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
            if value is None and key == "suspend_after_idle_seconds":
                parsed[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{key} must be a number of {'ms' if key == 'latency_ms' else 'seconds'}, "
                                  f"got {value!r}")
            low, high = self._limits[key]
            if not low <= float(value) <= high:
                raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value!r}")
            parsed[key] = float(value)
        for key, value in parsed.items():
            setattr(self, key, value)
        return self.as_dict()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stats:
    credentials_issued: int = 0
    credential_requests_rejected: int = 0
    logins_succeeded: int = 0
    native_logins: int = 0  # of logins_succeeded: with a native Postgres password, not a token
    logins_failed: int = 0
    active_sessions: int = 0
    sessions_terminated: int = 0
    wakeups: int = 0
    restarts: int = 0
    api_requests: int = 0
    login_failures_by_reason: dict[str, int] = field(default_factory=dict)

    def login_failed(self, reason: str) -> None:
        self.logins_failed += 1
        self.login_failures_by_reason[reason] = self.login_failures_by_reason.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CredentialOutage:
    """While active, the credential endpoints answer ``status`` (503, or 429 with Retry-After).
    Starting one of 0 seconds ends the current outage."""

    until: float = 0.0
    status: int = 503

    def start(self, seconds: float, status: int) -> None:
        if status not in (429, 503):
            raise ConfigError(f"status must be 503 or 429, got {status!r}")
        if not 0 <= seconds <= 3600:
            raise ConfigError(f"seconds must be between 0 and 3600, got {seconds!r}")
        self.until = time.monotonic() + seconds
        self.status = status

    def remaining(self) -> float:
        return max(0.0, self.until - time.monotonic())

    @property
    def active(self) -> bool:
        return self.remaining() > 0


@dataclass
class ApiHang:
    """While active, workspace API calls (``/api/...``) and the OAuth token endpoint do not answer:
    each request is held until the hang ends, then served as usual (a token endpoint that stops
    answering, then comes back). Starting one of 0 seconds ends the current hang."""

    until: float = 0.0
    waiting: int = 0  # requests held right now

    def start(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise ConfigError(f"seconds must be between 0 and 3600, got {seconds!r}")
        self.until = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.until - time.monotonic())

    async def hold(self) -> None:
        """Wait (on the event loop) until the hang ends, however it ends."""
        import asyncio

        self.waiting += 1
        try:
            while (left := self.remaining()) > 0:
                await asyncio.sleep(min(left, 0.05))
        finally:
            self.waiting -= 1
