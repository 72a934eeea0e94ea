"""The session table: the session key stored only as its SHA-256, with the user's id."""

from __future__ import annotations

from django.db import models


class SafekeeperSession(models.Model):  # type: ignore[misc]  # Django is untyped here
    #: SHA-256 of the session key: a copy of the table signs nobody in.
    key_hash = models.CharField(max_length=64, primary_key=True)
    #: The signed-in user's primary key as text (any key type), or "" before sign-in.
    user_id = models.CharField(max_length=255, db_index=True, default="")
    session_data = models.TextField()
    expire_date = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "safekeeper_django_session"
