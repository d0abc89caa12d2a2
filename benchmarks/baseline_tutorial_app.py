"""The Databricks tutorial's app.py, verbatim except where marked: the baseline of benchmarks/app_load.py.

From "Tutorial: Connect an app to Lakebase Autoscaling" (step 3): a psycopg_pool pool whose
connection class mints a new database credential for every physical connection. Marked additions:
the `POST /api/notes` endpoint (written in the same style, so that both apps get the same load) and
reading the port from DATABRICKS_APP_PORT for `python baseline_tutorial_app.py`. Served by gunicorn
in the benchmark, like the lakebase app.
"""
# ruff: noqa
import os
from databricks.sdk import WorkspaceClient
import psycopg
from psycopg_pool import ConnectionPool
from flask import Flask
app = Flask(__name__)
# Initialize Databricks client for token generation
w = WorkspaceClient()
# Custom connection class that generates fresh OAuth tokens
class OAuthConnection(psycopg.Connection):
    @classmethod
    def connect(cls, conninfo='', **kwargs):
        # Generate a fresh OAuth token for each connection
        endpoint_name = os.environ["ENDPOINT_NAME"]
        credential = w.postgres.generate_database_credential(endpoint=endpoint_name)
        kwargs['password'] = credential.token
        return super().connect(conninfo, **kwargs)
# Configure connection parameters
username = os.environ["PGUSER"]
host = os.environ["PGHOST"]
port = os.environ.get("PGPORT", "5432")
database = os.environ["PGDATABASE"]
sslmode = os.environ.get("PGSSLMODE", "require")
# Create connection pool with automatic token rotation
pool = ConnectionPool(
    conninfo=f"dbname={database} user={username} host={host} port={port} sslmode={sslmode}",
    connection_class=OAuthConnection,
    min_size=1,
    max_size=10,
    open=True
)
@app.route('/')
def hello_world():
    # Use connection from pool (automatically gets fresh token)
    with pool.connection() as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT content, created_at FROM notes ORDER BY created_at DESC LIMIT 5")
            notes = cur.fetchall()
    # Display results
    notes_html = "<ul>" + "".join([f"<li>{note[0]} - {note[1]}</li>" for note in notes]) + "</ul>"
    return f'<h1>Hello from Lakebase!</h1><h2>Recent Notes:</h2>{notes_html}'


# --- addition for the benchmark: a write, in the tutorial's style (no retry, no validation) ---
from flask import request, jsonify

@app.route('/api/notes', methods=['POST'])
def add_note():
    with pool.connection() as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO notes (content) VALUES (%s) RETURNING id", (request.get_json()["content"],))
            note_id = cur.fetchone()[0]
    return jsonify({"id": note_id}), 201
# --- end of addition ---


if __name__ == '__main__':
    app.run(host="0.0.0.0", port=int(os.environ.get("DATABRICKS_APP_PORT", "8000")))  # port: addition
