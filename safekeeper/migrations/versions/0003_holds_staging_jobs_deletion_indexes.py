"""holds, staging jobs, deletion indexes

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "namespace_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "(blob_id IS NULL) != (namespace_id IS NULL)", name="hold_has_one_target"
        ),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["namespace_id"],
            ["namespaces.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.create_index("ix_holds_blob", ["blob_id"], unique=False)
        batch_op.create_index("ix_holds_namespace", ["namespace_id"], unique=False)

    op.create_table(
        "staging_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "location_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["location_id"],
            ["locations.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("staging_jobs", schema=None) as batch_op:
        batch_op.create_index(
            "uq_staging_jobs_active_name",
            ["name"],
            unique=True,
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        )

    op.create_table(
        "staging_job_blobs",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("blob_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["staging_jobs.id"],
        ),
        sa.PrimaryKeyConstraint("job_id", "blob_id"),
    )
    with op.batch_alter_table("staging_job_blobs", schema=None) as batch_op:
        batch_op.create_index("ix_staging_job_blobs_blob", ["blob_id"], unique=False)

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_location", ["location"], unique=False)

    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.create_index("ix_copies_blob_state", ["blob_id", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("copies", schema=None) as batch_op:
        batch_op.drop_index("ix_copies_blob_state")

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_location")

    with op.batch_alter_table("staging_job_blobs", schema=None) as batch_op:
        batch_op.drop_index("ix_staging_job_blobs_blob")

    op.drop_table("staging_job_blobs")
    with op.batch_alter_table("staging_jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_staging_jobs_active_name",
            sqlite_where=sa.text("ended_at IS NULL"),
            postgresql_where=sa.text("ended_at IS NULL"),
        )

    op.drop_table("staging_jobs")
    with op.batch_alter_table("holds", schema=None) as batch_op:
        batch_op.drop_index("ix_holds_namespace")
        batch_op.drop_index("ix_holds_blob")

    op.drop_table("holds")
