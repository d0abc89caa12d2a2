"""`make dist`: build the sdist and the wheel, check them, and use the wheel as a user would.

    python -m tests.dist_check [--out dist]

1. ``python -m build`` (the sdist, then the wheel built from the unpacked sdist, so a file missing
   from the sdist breaks the wheel too); any warning in its output fails the check;
2. ``twine check --strict``; the wheel holds every module and data file of ``src/lakebase`` and the
   license, the sdist holds what builds and tests the project;
3. a fresh virtualenv (from the base interpreter, nothing of this one, no source tree on the path)
   gets the wheel with its extras; there every module of the package is imported and must come from
   that virtualenv, the ``lakebase`` command runs, and the emulator is started from the installed
   package: the owner runs the tutorial's schema step (the packaged ``databricks_auth`` extension) and
   creates pgvector and the packaged pgcrypto stand-in, and the app's service principal connects with
   OAuth M2M;
4. another fresh virtualenv gets the wheel without extras: ``import lakebase`` works, each module
   that needs an extra names it, and so does the ``lakebase`` command, without a traceback.

Exits non-zero, saying what is wrong, on the first failure. Prints the wheel's path last.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "lakebase"
# Together they need every module of the package.
EXTRAS = "emulator,sqlalchemy,asyncpg,alembic,psycopg2,streamlit,django,proxy,testing"
# What the sdist must hold besides the package: the files that build, test and demonstrate it.
SDIST_FILES = ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "Makefile", "MANIFEST.in",
               "tests/conftest.py", "tests/lakebase_support.py", "tests/dist_check.py",
               "apps/notes-flask/templates/index.html", "apps/notes-fastapi/templates/index.html")
WARNING = re.compile(r"warning|deprecat", re.IGNORECASE)


class DistError(Exception):
    pass


def package_files() -> tuple[list[str], list[str]]:
    """The package's modules (dotted names) and its other files (paths relative to src/)."""
    modules, data = [], []
    for path in sorted(PACKAGE.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        rel = path.relative_to(PACKAGE.parent)
        if path.suffix == ".py" and "templates" not in rel.parts:  # a template (alembic's env.py) is data
            parts = rel.with_suffix("").parts
            modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        else:
            data.append(rel.as_posix())
    return modules, data


def run(cmd: list[str], *, what: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DistError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{out}")
    return out


def version() -> str:
    match = re.search(r'^__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text(), re.MULTILINE)
    if not match:
        raise DistError("no __version__ = \"...\" line in src/lakebase/__init__.py")
    return match.group(1)


# Generated in a working tree and read back by setuptools (a stale egg-info's SOURCES.txt puts files
# into the sdist that the configuration no longer names): the build starts from a copy without them.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", "*.py[cod]",
                                    ".lakebase", ".*_cache", "artifacts", "*.whl")


def build(out: Path) -> tuple[Path, Path]:
    shutil.rmtree(out, ignore_errors=True)
    # PYTHONDONTWRITEBYTECODE only makes setuptools warn that it skips byte-compiling: not ours.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    with tempfile.TemporaryDirectory(prefix="lakebase-src-") as tmp:
        source = Path(tmp) / "lakebase"
        shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
        log = run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(source)],
                  what="python -m build", env=env)
    warnings = [line for line in log.splitlines() if WARNING.search(line)]
    if warnings:
        raise DistError("the build printed warnings:\n" + "\n".join(warnings))
    v = version()
    wheel, sdist = out / f"lakebase-{v}-py3-none-any.whl", out / f"lakebase-{v}.tar.gz"
    for path in (wheel, sdist):
        if not path.is_file():
            raise DistError(f"the build made no {path.name}; it made {sorted(p.name for p in out.iterdir())}")
    return sdist, wheel


def check_contents(sdist: Path, wheel: Path) -> None:
    run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)], what="twine check")
    modules, data = package_files()
    v = version()
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"lakebase-{v}.dist-info/METADATA").decode()
    expected = {m.replace(".", "/") + ("/__init__.py" if (PACKAGE.parent / m.replace(".", "/")).is_dir() else ".py")
                for m in modules} | set(data) | {f"lakebase-{v}.dist-info/licenses/LICENSE"}
    if missing := sorted(expected - names):
        raise DistError(f"the wheel lacks {missing}")
    for field in ("License-Expression: Apache-2.0", "License-File: LICENSE", f"Version: {v}"):
        if field not in metadata.splitlines():
            raise DistError(f"the wheel's METADATA has no line {field!r}")
    with tarfile.open(sdist) as tf:
        members = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    expected = set(SDIST_FILES) | {f"src/{p}" for p in data}
    if missing := sorted(expected - members):
        raise DistError(f"the sdist lacks {missing}")
    if stray := sorted(m for m in members if "__pycache__" in m or m.endswith((".pyc", ".whl"))):
        raise DistError(f"the sdist holds build leftovers: {stray[:5]}")


