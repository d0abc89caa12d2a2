"""The emulator's wiring: Postgres + TLS auth proxy + workspace REST API, started and stopped together.

``Emulator`` is the public, thread-safe handle: it runs the event loop in a background thread, makes
the ``Runtime`` (``runtime.py``, the shared model), the ``Proxy`` (``proxy.py``) and the REST API
(``api/``) on it, writes ``user.env`` / ``app.env``, and offers faults, config and stats as plain
methods: the ``EmulatorControl`` contract (``control.py``), which the admin HTTP API and
``EmulatorProcess`` offer too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from .api import start_api
from .faults import ConfigError, EmulatorConfig
from .files import private_directory, write_private
from .proxy import Proxy
from .runtime import Runtime
from .state import DEFAULT_DATABASE, Endpoint, Identity, Workspace

T = TypeVar("T")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the proxy moves bytes several times faster on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Emulator:
    """A local Lakebase: ``with Emulator(data_dir) as emu: ...``.

    ``emu.user_env`` / ``emu.app_env`` are the environments of the project owner (PAT) and of the
    app's service principal (OAuth M2M); ``emu.restart()``, ``emu.suspend()``,
    ``emu.credential_outage()``, ``emu.api_hang()``, ``emu.expire_tokens()``, ``emu.configure()`` and ``emu.stats()``
    inject faults and read counters. Safe to call from any thread.
    """

    def __init__(self, data_dir: str | Path, *, api_port: int = 0, pg_port: int = 0,
                 host: str = "127.0.0.1", token_ttl: float | None = None, **config: Any) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()  # links are checked at start
        self.host = host
        self._api_port = api_port
        self._pg_port = pg_port
        cfg = EmulatorConfig()
        if token_ttl is not None:
            config["token_ttl_seconds"] = token_ttl
        cfg.update(config)
        self._config = cfg
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runtime: Runtime | None = None
        self._proxy: Proxy | None = None
        self._stopped = threading.Event()
        self._api_runner: Any = None
        self._expiry: asyncio.Task[None] | None = None  # deletes branches when they expire

    # ---- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> Emulator:
        if self._thread is not None:
            raise RuntimeError("this emulator is already started")
        private_directory(self.data_dir)
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="lakebase-emulator", daemon=True)
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self.stop()
            raise
        self._write_env_files()
        return self

    def _run(self, ready: Future[None]) -> None:
        loop = _new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    async def _serve(self, ready: Future[None]) -> None:
        rt: Runtime | None = None
        self._stop_event = asyncio.Event()
        try:
            rt = Runtime(self.data_dir, self._config)
            self._runtime = rt
            rt.pg.start()  # from this (long-lived) thread: the parent-death signal is tied to it
            rt.write_server_files()
            await rt.open_admin()
            await rt.bootstrap()
            if any(ep.read_only for ep in rt.workspace.endpoints.values()):
                rt.ensure_replica()  # resumed in the background; logins to read-only endpoints wait
            else:
                await rt.discard_replica()
            self._proxy = rt.proxy = Proxy(rt)
            rt.pg_port = await self._proxy.start(self.host, self._pg_port)
            self._api_runner, api_port = await start_api(rt, self.host, self._api_port)
            rt.api_url = f"http://{self.host}:{api_port}"
            self._expiry = asyncio.create_task(rt.expire_branches_forever())
            ready.set_result(None)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            await self._teardown(rt)
            return
        await self._stop_event.wait()
        await self._teardown(rt)

    async def _teardown(self, rt: Runtime | None) -> None:
        if rt is None:
            return
        expiry, self._expiry = self._expiry, None
        if expiry is not None:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            await proxy.close()
        if self._api_runner is not None:
            await self._api_runner.cleanup()
        await rt.close_admin()
        if rt.replica is not None:
            await rt.replica.close()
        await rt.branches.close()
        rt.pg.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        if loop is not None and not loop.is_closed() and hasattr(self, "_stop_event"):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stop_event.set)
        thread.join(60)
        self._thread = None

    def wait(self) -> None:
        """Block until stopped (the CLI's foreground mode)."""
        while not self._stopped.wait(0.5):
            pass

    # ---- helpers -------------------------------------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        if self._runtime is None or self._thread is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return self._runtime

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _call_sync(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self._call(run())

    # ---- connection facts ----------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return self.runtime.api_url

    @property
    def pg_port(self) -> int:
        return self.runtime.pg_port

    @property
    def ca_file(self) -> Path:
        return self.runtime.ca_path

    @property
    def workspace(self) -> Workspace:
        return self.runtime.workspace

    @property
    def endpoint_name(self) -> str:
        return self.workspace.primary.name

    @property
    def owner(self) -> Identity:
        return self.workspace.owner

    @property
    def app(self) -> Identity:
        return self.workspace.app

    def _pg_env(self, user: str) -> dict[str, str]:
        return {
            "PGHOST": self.workspace.primary.host,
            "PGPORT": str(self.pg_port),
            "PGDATABASE": DEFAULT_DATABASE,
            "PGUSER": user,
            # Verify the proxy's certificate: a local process squatting on the port cannot stand in.
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(self.ca_file),
            "ENDPOINT_NAME": self.endpoint_name,
        }

    @property
    def user_env(self) -> dict[str, str]:
        owner = self.owner
        assert owner.pat is not None
        return {"DATABRICKS_HOST": self.api_url, "DATABRICKS_TOKEN": owner.pat, **self._pg_env(owner.name)}

    @property
    def app_env(self) -> dict[str, str]:
        app = self.app
        assert app.client_secret is not None
        return {
            "DATABRICKS_HOST": self.api_url,
            "DATABRICKS_CLIENT_ID": app.name,
            "DATABRICKS_CLIENT_SECRET": app.client_secret,
            **self._pg_env(app.name),
            "PGAPPNAME": app.display_name,
        }

    def _write_env_files(self) -> None:
        for name, env in (("user.env", self.user_env), ("app.env", self.app_env)):
            write_private(self.data_dir / name, "".join(f"{k}={v}\n" for k, v in env.items()))

    # ---- identities ----------------------------------------------------------------------------
    def add_user(self, email: str) -> Identity:
        """Add a workspace user (with a PAT); the extension then accepts it in databricks_create_role."""
        return self._call_sync(self.runtime.add_identity, email, "USER")

    def add_service_principal(self, display_name: str = "service-principal") -> Identity:
        import uuid

        return self._call_sync(self.runtime.add_identity, str(uuid.uuid4()), "SERVICE_PRINCIPAL", display_name)

    def add_group(self, name: str) -> Identity:
        return self._call_sync(self.runtime.add_identity, name, "GROUP")

    def add_read_only_endpoint(self, endpoint_id: str) -> Endpoint:
        """A read replica on the production branch (the REST API does the same through an operation)."""
        return self._call_sync(self.runtime.add_read_only_endpoint, endpoint_id)

    # ---- faults, config, stats -------------------------------------------------------------------
    def configure(self, **values: Any) -> dict[str, Any]:
        """E.g. ``emu.configure(token_ttl_seconds=5, wake_delay_seconds=1)``; raises ConfigError."""
        return self._call_sync(self.runtime.configure, values)

    def config(self) -> dict[str, Any]:
        """The settings in force (what ``configure`` changes)."""
        return dict(self._call_sync(self.runtime.config.as_dict))

    def restart(self) -> int:
        return self._call(self.runtime.restart())

    def suspend(self, endpoint: str | None = None) -> int:
        ep = None
        if endpoint is not None:
            ep = self.workspace.find_endpoint(endpoint)
            if ep is None:
                raise ConfigError(f"unknown endpoint {endpoint!r}")
        return self._call(self.runtime.suspend(ep))

    def credential_outage(self, seconds: float, status: int = 503) -> None:
        self._call_sync(self.runtime.start_outage, seconds, status)

    def api_hang(self, seconds: float) -> None:
        """The workspace API and the OAuth token endpoint stop answering for ``seconds`` (0 ends it)."""
        self._call_sync(self.runtime.start_api_hang, seconds)

    def expire_tokens(self) -> None:
        self._call_sync(self.runtime.expire_tokens)

    def stats(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._call_sync(self.runtime.stats_dict)))

    def endpoint_state(self, endpoint: str | None = None) -> str:
        ep = self.workspace.find_endpoint(endpoint) if endpoint else self.workspace.primary
        assert ep is not None
        return ep.state
