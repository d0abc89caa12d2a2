"""The pytest plugin (``lakebase.testing``) run by pytest itself (``pytester``).

Inner runs use this session's emulator (``--lakebase-emulator`` / ``LAKEBASE_EMULATOR_DIR``), in
process where they can; one run (``-n 2``, in a subprocess) starts emulators of its own.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Emulator
from .lakebase_support import pat_client

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ("-p", "lakebase.testing")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, with no Lakebase, Databricks or libpq setting of this run leaking into the inner run."""
    for key in list(os.environ):
        if key.startswith(("DATABRICKS_", "PG", "LAKEBASE_")) or key == "ENDPOINT_NAME":
            monkeypatch.delenv(key)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")  # as this suite's
    return pytester


def test_loading_the_plugin_imports_neither_the_library_nor_its_drivers() -> None:
    code = """
import sys
import _lakebase_pytest
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("lakebase", "psycopg", "databricks", "sqlalchemy"))
assert not heavy, heavy
import lakebase.testing
assert lakebase.testing is _lakebase_pytest and sys.modules["lakebase.testing"] is _lakebase_pytest
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr


def test_the_entry_point_is_declared_in_the_installed_metadata() -> None:
    """pytest finds the plugin by itself once lakebase is installed (``pip install -e ".[dev]"``)."""
    points = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.dist and ep.dist.name == "lakebase"]
    assert [(ep.name, ep.value) for ep in points] == [("lakebase.testing", "_lakebase_pytest")], (
        "the installed lakebase has no pytest11 entry point: reinstall it (pip install -e '.[dev]')")
    import lakebase.testing

    assert points[0].load() is lakebase.testing


def declared_entry_points() -> dict[str, str]:
    import tomllib

    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"])


def test_nothing_starts_unless_a_fixture_is_used(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest loads the plugin through the declared entry point (a stand-in distribution declares it
    here, so the test does not depend on how lakebase was installed) and imports nothing heavy."""
    dist = inner.path / "site" / "lakebase_entry_point_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lakebase-entry-point-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{name} = {value}\n" for name, value in declared_entry_points().items()))
    inner.makepyfile(test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.get_plugin("lakebase.testing") is not None
            loaded = [m for m in ("lakebase", "psycopg", "databricks.sdk") if m in sys.modules]
            assert not loaded, loaded
    """)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(inner.path / "site"), str(ROOT / "src")]))
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert not list(inner.path.rglob("lakebase-emulator*")), "an emulator directory was made"


INNER_FIXTURES = '''
import lakebase
import psycopg
import pytest
from sqlalchemy import text

from lakebase.sqlalchemy import create_engine


def whoami(conn):
    return conn.execute("SELECT current_user").fetchone()[0]


def test_env_reaches_the_emulator_with_no_arguments(lakebase_env, lakebase_emulator):
    assert lakebase_env["PGUSER"] == lakebase_emulator.owner.name
    with lakebase.connect() as conn:
        assert whoami(conn) == lakebase_emulator.owner.name
    with lakebase.ConnectionPool(min_size=1, open=True) as pool, pool.connection() as conn:
        assert whoami(conn) == lakebase_emulator.owner.name
    engine = create_engine()
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == lakebase_emulator.owner.name
    finally:
        engine.dispose()


def test_app_env_is_the_service_principal(lakebase_app_env, lakebase_emulator):
    assert lakebase_app_env["DATABRICKS_CLIENT_ID"] == lakebase_emulator.app.name
    assert "DATABRICKS_TOKEN" not in lakebase_app_env
    with lakebase.connect() as conn:
        assert whoami(conn) == lakebase_emulator.app.name


def test_a_write_in_the_transaction(lakebase_transaction):
    lakebase_transaction.execute("CREATE TABLE plugin_rolled_back (x int)")
    lakebase_transaction.execute("INSERT INTO plugin_rolled_back VALUES (1)")
    with pytest.raises(psycopg.ProgrammingError):
        lakebase_transaction.commit()


def test_is_rolled_back_after_it(lakebase_transaction):
    assert lakebase_transaction.execute("SELECT to_regclass('plugin_rolled_back')").fetchone()[0] is None


def test_faults(lakebase_env, lakebase_faults, lakebase_emulator):
    lakebase_faults.configure(token_ttl_seconds=300, wake_delay_seconds=0.1)
    with lakebase.ConnectionPool(min_size=1, open=True) as pool:
        pool.wait()
        assert lakebase_faults.restart() >= 1
        lakebase_faults.expire_tokens()
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        assert lakebase_faults.suspend() >= 1
        assert lakebase_emulator.endpoint_state() == "IDLE"
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    lakebase_faults.credential_outage(120)
    lakebase_faults.api_hang(120)


def test_fails_on_purpose(lakebase_env, lakebase_faults):
    lakebase_faults.configure(latency_ms=1)
    lakebase_faults.credential_outage(120, 429)
    assert False, "on purpose"
'''


def test_each_fixture_on_the_sessions_emulator(inner: pytest.Pytester, emulator: Emulator,
                                               app_role: str) -> None:
    """app_role first: the suite's notes and the app's role exist before the plugin would make the role."""
    before = emulator.config()
    inner.makepyfile(test_inner=INNER_FIXTURES)
    result = inner.runpytest(*PLUGIN, "--lakebase-emulator", str(emulator.data_dir), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_fails_on_purpose*on purpose*"])
    # What the faults changed is undone, after the failing test too: config, outage, hang.
    assert emulator.config() == before
    token = pat_client(emulator).postgres.generate_database_credential(endpoint=emulator.endpoint_name).token
    assert token
    # The inner run's environment is gone.
    assert not any(key.startswith(("DATABRICKS_", "PG")) for key in os.environ)


def test_no_pat_or_client_secret_in_the_output_of_failing_tests(inner: pytest.Pytester, emulator: Emulator,
                                                                app_role: str) -> None:
    """The fixtures return the variables they set: pytest printed them (a PAT, on a real workspace the
    developer's or CI's) in an assertion's explanation and with --showlocals."""
    inner.makepyfile(test_inner="""
        def test_owner(lakebase_env):
            env = lakebase_env
            assert "NOT_SET" in env

        def test_app(lakebase_app_env):
            assert lakebase_app_env == {}
    """)
    result = inner.runpytest(*PLUGIN, "--lakebase-emulator", str(emulator.data_dir), "-p", "no:cacheprovider",
                             "--showlocals", "-vv")
    result.assert_outcomes(failed=2)
    output = result.stdout.str() + result.stderr.str()
    assert "DATABRICKS_TOKEN" in output and "DATABRICKS_CLIENT_SECRET" in output  # the dicts were shown
    secrets = [emulator.user_env["DATABRICKS_TOKEN"], emulator.app_env["DATABRICKS_CLIENT_SECRET"]]
    assert not [s for s in secrets if s in output]


def test_attaching_to_a_directory_without_an_emulator_names_the_fix(inner: pytest.Pytester, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    inner.makepyfile(test_inner="def test_it(lakebase_env):\n    pass\n")
    monkeypatch.setenv("LAKEBASE_EMULATOR_DIR", str(tmp_path / "none"))
    result = inner.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*no running emulator in {tmp_path / 'none'}*lakebase emulator start --data-dir*"])


def test_workspace_mode_without_a_project_is_a_usage_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_inner="def test_it():\n    pass\n")
    result = inner.runpytest(*PLUGIN, "--lakebase-workspace", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--lakebase-workspace needs the project*LAKEBASE_TEST_PROJECT=projects/*"])


def readme_example() -> str:
    """The complete test file of the README's "Testing your app"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your app", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "no python block in the README's Testing your app"
    return str(blocks[0])


def test_the_readme_example_passes(inner: pytest.Pytester, emulator: Emulator, app_role: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEBASE_EMULATOR_DIR", str(emulator.data_dir))
    example = readme_example()
    inner.makepyfile(test_readme=example)
    result = inner.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=example.count("\ndef test_"))


XDIST_INNER = '''
import json, os

import lakebase
import pytest


@pytest.mark.parametrize("n", range(4))
def test_one(n, lakebase_emulator, lakebase_env):
    with lakebase.connect() as conn:
        conn.execute("SELECT 1")
    with open(OUT, "a") as f:
        f.write(json.dumps({"worker": os.environ["PYTEST_XDIST_WORKER"], "dir": str(lakebase_emulator.data_dir),
                            "port": lakebase_emulator.pg_port, "pid": lakebase_emulator.pid}) + "\\n")
    assert n != 3, "a failing test"
'''


def _processes_under(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in args:
            found.append(args)
    return found


@pytest.mark.slow
def test_under_xdist_each_worker_has_its_own_emulator_and_none_is_left(inner: pytest.Pytester) -> None:
    out = inner.path / "seen.jsonl"
    inner.makepyfile(test_inner=f"OUT = {str(out)!r}\n" + XDIST_INNER)
    result = inner.runpytest_subprocess(*PLUGIN, "-n", "2", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=3, failed=1)
    seen = [json.loads(line) for line in out.read_text().splitlines()]
    by_worker = {s["worker"]: (s["dir"], s["port"], s["pid"]) for s in seen}
    assert len(by_worker) == 2, seen  # both workers ran tests
    assert len({d for d, _, _ in by_worker.values()}) == 2 and len({p for _, p, _ in by_worker.values()}) == 2
    for directory, _, pid in by_worker.values():
        assert not Path(f"/proc/{pid}").exists(), f"emulator {pid} still running"
        assert not _processes_under(Path(directory)), _processes_under(Path(directory))
