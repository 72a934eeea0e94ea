"""Alembic migrations; the schema's history. ``HEAD`` names the newest one (a test
checks it against the migration scripts)."""

HEAD = "0007_task_cancelled"
