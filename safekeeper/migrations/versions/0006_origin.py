"""package attempts: SCORM runtime data per viewer and package key

Revision ID: 0006_origin
Revises: 0006_trust
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_origin"
down_revision: str | None = "0006_trust"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "package_attempts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("namespace_id", _ID, nullable=False),
        sa.Column("key", sa.String(length=1000), nullable=False),
        sa.Column("version", sa.String(length=20), nullable=False),
        sa.Column("completion_status", sa.String(length=20), nullable=True),
        sa.Column("success_status", sa.String(length=20), nullable=True),
        sa.Column("score_raw", sa.Float(), nullable=True),
        sa.Column("score_max", sa.Float(), nullable=True),
        sa.Column("score_scaled", sa.Float(), nullable=True),
        sa.Column("total_time", sa.Float(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("commits", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("version IN ('scorm12', 'scorm2004')", name="attempt_version"),
        sa.ForeignKeyConstraint(["namespace_id"], ["namespaces.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "namespace_id", "key", name="uq_attempts_viewer_key"),
    )
    op.create_index("ix_attempts_package", "package_attempts", ["namespace_id", "key"])


def downgrade() -> None:
    op.drop_index("ix_attempts_package", table_name="package_attempts")
    op.drop_table("package_attempts")
