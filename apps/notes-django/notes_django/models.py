"""The tutorial's ``notes`` table as a Django model (the table ``lakebase init-schema`` creates)."""

from django.db import models
from django.db.models.functions import Now


class Note(models.Model):
    # id: the tutorial's SERIAL PRIMARY KEY (DEFAULT_AUTO_FIELD is AutoField, an integer)
    content = models.TextField()
    # TIMESTAMP DEFAULT CURRENT_TIMESTAMP: set by the database, returned by the INSERT
    created_at = models.DateTimeField(null=True, db_default=Now())

    class Meta:
        db_table = "notes"
        app_label = "notes_django"

    def as_dict(self) -> dict[str, object]:
        created = self.created_at
        return {"id": self.pk, "content": self.content,
                "created_at": created.isoformat() if hasattr(created, "isoformat") else created}
