"""The emulator in its own process, driven over its admin API: what test suites should use.

A client in the same process as an in-process ``Emulator`` shares its GIL, and a client that blocks
in C while holding the GIL (libpq's legacy ``PQcancel``, for one) would wait forever for a proxy that
cannot run. ``EmulatorProcess`` runs ``lakebase emulator start`` as a child process instead and offers
the same methods as ``Emulator`` (faults, config, stats, identities, env dicts) over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .control import ADMIN_ROUTES
from .faults import ConfigError
from .files import open_private_log, private_directory


@dataclass(frozen=True)
class RemoteIdentity:
    name: str
    type: str
    display_name: str
    pat: str | None = None
    client_secret: str | None = None

    def __repr__(self) -> str:
        return f"RemoteIdentity(name={self.name!r}, type={self.type!r})"


def read_env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    )


class EmulatorProcess:
    """``with EmulatorProcess(data_dir) as emu:`` — a ``lakebase emulator start`` child process.

    Keeps the ``EmulatorControl`` contract (``control.py``) through the admin API (``ADMIN_ROUTES``)."""

    def __init__(self, data_dir: str | Path, *, api_port: int = 0, pg_port: int = 0,
                 token_ttl: float | None = None, startup_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()  # links are checked at start
        self._args = ["--api-port", str(api_port), "--pg-port", str(pg_port)]
        if token_ttl is not None:
            self._args += ["--token-ttl", str(token_ttl)]
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.user_env: dict[str, str] = {}
        self.app_env: dict[str, str] = {}

    # ---- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmulatorProcess:
        private_directory(self.data_dir)
        for name in ("user.env", "app.env"):
            (self.data_dir / name).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "PG"))}
        log = open_private_log(self.data_dir / "emulator.log")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "lakebase", "emulator", "start", "--data-dir", str(self.data_dir),
                 *self._args],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self._timeout
        while not (self.data_dir / "app.env").exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"the emulator exited with code {self._proc.returncode}; "
                                   f"see {self.data_dir / 'emulator.log'}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator was not ready after {self._timeout:.0f} s:\n{self._log_tail()}")
            time.sleep(0.05)
        self.user_env = read_env_file(self.data_dir / "user.env")
        self.app_env = read_env_file(self.data_dir / "app.env")
        return self

    @classmethod
    def attach(cls, data_dir: str | Path) -> EmulatorProcess:
        """A handle on the emulator already running with ``data_dir`` (started elsewhere, e.g. by
        ``lakebase emulator start --data-dir DIR``); ``stop()`` leaves it running."""
        emu = cls(data_dir)
        try:
            emu.user_env = read_env_file(emu.data_dir / "user.env")
            emu.app_env = read_env_file(emu.data_dir / "app.env")
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"no running emulator in {emu.data_dir} ({exc}): start one with "
                               f"`lakebase emulator start --data-dir {emu.data_dir}`") from None
        try:
            emu.stats()
        except (OSError, RuntimeError) as exc:
            raise RuntimeError(f"the emulator of {emu.data_dir} does not answer at {emu.api_url} ({exc}): is it "
                               f"running? Start it with `lakebase emulator start --data-dir {emu.data_dir}`") from None
        return emu

    def _log_tail(self) -> str:
        try:
            return "\n".join((self.data_dir / "emulator.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # ---- connection facts ----------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.user_env["DATABRICKS_HOST"]

    @property
    def pg_port(self) -> int:
        return int(self.user_env["PGPORT"])

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def endpoint_name(self) -> str:
        return self.user_env["ENDPOINT_NAME"]

    @property
    def owner(self) -> RemoteIdentity:
        return RemoteIdentity(self.user_env["PGUSER"], "USER", self.user_env["PGUSER"],
                              pat=self.user_env["DATABRICKS_TOKEN"])

    @property
    def app(self) -> RemoteIdentity:
        return RemoteIdentity(self.app_env["DATABRICKS_CLIENT_ID"], "SERVICE_PRINCIPAL",
                              self.app_env.get("PGAPPNAME", ""), client_secret=self.app_env["DATABRICKS_CLIENT_SECRET"])

    # ---- the admin API -------------------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.owner.pat}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code == 400:
                raise ConfigError(message) from None
            raise RuntimeError(f"{method} {path}: {exc.code} {message}") from None

    def configure(self, **values: Any) -> dict[str, Any]:
        return dict(self.admin(*ADMIN_ROUTES["configure"], values))

    def config(self) -> dict[str, Any]:
        return dict(self.admin(*ADMIN_ROUTES["config"]))

    def restart(self) -> int:
        return int(self.admin(*ADMIN_ROUTES["restart"], {}).get("sessions_terminated", 0))

    def suspend(self, endpoint: str | None = None) -> int:
        body = {"endpoint": endpoint} if endpoint else {}
        return int(self.admin(*ADMIN_ROUTES["suspend"], body).get("sessions_terminated", 0))

    def credential_outage(self, seconds: float, status: int = 503) -> None:
        self.admin(*ADMIN_ROUTES["credential_outage"], {"seconds": seconds, "status": status})

    def api_hang(self, seconds: float) -> None:
        self.admin(*ADMIN_ROUTES["api_hang"], {"seconds": seconds})

    def expire_tokens(self) -> None:
        self.admin(*ADMIN_ROUTES["expire_tokens"], {})

    def stats(self) -> dict[str, Any]:
        return dict(self.admin(*ADMIN_ROUTES["stats"]))

    def endpoint_state(self, endpoint: str | None = None) -> str:
        states: dict[str, str] = self.stats()["endpoints"]
        name = endpoint or self.endpoint_name
        for key, state in states.items():
            if key == name or key.rsplit("/", 1)[-1] == name:
                return state
        raise KeyError(f"unknown endpoint {name!r}; known: {', '.join(states)}")

    def _add_identity(self, type_: str, name: str | None, display_name: str | None) -> RemoteIdentity:
        data = self.admin(*ADMIN_ROUTES["add_identity"],
                          {"type": type_, "name": name, "display_name": display_name})
        return RemoteIdentity(data["name"], data["type"], data["display_name"], data.get("pat"),
                              data.get("client_secret"))

    def add_user(self, email: str) -> RemoteIdentity:
        return self._add_identity("USER", email, None)

    def add_service_principal(self, display_name: str = "service-principal") -> RemoteIdentity:
        return self._add_identity("SERVICE_PRINCIPAL", None, display_name)

    def add_group(self, name: str) -> RemoteIdentity:
        return self._add_identity("GROUP", name, None)

    def add_read_only_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        return dict(self.admin(*ADMIN_ROUTES["add_read_only_endpoint"], {"endpoint_id": endpoint_id}))
