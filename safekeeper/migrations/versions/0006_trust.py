"""blob serial numbers never reused: the id_sequences counter

Revision ID: 0006_trust
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_trust"
down_revision: str | None = "0006_reconfirm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "id_sequences",
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("next_value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Past every number handed out so far, committed or not: a put rolled back before
    # this migration may have left an object at an interval key up to a few numbers
    # past max(id); the hash check on existing objects (services.copies.existing) covers those.
    op.execute(
        "INSERT INTO id_sequences (name, next_value) "
        "SELECT 'blobs', COALESCE(MAX(id), 0) + 1 FROM blobs"
    )


def downgrade() -> None:
    op.drop_table("id_sequences")
