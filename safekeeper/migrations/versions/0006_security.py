"""ids of tenants, users and api tokens never reused (SQLite AUTOINCREMENT); who set a reference

Revision ID: 0006_security
Revises: 0005

SQLite hands the id of a hard-deleted row (the highest one) to the next row unless
the table says AUTOINCREMENT, and that can only be said by rebuilding the table.
Foreign keys stay enforced (the migration runs in a transaction, where
``PRAGMA foreign_keys`` cannot change), so each table is rebuilt in the order that
keeps them satisfiable: its rows are set aside, the table dropped (the references to
it now count as deferred violations), re-created and refilled (which settles them
again) before the commit checks. PostgreSQL's sequences never reuse values: nothing
to do there.
"""

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006_security"
down_revision: str | None = "0006_origin"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tenants() -> list[Any]:
    return [
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    ]


def _users() -> list[Any]:
    return [
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("role IN ('admin', 'operator', 'member')", name="user_role"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    ]


def _api_tokens() -> list[Any]:
    return [
        sa.Column("id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    ]


_TABLES: tuple[tuple[str, Callable[[], list[Any]], list[tuple[str, list[str]]]], ...] = (
    ("tenants", _tenants, []),
    ("users", _users, [("ix_users_tenant", ["tenant_id"])]),
    ("api_tokens", _api_tokens, [("ix_api_tokens_user", ["user_id"])]),
)


def upgrade() -> None:
    with op.batch_alter_table("refs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("set_by_user_id", _ID, nullable=True))
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    op.execute("PRAGMA defer_foreign_keys=ON")
    for name, columns, indexes in _TABLES:
        kept = f"_safekeeper_old_{name}"
        op.execute(f"CREATE TEMP TABLE {kept} AS SELECT * FROM {name}")
        op.drop_table(name)
        table = op.create_table(name, *columns(), sqlite_autoincrement=True)
        for index_name, index_columns in indexes:
            op.create_index(index_name, name, index_columns, unique=False)
        names = ", ".join(column.name for column in table.columns)
        op.execute(f"INSERT INTO {name} ({names}) SELECT {names} FROM {kept}")
        op.execute(f"DROP TABLE {kept}")


def downgrade() -> None:
    """AUTOINCREMENT is compatible with 0005's schema: only the column goes."""
    with op.batch_alter_table("refs", schema=None) as batch_op:
        batch_op.drop_column("set_by_user_id")
