"""Alembic environment: migrations run on the connection safekeeper hands in."""

from alembic import context

from safekeeper.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through safekeeper (safekeeper db upgrade)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # The catalog and the sessions table may share a PostgreSQL database: each history
    # looks only at its own tables.
    include_name=lambda name, type_, _parent: type_ != "table" or name in Base.metadata.tables,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
