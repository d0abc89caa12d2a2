"""lakebase.streamlit.LakebaseConnection and apps/notes-streamlit, run in-process by Streamlit's AppTest
against the emulator: the page lists the notes, adding and deleting work, bad input writes nothing,
every rerun uses the one cached engine (no new login, no new token), a token that expired between
reruns is replaced without the user noticing, and the connection's settings come from st.connection's
arguments and secrets (a password refused)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from lakebase import ConfigurationError
from lakebase.connector import get_connector
from lakebase.emulator import Emulator
from lakebase.streamlit import LakebaseConnection

from .apps_support import APPS, ensure_app_schema, owner_sql
from .lakebase_support import isolated_registries, wait_for

APP = APPS / "notes-streamlit" / "app.py"


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    """No cached connection (engine, pooled sessions) or query result survives a test."""
    st.cache_resource.clear()
    st.cache_data.clear()
    yield from isolated_registries()
    st.cache_resource.clear()  # disposes of the engine: Streamlit calls LakebaseConnection.close()
    st.cache_data.clear()


@pytest.fixture
def app(emulator: Emulator, app_role: str, app_env: dict[str, str]) -> AppTest:
    ensure_app_schema(emulator, app_role)
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    return at


def shown(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def submit(at: AppTest, content: str) -> AppTest:
    at.text_area[0].input(content)
    next(b for b in at.button if b.label == "Add note").click()
    at.run()
    assert not at.exception, at.exception
    return at


def note_id(emulator: Emulator, content: str) -> int | None:
    rows = owner_sql(emulator, "SELECT id FROM notes WHERE content = %s", (content,))
    return int(rows[0][0]) if rows else None


def test_the_page_lists_adds_and_deletes_notes(emulator: Emulator, app: AppTest) -> None:
    assert app.title[0].value == "Hello from Lakebase!"
    recent = owner_sql(emulator, "SELECT content FROM notes ORDER BY created_at DESC, id DESC LIMIT 5")
    assert shown(app) == [content for (content,) in recent] and recent  # the five most recent, newest first
    content = "streamlit " + uuid.uuid4().hex[:12]
    submit(app, content)
    assert shown(app)[0] == content and note_id(emulator, content) is not None
    number = note_id(emulator, content)
    app.button(key=f"delete-{number}").click()
    app.run()
    assert not app.exception, app.exception
    assert content not in shown(app) and note_id(emulator, content) is None


def test_bad_input_writes_nothing(emulator: Emulator, app: AppTest) -> None:
    before = owner_sql(emulator, "SELECT count(*) FROM notes")[0][0]
    for bad, message in (("   ", "cannot be empty"), ("bell \x07", "control characters")):
        submit(app, bad)
        assert any(message in e.value for e in app.error), [e.value for e in app.error]
    assert owner_sql(emulator, "SELECT count(*) FROM notes")[0][0] == before


def test_reruns_share_one_engine_and_one_token(emulator: Emulator, app: AppTest) -> None:
    """st.connection caches the connection by name: every rerun and session uses the same engine, so
    reruns (here each one querying the database: the result cache is cleared) open no new connection
    and mint no new token."""
    connection = st.connection("lakebase", type=LakebaseConnection)  # Streamlit's cache: the app's own
    engine = connection.engine
    stats = get_connector().stats()
    opened, mints = stats["connect"]["attempts"], stats["credentials"]["mints"]
    for _ in range(5):
        st.cache_data.clear()
        app.run()
        assert not app.exception, app.exception
    submit(app, "rerun " + uuid.uuid4().hex[:8])
    AppTest.from_file(str(APP), default_timeout=30).run()  # another browser session
    assert st.connection("lakebase", type=LakebaseConnection) is connection and connection.engine is engine
    stats = get_connector().stats()
    assert (stats["connect"]["attempts"], stats["credentials"]["mints"]) == (opened, mints)


def test_a_token_expiry_between_reruns_is_invisible(emulator: Emulator, app: AppTest) -> None:
    """Between two reruns the token expires and the pooled session ends (idle timeout): the next
    rerun's write logs in again, its token is refused (28P01), a fresh one is minted, the note is saved."""
    cache = get_connector().credentials
    mints = cache.stats()["mints"]
    emulator.expire_tokens()  # the cached token is now refused at login
    ended = emulator.stats()["sessions_terminated"]
    emulator.configure(idle_timeout_seconds=0.2)
    wait_for(lambda: emulator.stats()["sessions_terminated"] > ended, what="the pooled session ended")
    emulator.configure(idle_timeout_seconds=86400)
    content = "after expiry " + uuid.uuid4().hex[:8]
    submit(app, content)
    assert not app.error and shown(app)[0] == content
    assert cache.stats()["mints"] == mints + 1 and get_connector().stats()["connect"]["auth_retries"] == 1


@pytest.fixture
def secrets_file(tmp_path: Path) -> Iterator[Path]:
    """A ``.streamlit/secrets.toml`` of the test's own: Streamlit's connections read the process's
    secrets (``AppTest.secrets`` does not reach them)."""
    from streamlit import config
    from streamlit.runtime.secrets import secrets_singleton

    path = tmp_path / "secrets.toml"
    before = config.get_option("secrets.files")
    config.set_option("secrets.files", [str(path)])
    secrets_singleton._reset()  # forget what was loaded before
    yield path
    config.set_option("secrets.files", before)
    secrets_singleton._reset()


def test_settings_come_from_arguments_and_secrets(emulator: Emulator, app_role: str, app_env: dict[str, str],
                                                  secrets_file: Path) -> None:
    secrets_file.write_text('[connections.lakebase]\ntype = "lakebase.streamlit.LakebaseConnection"\n'
                            'application_name = "from-secrets"\n')

    def script() -> None:
        import streamlit as st
        from sqlalchemy import text

        conn = st.connection("lakebase", connect_args={"options": "-c work_mem=5MB"})  # the type from secrets
        row = conn.query("SELECT current_setting('application_name') AS a, current_setting('work_mem') AS w, "
                         "current_user AS u", ttl=0).iloc[0]
        st.text(f"{row.a} {row.w} {row.u}")
        with conn.session as session:
            st.text(session.execute(text("SELECT 41 + 1")).scalar_one())

    at = AppTest.from_function(script, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert shown(at) == [f"from-secrets 5MB {emulator.app.name}", "42"]

    secrets_file.write_text('[connections.other]\npassword = "hunter2"\n')
    from streamlit.runtime.secrets import secrets_singleton

    secrets_singleton._reset()
    for where in ({}, {"password": "hunter3"}):
        with pytest.raises(ConfigurationError, match="lakebase sets the password") as info:
            LakebaseConnection("other", **where)
        assert "hunter" not in str(info.value)


def test_reset_disposes_of_the_engine(emulator: Emulator, app_env: dict[str, str], app_role: str) -> None:
    connection = LakebaseConnection("direct")
    first = connection.engine
    with first.connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == emulator.app.name
    assert first.pool.checkedin() == 1
    connection.reset()
    assert first.pool.checkedin() == 0  # its pooled connection was closed
    assert connection.engine is not first
    assert connection.query("SELECT 1 AS one", ttl=0)["one"].tolist() == [1]
    with pytest.raises(TypeError, match="chunksize= is not supported"):
        connection.query("SELECT 1", chunksize=10)
    connection.close()



def test_a_misconfigured_app_says_why(emulator: Emulator, app_env: dict[str, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "disable")
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert "PGSSLMODE='disable': Lakebase requires TLS" in at.error[0].value
