"""The notes table, as the tutorial's schema step (``lakebase init-schema``) creates it.

On Lakebase the project owner creates the table (``lakebase init-schema``) and the app's role only gets
SELECT, INSERT, UPDATE, DELETE on it: the app must not create, own or alter it. So the database side of
this migration is the owner's exact statement with ``IF NOT EXISTS``: a no-op where the schema step ran
(the role needs only CREATE on the schema, which the schema step grants, for Django's own
``django_migrations`` table), and the table itself where it did not (a test database made by
``manage.py test``, a fresh local database). Django's state gets the model, so later migrations (and
``makemigrations --check``) work as usual. Reverting it leaves the table (and the notes) alone.
"""

from django.db import migrations, models
from django.db.models.functions import Now

# What lakebase.schema.init_schema runs (the tutorial's CREATE TABLE, made idempotent).
CREATE_NOTES = ("CREATE TABLE IF NOT EXISTS notes (id SERIAL PRIMARY KEY, content TEXT NOT NULL, "
                "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(CREATE_NOTES, reverse_sql=migrations.RunSQL.noop)],
            state_operations=[
                migrations.CreateModel(
                    name="Note",
                    fields=[
                        ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False,
                                                verbose_name="ID")),
                        ("content", models.TextField()),
                        ("created_at", models.DateTimeField(db_default=Now(), null=True)),
                    ],
                    options={"db_table": "notes"},
                ),
            ],
        ),
    ]
