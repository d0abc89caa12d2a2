"""Notes on Lakebase: the Databricks tutorial's notes app as a Streamlit app, done with ``lakebase``.

``streamlit run app.py`` (what ``app.yaml`` tells Databricks Apps to run; Databricks sets Streamlit's
port and address). Streamlit runs this script again on every interaction; ``st.connection`` caches the
:class:`lakebase.streamlit.LakebaseConnection` by name, so every rerun and every browser session of
the process shares one SQLAlchemy engine (one connection pool, one cached, refreshed-ahead token).
Settings come from what Databricks Apps inject (``PGHOST``, ``PGUSER``, ``DATABRICKS_CLIENT_ID``...)
plus ``ENDPOINT_NAME`` from ``app.yaml``; on a laptop, from the environment (``lakebase doctor``).

* The list is ``conn.query(...)`` (a DataFrame, cached for ``LIST_TTL`` seconds, read in a read-only
  transaction that is retried if a restart ended its session); writes use ``conn.session`` and clear
  the cached list.
* Note content is shown as text (``st.text``), never as Markdown or HTML.
* Bad input (empty, too long, control characters) gets a message and writes nothing.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy import text

import lakebase
from lakebase.streamlit import LakebaseConnection

MAX_NOTE_LENGTH = 1000
RECENT_NOTES = 5
LIST_TTL = 10  # seconds another user's new note may take to show up (this session's writes show at once)


def validate(value: str | None) -> str:
    content = (value or "").strip()
    if not content:
        raise ValueError("A note cannot be empty.")
    if len(content) > MAX_NOTE_LENGTH:
        raise ValueError(f"A note has at most {MAX_NOTE_LENGTH} characters (this one has {len(content)}).")
    if any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in content):
        raise ValueError("A note cannot contain control characters.")
    return content


def add_note(conn: LakebaseConnection, content: str) -> None:
    with conn.session as session:
        session.execute(text("INSERT INTO notes (content) VALUES (:content)"), {"content": content})
        session.commit()
    st.cache_data.clear()  # the cached list is stale now


def delete_note(conn: LakebaseConnection, note_id: int) -> None:
    with conn.session as session:
        session.execute(text("DELETE FROM notes WHERE id = :id"), {"id": note_id})
        session.commit()
    st.cache_data.clear()


st.set_page_config(page_title="Notes on Lakebase")
st.title("Hello from Lakebase!")
try:
    conn = st.connection("lakebase", type=LakebaseConnection)  # one per process, whatever the reruns
    with st.form("add", clear_on_submit=True):
        draft = st.text_area("New note", max_chars=MAX_NOTE_LENGTH)
        if st.form_submit_button("Add note"):
            try:
                add_note(conn, validate(draft))
            except ValueError as exc:
                st.error(str(exc))

    notes = conn.query("SELECT id, content, created_at FROM notes ORDER BY created_at DESC, id DESC LIMIT :n",
                       params={"n": RECENT_NOTES}, ttl=LIST_TTL)
    st.subheader(f"The {RECENT_NOTES} most recent notes")
    if notes.empty:
        st.info("No notes yet.")
    for note in notes.itertuples():
        left, right = st.columns([6, 1])
        with left:
            st.text(note.content)
            st.caption(str(note.created_at)[:19])
        with right:
            if st.button("Delete", key=f"delete-{note.id}"):
                delete_note(conn, int(note.id))
                st.rerun()
except lakebase.LakebaseError as exc:  # configuration, credentials, a compute that did not wake in time
    st.error(f"The database is unavailable right now: {type(exc).__name__}: {exc}")
