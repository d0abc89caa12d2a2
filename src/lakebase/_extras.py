"""Optional dependencies: a module whose extra is not installed says which extra to install.

::

    with requires_extra("asyncpg", __name__):
        import asyncpg
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator


class MissingExtra(ModuleNotFoundError):
    """A lakebase module was imported without the extra that brings its dependencies."""

    def __init__(self, extra: str, module: str, cause: ImportError) -> None:
        super().__init__(
            f'{module} needs the "{extra}" extra ({cause}): '
            f'pip install "lakebase[{extra}]"',
            name=cause.name,
        )
        self.extra = extra
        self.module = module


@contextlib.contextmanager
def requires_extra(extra: str, module: str) -> Iterator[None]:
    """Turn an ImportError of the imports inside into a `MissingExtra` naming ``extra``."""
    try:
        yield
    except MissingExtra:
        raise
    except ImportError as exc:
        raise MissingExtra(extra, module, exc) from exc


def ensure_installed(module: str) -> None:
    """Raise ModuleNotFoundError unless ``module`` can be imported, without importing it (for a
    dependency imported only where it is used, whose absence should still show at import time)."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)
