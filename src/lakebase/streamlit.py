"""Streamlit: ``st.connection("lakebase", type=LakebaseConnection)``, a Streamlit connection on lakebase.

::

    import streamlit as st
    from lakebase.streamlit import LakebaseConnection

    conn = st.connection("lakebase", type=LakebaseConnection)      # settings from the environment
    notes = conn.query("SELECT id, content FROM notes ORDER BY id DESC LIMIT :n", params={"n": 5}, ttl=10)
    st.dataframe(notes)
    if st.button("Add"):
        with conn.session as session:
            session.execute(text("INSERT INTO notes (content) VALUES (:c)"), {"c": "hello"})
            session.commit()

It follows Streamlit's ``BaseConnection`` contract, as its ``SQLConnection`` (``type="sql"``) does:
``query()`` returns a pandas DataFrame cached like ``st.cache_data`` (``ttl``), ``session`` is a
SQLAlchemy ``Session`` for writes, ``engine`` the engine, ``reset()`` makes a new engine on next use.
Behind it is one :func:`lakebase.sqlalchemy.create_engine` engine (one connection pool, tokens from
the shared credential cache, retries through restarts and scale-to-zero wake-ups), made once per
process: Streamlit caches a connection by its name and arguments (``st.cache_resource``, global
scope), so script reruns and browser sessions share it. A DataFrame from ``query()`` is read inside
:func:`lakebase.run_transaction` (``read_only=True``): a session that a restart ended is retried on a
new connection, where ``SQLConnection`` would throw its engine away and build another.

Configuration: ``st.connection`` keyword arguments over the ``[connections.<name>]`` section of
``.streamlit/secrets.toml`` (where ``type = "lakebase.streamlit.LakebaseConnection"`` lets a script
call ``st.connection("lakebase")`` alone), over the environment (``PGHOST``, ``ENDPOINT_NAME``...: in a Databricks
App nothing is needed). Names of :class:`~lakebase.Settings` fields (``endpoint``, ``database``,
``user``...) configure the target; ``url`` and ``driver`` (``psycopg`` or ``psycopg2``) as for
:func:`~lakebase.sqlalchemy.create_engine`; the rest go to the engine (``pool_size``,
``connect_args``...). A password is refused: lakebase sets it, a fresh OAuth token.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from ._extras import requires_extra

with requires_extra("streamlit", __name__):
    import streamlit  # noqa: F401 - first, so that its absence is named as such
    from streamlit.connections import BaseConnection
    from streamlit.runtime.caching import cache_data

from ._adapter import refuse_secrets
from .sqlalchemy import create_engine
from .transactions import run_transaction

if TYPE_CHECKING:
    from pandas import DataFrame
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

_WHERE = "st.connection's arguments or its secrets section"


class LakebaseConnection(BaseConnection["Engine"]):
    """A Streamlit connection to Lakebase (see the module doc): ``query()``, ``session``, ``engine``."""

    def _connect(self, **kwargs: Any) -> Engine:
        config = {**self._secrets.to_dict(), **kwargs}
        config.pop("type", None)  # the secrets section may name the connection class: Streamlit's, not ours
        refuse_secrets(config, _WHERE)
        config.pop("password", None)  # given as None: unset
        url = config.pop("url", None)
        return create_engine(url, **config)

    def query(self, sql: str, *, ttl: float | int | timedelta | None = None, params: Any = None,
              show_spinner: bool | str = "Running `lakebase.query(...)`.", index_col: str | list[str] | None = None,
              **kwargs: Any) -> DataFrame:
        """Run a read-only query (SQLAlchemy ``text()``: ``:name`` placeholders, ``params`` a dict) and
        return a pandas DataFrame, cached like ``st.cache_data``: for ``ttl`` seconds, or until
        ``st.cache_data.clear()`` when ``ttl`` is None (the default, as in ``SQLConnection``).
        Other keyword arguments go to ``pandas.read_sql`` (not ``chunksize``: the result is one DataFrame)."""
        if kwargs.get("chunksize") is not None:
            raise TypeError("query() returns one cached DataFrame, so chunksize= is not supported: read in "
                            "chunks with pandas.read_sql(..., conn.engine.connect(), chunksize=...) instead")

        def _query(instance_id: Any, sql: str, params: Any = None, index_col: Any = None,
                   **kwargs: Any) -> DataFrame:
            import pandas as pd
            from sqlalchemy import text

            def read(conn: Any) -> DataFrame:
                return cast("DataFrame", pd.read_sql(text(sql), conn, params=params, index_col=index_col,
                                                     **kwargs))

            return run_transaction(self._instance, read, read_only=True)

        # One cache per connection name and ttl, as SQLConnection does (no extra dots in the name).
        _query.__qualname__ = f"{_query.__qualname__}_{self._connection_name}_{str(ttl).replace('.', '_')}"
        cached = cache_data(show_spinner=show_spinner, ttl=ttl)(_query)
        return cached(self._connection_instance_id, sql, params=params, index_col=index_col, **kwargs)

    @property
    def session(self) -> Session:
        """A new SQLAlchemy ``Session`` on the engine, for writes: ``with conn.session as s: ...; s.commit()``."""
        from sqlalchemy.orm import Session

        return Session(self._instance)

    @property
    def engine(self) -> Engine:
        """The lakebase SQLAlchemy engine (``lakebase.run_transaction(conn.engine, fn)`` retries a unit of work)."""
        return self._instance

    def reset(self) -> None:
        """Dispose of the engine (its pooled connections); the next use makes a new one."""
        engine = self._raw_instance
        super().reset()
        if engine is not None:
            engine.dispose()

    def close(self) -> None:
        """Dispose of the engine: Streamlit calls this when it drops the connection from its cache."""
        self.reset()


__all__ = ["LakebaseConnection"]
