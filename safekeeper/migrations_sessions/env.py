"""Alembic environment of the sessions table (its own history and version table)."""

from alembic import context

from safekeeper.db.session_models import SessionBase

VERSION_TABLE = "alembic_version_sessions"

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through safekeeper (safekeeper db upgrade)")

context.configure(
    connection=connection,
    target_metadata=SessionBase.metadata,
    # The catalog and the sessions table may share a PostgreSQL database: each history
    # looks only at its own tables.
    include_name=lambda name, type_, _parent: (
        type_ != "table" or name in SessionBase.metadata.tables
    ),
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
