"""The app's own tests, for ``python manage.py test``: Django makes a test database (``test_<NAME>``) on
Lakebase, migrates it (which creates the notes table), runs these in transactions and drops it."""

from django.db import connection
from django.test import Client, TestCase

from .models import Note


class NotesTest(TestCase):
    def test_the_migration_made_the_tutorials_table(self) -> None:
        with connection.cursor() as cur:
            cur.execute("SELECT current_database()")
            self.assertTrue(cur.fetchone()[0].startswith("test_"))
            cur.execute("SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                        "WHERE table_name = 'notes' ORDER BY ordinal_position")
            columns = cur.fetchall()
        self.assertEqual([(c[0], c[1], c[2]) for c in columns], [
            ("id", "integer", "NO"), ("content", "text", "NO"), ("created_at", "timestamp without time zone", "YES")])
        self.assertIn("nextval('notes_id_seq'", columns[0][3])
        self.assertEqual(columns[2][3], "CURRENT_TIMESTAMP")

    def test_add_list_and_delete_a_note(self) -> None:
        client = Client()
        created = client.post("/api/notes", {"content": "from manage.py test"}, content_type="application/json")
        self.assertEqual(created.status_code, 201)
        note = created.json()
        self.assertTrue(note["created_at"])
        self.assertIn("from manage.py test", client.get("/").content.decode())
        self.assertEqual(client.delete(f"/api/notes/{note['id']}").status_code, 204)
        self.assertFalse(Note.objects.filter(pk=note["id"]).exists())