SMOKE = r"""
import importlib, importlib.metadata, json, os, subprocess, sys, sysconfig
from pathlib import Path

modules, data, expected_version, work = json.loads(sys.argv[1])
site = Path(sysconfig.get_paths()["purelib"]).resolve()
for name in modules:
    module = importlib.import_module(name)
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(site), f"{name} was imported from {where}, not from {site}"
for rel in data:
    assert (site / rel).is_file(), f"{rel} is not installed in {site}"

import lakebase
assert lakebase.__version__ == expected_version == importlib.metadata.version("lakebase"), (
    lakebase.__version__, expected_version, importlib.metadata.version("lakebase"))
command = Path(sys.executable).with_name("lakebase")
out = subprocess.run([str(command), "--version"], capture_output=True, text=True, check=True).stdout
assert expected_version in out, out

from lakebase.emulator import EmulatorProcess
from lakebase.schema import init_schema

with EmulatorProcess(Path(work) / "emulator") as emu:
    base = dict(os.environ)
    os.environ.update(emu.user_env)              # the project owner: the tutorial's schema step
    init_schema(emu.app_env["DATABRICKS_CLIENT_ID"])
    with lakebase.connect() as conn:             # the packaged pgcrypto stand-in; pgvector, as the owner may
        conn.execute("CREATE EXTENSION pgcrypto; CREATE EXTENSION vector")
        sha1, = conn.execute("SELECT encode(digest('abc', 'sha1'), 'hex')").fetchone()
        conn.rollback()
    assert sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d", sha1
    os.environ.clear()
    os.environ.update(base, **emu.app_env)       # the app's service principal, OAuth M2M
    with lakebase.connect() as conn:
        user, notes = conn.execute("SELECT current_user, (SELECT count(*) FROM notes)").fetchone()
    assert user == emu.app_env["DATABRICKS_CLIENT_ID"] and notes == 3, (user, notes)
print("installed wheel: imports, the lakebase command, the emulator and a connection work")
"""


def smoke(wheel: Path, work: Path) -> None:
    venv = work / "venv"
    # The venv module bases a new virtualenv on the base interpreter, even when run from one.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], what="creating a fresh virtualenv")
    python = venv / "bin" / "python"
    log = run([sys.executable, "-m", "uv", "pip", "install", "--python", str(python), f"{wheel}[{EXTRAS}]"],
              what=f"installing the wheel with [{EXTRAS}] into {venv}")
    if warnings := [line for line in log.splitlines() if WARNING.search(line)]:
        raise DistError("installing the wheel printed warnings:\n" + "\n".join(warnings))
    modules, data = package_files()
    home = work / "home"
    home.mkdir()
    # Nothing of the caller's environment that could put the source tree on the path or point the
    # SDK or libpq elsewhere; -I keeps PYTHON* variables, the user site and the script's directory out.
    env = {"PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home),
           "TMPDIR": str(work), "LANG": "C.UTF-8"}
    run([str(python), "-I", "-c", SMOKE, json.dumps([modules, data, version(), str(work)])],
        what="using the installed wheel", env=env, cwd=work, timeout=180)


BARE = r"""
import lakebase, sys
for module, extra in [("lakebase.psycopg", "psycopg"), ("lakebase.sqlalchemy", "sqlalchemy"),
                      ("lakebase.asyncpg", "asyncpg"), ("lakebase.cli", "cli"), ("lakebase.emulator", "emulator")]:
    try:
        __import__(module)
    except ModuleNotFoundError as exc:
        assert f'pip install "lakebase[{extra}]"' in str(exc), exc
    else:
        raise AssertionError(f"{module} imported in a virtualenv without its extra {extra!r}")
"""


def bare(wheel: Path, work: Path) -> None:
    """Without extras: the package imports, each module that needs one names it, so does the command."""
    venv = work / "bare"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], what="creating a fresh virtualenv")
    run([sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         str(wheel)], what=f"installing the wheel without extras into {venv}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "LANG": "C.UTF-8"}
    run([str(venv / "bin" / "python"), "-I", "-c", BARE], what="importing without extras", env=env, cwd=work)
    proc = subprocess.run([str(venv / "bin" / "lakebase"), "--help"], capture_output=True, text=True, env=env,
                          cwd=work, timeout=60)
    if proc.returncode != 2 or 'pip install "lakebase[cli]"' not in proc.stderr or "Traceback" in proc.stderr:
        raise DistError(f"`lakebase --help` without the cli extra: exit {proc.returncode}\n{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the sdist and the wheel go")
    out = parser.parse_args(argv).out.resolve()
    started = time.monotonic()
    try:
        sdist, wheel = build(out)
        check_contents(sdist, wheel)
        with tempfile.TemporaryDirectory(prefix="lakebase-dist-") as work:
            smoke(wheel, Path(work))
            bare(wheel, Path(work))
    except DistError as exc:
        print(f"make dist: {exc}", file=sys.stderr)
        return 1
    print(f"make dist: checked in {time.monotonic() - started:.0f} s:\n{sdist}\n{wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
